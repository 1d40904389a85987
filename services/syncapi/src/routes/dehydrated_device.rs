//! `POST /dehydrated_device/{deviceId}/events` (MSC3814): the to-device
//! messages a user's dehydrated device collected, a batch at a time, for
//! the login rehydrating it. Nothing is deleted as it is read (another
//! device may start over); an empty batch means all were read.

use std::sync::Arc;

use axum::extract::{Path, State};
use ganglion_api::proto::userapi::GetDehydratedDeviceRequest;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, respond};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SyncService;
use crate::routes::sync_streams::to_device_event;

/// Messages per batch.
const BATCH: u32 = 100;

#[derive(Deserialize, Default)]
struct Body {
    next_batch: Option<String>,
}

pub(crate) async fn events(
    State(service): State<Arc<SyncService>>,
    User(device): User,
    Path(device_id): Path<String>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: Body = if body.is_empty() {
        Body::default()
    } else {
        parse_json(&body)?
    };
    let after = match body.next_batch.as_deref() {
        None => None,
        Some(token) => match token.strip_prefix('d') {
            // Nothing was read yet.
            Some("") => None,
            Some(offset) => Some(
                offset
                    .parse::<u64>()
                    .map_err(|_| MatrixError::invalid_param("unknown next_batch token"))?,
            ),
            None => return Err(MatrixError::invalid_param("unknown next_batch token")),
        },
    };
    let dehydrated = match service
        .users
        .get_dehydrated_device(GetDehydratedDeviceRequest {
            user_id: device.user_id.clone(),
        })
        .await
    {
        Ok(found) => Some(found.device_id),
        Err(ganglion_api::ApiError::NotFound(_)) => None,
        Err(error) => return Err(error.into()),
    };
    if dehydrated.as_deref() != Some(device_id.as_str()) {
        return Err(MatrixError::forbidden("not the user's dehydrated device"));
    }
    let messages = service
        .storage
        .to_device_after(&device.user_id, &device_id, after, BATCH)
        .await?;
    let next = messages.last().map(|m| m.offset).or(after);
    let events: Vec<Value> = messages.into_iter().map(to_device_event).collect();
    respond(json!({
        "events": events,
        "next_batch": next.map_or_else(|| "d".to_owned(), |offset| format!("d{offset}")),
    }))
}
