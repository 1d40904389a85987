//! Filling gaps in a received DAG. A PDU whose prev events we do not hold
//! (we were down, or the sender's server caught up by sending only its
//! latest event) is taken after what is missing: first the events between
//! our forward extremities and it, from its sender's server
//! (`get_missing_events`); failing that, the state before it
//! (`state_ids`, then `/event` for what we lack) so it can be taken with
//! that state. Both within limits, so a peer cannot make us fetch without
//! end.

use std::collections::HashSet;

use ganglion_api::ApiError;
use ganglion_api::proto::roomserver as pb;
use serde_json::{Value, json};

use crate::FederationService;
use crate::joins::auth_order;
use crate::pdus::{self, CheckedPdu};
use ganglion_base::http::percent_encode as encode;

/// The most events one `get_missing_events` asks for.
const MISSING_EVENTS_LIMIT: usize = 50;
/// The most state and auth chain events fetched for one gap.
const MAX_STATE_EVENTS: usize = 5_000;

impl FederationService {
    /// Takes a new PDU `origin` sent, filling a gap before it if need be
    /// and the transaction's `budget` allows (else the PDU waits: its
    /// missing events come with a later one, or by backfill).
    pub(crate) async fn input_filling_gaps(
        &self,
        origin: &str,
        room_id: &str,
        version: &str,
        pdu: &CheckedPdu,
        budget: &mut crate::inbound::GapBudget,
    ) -> Result<pb::PduOutcome, ApiError> {
        let outcome = self.input_new_pdu(room_id, version.to_owned(), pdu).await?;
        if outcome.outcome != "missing_prev_events" {
            return Ok(outcome);
        }
        let Some(time_left) = budget.take() else {
            tracing::info!(
                origin,
                room_id,
                "gap not filled: the transaction's budget is spent"
            );
            return Ok(outcome);
        };
        match tokio::time::timeout(time_left, self.fill_gap(origin, room_id, version, pdu)).await {
            Ok(filled) => filled,
            Err(_) => {
                tracing::info!(origin, room_id, "gap filling ran out of time");
                Ok(outcome)
            }
        }
    }

    /// Fetches what comes between our room and `pdu` (missing events,
    /// else the state before it), then takes it.
    async fn fill_gap(
        &self,
        origin: &str,
        room_id: &str,
        version: &str,
        pdu: &CheckedPdu,
    ) -> Result<pb::PduOutcome, ApiError> {
        if let Err(error) = self
            .fetch_missing_events(origin, room_id, version, pdu)
            .await
        {
            tracing::info!(origin, room_id, ?error, "get_missing_events failed");
        }
        let outcome = self.input_new_pdu(room_id, version.to_owned(), pdu).await?;
        if outcome.outcome != "missing_prev_events" {
            return Ok(outcome);
        }
        self.input_with_fetched_state(origin, room_id, version, pdu, pb::input_pdu::Kind::New)
            .await?
            .outcomes
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("no outcome for the PDU".into()))
    }

    /// Asks `origin` for the events between our forward extremities and
    /// `pdu`, and takes them oldest first.
    async fn fetch_missing_events(
        &self,
        origin: &str,
        room_id: &str,
        version: &str,
        pdu: &CheckedPdu,
    ) -> Result<(), ApiError> {
        let extremities = self
            .roomserver
            .query_forward_extremities(pb::QueryForwardExtremitiesRequest {
                room_id: room_id.to_owned(),
            })
            .await?;
        let body = json!({
            "earliest_events": extremities.event_ids,
            "latest_events": [pdu.event_id],
            "limit": MISSING_EVENTS_LIMIT,
            "min_depth": 0,
        });
        let path = format!(
            "/_matrix/federation/v1/get_missing_events/{}",
            encode(room_id)
        );
        let answer = self
            .client
            .send(origin, http::Method::POST, &path, Some(&body))
            .await?;
        let mut events: Vec<&Value> = answer["events"].as_array().into_iter().flatten().collect();
        events.sort_by_key(|e| e["depth"].as_i64().unwrap_or(0));
        for event in events.into_iter().take(MISSING_EVENTS_LIMIT) {
            match pdus::check(&self.key_ring, version, event).await {
                Ok(checked) if checked.event_id != pdu.event_id => {
                    let outcome = self
                        .input_new_pdu(room_id, version.to_owned(), &checked)
                        .await?;
                    tracing::debug!(room_id, event_id = %checked.event_id, outcome = %outcome.outcome, "missing event taken");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::info!(origin, room_id, %error, "a missing event was refused");
                }
            }
        }
        Ok(())
    }

    /// Fetches the state before `pdu` from `origin` (what we lack of it and
    /// its auth chain as outliers), then takes `pdu` with that state, as a
    /// new event or as history (`kind`).
    pub(crate) async fn input_with_fetched_state(
        &self,
        origin: &str,
        room_id: &str,
        version: &str,
        pdu: &CheckedPdu,
        kind: pb::input_pdu::Kind,
    ) -> Result<pb::InputPdusResponse, ApiError> {
        let path = format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            encode(room_id),
            encode(&pdu.event_id)
        );
        let answer = self
            .client
            .send(origin, http::Method::GET, &path, None)
            .await?;
        let ids = |field: &str| -> Vec<String> {
            answer[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        };
        let state_ids = ids("pdu_ids");
        let mut wanted: Vec<String> = state_ids.clone();
        wanted.extend(ids("auth_chain_ids"));
        let wanted: Vec<String> = wanted
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if wanted.len() > MAX_STATE_EVENTS {
            return Err(ApiError::TooLarge(format!(
                "the state before the event has more than {MAX_STATE_EVENTS} events"
            )));
        }
        let held: HashSet<String> = self
            .roomserver
            .query_events(pb::QueryEventsRequest {
                event_ids: wanted.clone(),
            })
            .await?
            .events
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        let mut fetched = Vec::new();
        for id in wanted.iter().filter(|id| !held.contains(*id)) {
            let path = format!("/_matrix/federation/v1/event/{}", encode(id));
            let Ok(answer) = self
                .client
                .send(origin, http::Method::GET, &path, None)
                .await
            else {
                continue;
            };
            let Some(event) = answer["pdus"].get(0) else {
                continue;
            };
            match pdus::check(&self.key_ring, version, event).await {
                Ok(checked) if checked.event_id == *id => fetched.push(checked),
                Ok(_) => tracing::info!(origin, id, "/event answered with another event"),
                Err(error) => tracing::info!(origin, id, %error, "a state event was refused"),
            }
        }
        self.input_outliers(room_id, version, &auth_order(fetched), &HashSet::new())
            .await?;
        self.roomserver
            .input_pdus(pb::InputPdusRequest {
                room_id: room_id.to_owned(),
                room_version: version.to_owned(),
                pdus: vec![pb::InputPdu {
                    kind: kind as i32,
                    event_json: pdu.json_bytes(),
                    state_before: state_ids,
                    has_state_before: true,
                    announce: false,
                }],
            })
            .await
    }
}
