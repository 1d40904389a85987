//! `POST /search`: full-text search of the messages (and room names and
//! topics) in the rooms the user is joined to, as they may see them:
//! ranked or most recent first, filtered, with the events around each
//! result, the rooms' state and groupings by room or sender on request,
//! and pages (`next_batch`). The index is the syncapi's own
//! (`storage/search.rs`): FTS5 on SQLite, tsvector on PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, parse_query, respond};
use ruma::api::client::filter::RoomEventFilter;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::SyncService;
use crate::filter::event_matches;
use crate::routes::client_event::client_event;
use crate::routes::relations::render_visible;
use crate::storage::search::{self, Hit};
use crate::visibility::Reader;

#[derive(Deserialize)]
struct SearchBody {
    search_categories: Categories,
}

#[derive(Deserialize)]
struct Categories {
    room_events: Option<RoomEvents>,
}

#[derive(Deserialize)]
struct RoomEvents {
    search_term: String,
    keys: Option<Vec<String>>,
    filter: Option<Value>,
    order_by: Option<String>,
    event_context: Option<EventContext>,
    #[serde(default)]
    include_state: bool,
    groupings: Option<Groupings>,
}

#[derive(Deserialize)]
struct EventContext {
    before_limit: Option<u32>,
    after_limit: Option<u32>,
    #[serde(default)]
    include_profile: bool,
}

#[derive(Deserialize)]
struct Groupings {
    #[serde(default)]
    group_by: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    key: String,
}

#[derive(Deserialize)]
struct Query {
    next_batch: Option<String>,
}

/// Results per page unless the filter says otherwise, and at most.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// The most matches read per search (they are ranked, then filtered and
/// cut into pages).
const MAX_MATCHES: u32 = 1_000;
/// The most events of context on each side.
const MAX_CONTEXT: u32 = 20;
const MAX_TERM: usize = 1024;

pub(crate) async fn search(
    State(service): State<Arc<SyncService>>,
    User(device): User,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let query: Query = parse_query(&uri)?;
    let body: SearchBody = parse_json(&body)?;
    let Some(request) = body.search_categories.room_events else {
        return respond(json!({ "search_categories": {} }));
    };
    if request.search_term.len() > MAX_TERM {
        return Err(MatrixError::invalid_param("search_term is too long"));
    }
    let keys: Vec<&str> = match &request.keys {
        None => search::KEYS.iter().map(|(k, _)| *k).collect(),
        Some(keys) => {
            let mut known = Vec::new();
            for key in keys {
                let found = search::KEYS
                    .iter()
                    .find(|(k, _)| k == key)
                    .ok_or_else(|| MatrixError::invalid_param(format!("cannot search in {key}")))?;
                known.push(found.0);
            }
            known
        }
    };
    let filter: RoomEventFilter = match request.filter {
        Some(filter) => serde_json::from_value(filter)
            .map_err(|e| MatrixError::bad_json(format!("invalid filter: {e}")))?,
        None => RoomEventFilter::default(),
    };
    let recent = match request.order_by.as_deref() {
        None | Some("rank") => false,
        Some("recent") => true,
        Some(_) => return Err(MatrixError::invalid_param("order_by is rank or recent")),
    };
    let skip: usize = match query.next_batch.as_deref() {
        None => 0,
        Some(token) => token
            .parse()
            .map_err(|_| MatrixError::invalid_param("next_batch is not a token we gave"))?,
    };
    let limit = filter.limit.map_or(DEFAULT_LIMIT, |l| {
        (u64::from(l) as usize).clamp(1, MAX_LIMIT)
    });
    let words = search::words(&request.search_term);
    let hits = service
        .storage
        .search(&device.user_id, &words, &keys, MAX_MATCHES)
        .await?;

    // What the user may see of each room: their membership history there,
    // and whom they ignore.
    let ignored = service.ignored(&device.user_id).await?;
    let mut histories: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for hit in &hits {
        if !histories.contains_key(&hit.event.room_id) {
            let history = service
                .storage
                .membership_history(&hit.event.room_id, &device.user_id)
                .await?;
            histories.insert(hit.event.room_id.clone(), history);
        }
    }
    let reader_of = |room_id: &str| Reader {
        user_id: &device.user_id,
        history: histories.get(room_id).map_or(&[][..], Vec::as_slice),
        ignored: ignored.clone(),
    };
    let mut shown: Vec<Hit> = hits
        .into_iter()
        .filter(|hit| {
            event_matches(&filter, &hit.event) && reader_of(&hit.event.room_id).may_see(&hit.event)
        })
        .collect();
    if recent {
        let ts = |hit: &Hit| {
            serde_json::from_str::<Value>(&hit.event.json)
                .ok()
                .and_then(|e| e["origin_server_ts"].as_i64())
                .unwrap_or_default()
        };
        shown.sort_by_cached_key(|hit| std::cmp::Reverse(ts(hit)));
    }
    let count = shown.len();
    let page: Vec<Hit> = shown.into_iter().skip(skip).take(limit).collect();
    let next_batch = (skip + page.len() < count).then(|| (skip + page.len()).to_string());

    let mut results = Vec::with_capacity(page.len());
    for hit in &page {
        let reader = reader_of(&hit.event.room_id);
        let rendered = render_visible(&service, &reader, &device, [&hit.event], true).await?;
        let mut result = json!({
            "rank": hit.rank,
            "result": rendered.into_iter().next().unwrap_or_default(),
        });
        if let Some(context) = &request.event_context {
            result["context"] = context_of(&service, &reader, &device, hit, context).await?;
        }
        results.push(result);
    }
    let mut room_events = json!({
        "count": count,
        "highlights": words,
        "results": results,
    });
    if let Some(next) = &next_batch {
        room_events["next_batch"] = json!(next);
    }
    if request.include_state {
        let mut state = Map::new();
        for room_id in page.iter().map(|h| h.event.room_id.as_str()) {
            if state.contains_key(room_id) {
                continue;
            }
            let rows = service.storage.room_state(room_id).await?;
            let events: Vec<Value> = rows
                .iter()
                .map(|e| client_event(e, true, &device.device_id))
                .collect();
            state.insert(room_id.to_owned(), Value::Array(events));
        }
        room_events["state"] = Value::Object(state);
    }
    if let Some(groupings) = &request.groupings {
        let mut groups = Map::new();
        for group in &groupings.group_by {
            let key_of = |hit: &Hit| match group.key.as_str() {
                "room_id" => Ok(hit.event.room_id.clone()),
                "sender" => Ok(hit.event.sender.clone()),
                other => Err(MatrixError::invalid_param(format!(
                    "cannot group by {other}"
                ))),
            };
            let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut order: Vec<String> = Vec::new();
            for hit in &page {
                let key = key_of(hit)?;
                if !by_key.contains_key(&key) {
                    order.push(key.clone());
                }
                by_key
                    .entry(key)
                    .or_default()
                    .push(hit.event.event_id.clone());
            }
            let entries: Map<String, Value> = order
                .iter()
                .enumerate()
                .map(|(n, key)| {
                    let mut entry = json!({ "order": n + 1, "results": by_key[key] });
                    if let Some(next) = &next_batch {
                        entry["next_batch"] = json!(next);
                    }
                    (key.clone(), entry)
                })
                .collect();
            groups.insert(group.key.clone(), Value::Object(entries));
        }
        room_events["groups"] = Value::Object(groups);
    }
    respond(json!({ "search_categories": { "room_events": room_events } }))
}

/// The events around a result, and the senders' profiles when asked.
async fn context_of(
    service: &SyncService,
    reader: &Reader<'_>,
    device: &ganglion_api::proto::userapi::Device,
    hit: &Hit,
    context: &EventContext,
) -> Result<Value, MatrixError> {
    let room_id = &hit.event.room_id;
    let before_limit = context.before_limit.unwrap_or(5).min(MAX_CONTEXT);
    let after_limit = context.after_limit.unwrap_or(5).min(MAX_CONTEXT);
    let before = service
        .storage
        .room_events(room_id, 0, hit.event.offset, before_limit, true)
        .await?;
    let after = service
        .storage
        .room_events(room_id, hit.event.offset + 1, u64::MAX, after_limit, false)
        .await?;
    let partition = service.storage.room_partition(room_id).await?.unwrap_or(0);
    let current = service.current_token();
    let start = current.with(
        partition,
        before.last().map_or(hit.event.offset, |e| e.offset),
    );
    let end = current.with(
        partition,
        after.last().map_or(hit.event.offset + 1, |e| e.offset + 1),
    );
    let events_before = render_visible(service, reader, device, &before, true).await?;
    let events_after = render_visible(service, reader, device, &after, true).await?;
    let mut out = json!({
        "events_before": events_before,
        "events_after": events_after,
        "start": start.to_string(),
        "end": end.to_string(),
    });
    if context.include_profile {
        let mut profiles = Map::new();
        let members = service
            .storage
            .state_at(room_id, hit.event.offset + 1, Some("m.room.member"))
            .await?;
        let senders: std::collections::HashSet<&str> = before
            .iter()
            .chain(after.iter())
            .chain([&hit.event])
            .map(|e| e.sender.as_str())
            .collect();
        for member in members {
            let Some(user) = member.state_key.as_deref().filter(|u| senders.contains(u)) else {
                continue;
            };
            let content = serde_json::from_str::<Value>(&member.json)
                .map(|e| e["content"].clone())
                .unwrap_or_default();
            let mut profile = Map::new();
            for (field, name) in [("displayname", "displayname"), ("avatar_url", "avatar_url")] {
                if let Some(value) = content[field].as_str() {
                    profile.insert(name.to_owned(), json!(value));
                }
            }
            profiles.insert(user.to_owned(), Value::Object(profile));
        }
        out["profile_info"] = Value::Object(profiles);
    }
    Ok(out)
}
