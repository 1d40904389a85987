//! `GET /rooms/{roomId}/messages`: paginate a room's timeline from a token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, respond};
use serde::Deserialize;
use serde_json::json;

use crate::SyncService;
use crate::filter::{MAX_FILTER_BYTES, event_matches, lazy};
use crate::routes::client_event::client_event;
use crate::routes::relations::{reader_history, render_visible};
use crate::storage::EventRow;
use crate::sync_token::SyncToken;
use crate::visibility::Reader;
use ganglion_base::http::parse_query;
use ruma::api::client::filter::RoomEventFilter;
use serde_json::Value;
use std::collections::HashSet;

#[derive(Deserialize)]
struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<u32>,
    /// A `RoomEventFilter` as JSON.
    filter: Option<String>,
}

pub(crate) async fn messages(
    State(service): State<Arc<SyncService>>,
    Path(room_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> MatrixResult {
    let device = ganglion_api::users::authenticate(&service.users, &headers, uri.query()).await?;
    let query: MessagesQuery = parse_query(&uri)?;
    let filter: RoomEventFilter = match query.filter.as_deref() {
        None | Some("") => RoomEventFilter::default(),
        Some(json) if json.len() > MAX_FILTER_BYTES => {
            return Err(MatrixError::invalid_param("filter is too large"));
        }
        Some(json) => serde_json::from_str(json)
            .map_err(|e| MatrixError::invalid_param(format!("invalid filter: {e}")))?,
    };
    let backwards = match query.dir.as_deref() {
        Some("b") => true,
        Some("f") => false,
        Some(_) => return Err(MatrixError::invalid_param("dir must be b or f")),
        None => return Err(MatrixError::missing_param("dir is required")),
    };
    let limit = query.limit.unwrap_or(10).clamp(1, 1000);
    let parse = |text: &str| {
        SyncToken::parse(text, service.partitions)
            .map_err(|_| MatrixError::invalid_param("invalid pagination token"))
    };
    let current = service.current_token();
    let from = match query.from.as_deref() {
        Some(text) => parse(text)?,
        None if backwards => current.clone(),
        None => SyncToken::new(
            vec![0; crate::sync_token::Stream::ALL.len() * service.partitions],
            service.partitions,
        ),
    };
    let to = query.to.as_deref().map(parse).transpose()?;
    // Who may read what is decided event by event (history visibility);
    // someone never in the room reads only world-readable rooms.
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
    };
    if matches!(reader.current(), None | Some("forgotten"))
        && service
            .storage
            .current_history_visibility(&room_id)
            .await?
            .as_deref()
            != Some("world_readable")
    {
        return Err(MatrixError::forbidden("You are not a member of this room"));
    }
    let partition = match service.storage.room_partition(&room_id).await? {
        Some(partition) => partition,
        None => return Err(MatrixError::forbidden("You are not a member of this room")),
    };
    let (events, end) = if backwards {
        let lower = to.as_ref().map(|t| t.offset(partition)).unwrap_or(0);
        let events = service
            .storage
            .room_events(&room_id, lower, from.offset(partition), limit, true)
            .await?;
        let end = (events.len() == limit as usize)
            .then(|| events.last().map(|e| from.with(partition, e.offset)))
            .flatten();
        (events, end)
    } else {
        let upper = to
            .as_ref()
            .map(|t| t.offset(partition))
            .unwrap_or(current.offset(partition));
        let events = service
            .storage
            .room_events(&room_id, from.offset(partition), upper, limit, false)
            .await?;
        let end = (events.len() == limit as usize)
            .then(|| events.last().map(|e| from.with(partition, e.offset + 1)))
            .flatten();
        (events, end)
    };
    // The page keeps its length for the tokens; the filter thins it.
    let matching: Vec<&EventRow> = events
        .iter()
        .filter(|e| event_matches(&filter, e))
        .collect();
    let chunk = render_visible(&service, &reader, &device, matching.iter().copied(), true).await?;
    // Lazy-loading: the members who sent what the page shows.
    let state: Vec<Value> = if lazy(&filter.lazy_load_options).is_some() {
        let senders: HashSet<&str> = matching.iter().map(|e| e.sender.as_str()).collect();
        service
            .storage
            .state_at(&room_id, u64::MAX, Some("m.room.member"))
            .await?
            .iter()
            .filter(|e| e.state_key.as_deref().is_some_and(|u| senders.contains(u)))
            .map(|e| client_event(e, true, &device.device_id))
            .collect()
    } else {
        Vec::new()
    };
    let mut body = json!({ "start": from.to_string(), "chunk": chunk, "state": state });
    if let Some(end) = end {
        body["end"] = json!(end.to_string());
    }
    respond(body)
}
