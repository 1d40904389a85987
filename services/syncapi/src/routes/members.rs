//! `GET /rooms/{roomId}/members`: the members at a point of the timeline
//! (`at`, a sync or `/messages` token), filtered by membership, as the reader
//! may know them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, parse_query, respond};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SyncService;
use crate::routes::client_event::client_event;
use crate::routes::relations::reader_history;
use crate::sync_token::SyncToken;
use crate::visibility::Reader;

#[derive(Deserialize, Default)]
struct MembersQuery {
    at: Option<String>,
    membership: Option<String>,
    not_membership: Option<String>,
}

const MEMBERSHIPS: [&str; 5] = ["join", "invite", "knock", "leave", "ban"];

pub(crate) async fn members(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Path(room_id): Path<String>,
    uri: Uri,
) -> MatrixResult {
    let query: MembersQuery = parse_query(&uri)?;
    for filter in [&query.membership, &query.not_membership]
        .into_iter()
        .flatten()
    {
        if !MEMBERSHIPS.contains(&filter.as_str()) {
            return Err(MatrixError::invalid_param("unknown membership"));
        }
    }
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
    };
    let partition = service.storage.room_partition(&room_id).await?;
    let now = partition.map(|p| {
        service
            .positions
            .borrow()
            .get(p as usize)
            .copied()
            .unwrap_or(0)
    });
    let (Some(partition), Some(now)) = (partition, now) else {
        return Err(MatrixError::forbidden("You are not in this room"));
    };
    let mut position = match query.at.as_deref() {
        Some(token) => SyncToken::parse(token, service.partitions)
            .map_err(|_| MatrixError::invalid_param("invalid at token"))?
            .offset(partition)
            .min(now),
        None => now,
    };
    // Members read the room as it is; those who left, as it was when they
    // left; others only a world-readable room.
    match reader.current() {
        Some("join") => {}
        Some("leave" | "ban") if history.iter().any(|(_, m)| m == "join") => {
            let left = history.last().map(|(offset, _)| offset + 1).unwrap_or(0);
            position = position.min(left);
        }
        _ => {
            let visibility = service.storage.current_history_visibility(&room_id).await?;
            if visibility.as_deref() != Some("world_readable") {
                return Err(MatrixError::forbidden("You are not in this room"));
            }
        }
    }
    let chunk: Vec<Value> = service
        .storage
        .state_at(&room_id, position, Some("m.room.member"))
        .await?
        .iter()
        .map(|e| client_event(e, true, &device.device_id))
        .filter(|e| {
            let membership = e["content"]["membership"].as_str().unwrap_or_default();
            query.membership.as_deref().is_none_or(|m| m == membership)
                && query.not_membership.as_deref() != Some(membership)
        })
        .collect();
    respond(json!({ "chunk": chunk }))
}
