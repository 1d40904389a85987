//! `GET /rooms/{roomId}/messages`: paginate a room's timeline from a token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, respond};
use serde::Deserialize;
use serde_json::json;

use crate::SyncService;
use crate::filter::{event_matches, lazy, members_for, room_event_filter};
use crate::routes::client_event::client_event;
use crate::routes::relations::{reader_history, render_visible, require_reader};
use crate::storage::EventRow;
use crate::sync_token::{InvalidToken, SyncToken};
use crate::visibility::Reader;
use ganglion_base::http::parse_query;
use ruma::api::client::filter::RoomEventFilter;
use serde_json::Value;

#[derive(Deserialize)]
struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<u32>,
    /// A `RoomEventFilter` as JSON.
    filter: Option<String>,
}

// Keeps its own types: ruma's `filter` parameter refuses an empty
// `filter=` (no filter here) and has no size limit, a missing `dir` would be
// M_INVALID_PARAM rather than the spec's M_MISSING_PARAM, and its answer
// leaves out an empty `state`, which we have always sent.
pub(crate) async fn messages(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Path(room_id): Path<String>,
    uri: Uri,
) -> MatrixResult {
    let query: MessagesQuery = parse_query(&uri)?;
    let filter: RoomEventFilter = room_event_filter(query.filter.as_deref())?;
    let backwards = match query.dir.as_deref() {
        Some("b") => true,
        Some("f") => false,
        Some(_) => return Err(MatrixError::invalid_param("dir must be b or f")),
        None => return Err(MatrixError::missing_param("dir is required")),
    };
    let limit = query.limit.unwrap_or(10).clamp(1, 1000);
    let parse = |text: &str| {
        PageToken::parse(text, service.partitions)
            .map_err(|_| MatrixError::invalid_param("invalid pagination token"))
    };
    let current = service.current_token();
    let from = match query.from.as_deref() {
        Some(text) => parse(text)?,
        None if backwards => PageToken::live(current.clone()),
        None => PageToken::live(SyncToken::new(
            vec![0; crate::sync_token::Stream::ALL.len() * service.partitions],
            service.partitions,
        )),
    };
    let to = query.to.as_deref().map(parse).transpose()?;
    // Who may read what is decided event by event (history visibility);
    // someone never in the room reads only world-readable rooms.
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
        ignored: service.ignored(&device.user_id).await?,
    };
    require_reader(&service, &room_id, &reader).await?;
    let partition = match service.storage.room_partition(&room_id).await? {
        Some(partition) => partition,
        None => return Err(MatrixError::forbidden("You are not a member of this room")),
    };
    let at = from.position(partition);
    let (events, end) = if backwards {
        let lower = to
            .as_ref()
            .map(|t| t.position(partition))
            .unwrap_or(i64::MIN);
        let mut events = service
            .storage
            .room_page(&room_id, (lower, at), limit, true)
            .await?;
        // Past the oldest event held: ask other servers for what precedes it.
        if events.len() < limit as usize
            && to.is_none()
            && backfill(&service, &room_id, limit).await?
        {
            events = service
                .storage
                .room_page(&room_id, (lower, at), limit, true)
                .await?;
        }
        // `end` whenever the page has events: there may be more before
        // them (an empty page is the end of the history).
        let end = events.last().map(|(place, _)| from.at(partition, *place));
        (events, end)
    } else {
        let upper = to
            .as_ref()
            .map(|t| t.position(partition))
            .unwrap_or(current.offset(partition).min(i64::MAX as u64) as i64);
        let events = service
            .storage
            .room_page(&room_id, (at, upper), limit, false)
            .await?;
        // Forwards, too: more may come after the page.
        let end = events
            .last()
            .map(|(place, _)| from.at(partition, place.saturating_add(1)));
        (events, end)
    };
    let events: Vec<EventRow> = events.into_iter().map(|(_, row)| row).collect();
    // The page keeps its length for the tokens; the filter and the history
    // visibility thin it.
    let shown: Vec<&EventRow> = events
        .iter()
        .filter(|e| event_matches(&filter, e) && reader.may_see(e))
        .collect();
    let chunk = render_visible(&service, &reader, &device, shown.iter().copied(), true).await?;
    // Lazy-loading: the members who sent what the page shows.
    let state: Vec<Value> = if lazy(&filter.lazy_load_options).is_some() {
        let members = service
            .storage
            .state_at(&room_id, u64::MAX, Some("m.room.member"))
            .await?;
        members_for(&shown, &members)
            .into_iter()
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

/// Asks other servers for the history before the oldest event this view
/// holds of the room (if it lacks any), and waits until it is stored;
/// whether any came. A failure is logged: the page ends where it is.
async fn backfill(service: &SyncService, room_id: &str, limit: u32) -> MatrixResult<bool> {
    let gaps = service.storage.history_gaps(room_id).await?;
    if gaps.is_empty() {
        return Ok(false);
    }
    let taken = match service
        .federation
        .backfill(ganglion_api::proto::federationapi::BackfillRequest {
            room_id: room_id.to_owned(),
            event_ids: gaps,
            limit: limit.max(BACKFILL_AT_LEAST),
        })
        .await
    {
        Ok(taken) => taken,
        Err(error) => {
            tracing::info!(room_id, ?error, "backfill failed");
            return Ok(false);
        }
    };
    if let Some(position) = &taken.output_position {
        service.wait_for(position).await;
    }
    Ok(taken.taken > 0)
}

/// Backfill asks for at least this many events: a page of ten should not
/// cost a round trip per ten events.
const BACKFILL_AT_LEAST: u32 = 50;

/// Where a page starts or ends: a sync token (its room offset for the
/// room's partition) or, in backfilled history (places below zero),
/// `h{-place}~{sync token}`.
struct PageToken {
    sync: SyncToken,
    history: Option<i64>,
}

impl PageToken {
    fn live(sync: SyncToken) -> PageToken {
        PageToken {
            sync,
            history: None,
        }
    }

    fn parse(text: &str, partitions: usize) -> Result<PageToken, InvalidToken> {
        let Some(rest) = text.strip_prefix('h') else {
            return Ok(PageToken::live(SyncToken::parse(text, partitions)?));
        };
        let (place, sync) = rest.split_once('~').ok_or(InvalidToken)?;
        let place: i64 = place.parse().map_err(|_| InvalidToken)?;
        if place < 1 {
            return Err(InvalidToken);
        }
        Ok(PageToken {
            sync: SyncToken::parse(sync, partitions)?,
            history: Some(-place),
        })
    }

    /// The place in the room's partition.
    fn position(&self, partition: u32) -> i64 {
        self.history
            .unwrap_or_else(|| self.sync.offset(partition).min(i64::MAX as u64) as i64)
    }

    /// This token moved to `place` in the room's partition.
    fn at(&self, partition: u32, place: i64) -> PageToken {
        match u64::try_from(place) {
            Ok(offset) => PageToken::live(self.sync.with(partition, offset)),
            Err(_) => PageToken {
                sync: self.sync.clone(),
                history: Some(place),
            },
        }
    }
}

impl std::fmt::Display for PageToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.history {
            Some(place) => write!(f, "h{}~{}", -place, self.sync),
            None => write!(f, "{}", self.sync),
        }
    }
}
