//! Backfill: history of a room we are in that is older than what we hold
//! (we joined it late, through another server). Asked for by the syncapi
//! when `/messages` pages past its oldest event: `/backfill` from the
//! events whose predecessors we lack, from the servers with the most
//! members in the room, checked like every received PDU and handed to the
//! roomserver as historical events (stored with their state, never moving
//! the room). An event whose predecessors even the answer lacks is taken
//! with the state before it, fetched with `state_ids`; a few per batch.

use std::collections::{HashMap, HashSet};

use ganglion_api::ApiError;
use ganglion_api::proto::common::LogPosition;
use ganglion_api::proto::federationapi as fed_pb;
use ganglion_api::proto::roomserver as pb;
use serde_json::Value;

use crate::FederationService;
use crate::pdus::{self, CheckedPdu};
use ganglion_base::http::percent_encode as encode;

/// The most events one backfill asks a server for.
pub(crate) const MAX_BACKFILL: u32 = 100;
/// The most events a backfill may start from.
const MAX_FROM: usize = 20;
/// Servers asked in turn until one gives new history.
const SERVERS_TRIED: usize = 5;
/// Events of one batch taken with fetched state (their predecessors
/// missing from the batch): each costs a `state_ids` and what it lacks.
const STATE_FETCHES: usize = 3;

impl FederationService {
    pub(crate) async fn backfill_room(
        &self,
        request: fed_pb::BackfillRequest,
    ) -> Result<fed_pb::BackfillResponse, ApiError> {
        ruma::RoomId::parse(&request.room_id)
            .map_err(|_| ApiError::InvalidInput("not a room ID".into()))?;
        if request.event_ids.is_empty() || request.event_ids.len() > MAX_FROM {
            return Err(ApiError::InvalidInput(format!(
                "backfill starts from 1 to {MAX_FROM} events"
            )));
        }
        if let Some(bad) = request
            .event_ids
            .iter()
            .find(|id| ruma::EventId::parse(id.as_str()).is_err())
        {
            return Err(ApiError::InvalidInput(format!("{bad} is not an event ID")));
        }
        let limit = request.limit.clamp(1, MAX_BACKFILL);
        let version = self.room_version(&request.room_id).await?;
        let mut answer = fed_pb::BackfillResponse::default();
        for server in self
            .servers_by_members(&request.room_id)
            .await?
            .iter()
            .take(SERVERS_TRIED)
        {
            match self
                .backfill_from(
                    server,
                    &request.room_id,
                    &version,
                    &request.event_ids,
                    limit,
                )
                .await
            {
                Ok(taken) if taken.taken > 0 => return Ok(taken),
                Ok(taken) => answer = taken,
                Err(error) => {
                    tracing::info!(server, room_id = %request.room_id, ?error, "backfill from a server failed");
                }
            }
        }
        Ok(answer)
    }

    /// The other servers with members joined to the room, most members first.
    async fn servers_by_members(&self, room_id: &str) -> Result<Vec<String>, ApiError> {
        let members = self
            .roomserver
            .query_joined_members(pb::QueryJoinedMembersRequest {
                room_id: room_id.to_owned(),
                server_name: String::new(),
                limit: 0,
            })
            .await?
            .user_ids;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for server in members
            .iter()
            .filter_map(|user| ganglion_api::users::server_of(user))
            .filter(|server| *server != self.server_name)
        {
            *counts.entry(server).or_default() += 1;
        }
        let mut servers: Vec<(&str, usize)> = counts.into_iter().collect();
        servers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        Ok(servers.into_iter().map(|(s, _)| s.to_owned()).collect())
    }

    /// One `/backfill` from `server`, and what the roomserver took of it.
    async fn backfill_from(
        &self,
        server: &str,
        room_id: &str,
        version: &str,
        from: &[String],
        limit: u32,
    ) -> Result<fed_pb::BackfillResponse, ApiError> {
        let mut path = format!(
            "/_matrix/federation/v1/backfill/{}?limit={limit}",
            encode(room_id)
        );
        for id in from {
            path.push_str("&v=");
            path.push_str(&encode(id));
        }
        let answer = self
            .client
            .send(server, http::Method::GET, &path, None)
            .await?;
        // At most what was asked for; the rest of an oversized answer is
        // not looked at.
        let pdus: Vec<Value> = answer["pdus"]
            .as_array()
            .into_iter()
            .flatten()
            .take(limit as usize)
            .cloned()
            .collect();
        let mut seen = HashSet::new();
        let mut pending: Vec<CheckedPdu> = Vec::with_capacity(pdus.len());
        for checked in pdus::check_many(&self.key_ring, version, pdus)
            .await
            .map_err(|e| ApiError::InvalidInput(e.to_string()))?
        {
            match checked {
                Ok(pdu) if seen.insert(pdu.event_id.clone()) => pending.push(pdu),
                Ok(_) => {}
                Err(error) => {
                    tracing::info!(server, room_id, %error, "a backfilled event was refused")
                }
            }
        }
        // Oldest first: each event's predecessors before it.
        pending.sort_by_key(|pdu| match pdu.object.get("depth") {
            Some(ruma::CanonicalJsonValue::Integer(depth)) => i64::from(*depth),
            _ => 0,
        });
        let mut taken = 0;
        let mut position: Option<LogPosition> = None;
        let mut fetches = 0;
        while !pending.is_empty() {
            let inputs = pending
                .iter()
                .map(|pdu| pb::InputPdu {
                    kind: pb::input_pdu::Kind::Old as i32,
                    event_json: pdu.json_bytes(),
                    ..Default::default()
                })
                .collect();
            let mut outcomes = Vec::new();
            for pdus in pdus::input_records(inputs) {
                let response = self
                    .roomserver
                    .input_pdus(pb::InputPdusRequest {
                        room_id: room_id.to_owned(),
                        room_version: version.to_owned(),
                        pdus,
                    })
                    .await?;
                taken += count_taken(&response, &mut position);
                outcomes.extend(response.outcomes);
            }
            let stuck: HashSet<&str> = outcomes
                .iter()
                .filter(|o| {
                    matches!(
                        o.outcome.as_str(),
                        "missing_prev_events" | "missing_auth_events"
                    )
                })
                .map(|o| o.event_id.as_str())
                .collect();
            let mut stuck: Vec<CheckedPdu> = pending
                .into_iter()
                .filter(|pdu| stuck.contains(pdu.event_id.as_str()))
                .collect();
            if stuck.is_empty() || fetches == STATE_FETCHES {
                break;
            }
            // The oldest event whose predecessors we lack, with the state
            // before it; those after it may then follow from it.
            let oldest = stuck.remove(0);
            fetches += 1;
            let response = self
                .input_with_fetched_state(
                    server,
                    room_id,
                    version,
                    &oldest,
                    pb::input_pdu::Kind::Old,
                )
                .await?;
            taken += count_taken(&response, &mut position);
            pending = stuck;
        }
        tracing::debug!(server, room_id, taken, fetches, "backfilled");
        Ok(fed_pb::BackfillResponse {
            taken,
            output_position: position,
        })
    }
}

/// The events a response took as history, keeping the latest output
/// position seen.
fn count_taken(response: &pb::InputPdusResponse, position: &mut Option<LogPosition>) -> u32 {
    if let Some(at) = &response.output_position
        && position.as_ref().is_none_or(|p| p.offset < at.offset)
    {
        *position = Some(at.clone());
    }
    response
        .outcomes
        .iter()
        .filter(|o| o.outcome == "accepted")
        .count() as u32
}
