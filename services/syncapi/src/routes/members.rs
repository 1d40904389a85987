//! `GET /rooms/{roomId}/members`: the members at a point of the timeline
//! (`at`, a sync or `/messages` token), filtered by membership, as the reader
//! may know them.

use std::sync::Arc;

use axum::extract::State;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, Ruma, respond_ruma};
use ruma::api::client::membership::get_member_events;
use ruma::serde::Raw;

use crate::SyncService;
use crate::routes::client_event::client_event;
use crate::routes::relations::reader_history;
use crate::sync_token::SyncToken;
use crate::visibility::Reader;

const MEMBERSHIPS: [&str; 5] = ["join", "invite", "knock", "leave", "ban"];

pub(crate) async fn members(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_member_events::v3::Request>,
) -> MatrixResult {
    let room_id = request.room_id.to_string();
    let membership = request.membership.as_ref().map(|m| m.as_str());
    let not_membership = request.not_membership.as_ref().map(|m| m.as_str());
    for filter in [membership, not_membership].into_iter().flatten() {
        if !MEMBERSHIPS.contains(&filter) {
            return Err(MatrixError::invalid_param("unknown membership"));
        }
    }
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    // Membership is state: shown whoever sent it.
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
        ignored: Default::default(),
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
    let mut position = match request.at.as_deref() {
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
    let chunk = service
        .storage
        .state_at(&room_id, position, Some("m.room.member"))
        .await?
        .iter()
        .map(|e| client_event(e, true, &device.device_id))
        .filter(|e| {
            let membership_of = e["content"]["membership"].as_str().unwrap_or_default();
            membership.is_none_or(|m| m == membership_of) && not_membership != Some(membership_of)
        })
        .map(|event| {
            serde_json::value::to_raw_value(&event)
                .map(Raw::from_json)
                .map_err(|e| MatrixError::unknown(format!("a member event: {e}")))
        })
        .collect::<MatrixResult<_>>()?;
    respond_ruma(get_member_events::v3::Response::new(chunk))
}
