//! Presence: what `set_presence` on `/sync` and `PUT /presence` change,
//! and the read side (`GET /presence`, the `presence` section of `/sync`).
//!
//! A user who syncs with `set_presence=online` (the default) comes online.
//! One who stops syncing becomes `unavailable`, then `offline`: this
//! process tracks the users it serves and publishes those changes itself.
//! Every change travels on `edu.presence`, so every replica (and, later,
//! federation) sees the same presence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, respond};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::SyncService;
use crate::storage::PresenceRow;

/// Users this process saw syncing.
pub(crate) struct Activity {
    seen: Mutex<HashMap<String, Seen>>,
    unavailable_after: Duration,
    offline_after: Duration,
    /// Sync requests one user may hold open at once.
    max_in_flight: u32,
}

struct Seen {
    /// When a sync request last ended (or started).
    last: Instant,
    in_flight: u32,
    /// The presence this process last knew the user to have.
    presence: String,
}

impl Activity {
    pub(crate) fn new(
        unavailable_after: Duration,
        offline_after: Duration,
        max_in_flight: usize,
    ) -> Self {
        Activity {
            seen: Mutex::default(),
            unavailable_after,
            offline_after,
            max_in_flight: u32::try_from(max_in_flight).unwrap_or(u32::MAX).max(1),
        }
    }
}

pub(crate) use ganglion_base::clock::now_ms;

/// Holds a user's sync "in flight" until dropped.
pub(crate) struct Syncing {
    service: Arc<SyncService>,
    user_id: String,
}

impl Drop for Syncing {
    fn drop(&mut self) {
        let mut seen = self
            .service
            .presence
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = seen.get_mut(&self.user_id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.last = Instant::now();
        }
    }
}

/// A sync began: apply `set_presence` and keep the user counted as
/// syncing until the returned guard drops.
pub(crate) async fn syncing(
    service: &Arc<SyncService>,
    user_id: &str,
    set_presence: Option<&str>,
) -> Result<Syncing, MatrixError> {
    let wanted = match set_presence {
        None | Some("online") => Some("online"),
        Some("unavailable") => Some("unavailable"),
        Some("offline") => None,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "set_presence must be online, unavailable or offline",
            ));
        }
    };
    let known = {
        let mut seen = service
            .presence
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(user_id.to_owned()).or_insert_with(|| Seen {
            last: Instant::now(),
            in_flight: 0,
            presence: String::new(),
        });
        // One user's requests, held open, must not hold the server.
        if entry.in_flight >= service.presence.max_in_flight {
            return Err(MatrixError::limit_exceeded(1_000));
        }
        entry.in_flight += 1;
        entry.last = Instant::now();
        let known = entry.presence.clone();
        // Concurrent syncs of one user publish one change, not one each.
        if let Some(wanted) = wanted {
            entry.presence = wanted.to_owned();
        }
        known
    };
    let guard = Syncing {
        service: service.clone(),
        user_id: user_id.to_owned(),
    };
    let Some(wanted) = wanted else {
        return Ok(guard);
    };
    if known == wanted {
        return Ok(guard);
    }
    // What the log says: a presence the user set by hand stays unless it
    // was offline (or set by the server when they went quiet).
    let stored = service.storage.presence(user_id).await?;
    let change = match &stored {
        None => true,
        Some(row) => row.presence != wanted && (row.presence == "offline" || row.automatic),
    };
    if change {
        let position = publish(
            service,
            user_id,
            wanted,
            stored.and_then(|r| r.status_msg),
            false,
        )
        .await?;
        service.wait_for(&position).await;
    } else if let Some(row) = stored {
        remember(service, user_id, &row.presence);
    }
    Ok(guard)
}

fn remember(service: &SyncService, user_id: &str, presence: &str) {
    let mut seen = service
        .presence
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = seen.get_mut(user_id) {
        entry.presence = presence.to_owned();
    }
}

/// Publishes a presence change on `edu.presence`; returns its position.
async fn publish(
    service: &SyncService,
    user_id: &str,
    presence: &str,
    status_msg: Option<String>,
    automatic: bool,
) -> Result<ganglion_api::proto::common::LogPosition, MatrixError> {
    let position = produce(
        &*service.log,
        &service.topics.edu_presence,
        user_id,
        &topic_pb::PresenceEdu {
            version: PAYLOAD_VERSION,
            user_id: user_id.to_owned(),
            presence: presence.to_owned(),
            status_msg,
            last_active_ts: now_ms(),
            currently_active: presence == "online" && !automatic,
            automatic,
        },
    )
    .await?;
    remember(service, user_id, presence);
    Ok(position)
}

/// Every few seconds: users who stopped syncing become unavailable, then
/// offline.
pub(crate) fn spawn_sweeper(service: Arc<SyncService>, mut shutdown: watch::Receiver<bool>) {
    let period = (service.presence.unavailable_after / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let changes: Vec<(String, &'static str)> = {
                let mut seen = service
                    .presence
                    .seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut changes = Vec::new();
                seen.retain(|user, entry| {
                    if entry.in_flight > 0 {
                        return true;
                    }
                    let quiet = entry.last.elapsed();
                    if quiet >= service.presence.offline_after {
                        // Only a presence this process published or saw
                        // goes offline; a user who synced as offline
                        // never came online.
                        if matches!(entry.presence.as_str(), "online" | "unavailable") {
                            changes.push((user.clone(), "offline"));
                        }
                        return false;
                    }
                    if quiet >= service.presence.unavailable_after && entry.presence == "online" {
                        changes.push((user.clone(), "unavailable"));
                    }
                    true
                });
                changes
            };
            for (user, presence) in changes {
                let status = match service.storage.presence(&user).await {
                    Ok(row) => row.and_then(|r| r.status_msg),
                    Err(_) => None,
                };
                if let Err(error) = publish(&service, &user, presence, status, true).await {
                    tracing::warn!(%user, ?error, "could not publish a presence change");
                }
            }
        }
    });
}

/// The presence event of a stored row, as clients see it.
pub(crate) fn presence_event(row: &PresenceRow, now: i64) -> Value {
    let mut content = json!({
        "presence": row.presence,
        "last_active_ago": (now - row.last_active_ts).max(0),
        "currently_active": row.currently_active && row.presence == "online",
    });
    if let Some(status) = &row.status_msg {
        content["status_msg"] = json!(status);
    }
    json!({ "type": "m.presence", "sender": row.user_id, "content": content })
}

#[derive(serde::Deserialize)]
pub(crate) struct PresenceBody {
    presence: String,
    status_msg: Option<String>,
}

/// `PUT /presence/{userId}/status`.
pub(crate) async fn put_status(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> MatrixResult {
    if device.user_id != user_id {
        return Err(MatrixError::forbidden("You may only set your own presence"));
    }
    let body: PresenceBody = ganglion_base::http::parse_json(&body)?;
    if !matches!(body.presence.as_str(), "online" | "unavailable" | "offline") {
        return Err(MatrixError::invalid_param(
            "presence must be online, unavailable or offline",
        ));
    }
    if body.status_msg.as_ref().is_some_and(|s| s.len() > 4096) {
        return Err(MatrixError::invalid_param("status_msg is too long"));
    }
    let position = publish(&service, &user_id, &body.presence, body.status_msg, false).await?;
    service.wait_for(&position).await;
    respond(json!({}))
}

/// `GET /presence/{userId}/status`: to the user and to those who share a
/// room with them.
pub(crate) async fn get_status(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Path(user_id): Path<String>,
) -> MatrixResult {
    if !service
        .storage
        .share_a_room(&device.user_id, &user_id)
        .await?
    {
        return Err(MatrixError::forbidden(
            "You do not share a room with this user",
        ));
    }
    let now = now_ms();
    match service.storage.presence(&user_id).await? {
        Some(row) => respond(presence_event(&row, now)["content"].clone()),
        None => respond(json!({ "presence": "offline" })),
    }
}
