//! `GET /rooms/{roomId}/event/{eventId}` and `/context/{eventId}`: single
//! events and the events around them, as the reader may see them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, parse_query, respond};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SyncService;
use crate::routes::client_event::client_event;
use crate::routes::relations::{bundle, reader_history, with_bundle};
use crate::storage::EventRow;
use crate::sync_token::SyncToken;
use crate::visibility::Reader;

pub(crate) async fn event(
    State(service): State<Arc<SyncService>>,
    Path((room_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> MatrixResult {
    let device = ganglion_api::users::authenticate(&service.users, &headers, uri.query()).await?;
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
    };
    let row = service
        .storage
        .event(&event_id)
        .await?
        .filter(|e| e.room_id == room_id && reader.may_see(e))
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    let bundles = bundle(
        &service,
        &[&row],
        &device.user_id,
        &device.device_id,
        &|e| reader.may_see(e),
    )
    .await?;
    respond(with_bundle(
        client_event(&row, true, &device.device_id),
        bundles.get(&row.event_id),
    ))
}

#[derive(Deserialize, Default)]
struct ContextQuery {
    limit: Option<u32>,
}

pub(crate) async fn context(
    State(service): State<Arc<SyncService>>,
    Path((room_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> MatrixResult {
    let device = ganglion_api::users::authenticate(&service.users, &headers, uri.query()).await?;
    let query: ContextQuery = parse_query(&uri)?;
    let limit = query.limit.unwrap_or(10).min(100);
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
    };
    let row = service
        .storage
        .event(&event_id)
        .await?
        .filter(|e| e.room_id == room_id && reader.may_see(e))
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    let partition = service.storage.room_partition(&room_id).await?.unwrap_or(0);
    let before_count = limit / 2;
    let after_count = limit - before_count;
    let before: Vec<EventRow> = service
        .storage
        .room_events(&room_id, 0, row.offset, before_count, true)
        .await?
        .into_iter()
        .filter(|e| reader.may_see(e))
        .collect();
    let after: Vec<EventRow> = service
        .storage
        .room_events(&room_id, row.offset + 1, u64::MAX, after_count, false)
        .await?
        .into_iter()
        .filter(|e| reader.may_see(e))
        .collect();
    let current = SyncToken::new(service.positions.borrow().clone());
    let start = current.with(
        partition,
        before.last().map(|e| e.offset).unwrap_or(row.offset),
    );
    let end = current.with(
        partition,
        after.last().map(|e| e.offset + 1).unwrap_or(row.offset + 1),
    );
    let all: Vec<&EventRow> = before
        .iter()
        .chain(after.iter())
        .chain(std::iter::once(&row))
        .collect();
    let bundles = bundle(&service, &all, &device.user_id, &device.device_id, &|e| {
        reader.may_see(e)
    })
    .await?;
    let render = |e: &EventRow| {
        with_bundle(
            client_event(e, true, &device.device_id),
            bundles.get(&e.event_id),
        )
    };
    // The room's state at the last event returned.
    let last = after.last().map(|e| e.offset).unwrap_or(row.offset);
    let state: Vec<Value> = service
        .storage
        .state_at(&room_id, last + 1, None)
        .await?
        .iter()
        .map(|e| client_event(e, true, &device.device_id))
        .collect();
    respond(json!({
        "event": render(&row),
        "events_before": before.iter().map(render).collect::<Vec<_>>(),
        "events_after": after.iter().map(render).collect::<Vec<_>>(),
        "start": start.to_string(),
        "end": end.to_string(),
        "state": state,
    }))
}
