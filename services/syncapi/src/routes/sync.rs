//! `GET /sync`: initial and incremental, long-polling on the consumed log
//! positions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use ganglion_api::proto::userapi::Device;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, parse_query, respond};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::SyncService;
use crate::routes::client_event::client_event;
use crate::routes::relations::{bundle, with_bundle};
use crate::storage::{EventRow, Membership};
use crate::sync_token::SyncToken;
use crate::visibility::Reader;

/// The longest a client may ask `/sync` to wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a request waits for this replica to catch up with its token.
const CATCH_UP: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub(crate) struct SyncQuery {
    since: Option<String>,
    timeout: Option<u64>,
    filter: Option<String>,
    #[serde(default)]
    full_state: bool,
    #[allow(dead_code)]
    set_presence: Option<String>,
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// The parts of a filter this server applies.
pub(crate) struct Filter {
    pub(crate) timeline_limit: u32,
}

impl Filter {
    pub(crate) fn from_value(value: &Value) -> Result<Filter, MatrixError> {
        if !value.is_object() {
            return Err(MatrixError::invalid_param("filter must be an object"));
        }
        let limit = match value.pointer("/room/timeline/limit") {
            None | Some(Value::Null) => 10,
            Some(v) => v.as_u64().filter(|l| *l >= 1).ok_or_else(|| {
                MatrixError::invalid_param("timeline limit must be a positive integer")
            })?,
        };
        Ok(Filter {
            timeline_limit: limit.min(1000) as u32,
        })
    }
}

pub(crate) async fn sync(
    State(service): State<Arc<SyncService>>,
    headers: HeaderMap,
    uri: Uri,
) -> MatrixResult {
    let device = ganglion_api::users::authenticate(&service.users, &headers, uri.query()).await?;
    let query: SyncQuery = parse_query(&uri)?;
    let filter = match query.filter.as_deref() {
        None | Some("") => Filter { timeline_limit: 10 },
        Some(inline) if inline.trim_start().starts_with('{') => {
            let value: Value = serde_json::from_str(inline)
                .map_err(|_| MatrixError::invalid_param("filter is not JSON"))?;
            Filter::from_value(&value)?
        }
        Some(id) => {
            let id: i64 = id
                .parse()
                .map_err(|_| MatrixError::invalid_param("unknown filter"))?;
            let json = service
                .storage
                .filter(&device.user_id, id)
                .await?
                .ok_or_else(|| MatrixError::invalid_param("unknown filter"))?;
            Filter::from_value(&serde_json::from_str(&json).unwrap_or_default())?
        }
    };
    let since = match &query.since {
        Some(text) => Some(
            SyncToken::parse(text, service.partitions)
                .map_err(|_| MatrixError::invalid_param("invalid since token"))?,
        ),
        None => None,
    };
    let timeout = Duration::from_millis(query.timeout.unwrap_or(0)).min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let mut positions = service.positions.subscribe();
    // A token from a replica further along: wait until this one has caught up.
    if let Some(since) = &since {
        let catch_up = Instant::now() + CATCH_UP.max(timeout);
        let caught_up = positions.wait_for(|p| SyncToken::new(p.clone()).covers(since));
        if tokio::time::timeout_at(catch_up, caught_up).await.is_err() {
            return Err(MatrixError::unavailable(
                "This server is catching up; try again",
            ));
        }
    }
    loop {
        let current = SyncToken::new(positions.borrow_and_update().clone());
        let (body, has_updates) = build(
            &service,
            &device,
            since.as_ref(),
            &current,
            &filter,
            query.full_state,
        )
        .await?;
        if since.is_none() || has_updates || Instant::now() >= deadline {
            return respond(body);
        }
        match tokio::time::timeout_at(deadline, positions.changed()).await {
            Ok(Ok(())) => continue,
            _ => return respond(body),
        }
    }
}

struct Timeline {
    events: Vec<EventRow>,
    limited: bool,
    /// The events in the client format, with bundled aggregations.
    rendered: Vec<Value>,
}

/// The latest `limit` events of a window that the user may see: history
/// visibility is checked unless the user is joined and the window was all
/// sent under `shared` or `world_readable` visibility.
async fn timeline(
    service: &SyncService,
    device: &Device,
    room_id: &str,
    (from, to): (u64, u64),
    limit: u32,
    membership: &str,
) -> Result<Timeline, MatrixError> {
    let mut events = service
        .storage
        .room_events(room_id, from, to, limit + 1, true)
        .await?;
    let limited = events.len() > limit as usize;
    events.truncate(limit as usize);
    events.reverse();
    let history = if Reader::sees_all(Some(membership), &events) {
        None
    } else {
        let history = service
            .storage
            .membership_history(room_id, &device.user_id)
            .await?;
        let reader = Reader {
            user_id: &device.user_id,
            history: &history,
        };
        events.retain(|e| reader.may_see(e));
        Some(history)
    };
    let history = history.unwrap_or_else(|| vec![(0, membership.to_owned())]);
    let reader = Reader {
        user_id: &device.user_id,
        history: &history,
    };
    let refs: Vec<&EventRow> = events.iter().collect();
    let bundles = bundle(service, &refs, &device.user_id, &device.device_id, &|e| {
        reader.may_see(e)
    })
    .await?;
    let rendered = events
        .iter()
        .map(|e| {
            with_bundle(
                client_event(e, false, &device.device_id),
                bundles.get(&e.event_id),
            )
        })
        .collect();
    Ok(Timeline {
        events,
        limited,
        rendered,
    })
}

async fn build(
    service: &SyncService,
    device: &Device,
    since: Option<&SyncToken>,
    current: &SyncToken,
    filter: &Filter,
    full_state: bool,
) -> Result<(Value, bool), MatrixError> {
    let mut join = Map::new();
    let mut leave = Map::new();
    let mut invite = Map::new();
    for Membership {
        room_id,
        membership,
        offset: member_offset,
        partition,
    } in service.storage.memberships(&device.user_id).await?
    {
        let from = since.map(|s| s.offset(partition)).unwrap_or(0);
        let to = current.offset(partition);
        if member_offset >= to {
            // Not yet part of the position this response reflects.
            continue;
        }
        let changed_membership = since.is_some() && member_offset >= from;
        match membership.as_str() {
            "join" => {
                let initial = since.is_none() || changed_membership || full_state;
                let window_start = if since.is_none() { 0 } else { from };
                let timeline = timeline(
                    service,
                    device,
                    &room_id,
                    (window_start, to),
                    filter.timeline_limit,
                    &membership,
                )
                .await?;
                if !initial && timeline.events.is_empty() {
                    continue;
                }
                let in_timeline: HashSet<&str> = timeline
                    .events
                    .iter()
                    .map(|e| e.event_id.as_str())
                    .collect();
                let state: Vec<Value> = if initial {
                    service
                        .storage
                        .room_state(&room_id)
                        .await?
                        .iter()
                        .filter(|e| e.offset < to && !in_timeline.contains(e.event_id.as_str()))
                        .map(|e| client_event(e, false, &device.device_id))
                        .collect()
                } else {
                    Vec::new()
                };
                let prev_batch = current.with(
                    partition,
                    timeline.events.first().map(|e| e.offset).unwrap_or(to),
                );
                join.insert(
                    room_id,
                    json!({
                        "timeline": {
                            "events": timeline.rendered,
                            "limited": timeline.limited,
                            "prev_batch": prev_batch.to_string(),
                        },
                        "state": { "events": state },
                        "ephemeral": { "events": [] },
                        "account_data": { "events": [] },
                        "unread_notifications": { "highlight_count": 0, "notification_count": 0 },
                        "summary": {},
                    }),
                );
            }
            "leave" | "ban" if changed_membership => {
                let timeline = timeline(
                    service,
                    device,
                    &room_id,
                    (from, member_offset + 1),
                    filter.timeline_limit,
                    &membership,
                )
                .await?;
                let prev_batch = current.with(
                    partition,
                    timeline.events.first().map(|e| e.offset).unwrap_or(from),
                );
                leave.insert(
                    room_id,
                    json!({
                        "timeline": {
                            "events": timeline.rendered,
                            "limited": timeline.limited,
                            "prev_batch": prev_batch.to_string(),
                        },
                        "state": { "events": [] },
                        "account_data": { "events": [] },
                    }),
                );
            }
            "invite" if since.is_none() || changed_membership => {
                let stripped: Vec<Value> = service
                    .storage
                    .room_state(&room_id)
                    .await?
                    .iter()
                    .filter(|e| {
                        matches!(
                            e.event_type.as_str(),
                            "m.room.create"
                                | "m.room.name"
                                | "m.room.join_rules"
                                | "m.room.canonical_alias"
                                | "m.room.avatar"
                        ) || (e.event_type == "m.room.member"
                            && e.state_key.as_deref() == Some(&device.user_id))
                    })
                    .map(|e| {
                        let full = client_event(e, false, "");
                        json!({
                            "type": full["type"],
                            "state_key": full["state_key"],
                            "sender": full["sender"],
                            "content": full["content"],
                        })
                    })
                    .collect();
                invite.insert(room_id, json!({ "invite_state": { "events": stripped } }));
            }
            _ => {}
        }
    }
    let has_updates = !(join.is_empty() && leave.is_empty() && invite.is_empty());
    let body = json!({
        "next_batch": current.to_string(),
        "rooms": { "join": join, "invite": invite, "leave": leave, "knock": {} },
        "account_data": { "events": [] },
        "presence": { "events": [] },
        "to_device": { "events": [] },
        "device_lists": { "changed": [], "left": [] },
        "device_one_time_keys_count": {},
    });
    Ok((body, has_updates))
}
