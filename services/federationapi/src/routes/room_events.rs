//! What servers in a room may read of it: one event (`/event`), the state
//! at an event (`/state`, `/state_ids`), an event's auth chain
//! (`/event_auth`), history before given events (`/backfill`), and the
//! events between what a server has and what it was sent
//! (`/get_missing_events`). Only a server with a member joined to the room
//! is answered, and each event by what that server may see of it: one
//! sent under `invited` or `joined` history visibility before the server's
//! users were invited or joined goes out redacted (so the room's graph
//! stays whole), and the state at such an event is refused.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::Uri;
use ganglion_api::proto::roomserver as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, parse_query, query_values, respond};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::FederationService;
use crate::auth::Origin;
use crate::key_ring::now_ms;

/// The most events one backfill or get_missing_events answers with.
const MAX_EVENTS: usize = 100;

impl FederationService {
    /// Refuses servers without a member joined to the room (and servers
    /// its ACL bans).
    async fn require_server_in_room(&self, room_id: &str, origin: &str) -> Result<(), MatrixError> {
        let (exists, joined) = self
            .server_in_room(room_id, origin)
            .await
            .map_err(MatrixError::from)?;
        if !exists {
            return Err(MatrixError::not_found("Unknown room"));
        }
        if !joined {
            return Err(MatrixError::forbidden("The server is not in the room"));
        }
        self.require_acl(room_id, origin).await
    }

    /// Stored events by ID (of `room_id` only, not rejected), as JSON.
    async fn events_of_room(
        &self,
        room_id: &str,
        ids: Vec<String>,
    ) -> Result<Vec<(String, Value)>, MatrixError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let found = self
            .roomserver
            .query_events(pb::QueryEventsRequest { event_ids: ids })
            .await
            .map_err(MatrixError::from)?;
        Ok(found
            .events
            .into_iter()
            .filter(|e| e.room_id == room_id && !e.rejected)
            .filter_map(|e| Some((e.event_id, serde_json::from_slice(&e.event_json).ok()?)))
            .collect())
    }

    /// The events with those `origin` may not see redacted (as the room
    /// version redacts), in their order.
    async fn as_seen_by(
        &self,
        origin: &str,
        room_id: &str,
        events: Vec<(String, Value)>,
    ) -> Result<Vec<Value>, MatrixError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let visible: HashSet<String> = self
            .roomserver
            .query_server_visibility(pb::QueryServerVisibilityRequest {
                server_name: origin.to_owned(),
                event_ids: events.iter().map(|(id, _)| id.clone()).collect(),
            })
            .await
            .map_err(MatrixError::from)?
            .visible_event_ids
            .into_iter()
            .collect();
        if events.iter().all(|(id, _)| visible.contains(id)) {
            return Ok(events.into_iter().map(|(_, event)| event).collect());
        }
        let version = self
            .room_version(room_id)
            .await
            .map_err(MatrixError::from)?;
        let rules =
            crate::pdus::rules_for(&version).map_err(|e| MatrixError::unknown(e.to_string()))?;
        events
            .into_iter()
            .map(|(id, event)| {
                if visible.contains(&id) {
                    return Ok(event);
                }
                let object: ruma::CanonicalJsonObject = serde_json::from_value(event)
                    .map_err(|e| MatrixError::unknown(e.to_string()))?;
                let redacted = ruma::canonical_json::redact(object, &rules.redaction, None)
                    .map_err(|e| MatrixError::unknown(e.to_string()))?;
                serde_json::to_value(redacted).map_err(|e| MatrixError::unknown(e.to_string()))
            })
            .collect()
    }

    /// Walks `prev_events` back from `from` (breadth first), taking at
    /// most `limit` events, never `stop_at` ones nor below `min_depth`.
    async fn walk_back(
        &self,
        room_id: &str,
        from: Vec<String>,
        include_from: bool,
        stop_at: &HashSet<String>,
        limit: usize,
        min_depth: i64,
    ) -> Result<Vec<(String, Value)>, MatrixError> {
        let mut seen: HashSet<String> = stop_at.clone();
        let mut out = Vec::new();
        let mut frontier: VecDeque<String> = VecDeque::new();
        if include_from {
            frontier.extend(from.into_iter().filter(|id| seen.insert(id.clone())));
        } else {
            seen.extend(from.iter().cloned());
            for (_, event) in self.events_of_room(room_id, from).await? {
                frontier.extend(
                    prevs(&event)
                        .into_iter()
                        .filter(|id| seen.insert(id.clone())),
                );
            }
        }
        while !frontier.is_empty() && out.len() < limit {
            let batch: Vec<String> = frontier.drain(..frontier.len().min(limit)).collect();
            for (id, event) in self.events_of_room(room_id, batch).await? {
                if out.len() >= limit {
                    break;
                }
                if event["depth"].as_i64().unwrap_or(0) < min_depth {
                    continue;
                }
                frontier.extend(
                    prevs(&event)
                        .into_iter()
                        .filter(|id| seen.insert(id.clone())),
                );
                out.push((id, event));
            }
        }
        Ok(out)
    }
}

/// The IDs an event's `prev_events` name (`[id, hashes]` pairs in room
/// versions 1 and 2).
fn prevs(event: &Value) -> Vec<String> {
    event["prev_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().or_else(|| p[0].as_str()).map(str::to_owned))
        .collect()
}

pub(crate) async fn event(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(event_id): Path<String>,
) -> MatrixResult {
    let found = service
        .roomserver
        .query_events(pb::QueryEventsRequest {
            event_ids: vec![event_id],
        })
        .await
        .map_err(MatrixError::from)?;
    let event = found
        .events
        .into_iter()
        .find(|e| !e.rejected)
        .ok_or_else(|| MatrixError::not_found("Unknown event"))?;
    service
        .require_server_in_room(&event.room_id, &origin)
        .await?;
    let pdu: Value = serde_json::from_slice(&event.event_json)
        .map_err(|e| MatrixError::unknown(e.to_string()))?;
    let pdus = service
        .as_seen_by(&origin, &event.room_id, vec![(event.event_id, pdu)])
        .await?;
    respond(json!({
        "origin": service.server_name,
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    }))
}

#[derive(Deserialize)]
pub(crate) struct AtEvent {
    event_id: Option<String>,
}

/// The state before `event_id` and its auth chain: (state IDs, state
/// events, auth chain IDs, auth chain events).
async fn state_at(
    service: &FederationService,
    origin: &str,
    room_id: &str,
    uri: &Uri,
) -> Result<(pb::QueryStateResponse, pb::QueryAuthChainResponse), MatrixError> {
    let query: AtEvent = parse_query(uri)?;
    let event_id = query
        .event_id
        .ok_or_else(|| MatrixError::missing_param("event_id is required"))?;
    service.require_server_in_room(room_id, origin).await?;
    // The state at an event the server may not see would tell it what
    // the event hides.
    let visible = service
        .roomserver
        .query_server_visibility(pb::QueryServerVisibilityRequest {
            server_name: origin.to_owned(),
            event_ids: vec![event_id.clone()],
        })
        .await
        .map_err(MatrixError::from)?
        .visible_event_ids;
    if visible.is_empty() {
        let known = service
            .events_of_room(room_id, vec![event_id.clone()])
            .await?;
        return Err(if known.is_empty() {
            MatrixError::not_found("Unknown event")
        } else {
            MatrixError::forbidden("The server may not see the room at that event")
        });
    }
    let state = service
        .roomserver
        .query_state(pb::QueryStateRequest {
            room_id: room_id.to_owned(),
            event_id,
        })
        .await
        .map_err(MatrixError::from)?;
    let chain = service
        .roomserver
        .query_auth_chain(pb::QueryAuthChainRequest {
            event_ids: state.state_event_ids.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    Ok((state, chain))
}

fn parsed(events: &[Vec<u8>]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|json| serde_json::from_slice(json).ok())
        .collect()
}

pub(crate) async fn state_ids(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    uri: Uri,
) -> MatrixResult {
    let (state, chain) = state_at(&service, &origin, &room_id, &uri).await?;
    respond(json!({ "pdu_ids": state.state_event_ids, "auth_chain_ids": chain.event_ids }))
}

pub(crate) async fn state(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    uri: Uri,
) -> MatrixResult {
    let (state, chain) = state_at(&service, &origin, &room_id, &uri).await?;
    respond(json!({
        "pdus": parsed(&state.state_events_json),
        "auth_chain": parsed(&chain.events_json),
    }))
}

pub(crate) async fn event_auth(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
) -> MatrixResult {
    service.require_server_in_room(&room_id, &origin).await?;
    if service
        .events_of_room(&room_id, vec![event_id.clone()])
        .await?
        .is_empty()
    {
        return Err(MatrixError::not_found("Unknown event"));
    }
    let chain = service
        .roomserver
        .query_auth_chain(pb::QueryAuthChainRequest {
            event_ids: vec![event_id],
        })
        .await
        .map_err(MatrixError::from)?;
    respond(json!({ "auth_chain": parsed(&chain.events_json) }))
}

pub(crate) async fn backfill(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    uri: Uri,
) -> MatrixResult {
    let from = query_values(&uri, "v");
    if from.is_empty() {
        return Err(MatrixError::missing_param("v is required"));
    }
    let limit = query_values(&uri, "limit")
        .first()
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| MatrixError::invalid_param("limit"))
        })
        .transpose()?
        .unwrap_or(10)
        .clamp(1, MAX_EVENTS);
    service.require_server_in_room(&room_id, &origin).await?;
    let found = service
        .walk_back(&room_id, from, true, &HashSet::new(), limit, i64::MIN)
        .await?;
    let pdus = service.as_seen_by(&origin, &room_id, found).await?;
    respond(json!({
        "origin": service.server_name,
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    }))
}

#[derive(Deserialize)]
pub(crate) struct MissingEvents {
    #[serde(default)]
    earliest_events: Vec<String>,
    latest_events: Vec<String>,
    limit: Option<usize>,
    min_depth: Option<i64>,
}

pub(crate) async fn get_missing_events(
    State(service): State<Arc<FederationService>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<MissingEvents>,
) -> MatrixResult {
    service.require_server_in_room(&room_id, &origin).await?;
    let limit = body.limit.unwrap_or(10).clamp(1, MAX_EVENTS);
    let stop_at: HashSet<String> = body.earliest_events.into_iter().collect();
    let latest: BTreeSet<String> = body.latest_events.into_iter().collect();
    let mut events = service
        .walk_back(
            &room_id,
            latest.into_iter().collect(),
            false,
            &stop_at,
            limit,
            body.min_depth.unwrap_or(0),
        )
        .await?;
    // Oldest first, as the spec lists them.
    events.sort_by_key(|(_, e)| e["depth"].as_i64().unwrap_or(0));
    let events = service.as_seen_by(&origin, &room_id, events).await?;
    respond(json!({ "events": events }))
}
