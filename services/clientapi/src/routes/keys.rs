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
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, respond, respond_ruma};
use ruma::OneTimeKeyAlgorithm;
use ruma::api::client::keys::{claim_keys, get_keys, upload_keys, upload_signatures};
use ruma::serde::Raw;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{BodyCheck, Checked};
use crate::ClientApi;

/// The most users (or devices) one query or claim may name.
const MAX_TARGETS: usize = 1_000;

/// The user IDs a request names as the keys of an object (`field`'s, or
/// the body's own when `field` is empty), checked before ruma parses the
/// body: a malformed one is 400 `M_INVALID_PARAM`, where ruma's parsing
/// would answer `M_BAD_JSON`.
fn check_user_keys(body: &Value, field: &str) -> MatrixResult<()> {
    let object = if field.is_empty() {
        body.as_object()
    } else {
        body[field].as_object()
    };
    for user_id in object.into_iter().flat_map(Map::keys) {
        if ruma::UserId::parse(user_id.as_str()).is_err() {
            return Err(MatrixError::invalid_param(format!(
                "invalid user ID {user_id}"
            )));
        }
    }
    Ok(())
}

/// `/keys/query`'s users.
pub(crate) struct QueriedUsers;

impl BodyCheck for QueriedUsers {
    fn check(body: &Value) -> MatrixResult<()> {
        check_user_keys(body, "device_keys")
    }
}

/// `/keys/claim`'s users.
pub(crate) struct ClaimedUsers;

impl BodyCheck for ClaimedUsers {
    fn check(body: &Value) -> MatrixResult<()> {
        check_user_keys(body, "one_time_keys")
    }
}

/// `/keys/signatures/upload`'s users.
pub(crate) struct SignedUsers;

impl BodyCheck for SignedUsers {
    fn check(body: &Value) -> MatrixResult<()> {
        check_user_keys(body, "")
    }
}

/// `/keys/upload`'s key IDs, `<algorithm>:<key ID>` both parts not empty,
/// checked before ruma parses the body: the keyserver's 400
/// `M_INVALID_PARAM` for any other, as before (ruma's parsing would answer
/// `M_BAD_JSON`).
pub(crate) struct UploadedKeyIds;

impl BodyCheck for UploadedKeyIds {
    fn check(body: &Value) -> MatrixResult<()> {
        for field in ["one_time_keys", "fallback_keys"] {
            for key_id in body[field].as_object().into_iter().flat_map(Map::keys) {
                let (algorithm, id) = key_id.split_once(':').unwrap_or_default();
                if algorithm.is_empty() || id.is_empty() {
                    return Err(MatrixError::invalid_param(format!(
                        "{field}: invalid key {key_id}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Keys as the client sent them, each a JSON object or string (the
/// keyserver checks which), as one JSON object; nothing when there are none.
fn keys_json<K: ToString>(keys: BTreeMap<K, Raw<impl Sized>>) -> MatrixResult<Vec<u8>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut map = Map::new();
    for (key_id, key) in keys {
        let key: Value = serde_json::from_str(key.json().get())
            .map_err(|e| MatrixError::bad_json(format!("a key: {e}")))?;
        map.insert(key_id.to_string(), key);
    }
    Ok(Value::Object(map).to_string().into_bytes())
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
    Checked(request, _): Checked<upload_keys::v3::Request, UploadedKeyIds>,
) -> MatrixResult {
    let device_keys_json = match &request.device_keys {
        None => None,
        Some(keys) => {
            let keys: Map<String, Value> = serde_json::from_str(keys.json().get())
                .map_err(|e| MatrixError::bad_json(format!("device_keys: {e}")))?;
            Some(Value::Object(keys).to_string().into_bytes())
        }
    };
    let counts = api
        .keys
        .upload(pb::UploadRequest {
            user_id: device.user_id.clone(),
            device_id: device.device_id.clone(),
            device_keys_json,
            one_time_keys_json: keys_json(request.one_time_keys)?,
            fallback_keys_json: keys_json(request.fallback_keys)?,
        })
        .await?;
    let counts = counts
        .one_time_key_counts
        .into_iter()
        .map(|(algorithm, count)| {
            (
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                ruma::UInt::new_saturating(count),
            )
        })
        .collect();
    respond_ruma(upload_keys::v3::Response::new(counts))
}

// Keeps its own answer: ruma's leaves out `failures` and the key maps when
// they are empty, which we have always sent (clients and tests read
// `failures` as an object).
pub(crate) async fn query(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Checked(request, _): Checked<get_keys::v3::Request, QueriedUsers>,
) -> MatrixResult {
    if request.device_keys.len() > MAX_TARGETS {
        return Err(MatrixError::invalid_param("too many users"));
    }
    let timeout = request.timeout.map(|t| t.as_millis() as u64);
    let device_keys = request
        .device_keys
        .into_iter()
        .map(|(user_id, device_ids)| {
            let device_ids = device_ids.into_iter().map(|d| d.to_string()).collect();
            (user_id.to_string(), device_ids)
        })
        .collect::<BTreeMap<String, Vec<String>>>();
    let (local, remote) = local_users(&api.server_name, device_keys)?;
    let remote_users: Vec<String> = remote.values().flat_map(|u| u.keys().cloned()).collect();
    let (answers, failures) = ask_remote_servers(
        &api,
        remote,
        timeout,
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
    name_local_devices(&api, &mut device_keys).await;
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

// Keeps its own body: its `auth` goes to our user-interactive
// authentication as sent, as for `/register` (ruma's type would parse it
// into its own UIA types first).
/// Our users' devices in a `/keys/query` answer get the names their owners
/// gave them (`unsigned.device_display_name`, as the spec's
/// `DeviceInformation` has it); other servers' do not carry ours.
async fn name_local_devices(api: &ClientApi, device_keys: &mut Map<String, Value>) {
    let suffix = format!(":{}", api.server_name);
    let local: Vec<String> = device_keys
        .keys()
        .filter(|user_id| user_id.ends_with(&suffix))
        .cloned()
        .collect();
    let named = futures::future::join_all(local.into_iter().map(|user_id| async move {
        let devices = api
            .users
            .get_devices(ganglion_api::proto::userapi::GetDevicesRequest {
                user_id: user_id.clone(),
                device_id: String::new(),
            })
            .await;
        (user_id, devices)
    }))
    .await;
    for (user_id, devices) in named {
        let Ok(devices) = devices else {
            continue;
        };
        let Some(Value::Object(keys)) = device_keys.get_mut(&user_id) else {
            continue;
        };
        for device in devices.devices {
            if let (Some(name), Some(Value::Object(key))) =
                (device.display_name, keys.get_mut(&device.device_id))
            {
                let unsigned = key
                    .entry("unsigned")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(unsigned) = unsigned {
                    unsigned.insert("device_display_name".into(), Value::String(name));
                }
            }
        }
    }
}

/// `POST /keys/device_signing/upload`: the user's cross-signing keys.
/// Setting up the first master key, or uploading the same keys again,
/// needs nothing more; replacing keys needs the user's password.
pub(crate) async fn upload_signing_keys(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    uri: axum::http::Uri,
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
        if let Err(response) = super::uia::password(
            &api,
            &device.user_id,
            ("POST", uri.path()),
            body.auth.as_ref(),
        )
        .await
        {
            return Ok(response);
        }
        request.reauthenticated = true;
    }
    let answer = api.keys.upload_signing_keys(request).await?;
    if answer.needs_reauthentication {
        let operation = super::uia::Operation {
            method: "POST",
            path: uri.path(),
            user_id: &device.user_id,
            params: json!({}),
        };
        return Ok(
            super::uia::challenge_in(&api, "m.login.password", None, &operation, None).await,
        );
    }
    respond(json!({}))
}

/// `POST /keys/signatures/upload`: signatures of the user's devices and
/// keys, and of other users' master keys; each refused one is listed in
/// `failures`.
///
/// Its answer is our own: ruma's leaves out `failures` when empty, which we
/// have always sent as an object.
pub(crate) async fn upload_signatures(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Checked(request, _): Checked<upload_signatures::v3::Request, SignedUsers>,
) -> MatrixResult {
    // Each user's signed keys as the client sent them.
    let signed = serde_json::to_value(&request.signed_keys)
        .map_err(|e| MatrixError::bad_json(format!("signed keys: {e}")))?;
    let answer = api
        .keys
        .upload_signatures(pb::UploadSignaturesRequest {
            user_id: device.user_id,
            signed_json: signed.to_string().into_bytes(),
        })
        .await?;
    let failures: Value =
        serde_json::from_slice(&answer.failures_json).unwrap_or_else(|_| json!({}));
    respond(json!({ "failures": failures }))
}

// Keeps its own answer, as `/keys/query` does (ruma's leaves out empty
// `failures`).
pub(crate) async fn claim(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(_): UserOrGuest,
    Checked(request, _): Checked<claim_keys::v3::Request, ClaimedUsers>,
) -> MatrixResult {
    let timeout = request.timeout.map(|t| t.as_millis() as u64);
    let one_time_keys = request
        .one_time_keys
        .into_iter()
        .map(|(user_id, devices)| {
            let devices = devices
                .into_iter()
                .map(|(device_id, algorithm)| (device_id.to_string(), algorithm.to_string()))
                .collect();
            (user_id.to_string(), devices)
        })
        .collect::<BTreeMap<String, BTreeMap<String, String>>>();
    let (local, remote) = local_users(&api.server_name, one_time_keys)?;
    if local.len() + remote.values().map(BTreeMap::len).sum::<usize>() > MAX_TARGETS {
        return Err(MatrixError::invalid_param("too many users"));
    }
    let (answers, failures) = ask_remote_servers(
        &api,
        remote,
        timeout,
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
