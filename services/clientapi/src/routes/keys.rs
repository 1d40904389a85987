//! End-to-end encryption keys: `POST /keys/upload`, `/keys/query`,
//! `/keys/claim`, `/keys/device_signing/upload` and
//! `/keys/signatures/upload`, kept by the keyserver. Keys of users on
//! other servers are asked of their servers through the federationapi,
//! every server at once; a server that does not answer in time is listed
//! in `failures`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use ganglion_api::keys::add_signature;
use ganglion_api::proto::keyserver as pb;
use ganglion_api::users::{User, UserOrGuest};
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
    timeout: Option<u64>,
}

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    timeout: Option<u64>,
}

fn counts_json(counts: &pb::KeyCounts) -> Value {
    json!(counts.one_time_key_counts)
}

/// `failures` of a query or claim: server name → error.
type Failures = Map<String, Value>;

/// A request's users, split into this server's and, per other server,
/// theirs. An invalid user ID is `M_INVALID_PARAM`.
#[allow(clippy::type_complexity)]
fn local_users<T>(
    server_name: &str,
    by_user: BTreeMap<String, T>,
) -> Result<(Vec<(String, T)>, BTreeMap<String, BTreeMap<String, T>>), MatrixError> {
    let mut local = Vec::new();
    let mut remote: BTreeMap<String, BTreeMap<String, T>> = BTreeMap::new();
    for (user_id, value) in by_user {
        let user = ruma::UserId::parse(&user_id)
            .map_err(|_| MatrixError::invalid_param(format!("invalid user ID {user_id}")))?;
        if user.server_name() == server_name {
            local.push((user_id, value));
        } else {
            remote
                .entry(user.server_name().to_string())
                .or_default()
                .insert(user_id, value);
        }
    }
    Ok((local, remote))
}

/// How long remote servers are waited for when the client does not say.
const DEFAULT_REMOTE_TIMEOUT_MS: u64 = 10_000;

/// Asks every remote server at once (`body(server, users)` is the request
/// body for one): the answers of those that answered in time, and a
/// `failures` entry for each that did not.
async fn ask_remote_servers<T>(
    api: &ClientApi,
    remote: BTreeMap<String, BTreeMap<String, T>>,
    timeout_ms: Option<u64>,
    claim: bool,
    body: impl Fn(BTreeMap<String, T>) -> Value,
) -> (Vec<(String, Value)>, Failures) {
    let timeout = std::time::Duration::from_millis(
        timeout_ms.unwrap_or(DEFAULT_REMOTE_TIMEOUT_MS).min(60_000),
    );
    let asks = remote.into_iter().map(|(server, users)| {
        let request = ganglion_api::proto::federationapi::RemoteRequest {
            server_name: server.clone(),
            body_json: body(users).to_string().into_bytes(),
        };
        async move {
            let asked = if claim {
                api.federation.claim_keys(request)
            } else {
                api.federation.query_keys(request)
            };
            let answer = tokio::time::timeout(timeout, asked).await;
            (server, answer)
        }
    });
    let mut answers = Vec::new();
    let mut failures = Map::new();
    for (server, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(Ok(response)) => match serde_json::from_slice::<Value>(&response.body_json) {
                Ok(json) => answers.push((server, json)),
                Err(_) => {
                    failures.insert(server, json!({"status": 502, "message": "not JSON"}));
                }
            },
            Ok(Err(error)) => {
                tracing::info!(server, ?error, "remote keys");
                failures.insert(server, json!({"status": 503, "message": error.to_string()}));
            }
            Err(_) => {
                failures.insert(server, json!({"status": 504, "message": "timed out"}));
            }
        }
    }
    (answers, failures)
}

/// Copies `field` of a remote answer into `into`, for the server's own
/// users only (a server answers for nobody else).
fn merge_remote(into: &mut Map<String, Value>, server: &str, answer: &Value, field: &str) {
    for (user_id, devices) in answer[field].as_object().into_iter().flatten() {
        if ruma::UserId::parse(user_id.as_str()).is_ok_and(|u| u.server_name() == server)
            && devices.is_object()
        {
            into.insert(user_id.clone(), devices.clone());
        }
    }
}

pub(crate) async fn upload(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
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
    UserOrGuest(device): UserOrGuest,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: QueryBody = parse_json(&body)?;
    if body.device_keys.len() > MAX_TARGETS {
        return Err(MatrixError::invalid_param("too many users"));
    }
    let (local, remote) = local_users(&api.server_name, body.device_keys)?;
    let remote_users: Vec<String> = remote.values().flat_map(|u| u.keys().cloned()).collect();
    let (answers, failures) = ask_remote_servers(
        &api,
        remote,
        body.timeout,
        false,
        |users| json!({ "device_keys": users }),
    )
    .await;
    let request = pb::QueryRequest {
        users: local
            .into_iter()
            .map(|(user_id, device_ids)| (user_id, pb::DeviceIds { device_ids }))
            .collect(),
        requester: device.user_id.clone(),
        remote_users,
    };
    let response = api.keys.query(request).await?;
    let mut device_keys: Map<String, Value> = response
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
    let keys_of = |keys: std::collections::HashMap<String, Vec<u8>>| -> Map<String, Value> {
        keys.into_iter()
            .filter_map(|(user_id, json)| Some((user_id, serde_json::from_slice(&json).ok()?)))
            .collect()
    };
    let mut master_keys = keys_of(response.master_keys);
    let mut self_signing_keys = keys_of(response.self_signing_keys);
    let user_signing_keys = keys_of(response.user_signing_keys);
    // Other servers' users' cross-signing keys come with their devices.
    for (server, answer) in &answers {
        merge_remote(&mut device_keys, server, answer, "device_keys");
        merge_remote(&mut master_keys, server, answer, "master_keys");
        merge_remote(&mut self_signing_keys, server, answer, "self_signing_keys");
    }
    // The requester's signatures of their master keys, kept here.
    for (user_id, json) in response.remote_master_signatures {
        let (Some(master), Ok(Value::Object(by_key))) = (
            master_keys.get_mut(&user_id),
            serde_json::from_slice::<Value>(&json),
        ) else {
            continue;
        };
        for (public, signatures) in by_key {
            if master["keys"][format!("ed25519:{public}")] != public.as_str() {
                continue;
            }
            for (key_id, signature) in signatures.as_object().into_iter().flatten() {
                add_signature(master, &device.user_id, key_id, signature.clone());
            }
        }
    }
    respond(json!({
        "device_keys": device_keys,
        "master_keys": master_keys,
        "self_signing_keys": self_signing_keys,
        "user_signing_keys": user_signing_keys,
        "failures": failures,
    }))
}

#[derive(Deserialize)]
struct SigningKeysBody {
    master_key: Option<Value>,
    self_signing_key: Option<Value>,
    user_signing_key: Option<Value>,
    auth: Option<Value>,
}

/// `POST /keys/device_signing/upload`: the user's cross-signing keys.
/// Setting up the first master key, or uploading the same keys again,
/// needs nothing more; replacing keys needs the user's password.
pub(crate) async fn upload_signing_keys(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: SigningKeysBody = parse_json(&body)?;
    let json_of = |key: &Option<Value>| -> Result<Option<Vec<u8>>, MatrixError> {
        match key {
            None | Some(Value::Null) => Ok(None),
            Some(key @ Value::Object(_)) => Ok(Some(key.to_string().into_bytes())),
            Some(_) => Err(MatrixError::bad_json("a key must be an object")),
        }
    };
    let mut request = pb::UploadSigningKeysRequest {
        user_id: device.user_id.clone(),
        master_key_json: json_of(&body.master_key)?,
        self_signing_key_json: json_of(&body.self_signing_key)?,
        user_signing_key_json: json_of(&body.user_signing_key)?,
        reauthenticated: false,
    };
    // Authentication given is checked first, whether or not it is needed.
    if body.auth.is_some() {
        if let Err(response) = super::uia::password(&api, &device.user_id, body.auth.as_ref()).await
        {
            return Ok(response);
        }
        request.reauthenticated = true;
    }
    let answer = api.keys.upload_signing_keys(request).await?;
    if answer.needs_reauthentication {
        return Ok(super::uia::challenge("m.login.password", None, None));
    }
    respond(json!({}))
}

/// `POST /keys/signatures/upload`: signatures of the user's devices and
/// keys, and of other users' master keys; each refused one is listed in
/// `failures`.
pub(crate) async fn upload_signatures(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let signed: Map<String, Value> = parse_json(&body)?;
    for user_id in signed.keys() {
        if ruma::UserId::parse(user_id.as_str()).is_err() {
            return Err(MatrixError::invalid_param(format!(
                "invalid user ID {user_id}"
            )));
        }
    }
    let answer = api
        .keys
        .upload_signatures(pb::UploadSignaturesRequest {
            user_id: device.user_id,
            signed_json: Value::Object(signed).to_string().into_bytes(),
        })
        .await?;
    let failures: Value =
        serde_json::from_slice(&answer.failures_json).unwrap_or_else(|_| json!({}));
    respond(json!({ "failures": failures }))
}

pub(crate) async fn claim(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(_): UserOrGuest,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: ClaimBody = parse_json(&body)?;
    let (local, remote) = local_users(&api.server_name, body.one_time_keys)?;
    if local.len() + remote.values().map(BTreeMap::len).sum::<usize>() > MAX_TARGETS {
        return Err(MatrixError::invalid_param("too many users"));
    }
    let (answers, failures) = ask_remote_servers(
        &api,
        remote,
        body.timeout,
        true,
        |users| json!({ "one_time_keys": users }),
    )
    .await;
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
    for (server, answer) in &answers {
        merge_remote(&mut one_time_keys, server, answer, "one_time_keys");
    }
    respond(json!({ "one_time_keys": one_time_keys, "failures": failures }))
}
