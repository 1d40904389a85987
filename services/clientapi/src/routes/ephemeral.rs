//! Typing notices, read receipts and read markers: each goes out on its
//! `edu.*` topic (the fully-read marker is room account data), and the
//! answer waits until the syncapi has it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use ganglion_api::proto::roomserver as rs_pb;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::proto::userapi as user_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, Ruma, parse_json, respond, respond_ruma};
use ganglion_base::limits;
use ruma::api::client::read_marker::set_read_marker;
use ruma::api::client::receipt::create_receipt;
use ruma::events::receipt::ReceiptThread;
use serde::Deserialize;
use serde_json::json;

use crate::ClientApi;

/// The longest a typing notice lasts without being renewed.
const MAX_TYPING: Duration = Duration::from_secs(120);
/// How long one lasts when the client names no timeout.
const DEFAULT_TYPING: Duration = Duration::from_secs(30);

/// The typing notices this process sent and has yet to end: a notice that
/// lapses is ended by an explicit "stopped" record, unless renewed first.
#[derive(Default)]
pub(crate) struct TypingTimers {
    /// (room, user) → generation of the latest notice.
    latest: Mutex<HashMap<(String, String), u64>>,
}

impl TypingTimers {
    fn bump(&self, key: &(String, String)) -> u64 {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let generation = latest.get(key).copied().unwrap_or(0) + 1;
        latest.insert(key.clone(), generation);
        generation
    }

    /// Whether `generation` is still the latest; forgets it if so.
    fn lapse(&self, key: &(String, String), generation: u64) -> bool {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.get(key) == Some(&generation) {
            latest.remove(key);
            true
        } else {
            false
        }
    }
}

use ganglion_base::clock::now_ms;

impl ClientApi {
    /// `M_FORBIDDEN` unless `user_id` is joined to the room.
    async fn require_joined(&self, room_id: &str, user_id: &str) -> Result<(), MatrixError> {
        if self.membership_of(room_id, user_id).await?.membership != "join" {
            return Err(MatrixError::forbidden("You are not in this room"));
        }
        Ok(())
    }

    async fn publish_typing(
        &self,
        room_id: &str,
        user_id: &str,
        typing: bool,
        expires_at_ms: i64,
    ) -> Result<ganglion_api::proto::common::LogPosition, MatrixError> {
        Ok(produce(
            &*self.log,
            &self.topics.edu_typing,
            room_id,
            &topic_pb::TypingEdu {
                version: PAYLOAD_VERSION,
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                typing,
                expires_at_ms,
            },
        )
        .await?)
    }
}

#[derive(Deserialize)]
pub(crate) struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

/// `PUT /rooms/{roomId}/typing/{userId}`.
pub(crate) async fn typing(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Path((room_id, user_id)): Path<(String, String)>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: TypingBody = parse_json(&body)?;
    limits::room_id(&room_id)?;
    if device.user_id != user_id {
        return Err(MatrixError::forbidden("You may only set your own typing"));
    }
    api.require_joined(&room_id, &user_id).await?;
    let key = (room_id.clone(), user_id.clone());
    let generation = api.typing_timers.bump(&key);
    let lasts = body
        .timeout
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TYPING)
        .min(MAX_TYPING);
    let position = if body.typing {
        let expires_at = now_ms() + lasts.as_millis() as i64;
        let position = api
            .publish_typing(&room_id, &user_id, true, expires_at)
            .await?;
        let timer_api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(lasts).await;
            if timer_api.typing_timers.lapse(&key, generation)
                && let Err(error) = timer_api.publish_typing(&key.0, &key.1, false, 0).await
            {
                tracing::warn!(?error, "could not end a lapsed typing notice");
            }
        });
        position
    } else {
        api.typing_timers.lapse(&key, generation);
        api.publish_typing(&room_id, &user_id, false, 0).await?
    };
    api.read_your_writes(&device.user_id, Some(position)).await;
    respond(json!({}))
}

/// A thread ID as receipts take it: `main` or an event ID.
fn valid_thread_id(thread_id: &str) -> bool {
    thread_id == "main" || limits::event_id(thread_id).is_ok()
}

impl ClientApi {
    /// Checks and publishes one receipt or marker of `receipt_type` for
    /// `event_id`; answers the position to wait for.
    async fn mark(
        &self,
        device: &user_pb::Device,
        room_id: &str,
        receipt_type: &str,
        event_id: &str,
        thread_id: Option<&str>,
    ) -> Result<ganglion_api::proto::common::LogPosition, MatrixError> {
        limits::room_id(room_id)?;
        limits::event_id(event_id)?;
        let found = self
            .roomserver
            .query_events(rs_pb::QueryEventsRequest {
                event_ids: vec![event_id.to_owned()],
            })
            .await
            .map_err(MatrixError::from)?;
        if !found
            .events
            .iter()
            .any(|e| e.room_id == room_id && !e.rejected && !e.outlier)
        {
            return Err(MatrixError::not_found("No such event in this room"));
        }
        match receipt_type {
            "m.fully_read" => {
                if thread_id.is_some() {
                    return Err(MatrixError::invalid_param(
                        "m.fully_read takes no thread_id",
                    ));
                }
                let written = self
                    .users
                    .set_account_data(user_pb::SetAccountDataRequest {
                        user_id: device.user_id.clone(),
                        room_id: room_id.to_owned(),
                        data_type: "m.fully_read".to_owned(),
                        content_json: json!({ "event_id": event_id }).to_string().into_bytes(),
                    })
                    .await
                    .map_err(MatrixError::from)?;
                written
                    .position
                    .ok_or_else(|| MatrixError::unknown("no position"))
            }
            "m.read" | "m.read.private" => {
                if thread_id.is_some_and(|t| !valid_thread_id(t)) {
                    return Err(MatrixError::invalid_param(
                        "thread_id is main or an event ID",
                    ));
                }
                Ok(produce(
                    &*self.log,
                    &self.topics.edu_receipt,
                    room_id,
                    &topic_pb::ReceiptEdu {
                        version: PAYLOAD_VERSION,
                        room_id: room_id.to_owned(),
                        user_id: device.user_id.clone(),
                        receipt_type: receipt_type.to_owned(),
                        event_id: event_id.to_owned(),
                        thread_id: thread_id.unwrap_or_default().to_owned(),
                        ts: now_ms(),
                    },
                )
                .await?)
            }
            _ => Err(MatrixError::invalid_param(
                "receipt type is m.read, m.read.private or m.fully_read",
            )),
        }
    }
}

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.
pub(crate) async fn receipt(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<create_receipt::v3::Request>,
) -> MatrixResult {
    let room_id = request.room_id.to_string();
    let thread_id = match &request.thread {
        ReceiptThread::Unthreaded => None,
        ReceiptThread::Main => Some("main"),
        ReceiptThread::Thread(root) => Some(root.as_str()),
        _ => {
            return Err(MatrixError::invalid_param(
                "thread_id is main or an event ID",
            ));
        }
    };
    api.require_joined(&room_id, &device.user_id).await?;
    let position = api
        .mark(
            &device,
            &room_id,
            request.receipt_type.as_str(),
            request.event_id.as_str(),
            thread_id,
        )
        .await?;
    api.read_your_writes(&device.user_id, Some(position)).await;
    respond_ruma(create_receipt::v3::Response::new())
}

/// `POST /rooms/{roomId}/read_markers`.
pub(crate) async fn read_markers(
    State(api): State<Arc<ClientApi>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<set_read_marker::v3::Request>,
) -> MatrixResult {
    let room_id = request.room_id.to_string();
    api.require_joined(&room_id, &device.user_id).await?;
    let mut positions = Vec::new();
    for (receipt_type, event_id) in [
        ("m.fully_read", &request.fully_read),
        ("m.read", &request.read_receipt),
        ("m.read.private", &request.private_read_receipt),
    ] {
        if let Some(event_id) = event_id {
            positions.push(
                api.mark(&device, &room_id, receipt_type, event_id.as_str(), None)
                    .await?,
            );
        }
    }
    for position in positions {
        api.read_your_writes(&device.user_id, Some(position)).await;
    }
    respond_ruma(set_read_marker::v3::Response::new())
}
