//! End-to-end encryption keys: `POST /keys/upload`, `/keys/query`,
//! `/keys/claim`, kept by the keyserver. Keys of users on other servers
//! need federation: until then their servers are listed in `failures`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use ganglion_api::proto::keyserver as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, respond};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::ClientApi;

/// The most users (or devices) one query or claim may name.
const MAX_TARGETS: usize = 1_000;

#[derive(Deserialize)]
struct UploadBody {
    device_keys: Option<Map<String, Value>>,
    #[serde(default)]
    one_time_keys: Map<String, Value>,
    #[serde(default)]
    fallback_keys: Map<String, Value>,
}

#[derive(Deserialize)]
struct QueryBody {
    device_keys: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<u64>,
}

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<u64>,
}

fn counts_json(counts: &pb::KeyCounts) -> Value {
    json!(counts.one_time_key_counts)
}

/// `failures` of a query or claim: server name → error.
type Failures = Map<String, Value>;

/// Splits a request's users into this server's and, for every other
/// server, its entry in `failures` (without federation, none is reached).
/// An invalid user ID is `M_INVALID_PARAM`.
fn local_users<T>(
    server_name: &str,
    by_user: BTreeMap<String, T>,
) -> Result<(Vec<(String, T)>, Failures), MatrixError> {
    let mut local = Vec::new();
    let mut failures = Map::new();
    for (user_id, value) in by_user {
        let user = ruma::UserId::parse(&user_id)
            .map_err(|_| MatrixError::invalid_param(format!("invalid user ID {user_id}")))?;
        if user.server_name() == server_name {
            local.push((user_id, value));
        } else {
            failures.insert(
                user.server_name().to_string(),
                json!({"status": 503, "message": "federation is not available yet"}),
            );
        }
    }
    Ok((local, failures))
}

pub(crate) async fn upload(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let device = api.authenticate(&headers, &uri).await?;
    let body: UploadBody = parse_json(&body)?;
    let to_bytes = |map: &Map<String, Value>| {
        if map.is_empty() {
            Vec::new()
        } else {
            Value::Object(map.clone()).to_string().into_bytes()
        }
    };
    let counts = api
        .keys
        .upload(pb::UploadRequest {
            user_id: device.user_id.clone(),
            device_id: device.device_id.clone(),
            device_keys_json: body
                .device_keys
                .map(|keys| Value::Object(keys).to_string().into_bytes()),
            one_time_keys_json: to_bytes(&body.one_time_keys),
            fallback_keys_json: to_bytes(&body.fallback_keys),
        })
        .await?;
    respond(json!({ "one_time_key_counts": counts_json(&counts) }))
}

pub(crate) async fn query(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    api.authenticate(&headers, &uri).await?;
    let body: QueryBody = parse_json(&body)?;
    if body.device_keys.len() > MAX_TARGETS {
        return Err(MatrixError::invalid_param("too many users"));
    }
    let (local, failures) = local_users(&api.server_name, body.device_keys)?;
    let request = pb::QueryRequest {
        users: local
            .into_iter()
            .map(|(user_id, device_ids)| (user_id, pb::DeviceIds { device_ids }))
            .collect(),
    };
    let response = api.keys.query(request).await?;
    let device_keys: Map<String, Value> = response
        .device_keys
        .into_iter()
        .map(|(user_id, devices)| {
            let devices: Map<String, Value> = devices
                .devices
                .into_iter()
                .filter_map(|(device_id, json)| {
                    Some((device_id, serde_json::from_slice(&json).ok()?))
                })
                .collect();
            (user_id, Value::Object(devices))
        })
        .collect();
    respond(json!({ "device_keys": device_keys, "failures": failures }))
}

pub(crate) async fn claim(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    api.authenticate(&headers, &uri).await?;
    let body: ClaimBody = parse_json(&body)?;
    let (local, failures) = local_users(&api.server_name, body.one_time_keys)?;
    let mut request = pb::ClaimRequest::default();
    for (user_id, devices) in local {
        for (device_id, algorithm) in devices {
            request.claims.push(pb::ClaimOne {
                user_id: user_id.clone(),
                device_id,
                algorithm,
            });
        }
    }
    if request.claims.len() > MAX_TARGETS {
        return Err(MatrixError::invalid_param("too many devices"));
    }
    let response = api.keys.claim(request).await?;
    let mut one_time_keys: Map<String, Value> = Map::new();
    for key in response.keys {
        let Ok(value) = serde_json::from_slice::<Value>(&key.key_json) else {
            continue;
        };
        one_time_keys
            .entry(key.user_id)
            .or_insert_with(|| json!({}))[key.device_id.as_str()][key.key_id.as_str()] = value;
    }
    respond(json!({ "one_time_keys": one_time_keys, "failures": failures }))
}
