//! A user's devices: `GET /devices`, `GET/PUT/DELETE /devices/{deviceId}`
//! and `POST /delete_devices`. Deleting needs the password again
//! (User-Interactive Auth); a deleted device's access token stops working
//! at once, its end-to-end keys are removed and the users who share a
//! room with its owner hear of the change (as on logout).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_api::proto::userapi as pb;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, ok_json, parse_json};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::ClientApi;

/// The longest device ID or display name taken.
const MAX_FIELD: usize = 1024;

/// A device as the spec's `Device` shows it.
fn device_json(device: pb::DeviceInfo) -> Value {
    let mut out = Map::new();
    out.insert("device_id".into(), json!(device.device_id));
    if let Some(name) = device.display_name {
        out.insert("display_name".into(), json!(name));
    }
    // Null until the device is first seen, as Synapse answers (some
    // clients, matrix-nio among them, require the keys).
    out.insert("last_seen_ip".into(), json!(device.last_seen_ip));
    out.insert("last_seen_ts".into(), json!(device.last_seen_ts));
    if let Some(agent) = device.last_seen_user_agent {
        // Synapse's name for it, which clients show.
        out.insert("last_seen_user_agent".into(), json!(agent));
    }
    Value::Object(out)
}

fn no_such_device() -> MatrixError {
    MatrixError::not_found("No such device")
}

/// `GET /devices`.
pub(crate) async fn list(State(api): State<Arc<ClientApi>>, User(device): User) -> MatrixResult {
    let devices = api
        .users
        .get_devices(pb::GetDevicesRequest {
            user_id: device.user_id,
            device_id: String::new(),
        })
        .await
        .map_err(MatrixError::from)?;
    Ok(ok_json(json!({
        "devices": devices.devices.into_iter().map(device_json).collect::<Vec<_>>()
    })))
}

/// `GET /devices/{deviceId}`: one of the user's devices, else 404.
pub(crate) async fn get(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(device_id): Path<String>,
) -> MatrixResult {
    if device_id.is_empty() || device_id.len() > MAX_FIELD {
        return Err(no_such_device());
    }
    let found = api
        .users
        .get_devices(pb::GetDevicesRequest {
            user_id: device.user_id,
            device_id,
        })
        .await
        .map_err(MatrixError::from)?;
    let device = found
        .devices
        .into_iter()
        .next()
        .ok_or_else(no_such_device)?;
    Ok(ok_json(device_json(device)))
}

#[derive(Deserialize)]
struct Rename {
    display_name: Option<String>,
}

/// `PUT /devices/{deviceId}`: renames it (no `display_name`: the name
/// stays); 404 for a device that is not the user's.
pub(crate) async fn rename(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(device_id): Path<String>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: Rename = parse_json(&body)?;
    if device_id.is_empty() || device_id.len() > MAX_FIELD {
        return Err(no_such_device());
    }
    if body
        .display_name
        .as_ref()
        .is_some_and(|name| name.len() > MAX_FIELD)
    {
        return Err(MatrixError::invalid_param("display_name is too long"));
    }
    match body.display_name {
        // Renamed: the userapi answers NotFound for no such device.
        Some(display_name) => {
            api.users
                .rename_device(pb::RenameDeviceRequest {
                    user_id: device.user_id.clone(),
                    device_id: device_id.clone(),
                    display_name: Some(display_name),
                })
                .await
                .map_err(MatrixError::from)?;
            // Those who share a room hear of it, and fetch the new name.
            if let Err(error) = api
                .keys
                .device_changed(ganglion_api::proto::keyserver::DeviceChangedRequest {
                    user_id: device.user_id,
                    device_id,
                })
                .await
            {
                tracing::warn!(%error, "a renamed device was not announced");
            }
        }
        // Nothing to change, but the device must be the user's.
        None => {
            let found = api
                .users
                .get_devices(pb::GetDevicesRequest {
                    user_id: device.user_id,
                    device_id,
                })
                .await
                .map_err(MatrixError::from)?;
            if found.devices.is_empty() {
                return Err(no_such_device());
            }
        }
    }
    Ok(ok_json(json!({})))
}

#[derive(Deserialize)]
struct Delete {
    auth: Option<Value>,
}

#[derive(Deserialize)]
struct DeleteMany {
    devices: Vec<String>,
    auth: Option<Value>,
}

/// Deletes `device_ids` of the user once the password is given again.
async fn delete_after_auth(
    api: &ClientApi,
    user_id: &str,
    operation: (&str, &str),
    device_ids: Vec<String>,
    auth: Option<&Value>,
) -> MatrixResult {
    if let Err(challenge) = super::uia::password(api, user_id, operation, auth).await {
        return Ok(challenge);
    }
    let deleted = api
        .users
        .delete_devices(pb::DeleteDevicesRequest {
            user_id: user_id.to_owned(),
            device_ids,
        })
        .await
        .map_err(MatrixError::from)?
        .deleted;
    if !deleted.is_empty() {
        super::account::forget_device_keys(api, user_id, deleted).await;
    }
    Ok(ok_json(json!({})))
}

/// `DELETE /devices/{deviceId}` (User-Interactive Auth).
pub(crate) async fn delete(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Path(device_id): Path<String>,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: Delete = parse_json(&body)?;
    if device_id.is_empty() || device_id.len() > MAX_FIELD {
        return Err(no_such_device());
    }
    delete_after_auth(
        &api,
        &device.user_id,
        ("DELETE", uri.path()),
        vec![device_id],
        body.auth.as_ref(),
    )
    .await
}

/// `POST /delete_devices` (User-Interactive Auth): devices that do not
/// exist are passed over.
pub(crate) async fn delete_many(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: DeleteMany = parse_json(&body)?;
    if body.devices.len() > 1000 || body.devices.iter().any(|d| d.len() > MAX_FIELD) {
        return Err(MatrixError::invalid_param(
            "devices: at most 1000 device IDs",
        ));
    }
    delete_after_auth(
        &api,
        &device.user_id,
        ("POST", uri.path()),
        body.devices,
        body.auth.as_ref(),
    )
    .await
}
