//! Joining a room this server is not in, through a server that is:
//! `make_join` gives the join event to complete, we hash and sign it,
//! `send_join` answers with the room's state and auth chain. Every event
//! of those is checked (signatures by keys valid when sent); they go to
//! the roomserver as outliers, in auth order, then the join as a new event
//! with that state before it, and the roomserver takes the room.

use std::collections::{BTreeMap, HashMap, HashSet};

use ganglion_api::ApiError;
use ganglion_api::proto::federationapi as fed_pb;
use ganglion_api::proto::roomserver as pb;
use ruma::CanonicalJsonValue;
use ruma::canonical_json::CanonicalJsonObject;
use ruma::room_version_rules::EventIdFormatVersion;
use serde_json::Value;

use crate::FederationService;
use crate::pdus::{self, CheckedPdu};
use ganglion_base::http::percent_encode as encode;

/// The room versions this server joins rooms of.
const SUPPORTED_VERSIONS: [&str; 12] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

/// The event IDs an event names in `field` (`auth_events`, `prev_events`):
/// plain IDs, or `[id, hashes]` pairs in room versions 1 and 2.
pub(crate) fn references(object: &CanonicalJsonObject, field: &str) -> Vec<String> {
    let Some(CanonicalJsonValue::Array(items)) = object.get(field) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            CanonicalJsonValue::String(id) => Some(id.clone()),
            CanonicalJsonValue::Array(pair) => match pair.first() {
                Some(CanonicalJsonValue::String(id)) => Some(id.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Events ordered so each comes after the auth events it names (of those
/// given), the create event first (room version 12 events do not name it:
/// it is implied by the room ID); what a cycle would leave is appended as
/// it came.
pub(crate) fn auth_order(mut events: Vec<CheckedPdu>) -> Vec<CheckedPdu> {
    events.sort_by_key(|e| e.field("type") != Some("m.room.create"));
    // Rounds, each of the events whose auth events among these were all
    // placed in earlier rounds, in the order they came; each event's auth
    // events are read once (a join orders tens of thousands).
    let order: Vec<usize> = {
        let index: HashMap<&str, usize> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.event_id.as_str(), i))
            .collect();
        let mut waiting = vec![0_usize; events.len()];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
        for (i, event) in events.iter().enumerate() {
            for id in references(&event.object, "auth_events") {
                if let Some(&j) = index.get(id.as_str()) {
                    waiting[i] += 1;
                    dependents[j].push(i);
                }
            }
        }
        let mut order = Vec::with_capacity(events.len());
        let mut round: Vec<usize> = (0..events.len()).filter(|&i| waiting[i] == 0).collect();
        while !round.is_empty() {
            let mut next = Vec::new();
            for &i in &round {
                for &d in &dependents[i] {
                    waiting[d] -= 1;
                    if waiting[d] == 0 {
                        next.push(d);
                    }
                }
            }
            order.append(&mut round);
            next.sort_unstable();
            round = next;
        }
        // What a cycle leaves, as it came.
        let mut placed = vec![false; events.len()];
        for &i in &order {
            placed[i] = true;
        }
        order.extend((0..events.len()).filter(|&i| !placed[i]));
        order
    };
    let mut slots: Vec<Option<CheckedPdu>> = events.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// A `send_join` answer, its PDUs parsed straight from the answer's text
/// into canonical JSON (a large room's state is never held as a JSON tree
/// besides): the state first, then the auth chain's events that are not
/// in it.
struct SendJoinParsed {
    /// The join as the resident server returned it, if it did.
    event: Option<Value>,
    state_len: usize,
    pdus: Vec<Result<CanonicalJsonObject, pdus::PduError>>,
}

#[derive(serde::Deserialize)]
struct SendJoinAnswer<'a> {
    #[serde(borrow, default)]
    state: Vec<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    auth_chain: Vec<&'a serde_json::value::RawValue>,
    event: Option<Value>,
}

fn parse_send_join(answer: &[u8]) -> Result<SendJoinParsed, String> {
    let answer: SendJoinAnswer =
        serde_json::from_slice(answer).map_err(|e| format!("not a send_join answer: {e}"))?;
    let state_len = answer.state.len();
    // The auth chain repeats much of the state: the same text again is
    // neither parsed nor checked twice (an event sent twice in other
    // forms is, and is kept once by its ID).
    let mut seen: HashSet<&str> = answer.state.iter().map(|pdu| pdu.get()).collect();
    let mut texts: Vec<&str> = answer.state.iter().map(|pdu| pdu.get()).collect();
    texts.extend(
        answer
            .auth_chain
            .iter()
            .map(|pdu| pdu.get())
            .filter(|pdu| seen.insert(pdu)),
    );
    let pdus = ganglion_base::parallel::map(&texts, |pdu| pdus::canonical_from_str(pdu));
    Ok(SendJoinParsed {
        event: answer.event,
        state_len,
        pdus,
    })
}

impl FederationService {
    pub(crate) async fn join_remote_room(
        &self,
        request: fed_pb::JoinRoomRequest,
    ) -> Result<fed_pb::JoinRoomResponse, ApiError> {
        let mut last_error = ApiError::NotFound("no server to join the room through".into());
        for server in request.servers.iter().filter(|s| **s != self.server_name) {
            match self.join_via(server, &request).await {
                Ok(joined) => return Ok(joined),
                Err(error) => {
                    tracing::info!(server, room_id = %request.room_id, ?error, "joining through a server failed");
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    async fn join_via(
        &self,
        server: &str,
        request: &fed_pb::JoinRoomRequest,
    ) -> Result<fed_pb::JoinRoomResponse, ApiError> {
        let started = std::time::Instant::now();
        let (version, _rules, event_id, object, answer) = self
            .make_and_send(
                server,
                (&request.room_id, &request.user_id),
                "join",
                &request.content_json,
            )
            .await?;
        let answered_ms = started.elapsed().as_millis() as u64;
        let SendJoinParsed {
            event: theirs,
            state_len,
            pdus,
        } = tokio::task::spawn_blocking(move || parse_send_join(&answer))
            .await
            .map_err(|e| ApiError::Internal(format!("parsing send_join: {e}")))?
            .map_err(|e| ApiError::Unavailable(format!("{server}: send_join: {e}")))?;
        let parsed_ms = started.elapsed().as_millis() as u64;
        // The resident server may have countersigned the join (restricted
        // rooms): keep its copy when it is the same event.
        let join = match theirs {
            Some(theirs) => match pdus::check(&self.key_ring, &version, &theirs).await {
                Ok(checked) if checked.event_id == event_id => checked,
                _ => CheckedPdu {
                    event_id: event_id.clone(),
                    object,
                },
            },
            None => CheckedPdu {
                event_id: event_id.clone(),
                object,
            },
        };
        let checked = pdus::check_many_parsed(&self.key_ring, &version, pdus)
            .await
            .map_err(|e| ApiError::Unavailable(format!("{server}: send_join: {e}")))?;
        let mut state_ids = Vec::new();
        let mut in_state = HashSet::new();
        let mut events: BTreeMap<String, CheckedPdu> = BTreeMap::new();
        for (i, result) in checked.into_iter().enumerate() {
            match result {
                Ok(checked) => {
                    if i < state_len && in_state.insert(checked.event_id.clone()) {
                        state_ids.push(checked.event_id.clone());
                    }
                    events.entry(checked.event_id.clone()).or_insert(checked);
                }
                Err(error) => {
                    tracing::info!(server, %error, "send_join: an event of the state or auth chain was dropped");
                }
            }
        }
        if !events
            .values()
            .any(|e| e.field("type") == Some("m.room.create"))
        {
            return Err(ApiError::Unavailable(format!(
                "{server}: the room's state came without its create event"
            )));
        }
        let checked_ms = started.elapsed().as_millis() as u64;
        let ordered = auth_order(events.into_values().collect());
        // The state becomes current with the join: the views may store it
        // while the rest is taken.
        self.input_outliers(&request.room_id, &version, &ordered, &in_state)
            .await?;
        let outliers_ms = started.elapsed().as_millis() as u64;
        let response = self
            .roomserver
            .input_pdus(pb::InputPdusRequest {
                room_id: request.room_id.clone(),
                room_version: version,
                pdus: vec![pb::InputPdu {
                    kind: pb::input_pdu::Kind::New as i32,
                    event_json: join.json_bytes(),
                    state_before: state_ids,
                    has_state_before: true,
                    announce: false,
                }],
            })
            .await?;
        tracing::info!(
            server,
            room_id = %request.room_id,
            events = ordered.len(),
            answered_ms,
            parsed_ms,
            checked_ms,
            outliers_ms,
            joined_ms = started.elapsed().as_millis() as u64,
            "joined a remote room"
        );
        pdus::taken("join", event_id, response)
    }

    /// make_{membership} through `server`, the event completed, hashed and
    /// signed, then send_{membership} v2: (room version, its rules, the
    /// event's ID, the event, the answer).
    #[allow(clippy::type_complexity)]
    pub(crate) async fn make_and_send(
        &self,
        server: &str,
        (room_id, user_id): (&str, &str),
        membership: &str,
        content_json: &[u8],
    ) -> Result<
        (
            String,
            ruma::room_version_rules::RoomVersionRules,
            String,
            CanonicalJsonObject,
            bytes::Bytes,
        ),
        ApiError,
    > {
        let versions: Vec<String> = SUPPORTED_VERSIONS
            .iter()
            .map(|v| format!("ver={v}"))
            .collect();
        let path = format!(
            "/_matrix/federation/v1/make_{membership}/{}/{}?{}",
            encode(room_id),
            encode(user_id),
            versions.join("&")
        );
        let template = self
            .client
            .send(server, http::Method::GET, &path, None)
            .await?;
        let version = template["room_version"].as_str().unwrap_or("1").to_owned();
        let rules = pdus::rules_for(&version)
            .map_err(|e| ApiError::UnsupportedRoomVersion(e.to_string()))?;
        let mut event = template["event"].clone();
        if event["type"] != "m.room.member"
            || event["state_key"] != user_id
            || event["sender"] != user_id
            || event["content"]["membership"] != membership
        {
            return Err(ApiError::Unavailable(format!(
                "{server} offered a {membership} event that is not this user's"
            )));
        }
        if !content_json.is_empty()
            && let Ok(Value::Object(extra)) = serde_json::from_slice::<Value>(content_json)
            && let Some(content) = event["content"].as_object_mut()
        {
            for (key, value) in extra {
                if key != "membership" {
                    content.insert(key, value);
                }
            }
        }
        event["origin"] = Value::String(self.server_name.clone());
        event["origin_server_ts"] = Value::from(crate::key_ring::now_ms());
        if let Some(object) = event.as_object_mut() {
            for key in ["signatures", "hashes", "unsigned"] {
                object.remove(key);
            }
        }
        let mut object: CanonicalJsonObject = serde_json::from_value(event).map_err(|e| {
            ApiError::Unavailable(format!("{server}: bad {membership} template: {e}"))
        })?;
        if rules.event_id_format == EventIdFormatVersion::V1 {
            object.insert(
                "event_id".into(),
                CanonicalJsonValue::String(format!(
                    "${}:{}",
                    ruma::TransactionId::new(),
                    self.server_name
                )),
            );
        }
        ruma::signatures::hash_and_sign_event(
            &self.server_name,
            &self.key.key_pair,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| ApiError::Internal(format!("signing the {membership}: {e}")))?;
        let event_id =
            pdus::event_id_of(&object, &rules).map_err(|e| ApiError::Internal(e.to_string()))?;
        // send_knock has only a v1; join and leave have a v2.
        let send_version = if membership == "knock" { "v1" } else { "v2" };
        let path = format!(
            "/_matrix/federation/{send_version}/send_{membership}/{}/{}",
            encode(room_id),
            encode(&event_id)
        );
        let body = serde_json::to_value(&object).map_err(|e| ApiError::Internal(e.to_string()))?;
        // Left unparsed: a join's answer may hold a large room's state.
        let answer = self
            .client
            .send_raw(server, http::Method::PUT, &path, Some(&body))
            .await?;
        Ok((version, rules, event_id, object, answer))
    }

    /// A local user's leave (rejecting another server's invite) or knock
    /// on a room we are not in: make_{membership} and send_{membership}
    /// through `servers`, then the roomserver announces it.
    pub(crate) async fn remote_membership(
        &self,
        request: fed_pb::JoinRoomRequest,
        membership: &str,
    ) -> Result<fed_pb::JoinRoomResponse, ApiError> {
        let mut last_error = ApiError::NotFound(format!("no server to {membership} through"));
        for server in request.servers.iter().filter(|s| **s != self.server_name) {
            let sent = self
                .make_and_send(
                    server,
                    (&request.room_id, &request.user_id),
                    membership,
                    &request.content_json,
                )
                .await
                .and_then(|(_, _, event_id, object, answer)| {
                    let answer = ganglion_outbound::json_answer(server, &answer)?;
                    Ok((event_id, object, answer))
                });
            match sent {
                Ok((event_id, object, answer)) => {
                    let stripped_state_json = answer["knock_room_state"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|e| e.is_object())
                        .map(|e| e.to_string().into_bytes())
                        .collect();
                    let announced = self
                        .roomserver
                        .remote_membership(pb::RemoteMembershipRequest {
                            room_id: request.room_id.clone(),
                            user_id: request.user_id.clone(),
                            event_id: event_id.clone(),
                            event_json: serde_json::to_vec(&object)
                                .map_err(|e| ApiError::Internal(e.to_string()))?,
                            membership: membership.to_owned(),
                            stripped_state_json,
                            via_server: server.clone(),
                        })
                        .await?;
                    return Ok(fed_pb::JoinRoomResponse {
                        event_id,
                        output_position: announced.output_position,
                    });
                }
                Err(error) => {
                    tracing::info!(server, room_id = %request.room_id, ?error, membership, "a membership change through a server failed");
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: &str, kind: &str, auth: &[&str]) -> CheckedPdu {
        CheckedPdu {
            event_id: id.into(),
            object: serde_json::from_value(json!({ "type": kind, "auth_events": auth }))
                .expect("object"),
        }
    }

    #[test]
    fn auth_events_come_first_and_the_create_event_before_all() {
        let ordered = auth_order(vec![
            event("$msg", "m.room.message", &["$pl", "$join"]),
            event("$pl", "m.room.power_levels", &["$join"]),
            // Version 12: the creator's join names no auth event at all.
            event("$join", "m.room.member", &[]),
            event("$create", "m.room.create", &[]),
            event("$other", "m.room.topic", &["$elsewhere"]),
        ]);
        let ids: Vec<&str> = ordered.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids[0], "$create");
        let at = |id: &str| ids.iter().position(|i| *i == id).expect("placed");
        assert!(at("$join") < at("$pl") && at("$pl") < at("$msg"));
        assert_eq!(ids.len(), 5);
    }

    #[test]
    fn rounds_keep_the_order_events_came_in_and_a_cycle_goes_last() {
        let ordered = auth_order(vec![
            event("$b", "m.room.member", &["$a", "$a"]),
            event("$loop1", "m.room.member", &["$loop2"]),
            event("$a", "m.room.power_levels", &["$create"]),
            event("$c", "m.room.member", &["$create"]),
            event("$loop2", "m.room.member", &["$loop1", "$a"]),
            event("$self", "m.room.member", &["$self"]),
            event("$create", "m.room.create", &[]),
            event("$d", "m.room.member", &["$b", "$c"]),
        ]);
        let ids: Vec<&str> = ordered.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "$create", "$a", "$c", "$b", "$d", "$loop1", "$loop2", "$self"
            ]
        );
    }
}
