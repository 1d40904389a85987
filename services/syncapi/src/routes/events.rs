//! `GET /rooms/{roomId}/event/{eventId}` and `/context/{eventId}`: single
//! events and the events around them, as the reader may see them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, Ruma, parse_query, respond, respond_ruma};
use ruma::api::client::room::get_room_event;
use ruma::serde::Raw;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SyncService;
use crate::filter::{event_matches, lazy, members_for, room_event_filter};
use crate::routes::client_event::client_event;
use crate::routes::relations::{reader_history, render_visible, require_reader, visible_event};
use crate::storage::EventRow;
use crate::visibility::Reader;

pub(crate) async fn event(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_room_event::v3::Request>,
) -> MatrixResult {
    let (room_id, event_id) = (request.room_id.to_string(), request.event_id.to_string());
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
        ignored: service.ignored(&device.user_id).await?,
    };
    let row = visible_event(&service, &reader, &room_id, &event_id).await?;
    let mut rendered = render_visible(&service, &reader, &device, [&row], true).await?;
    let event = serde_json::value::to_raw_value(&rendered.pop().unwrap_or_default())
        .map_err(|e| MatrixError::unknown(format!("an event: {e}")))?;
    respond_ruma(get_room_event::v3::Response::new(Raw::from_json(event)))
}

// `/context` keeps its own types: ruma's `filter` parameter refuses an
// empty `filter=`, which we read as no filter, and its answer leaves out
// an empty `state` or `events_before`, which we have always sent.

#[derive(Deserialize, Default)]
struct ContextQuery {
    limit: Option<u32>,
    /// A `RoomEventFilter` as JSON: which events around the one asked
    /// for, and lazy-loaded members.
    filter: Option<String>,
}

pub(crate) async fn context(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Path((room_id, event_id)): Path<(String, String)>,
    uri: Uri,
) -> MatrixResult {
    let query: ContextQuery = parse_query(&uri)?;
    let limit = query.limit.unwrap_or(10).min(100);
    let filter = room_event_filter(query.filter.as_deref())?;
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
        ignored: service.ignored(&device.user_id).await?,
    };
    require_reader(&service, &room_id, &reader).await?;
    let row = visible_event(&service, &reader, &room_id, &event_id).await?;
    let partition = service.storage.room_partition(&room_id).await?.unwrap_or(0);
    let before_count = limit / 2;
    let after_count = limit - before_count;
    let before: Vec<EventRow> = service
        .storage
        .room_events(&room_id, 0, row.offset, before_count, true)
        .await?;
    let after: Vec<EventRow> = service
        .storage
        .room_events(&room_id, row.offset + 1, u64::MAX, after_count, false)
        .await?;
    let current = service.current_token();
    let start = current.with(
        partition,
        before.last().map(|e| e.offset).unwrap_or(row.offset),
    );
    let end = current.with(
        partition,
        after.last().map(|e| e.offset + 1).unwrap_or(row.offset + 1),
    );
    // The events around it that the filter and the history visibility
    // let through (the tokens keep the pages' ends).
    let shown = |rows: &[EventRow]| -> Vec<EventRow> {
        rows.iter()
            .filter(|e| event_matches(&filter, e) && reader.may_see(e))
            .cloned()
            .collect()
    };
    let (before, after) = (shown(&before), shown(&after));
    let event = render_visible(&service, &reader, &device, [&row], true).await?;
    let events_before = render_visible(&service, &reader, &device, &before, true).await?;
    let events_after = render_visible(&service, &reader, &device, &after, true).await?;
    // The room's state at the last event returned: the last one the user
    // may see (a state at a later one would tell what they may not); with
    // lazy-loading, of the members only those who sent what is returned.
    let last = after.last().map_or(row.offset, |e| e.offset);
    let state_rows = service.storage.state_at(&room_id, last + 1, None).await?;
    let state: Vec<Value> = if lazy(&filter.lazy_load_options).is_some() {
        let returned: Vec<&EventRow> = before.iter().chain([&row]).chain(after.iter()).collect();
        let (members, others): (Vec<EventRow>, Vec<EventRow>) = state_rows
            .into_iter()
            .partition(|e| e.event_type == "m.room.member");
        others
            .iter()
            .chain(members_for(&returned, &members))
            .map(|e| client_event(e, true, &device.device_id))
            .collect()
    } else {
        state_rows
            .iter()
            .map(|e| client_event(e, true, &device.device_id))
            .collect()
    };
    respond(json!({
        "event": event.into_iter().next().unwrap_or_default(),
        "events_before": events_before,
        "events_after": events_after,
        "start": start.to_string(),
        "end": end.to_string(),
        "state": state,
    }))
}
