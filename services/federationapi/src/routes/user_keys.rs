//! `POST /user/keys/query` and `/user/keys/claim`: our users' device keys
//! (with their master and self-signing keys) and one-time keys, for the
//! servers of the users they talk to. Users of other servers are none of
//! ours to answer for and are left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use ganglion_api::proto::keyserver as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, respond};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::FederationService;
use crate::auth::Origin;

/// The most users one request may name.
const MAX_USERS: usize = 1_000;

#[derive(Deserialize)]
pub(crate) struct QueryBody {
    device_keys: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
pub(crate) struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
}

impl FederationService {
    /// Whether `user_id` is a valid user ID of this server.
    fn is_local_user(&self, user_id: &str) -> bool {
        ruma::UserId::parse(user_id)
            .is_ok_and(|user| user.server_name() == self.client.server_name())
    }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!({}))
}

pub(crate) async fn query(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    MatrixJson(body): MatrixJson<QueryBody>,
) -> MatrixResult {
    tracing::debug!(origin, users = body.device_keys.len(), "key query");
    if body.device_keys.len() > MAX_USERS {
        return Err(MatrixError::too_large("too many users"));
    }
    let users = body
        .device_keys
        .into_iter()
        .filter(|(user, _)| service.is_local_user(user))
        .map(|(user, device_ids)| (user, pb::DeviceIds { device_ids }))
        .collect();
    let answer = service
        .keys
        .query(pb::QueryRequest {
            users,
            ..Default::default()
        })
        .await
        .map_err(MatrixError::from)?;
    let device_keys: Map<String, Value> = answer
        .device_keys
        .into_iter()
        .map(|(user, devices)| {
            let devices: Map<String, Value> = devices
                .devices
                .into_iter()
                .map(|(device, json)| (device, json_of(&json)))
                .collect();
            (user, Value::Object(devices))
        })
        .collect();
    let keys_of = |keys: std::collections::HashMap<String, Vec<u8>>| -> Map<String, Value> {
        keys.into_iter()
            .map(|(user, json)| (user, json_of(&json)))
            .collect()
    };
    respond(json!({
        "device_keys": device_keys,
        "master_keys": keys_of(answer.master_keys),
        "self_signing_keys": keys_of(answer.self_signing_keys),
    }))
}

pub(crate) async fn claim(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    MatrixJson(body): MatrixJson<ClaimBody>,
) -> MatrixResult {
    tracing::debug!(origin, users = body.one_time_keys.len(), "key claim");
    if body.one_time_keys.len() > MAX_USERS {
        return Err(MatrixError::too_large("too many users"));
    }
    let claims = body
        .one_time_keys
        .into_iter()
        .filter(|(user, _)| service.is_local_user(user))
        .flat_map(|(user_id, devices)| {
            devices
                .into_iter()
                .map(move |(device_id, algorithm)| pb::ClaimOne {
                    user_id: user_id.clone(),
                    device_id,
                    algorithm,
                })
        })
        .collect();
    let answer = service
        .keys
        .claim(pb::ClaimRequest { claims })
        .await
        .map_err(MatrixError::from)?;
    let mut one_time_keys: Map<String, Value> = Map::new();
    for key in answer.keys {
        one_time_keys
            .entry(key.user_id)
            .or_insert_with(|| json!({}))[key.device_id.as_str()][key.key_id.as_str()] =
            json_of(&key.key_json);
    }
    respond(json!({ "one_time_keys": one_time_keys }))
}

/// `GET /user/devices/{userId}`: one of our users' devices with their
/// identity keys, and the device list's stream ID.
pub(crate) async fn devices(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    axum::extract::Path(user_id): axum::extract::Path<String>,
) -> MatrixResult {
    tracing::debug!(origin, user_id, "device list query");
    if !service.is_local_user(&user_id) {
        return Err(MatrixError::not_found("Not a user of this server"));
    }
    let answer = service
        .keys
        .user_devices(pb::UserDevicesRequest {
            user_id: user_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    let devices: Vec<Value> = answer
        .devices
        .into_iter()
        .map(|(device_id, json)| json!({ "device_id": device_id, "keys": json_of(&json) }))
        .collect();
    let mut body = json!({ "user_id": user_id, "stream_id": answer.stream_id, "devices": devices });
    for (field, json) in [
        ("master_key", &answer.master_key_json),
        ("self_signing_key", &answer.self_signing_key_json),
    ] {
        if !json.is_empty() {
            body[field] = json_of(json);
        }
    }
    respond(body)
}
