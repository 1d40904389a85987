//! Relations between events: bundled aggregations in `unsigned.m.relations`
//! (`m.thread`, `m.replace`, `m.reference`), `GET /relations`, and
//! `GET /threads`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use ganglion_api::proto::userapi::Device;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, Ruma, respond_ruma};
use ruma::api::Direction;
use ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type,
    get_relating_events_with_rel_type_and_event_type,
};
use ruma::api::client::threads::get_threads;
use ruma::events::AnyMessageLikeEvent;
use ruma::serde::Raw;
use serde_json::{Value, json};

use crate::SyncService;
use crate::routes::client_event::client_event;
use crate::storage::{EventRow, StorageError};
use crate::visibility::Reader;

/// How deep `recurse=true` follows relations of relations.
const MAX_RECURSION_DEPTH: usize = 3;

/// The bundled aggregations of `rows`: event ID → `unsigned.m.relations`.
/// Only children `may_see` allows count.
pub(crate) async fn bundle(
    service: &SyncService,
    rows: &[&EventRow],
    user_id: &str,
    device_id: &str,
    may_see: &(dyn Fn(&EventRow) -> bool + Sync),
) -> Result<HashMap<String, Value>, StorageError> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let senders: HashMap<&str, &str> = rows
        .iter()
        .map(|r| (r.event_id.as_str(), r.sender.as_str()))
        .collect();
    let mut bundles: HashMap<String, Value> = HashMap::new();
    let mut threads: HashMap<String, (u64, Option<EventRow>, bool)> = HashMap::new();
    for (parent, rel_type, child) in service.storage.children_of(&ids).await? {
        if !may_see(&child) {
            continue;
        }
        match rel_type.as_str() {
            "m.thread" => {
                let entry = threads.entry(parent.clone()).or_insert((0, None, false));
                entry.0 += 1;
                entry.2 |= child.sender == user_id;
                entry.1 = Some(child);
            }
            "m.replace" if senders.get(parent.as_str()) == Some(&child.sender.as_str()) => {
                let bundle = bundles.entry(parent).or_insert_with(|| json!({}));
                bundle["m.replace"] = client_event(&child, true, device_id);
            }
            "m.reference" => {
                let bundle = bundles.entry(parent).or_insert_with(|| json!({}));
                let chunk = bundle["m.reference"]["chunk"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let mut chunk = chunk;
                chunk.push(json!({ "event_id": child.event_id }));
                bundle["m.reference"] = json!({ "chunk": chunk });
            }
            _ => {}
        }
    }
    for (parent, (count, latest, participated)) in threads {
        let root_sender = senders.get(parent.as_str()).copied();
        let bundle = bundles.entry(parent).or_insert_with(|| json!({}));
        bundle["m.thread"] = json!({
            "latest_event": latest.map(|e| client_event(&e, true, device_id)),
            "count": count,
            "current_user_participated": participated || root_sender == Some(user_id),
        });
    }
    Ok(bundles)
}

/// The events of `rows` the reader may see, in the client format with
/// their bundled aggregations, in order.
pub(crate) async fn render_visible(
    service: &SyncService,
    reader: &Reader<'_>,
    device: &Device,
    rows: impl IntoIterator<Item = &EventRow>,
    with_room_id: bool,
) -> Result<Vec<Value>, StorageError> {
    let visible: Vec<&EventRow> = rows.into_iter().filter(|e| reader.may_see(e)).collect();
    let bundles = bundle(
        service,
        &visible,
        &device.user_id,
        &device.device_id,
        &|e| reader.may_see(e),
    )
    .await?;
    Ok(visible
        .iter()
        .map(|e| {
            with_bundle(
                client_event(e, with_room_id, &device.device_id),
                bundles.get(&e.event_id),
            )
        })
        .collect())
}

/// An event of the room the reader may see, or `M_NOT_FOUND`.
pub(crate) async fn visible_event(
    service: &SyncService,
    reader: &Reader<'_>,
    room_id: &str,
    event_id: &str,
) -> MatrixResult<EventRow> {
    service
        .storage
        .event(event_id)
        .await?
        .filter(|e| e.room_id == room_id && reader.may_see(e))
        .ok_or_else(|| MatrixError::not_found("Event not found"))
}

/// 403 for a reader who is not and never was in the room (or forgot it),
/// unless the room is world-readable: such a reader may read nothing of
/// it, so whether an event exists is not theirs to learn either.
pub(crate) async fn require_reader(
    service: &SyncService,
    room_id: &str,
    reader: &Reader<'_>,
) -> MatrixResult<()> {
    if matches!(reader.current(), None | Some("forgotten"))
        && service
            .storage
            .current_history_visibility(room_id)
            .await?
            .as_deref()
            != Some("world_readable")
    {
        return Err(MatrixError::forbidden("You are not a member of this room"));
    }
    Ok(())
}

/// Puts a bundle into an event's `unsigned`.
pub(crate) fn with_bundle(mut event: Value, bundle: Option<&Value>) -> Value {
    if let Some(bundle) = bundle {
        event["unsigned"]["m.relations"] = bundle.clone();
    }
    event
}

/// The user's membership history of the room, for a [`Reader`].
pub(crate) async fn reader_history(
    service: &SyncService,
    room_id: &str,
    user_id: &str,
) -> MatrixResult<Vec<(u64, String)>> {
    ruma::RoomId::parse(room_id).map_err(|_| MatrixError::invalid_param("invalid room ID"))?;
    Ok(service.storage.membership_history(room_id, user_id).await?)
}

/// The page a relations request asks for (ruma's three request types
/// share these parameters).
struct RelationsPage {
    from: Option<String>,
    to: Option<String>,
    limit: Option<ruma::UInt>,
    backwards: bool,
    recurse: bool,
}

/// A page of relations, for each endpoint's response type.
struct Relations {
    chunk: Vec<Raw<AnyMessageLikeEvent>>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    recursion_depth: Option<ruma::UInt>,
}

/// A position in a room's partition: a relations token (`r<offset>`) or a
/// sync or `/messages` token.
fn position(service: &SyncService, token: &str, partition: u32) -> MatrixResult<u64> {
    if let Some(offset) = token.strip_prefix('r') {
        return offset
            .parse()
            .map_err(|_| MatrixError::invalid_param("invalid pagination token"));
    }
    crate::sync_token::SyncToken::parse(token, service.partitions)
        .map(|t| t.offset(partition))
        .map_err(|_| MatrixError::invalid_param("invalid pagination token"))
}

async fn relations_inner(
    service: Arc<SyncService>,
    device: Device,
    (room_id, event_id): (&ruma::RoomId, &ruma::EventId),
    rel_type: Option<String>,
    event_type: Option<String>,
    query: RelationsPage,
) -> MatrixResult<Relations> {
    let (room_id, event_id) = (room_id.to_string(), event_id.to_string());
    let backwards = query.backwards;
    let limit = query
        .limit
        .map_or(50, |limit| u64::from(limit).clamp(1, 1000) as u32);
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
        ignored: service.ignored(&device.user_id).await?,
    };
    let parent = visible_event(&service, &reader, &room_id, &event_id).await?;
    let partition = service.storage.room_partition(&room_id).await?.unwrap_or(0);
    let lower = |token: &Option<String>| token.as_deref().map(|t| position(&service, t, partition));
    let (from, to) = (
        lower(&query.from).transpose()?,
        lower(&query.to).transpose()?,
    );
    let (low, high) = if backwards {
        (to.unwrap_or(0), from.unwrap_or(u64::MAX))
    } else {
        (from.unwrap_or(0), to.unwrap_or(u64::MAX))
    };
    let recurse = query.recurse;
    let mut rows: Vec<EventRow> = if recurse {
        // Relations of relations, a few levels deep, then one page of them.
        let mut all = Vec::new();
        let mut parents = vec![parent.event_id.clone()];
        for _ in 0..MAX_RECURSION_DEPTH {
            let refs: Vec<&str> = parents.iter().map(String::as_str).collect();
            let children = service.storage.children_of(&refs).await?;
            parents = children
                .iter()
                .map(|(_, _, c)| c.event_id.clone())
                .collect();
            all.extend(children.into_iter().filter_map(|(_, kind, child)| {
                (rel_type.as_deref().is_none_or(|r| r == kind)
                    && event_type.as_deref().is_none_or(|t| t == child.event_type))
                .then_some(child)
            }));
            if parents.is_empty() {
                break;
            }
        }
        all.retain(|e| e.offset >= low && e.offset < high);
        all.sort_by_key(|e| e.offset);
        if backwards {
            all.reverse();
        }
        all.truncate(limit as usize + 1);
        all
    } else {
        service
            .storage
            .relations(
                &parent.event_id,
                rel_type.as_deref(),
                event_type.as_deref(),
                low,
                high,
                limit + 1,
                backwards,
            )
            .await?
    };
    let next = (rows.len() > limit as usize).then(|| {
        rows.truncate(limit as usize);
        rows.last()
            .map(|e| if backwards { e.offset } else { e.offset + 1 })
    });
    let chunk = render_visible(&service, &reader, &device, &rows, true).await?;
    Ok(Relations {
        chunk: raw_events(chunk)?,
        next_batch: next.flatten().map(|next| format!("r{next}")),
        prev_batch: query.from,
        recursion_depth: recurse.then(|| ruma::UInt::from(MAX_RECURSION_DEPTH as u32)),
    })
}

/// Rendered events as ruma's raw events.
fn raw_events<T>(events: Vec<Value>) -> MatrixResult<Vec<Raw<T>>> {
    events
        .iter()
        .map(|event| {
            serde_json::value::to_raw_value(event)
                .map(Raw::from_json)
                .map_err(|e| MatrixError::unknown(format!("an event: {e}")))
        })
        .collect()
}

/// Fills one of ruma's three relations responses (the same fields).
macro_rules! relations_response {
    ($endpoint:ident, $relations:expr) => {{
        let relations = $relations;
        let mut response = $endpoint::v1::Response::new(relations.chunk);
        response.next_batch = relations.next_batch;
        response.prev_batch = relations.prev_batch;
        response.recursion_depth = relations.recursion_depth;
        respond_ruma(response)
    }};
}

/// The page parameters of a relations request.
macro_rules! relations_page {
    ($request:expr) => {
        RelationsPage {
            from: $request.from.clone(),
            to: $request.to.clone(),
            limit: $request.limit,
            backwards: $request.dir == Direction::Backward,
            recurse: $request.recurse,
        }
    };
}

pub(crate) async fn relations(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_relating_events::v1::Request>,
) -> MatrixResult {
    let page = relations_page!(request);
    let ids = (&*request.room_id, &*request.event_id);
    relations_response!(
        get_relating_events,
        relations_inner(service, device, ids, None, None, page).await?
    )
}

pub(crate) async fn relations_of_type(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> MatrixResult {
    let page = relations_page!(request);
    let ids = (&*request.room_id, &*request.event_id);
    let rel_type = Some(request.rel_type.to_string());
    relations_response!(
        get_relating_events_with_rel_type,
        relations_inner(service, device, ids, rel_type, None, page).await?
    )
}

pub(crate) async fn relations_of_type_and_event_type(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> MatrixResult {
    let page = relations_page!(request);
    let ids = (&*request.room_id, &*request.event_id);
    let rel_type = Some(request.rel_type.to_string());
    let event_type = Some(request.event_type.to_string());
    relations_response!(
        get_relating_events_with_rel_type_and_event_type,
        relations_inner(service, device, ids, rel_type, event_type, page).await?
    )
}

/// `GET /rooms/{roomId}/threads`: thread roots, latest reply first.
pub(crate) async fn threads(
    State(service): State<Arc<SyncService>>,
    UserOrGuest(device): UserOrGuest,
    Ruma(request): Ruma<get_threads::v1::Request>,
) -> MatrixResult {
    let room_id = request.room_id.to_string();
    let participated = match request.include.as_str() {
        "all" => false,
        "participated" => true,
        _ => {
            return Err(MatrixError::invalid_param(
                "include must be all or participated",
            ));
        }
    };
    let limit = request
        .limit
        .map_or(50, |limit| u64::from(limit).clamp(1, 1000) as u32);
    let before = match request.from.as_deref() {
        Some(token) => token
            .strip_prefix('t')
            .and_then(|o| o.parse::<u64>().ok())
            .ok_or_else(|| MatrixError::invalid_param("invalid pagination token"))?,
        None => u64::MAX,
    };
    let history = reader_history(&service, &room_id, &device.user_id).await?;
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
        ignored: service.ignored(&device.user_id).await?,
    };
    let roots = service
        .storage
        .thread_roots(
            &room_id,
            participated.then_some(device.user_id.as_str()),
            before,
            limit + 1,
        )
        .await?;
    let more = roots.len() > limit as usize;
    let page: Vec<&(EventRow, u64)> = roots.iter().take(limit as usize).collect();
    let chunk = render_visible(
        &service,
        &reader,
        &device,
        page.iter().map(|(e, _)| e),
        true,
    )
    .await?;
    let mut response = get_threads::v1::Response::new(raw_events(chunk)?);
    if more && let Some((_, latest)) = page.last() {
        response.next_batch = Some(format!("t{latest}"));
    }
    respond_ruma(response)
}
