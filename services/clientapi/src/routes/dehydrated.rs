//! Dehydrated devices (MSC3814, `/unstable/org.matrix.msc3814.v1/`):
//! `PUT`, `GET` and `DELETE /dehydrated_device`. A user keeps at most one:
//! a device without an access token, its end-to-end keys uploaded with it,
//! which collects to-device messages (room keys) while the user has no
//! other device, for the next login to read (`POST
//! /dehydrated_device/{deviceId}/events`, served by the syncapi). A new one
//! replaces the old, whose keys go with it.

use std::sync::Arc;

use axum::extract::State;
use ganglion_api::proto::keyserver::UploadRequest;
use ganglion_api::proto::userapi as pb;
use ganglion_api::users::User;
use ganglion_base::http::{MatrixBody, MatrixResult, ok_json, parse_json};
use ganglion_base::{MatrixError, limits};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::BodyCheck;
use crate::ClientApi;

/// The longest display name taken.
const MAX_DISPLAY_NAME: usize = 1024;

#[derive(Deserialize)]
pub(crate) struct PutBody {
    device_id: Option<String>,
    device_data: Option<Value>,
    initial_device_display_name: Option<String>,
    device_keys: Option<Map<String, Value>>,
    one_time_keys: Option<Map<String, Value>>,
    fallback_keys: Option<Map<String, Value>>,
}

/// A set of keys as the keyserver takes it (nothing when there are none).
fn keys_json(keys: Option<Map<String, Value>>) -> Vec<u8> {
    match keys {
        Some(keys) if !keys.is_empty() => Value::Object(keys).to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// `PUT /dehydrated_device`: the device, its data and its keys, in one.
pub(crate) async fn put(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let raw: Value = parse_json(&body)?;
    super::keys::UploadedKeyIds::check(&raw)?;
    let body: PutBody = serde_json::from_value(raw)
        .map_err(|e| MatrixError::bad_json(format!("dehydrated device: {e}")))?;
    let device_id = body
        .device_id
        .ok_or_else(|| MatrixError::missing_param("device_id is required"))?;
    limits::opaque_id("device_id", &device_id)?;
    let device_data = match body.device_data {
        Some(data @ Value::Object(_)) => data,
        Some(_) => return Err(MatrixError::bad_json("device_data must be an object")),
        None => return Err(MatrixError::missing_param("device_data is required")),
    };
    let device_keys = body
        .device_keys
        .ok_or_else(|| MatrixError::missing_param("device_keys is required"))?;
    if body
        .initial_device_display_name
        .as_ref()
        .is_some_and(|name| name.len() > MAX_DISPLAY_NAME)
    {
        return Err(MatrixError::invalid_param(
            "initial_device_display_name is too long",
        ));
    }
    let user_id = device.user_id;
    let put = api
        .users
        .put_dehydrated_device(pb::PutDehydratedDeviceRequest {
            user_id: user_id.clone(),
            device_id: device_id.clone(),
            device_data_json: device_data.to_string().into_bytes(),
            display_name: body.initial_device_display_name,
        })
        .await
        .map_err(MatrixError::from)?;
    if !put.replaced_device_id.is_empty() {
        super::account::forget_device_keys(&api, &user_id, vec![put.replaced_device_id]).await;
    }
    let uploaded = api
        .keys
        .upload(UploadRequest {
            user_id: user_id.clone(),
            device_id: device_id.clone(),
            device_keys_json: Some(Value::Object(device_keys).to_string().into_bytes()),
            one_time_keys_json: keys_json(body.one_time_keys),
            fallback_keys_json: keys_json(body.fallback_keys),
        })
        .await;
    if let Err(error) = uploaded {
        // Keys the keyserver refuses: no device without them.
        if let Err(undo) = api
            .users
            .delete_dehydrated_device(pb::GetDehydratedDeviceRequest {
                user_id: user_id.clone(),
            })
            .await
        {
            tracing::warn!(%undo, user_id, "a dehydrated device without keys stays");
        }
        super::account::forget_device_keys(&api, &user_id, vec![device_id]).await;
        return Err(error.into());
    }
    Ok(ok_json(json!({ "device_id": device_id })))
}

/// `GET /dehydrated_device`: 404 `M_NOT_FOUND` when there is none.
pub(crate) async fn get(State(api): State<Arc<ClientApi>>, User(device): User) -> MatrixResult {
    let found = api
        .users
        .get_dehydrated_device(pb::GetDehydratedDeviceRequest {
            user_id: device.user_id,
        })
        .await
        .map_err(MatrixError::from)?;
    let device_data: Value = serde_json::from_slice(&found.device_data_json)
        .map_err(|e| MatrixError::unknown(format!("stored device data: {e}")))?;
    Ok(ok_json(json!({
        "device_id": found.device_id,
        "device_data": device_data,
    })))
}

/// `DELETE /dehydrated_device`: the device and its keys go; 404
/// `M_NOT_FOUND` when there is none.
pub(crate) async fn delete(State(api): State<Arc<ClientApi>>, User(device): User) -> MatrixResult {
    let deleted = api
        .users
        .delete_dehydrated_device(pb::GetDehydratedDeviceRequest {
            user_id: device.user_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    super::account::forget_device_keys(&api, &device.user_id, vec![deleted.device_id.clone()])
        .await;
    Ok(ok_json(json!({ "device_id": deleted.device_id })))
}
