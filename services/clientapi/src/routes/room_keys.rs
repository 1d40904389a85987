//! Server-side key backups (`/room_keys/version…` and `/room_keys/keys…`),
//! kept by the keyserver: versions that only grow, keys stored in the
//! current version (a better key replacing a worse one), `etag` and
//! `count` after every change, and 403 `M_WRONG_ROOM_KEYS_VERSION` with
//! `current_version` for a write to another version.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use ganglion_api::keys::KeyBackupData;
use ganglion_api::proto::keyserver as pb;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{
    MatrixBody, MatrixResult, json_response, parse_json, parse_query, respond,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::ClientApi;

#[derive(Deserialize)]
struct VersionBody {
    algorithm: String,
    auth_data: Map<String, Value>,
    version: Option<String>,
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<String>,
}

fn version_json(version: pb::BackupVersion) -> Value {
    json!({
        "version": version.version,
        "algorithm": version.algorithm,
        "auth_data": serde_json::from_slice::<Value>(&version.auth_data_json)
            .unwrap_or_else(|_| json!({})),
        "count": version.count,
        "etag": version.etag,
    })
}

/// `POST /room_keys/version`: a new backup version.
pub(crate) async fn create_version(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: VersionBody = parse_json(&body)?;
    let created = api
        .keys
        .create_backup_version(pb::CreateBackupVersionRequest {
            user_id: device.user_id,
            algorithm: body.algorithm,
            auth_data_json: Value::Object(body.auth_data).to_string().into_bytes(),
        })
        .await
        .map_err(MatrixError::from)?;
    respond(json!({ "version": created.version }))
}

/// `GET /room_keys/version`: the latest version.
pub(crate) async fn latest_version(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
) -> MatrixResult {
    get_version(&api, device.user_id, None).await
}

async fn get_version(api: &ClientApi, user_id: String, version: Option<String>) -> MatrixResult {
    let found = api
        .keys
        .get_backup_version(pb::GetBackupVersionRequest { user_id, version })
        .await
        .map_err(MatrixError::from)?;
    respond(version_json(found))
}

/// `GET /room_keys/version/{version}`.
pub(crate) async fn version(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(version): Path<String>,
) -> MatrixResult {
    get_version(&api, device.user_id, Some(version)).await
}

/// `PUT /room_keys/version/{version}`: only `auth_data` changes.
pub(crate) async fn update_version(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(version): Path<String>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: VersionBody = parse_json(&body)?;
    if body.version.as_ref().is_some_and(|v| *v != version) {
        return Err(MatrixError::invalid_param(
            "The version in the body is not the one in the path",
        ));
    }
    api.keys
        .update_backup_version(pb::UpdateBackupVersionRequest {
            user_id: device.user_id,
            version,
            algorithm: body.algorithm,
            auth_data_json: Value::Object(body.auth_data).to_string().into_bytes(),
        })
        .await
        .map_err(MatrixError::from)?;
    respond(json!({}))
}

/// `DELETE /room_keys/version/{version}`: the version and its keys.
pub(crate) async fn delete_version(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(version): Path<String>,
) -> MatrixResult {
    api.keys
        .delete_backup_version(pb::BackupVersionRef {
            user_id: device.user_id,
            version,
        })
        .await
        .map_err(MatrixError::from)?;
    respond(json!({}))
}

/// The `version` query parameter the keys endpoints require.
fn required_version(uri: &Uri) -> Result<String, MatrixError> {
    let query: VersionQuery = parse_query(uri)?;
    query
        .version
        .ok_or_else(|| MatrixError::missing_param("version is required"))
}

/// Where keys go or come from: every room, one room, one session (the
/// path's parameters, none for every room).
#[derive(Deserialize, Default)]
pub(crate) struct Scope {
    room_id: Option<String>,
    session_id: Option<String>,
}

fn scope_of(path: Option<Path<Scope>>) -> Scope {
    path.map(|Path(scope)| scope).unwrap_or_default()
}

#[derive(Deserialize)]
struct RoomBody {
    sessions: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct AllBody {
    rooms: BTreeMap<String, RoomBody>,
}

fn backup_key(room_id: &str, session_id: &str, data: Value) -> Result<pb::BackupKey, MatrixError> {
    let json = data.to_string();
    KeyBackupData::parse(json.as_bytes())
        .map_err(|e| MatrixError::bad_json(format!("a key of {session_id}: {e}")))?;
    Ok(pb::BackupKey {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        key_json: json.into_bytes(),
    })
}

async fn put_keys(
    api: &ClientApi,
    user_id: String,
    version: String,
    keys: Vec<pb::BackupKey>,
) -> MatrixResult {
    let stored = api
        .keys
        .put_backup_keys(pb::PutBackupKeysRequest {
            user_id,
            version,
            keys,
        })
        .await
        .map_err(MatrixError::from)?;
    if let Some(current) = stored.current_version {
        return Ok(json_response(
            StatusCode::FORBIDDEN,
            &json!({
                "errcode": "M_WRONG_ROOM_KEYS_VERSION",
                "error": "Wrong backup version.",
                "current_version": current,
            }),
        ));
    }
    respond(json!({ "etag": stored.etag, "count": stored.count }))
}

/// `PUT /room_keys/keys[/{roomId}[/{sessionId}]]`: every room's keys,
/// one room's, or one session's.
pub(crate) async fn put(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    path: Option<Path<Scope>>,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let version = required_version(&uri)?;
    let room_keys = |room_id: &str, room: RoomBody| {
        room.sessions
            .into_iter()
            .map(|(session_id, data)| backup_key(room_id, &session_id, data))
            .collect::<Result<Vec<_>, _>>()
    };
    let keys = match scope_of(path) {
        Scope {
            room_id: Some(room_id),
            session_id: Some(session_id),
        } => vec![backup_key(&room_id, &session_id, parse_json(&body)?)?],
        Scope {
            room_id: Some(room_id),
            session_id: None,
        } => room_keys(&room_id, parse_json(&body)?)?,
        Scope { room_id: None, .. } => {
            let body: AllBody = parse_json(&body)?;
            let mut keys = Vec::new();
            for (room_id, room) in body.rooms {
                keys.extend(room_keys(&room_id, room)?);
            }
            keys
        }
    };
    put_keys(&api, device.user_id, version, keys).await
}

/// `GET /room_keys/keys[/{roomId}[/{sessionId}]]`.
pub(crate) async fn get(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    path: Option<Path<Scope>>,
    uri: Uri,
) -> MatrixResult {
    get_keys(&api, device.user_id, &uri, scope_of(path)).await
}

/// `DELETE /room_keys/keys[/{roomId}[/{sessionId}]]`.
pub(crate) async fn delete(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    path: Option<Path<Scope>>,
    uri: Uri,
) -> MatrixResult {
    delete_keys(&api, device.user_id, &uri, scope_of(path)).await
}

async fn get_keys(api: &ClientApi, user_id: String, uri: &Uri, scope: Scope) -> MatrixResult {
    let version = required_version(uri)?;
    let found = api
        .keys
        .get_backup_keys(pb::BackupKeysRef {
            user_id,
            version,
            room_id: scope.room_id.clone(),
            session_id: scope.session_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    let key_of = |key: &pb::BackupKey| {
        serde_json::from_slice::<Value>(&key.key_json).unwrap_or_else(|_| json!({}))
    };
    if scope.session_id.is_some() {
        let key = found
            .keys
            .first()
            .ok_or_else(|| MatrixError::not_found("Key not found"))?;
        return respond(key_of(key));
    }
    let mut rooms: Map<String, Value> = Map::new();
    for key in &found.keys {
        let room = rooms
            .entry(key.room_id.clone())
            .or_insert_with(|| json!({ "sessions": {} }));
        room["sessions"][&key.session_id] = key_of(key);
    }
    if let Some(room_id) = scope.room_id {
        return respond(
            rooms
                .remove(&room_id)
                .unwrap_or_else(|| json!({ "sessions": {} })),
        );
    }
    respond(json!({ "rooms": rooms }))
}

async fn delete_keys(api: &ClientApi, user_id: String, uri: &Uri, scope: Scope) -> MatrixResult {
    let version = required_version(uri)?;
    let done = api
        .keys
        .delete_backup_keys(pb::BackupKeysRef {
            user_id,
            version,
            room_id: scope.room_id,
            session_id: scope.session_id,
        })
        .await
        .map_err(MatrixError::from)?;
    respond(json!({ "etag": done.etag, "count": done.count }))
}
