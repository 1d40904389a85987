//! The `RoomserverApi` implementation. Writes are not applied here: they are
//! appended to `roomserver.input` (keyed by room) and this replica waits for
//! whichever replica owns the room's partition to deliver the outcome.

use std::time::Duration;

use async_trait::async_trait;
use ganglion_api::ApiError;
use ganglion_api::proto::common::{Empty, LogPosition};
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::roomserver::{RoomserverApi, RoomserverClient};
use ganglion_api::topics::{PAYLOAD_VERSION, encode};
use ganglion_log::OutgoingRecord;

use ruma::canonical_json::CanonicalJsonObject;
use tokio::sync::oneshot;

use crate::RoomserverService;
use crate::consumers::input::Answer;
use crate::events::{self, Signer, random_id};

/// How long a caller waits for its input to be processed.
const INPUT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a caller of an input is answered.
pub(crate) type Outcome = Result<Answer, ApiError>;
/// A caller waiting for an input's outcome.
pub(crate) type Waiter = oneshot::Sender<Outcome>;

pub(crate) fn parse_object(bytes: &[u8]) -> Result<CanonicalJsonObject, ApiError> {
    if bytes.is_empty() {
        return Ok(CanonicalJsonObject::new());
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidInput(format!("content: {e}")))?;
    serde_json::from_value::<CanonicalJsonObject>(value)
        .map_err(|e| ApiError::InvalidInput(format!("content must be a JSON object: {e}")))
}

impl Answer {
    fn into_events(self) -> Result<pb::InputResponse, ApiError> {
        match self {
            Answer::Events(response) => Ok(response),
            Answer::Pdus(_) => Err(ApiError::Internal("unexpected answer".into())),
        }
    }
}

impl RoomserverService {
    /// The full auth chain of events (not including them), oldest first.
    pub(crate) async fn auth_chain(
        &self,
        event_ids: &[String],
    ) -> Result<Vec<std::sync::Arc<crate::events::Pdu>>, ApiError> {
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut chain = Vec::new();
        let ids: Vec<&str> = event_ids.iter().map(String::as_str).collect();
        let mut frontier: Vec<String> = self
            .storage
            .events_by_id(&ids)
            .await?
            .into_values()
            .flat_map(|e| {
                e.pdu
                    .auth_events
                    .iter()
                    .map(|id| id.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        while !frontier.is_empty() {
            frontier.retain(|id| seen.insert(id.clone()));
            if frontier.is_empty() {
                break;
            }
            let ids: Vec<&str> = frontier.iter().map(String::as_str).collect();
            let found = self.storage.events_by_id(&ids).await?;
            frontier = found
                .values()
                .flat_map(|e| e.pdu.auth_events.iter().map(|id| id.to_string()))
                .filter(|id| !seen.contains(id))
                .collect();
            chain.extend(found.into_values().map(|e| e.pdu));
        }
        chain.sort_by(|a, b| a.depth.cmp(&b.depth).then(a.event_id.cmp(&b.event_id)));
        Ok(chain)
    }

    /// Appends an input record and waits for its outcome.
    async fn submit(
        &self,
        room_id: &str,
        request_id: Option<String>,
        kind: topic_pb::roomserver_input::Kind,
    ) -> Result<Answer, ApiError> {
        let request_id = request_id.unwrap_or_else(|| random_id(24));
        let receiver = self.await_outcome(&request_id);
        let record = topic_pb::RoomserverInput {
            version: PAYLOAD_VERSION,
            request_id: request_id.clone(),
            reply_to: self.reply_to.clone(),
            room_id: room_id.to_owned(),
            kind: Some(kind),
        };
        let mut headers = Vec::new();
        ganglion_base::telemetry::inject_into_headers(&mut headers);
        let produced = self
            .log
            .produce(
                &self.topics.roomserver_input,
                OutgoingRecord {
                    key: room_id.as_bytes().to_vec(),
                    headers,
                    payload: encode(&record),
                },
            )
            .await;
        if let Err(error) = produced {
            drop(receiver);
            self.forget_closed_waiters(&request_id);
            return Err(ApiError::Unavailable(format!("roomserver.input: {error}")));
        }
        // Awaited in its own statement: the timed-out receiver is dropped
        // here, so `forget_closed_waiters` below sees it closed (a
        // temporary in the `match` would live through the match).
        let waited = tokio::time::timeout(INPUT_TIMEOUT, receiver).await;
        match waited {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ApiError::Internal("outcome dropped".into())),
            Err(_) => {
                self.forget_closed_waiters(&request_id);
                Err(ApiError::Timeout)
            }
        }
    }

    pub(crate) fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<Waiter>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits, beside any other caller already waiting, for the outcome of
    /// the input `request_id`.
    pub(crate) fn await_outcome(&self, request_id: &str) -> oneshot::Receiver<Outcome> {
        let (sender, receiver) = oneshot::channel();
        self.lock_pending()
            .entry(request_id.to_owned())
            .or_default()
            .push(sender);
        receiver
    }

    /// Drops the waiters of `request_id` that stopped waiting (timed out,
    /// or their input was never appended).
    fn forget_closed_waiters(&self, request_id: &str) {
        let mut pending = self.lock_pending();
        if let Some(waiters) = pending.get_mut(request_id) {
            waiters.retain(|waiter| !waiter.is_closed());
            if waiters.is_empty() {
                pending.remove(request_id);
            }
        }
    }

    /// Answers every caller here waiting for `request_id`: retries of one
    /// transaction are one request, and the first outcome answers them all
    /// (later deliveries of the same request find no one waiting).
    fn answer_waiters(&self, request_id: &str, outcome: Outcome) {
        let Some(waiters) = self.lock_pending().remove(request_id) else {
            return;
        };
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Hands an outcome to the waiting caller, here or on the accepting replica.
    pub(crate) async fn deliver(
        &self,
        reply_to: &str,
        request_id: &str,
        outcome: Result<Answer, ApiError>,
    ) {
        if reply_to == self.reply_to {
            self.answer_waiters(request_id, outcome);
            return;
        }
        let client = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            match peers.get(reply_to) {
                Some(client) => client.clone(),
                None => match RoomserverClient::new(reply_to, self.internal_secret.clone()) {
                    Ok(client) => {
                        peers.insert(reply_to.to_owned(), client.clone());
                        client
                    }
                    Err(error) => {
                        tracing::warn!(%reply_to, %error, "cannot reach the accepting replica");
                        return;
                    }
                },
            }
        };
        let result = match outcome {
            Ok(Answer::Events(accepted)) => pb::outcome::Result::Accepted(accepted),
            Ok(Answer::Pdus(accepted)) => pb::outcome::Result::PdusAccepted(accepted),
            Err(error) => pb::outcome::Result::Rejected(error.into_wire()),
        };
        if let Err(error) = client
            .deliver_outcome(pb::Outcome {
                request_id: request_id.to_owned(),
                result: Some(result),
            })
            .await
        {
            // The caller times out; the write itself is durable.
            tracing::warn!(%reply_to, %error, "could not deliver an outcome");
        }
    }

    pub(crate) fn position(&self, position: ganglion_log::Position) -> LogPosition {
        LogPosition {
            topic: self.topics.roomserver_output.clone(),
            partition: position.partition,
            offset: position.offset,
        }
    }
}

fn validate_templates(templates: &[pb::EventTemplate]) -> Result<(), ApiError> {
    for template in templates {
        if template.event_type.is_empty() {
            return Err(ApiError::InvalidInput("event type is empty".into()));
        }
        parse_object(&template.content_json)?;
        if template.content_json.len() > events::MAX_PDU_BYTES {
            return Err(ApiError::TooLarge("event exceeds 65536 bytes".into()));
        }
    }
    Ok(())
}

#[async_trait]
impl RoomserverApi for RoomserverService {
    async fn input(&self, request: pb::InputRequest) -> Result<pb::InputResponse, ApiError> {
        ruma::RoomId::parse(&request.room_id)
            .map_err(|e| ApiError::InvalidInput(format!("room ID: {e}")))?;
        if request.templates.is_empty() {
            return Err(ApiError::InvalidInput("no events".into()));
        }
        validate_templates(&request.templates)?;
        let room_id = request.room_id.clone();
        // A client retrying a send (same device, same transaction ID, same
        // room and endpoint) names the same request: if the first attempt
        // was processed after its caller gave up, the retry is answered
        // with its events, not doubled.
        let request_id = (!request.transaction_id.is_empty()).then(|| {
            let first = request.templates.first();
            ganglion_api::roomserver::transaction_request_id(
                first.map(|t| t.sender.as_str()).unwrap_or_default(),
                &request.device_id,
                &room_id,
                first.map(|t| t.event_type.as_str()).unwrap_or_default(),
                first.and_then(|t| t.redacts.as_deref()),
                &request.transaction_id,
            )
        });
        self.submit(
            &room_id,
            request_id,
            topic_pb::roomserver_input::Kind::NewLocalEvents(topic_pb::NewLocalEvents {
                templates: request.templates,
                device_id: request.device_id,
                transaction_id: request.transaction_id,
            }),
        )
        .await
        .and_then(Answer::into_events)
    }

    async fn create_room(
        &self,
        request: pb::CreateRoomRequest,
    ) -> Result<pb::InputResponse, ApiError> {
        validate_templates(&request.initial_state)?;
        let extra = parse_object(&request.create_content_json)?;
        if let Some(alias) = &request.alias {
            ruma::RoomAliasId::parse(alias)
                .map_err(|e| ApiError::InvalidInput(format!("alias: {e}")))?;
            if self.storage.resolve_alias(alias).await?.is_some() {
                return Err(ApiError::RoomInUse);
            }
        }
        let provisional_room_id = format!("!{}:{}", random_id(18), self.server_name);
        let signer = Signer {
            server_name: &self.server_name,
            key: &self.signing_key.key_pair,
        };
        let (room_id, create) = events::build_create_event(
            &request.room_version,
            &request.creator,
            extra,
            &provisional_room_id,
            &signer,
        )?;
        self.submit(
            room_id.as_str(),
            None,
            topic_pb::roomserver_input::Kind::NewRoom(topic_pb::NewRoom {
                room_version: request.room_version,
                create_event_json: create.json.as_bytes().to_vec(),
                initial_state: request.initial_state,
                alias: request.alias,
            }),
        )
        .await
        .and_then(Answer::into_events)
    }

    async fn deliver_outcome(&self, request: pb::Outcome) -> Result<Empty, ApiError> {
        let outcome = match request.result {
            Some(pb::outcome::Result::Accepted(accepted)) => Ok(Answer::Events(accepted)),
            Some(pb::outcome::Result::PdusAccepted(accepted)) => Ok(Answer::Pdus(accepted)),
            Some(pb::outcome::Result::Rejected(error)) => Err(ApiError::from_wire_error(error)),
            None => Err(ApiError::Internal("empty outcome".into())),
        };
        self.answer_waiters(&request.request_id, outcome);
        Ok(Empty {})
    }

    async fn query_room_version(
        &self,
        request: pb::QueryRoomVersionRequest,
    ) -> Result<pb::QueryRoomVersionResponse, ApiError> {
        let room = self
            .storage
            .room(&request.room_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
        Ok(pb::QueryRoomVersionResponse {
            room_version: room.room_version,
        })
    }

    async fn query_membership(
        &self,
        request: pb::QueryMembershipRequest,
    ) -> Result<pb::QueryMembershipResponse, ApiError> {
        if self.storage.room(&request.room_id).await?.is_none() {
            let Some(remote) = self
                .storage
                .remote_membership(&request.room_id, &request.user_id)
                .await?
            else {
                return Ok(pb::QueryMembershipResponse::default());
            };
            let invite = remote.membership == "invite";
            // Invites recorded before knocks were have no server: the
            // inviter's.
            let via_server = Some(remote.via_server)
                .filter(|via| !via.is_empty())
                .or_else(|| ganglion_api::users::server_of(&remote.sender).map(str::to_owned));
            return Ok(pb::QueryMembershipResponse {
                room_exists: false,
                invited_by: invite.then_some(remote.sender),
                via_server,
                membership: remote.membership,
            });
        }
        let membership = self
            .current_membership(&request.room_id, &request.user_id)
            .await?;
        Ok(pb::QueryMembershipResponse {
            room_exists: true,
            membership,
            ..Default::default()
        })
    }

    async fn query_state_event(
        &self,
        request: pb::QueryStateEventRequest,
    ) -> Result<pb::QueryStateEventResponse, ApiError> {
        let json = self
            .storage
            .state_event(&request.room_id, &request.event_type, &request.state_key)
            .await?;
        Ok(pb::QueryStateEventResponse {
            event_json: json.map(String::into_bytes),
        })
    }

    async fn resolve_alias(
        &self,
        request: pb::ResolveAliasRequest,
    ) -> Result<pb::ResolveAliasResponse, ApiError> {
        let room_id = self.storage.resolve_alias(&request.alias).await?;
        let servers = if room_id.is_some() {
            vec![self.server_name.clone()]
        } else {
            vec![]
        };
        Ok(pb::ResolveAliasResponse { room_id, servers })
    }

    async fn input_pdus(
        &self,
        request: pb::InputPdusRequest,
    ) -> Result<pb::InputPdusResponse, ApiError> {
        ruma::RoomId::parse(&request.room_id)
            .map_err(|e| ApiError::InvalidInput(format!("room ID: {e}")))?;
        events::rules_for(&request.room_version)?;
        if request.pdus.is_empty() {
            return Err(ApiError::InvalidInput("no events".into()));
        }
        if let Some(pdu) = request
            .pdus
            .iter()
            .find(|p| p.event_json.len() > events::MAX_PDU_BYTES)
        {
            return Err(ApiError::TooLarge(format!(
                "a PDU of {} bytes exceeds 65536",
                pdu.event_json.len()
            )));
        }
        let room_id = request.room_id.clone();
        match self
            .submit(
                &room_id,
                None,
                topic_pb::roomserver_input::Kind::InputPdus(topic_pb::InputPdus {
                    room_version: request.room_version,
                    pdus: request.pdus,
                }),
            )
            .await?
        {
            Answer::Pdus(response) => Ok(response),
            Answer::Events(_) => Err(ApiError::Internal("unexpected answer".into())),
        }
    }

    async fn query_state(
        &self,
        request: pb::QueryStateRequest,
    ) -> Result<pb::QueryStateResponse, ApiError> {
        let Some(room) = self.storage.room(&request.room_id).await? else {
            return Ok(pb::QueryStateResponse::default());
        };
        let snapshot = if request.event_id.is_empty() {
            room.snapshot_nid
        } else {
            let stored = self
                .storage
                .events_by_id(&[request.event_id.as_str()])
                .await?;
            let event = stored
                .into_values()
                .next()
                .filter(|e| e.room_nid == room.room_nid)
                .ok_or_else(|| ApiError::NotFound("unknown event".into()))?;
            event
                .state_before
                .ok_or_else(|| ApiError::NotFound("no state is known at that event".into()))?
        };
        let state = if snapshot == 0 && request.event_id.is_empty() {
            self.storage.legacy_current_state(room.room_nid).await?
        } else {
            self.storage.load_state(snapshot).await?.0
        };
        let mut events: Vec<_> = state.into_values().collect();
        events.sort_by(|a, b| a.depth.cmp(&b.depth).then(a.event_id.cmp(&b.event_id)));
        Ok(pb::QueryStateResponse {
            room_exists: true,
            room_version: room.room_version,
            state_event_ids: events.iter().map(|e| e.event_id.to_string()).collect(),
            state_events_json: events.iter().map(|e| e.json.as_bytes().to_vec()).collect(),
        })
    }

    async fn query_auth_chain(
        &self,
        request: pb::QueryAuthChainRequest,
    ) -> Result<pb::QueryAuthChainResponse, ApiError> {
        let chain = self.auth_chain(&request.event_ids).await?;
        Ok(pb::QueryAuthChainResponse {
            event_ids: chain.iter().map(|e| e.event_id.to_string()).collect(),
            events_json: chain.iter().map(|e| e.json.as_bytes().to_vec()).collect(),
        })
    }

    async fn query_events(
        &self,
        request: pb::QueryEventsRequest,
    ) -> Result<pb::QueryEventsResponse, ApiError> {
        let ids: Vec<&str> = request.event_ids.iter().map(String::as_str).collect();
        let stored = self.storage.events_by_id(&ids).await?;
        let rooms = self
            .storage
            .room_ids(stored.values().map(|s| s.room_nid))
            .await?;
        let mut events = Vec::with_capacity(stored.len());
        for id in &request.event_ids {
            let Some(event) = ruma::EventId::parse(id).ok().and_then(|id| stored.get(&id)) else {
                continue;
            };
            events.push(pb::StoredEvent {
                event_id: id.clone(),
                event_json: event.pdu.json.as_bytes().to_vec(),
                room_id: rooms.get(&event.room_nid).cloned().unwrap_or_default(),
                rejected: event.pdu.rejected,
                outlier: event.outlier,
                soft_failed: event.soft_failed,
            });
        }
        Ok(pb::QueryEventsResponse { events })
    }

    async fn query_forward_extremities(
        &self,
        request: pb::QueryForwardExtremitiesRequest,
    ) -> Result<pb::QueryForwardExtremitiesResponse, ApiError> {
        let room = self
            .storage
            .room(&request.room_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
        Ok(pb::QueryForwardExtremitiesResponse {
            event_ids: self.storage.forward_extremities(&room).await?,
            depth: room.depth,
        })
    }

    async fn set_alias(&self, request: pb::SetAliasRequest) -> Result<Empty, ApiError> {
        self.set_alias_for(request).await?;
        Ok(Empty {})
    }

    async fn remove_alias(&self, request: pb::RemoveAliasRequest) -> Result<Empty, ApiError> {
        self.remove_alias_for(request).await?;
        Ok(Empty {})
    }

    async fn room_aliases(
        &self,
        request: pb::RoomAliasesRequest,
    ) -> Result<pb::RoomAliasesResponse, ApiError> {
        Ok(pb::RoomAliasesResponse {
            aliases: self.storage.aliases_of(&request.room_id).await?,
        })
    }

    async fn set_visibility(&self, request: pb::SetVisibilityRequest) -> Result<Empty, ApiError> {
        self.set_visibility_for(request).await?;
        Ok(Empty {})
    }

    async fn get_visibility(
        &self,
        request: pb::GetVisibilityRequest,
    ) -> Result<pb::GetVisibilityResponse, ApiError> {
        if self.storage.room(&request.room_id).await?.is_none() {
            return Ok(pb::GetVisibilityResponse::default());
        }
        Ok(pb::GetVisibilityResponse {
            room_exists: true,
            public: self.storage.is_published(&request.room_id).await?,
        })
    }

    async fn public_rooms(
        &self,
        request: pb::PublicRoomsRequest,
    ) -> Result<pb::PublicRoomsResponse, ApiError> {
        self.public_rooms_page(request).await
    }

    async fn query_room_summaries(
        &self,
        request: pb::QueryRoomSummariesRequest,
    ) -> Result<pb::QueryRoomSummariesResponse, ApiError> {
        self.room_summaries(request).await
    }

    async fn report(&self, request: pb::ReportRequest) -> Result<Empty, ApiError> {
        self.report_for(request).await?;
        Ok(Empty {})
    }

    async fn forget_room(
        &self,
        request: pb::ForgetRoomRequest,
    ) -> Result<pb::InputResponse, ApiError> {
        ruma::RoomId::parse(&request.room_id)
            .map_err(|e| ApiError::InvalidInput(format!("room ID: {e}")))?;
        let room_id = request.room_id.clone();
        self.submit(
            &room_id,
            None,
            topic_pb::roomserver_input::Kind::ForgetRoom(topic_pb::ForgetRoom {
                user_id: request.user_id,
            }),
        )
        .await
        .and_then(Answer::into_events)
    }

    async fn build_event(
        &self,
        request: pb::BuildEventRequest,
    ) -> Result<pb::BuildEventResponse, ApiError> {
        let room = self
            .storage
            .room(&request.room_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
        if !request.supported_versions.is_empty()
            && !request.supported_versions.contains(&room.room_version)
        {
            return Err(ApiError::UnsupportedRoomVersion(room.room_version));
        }
        let template = request
            .template
            .ok_or_else(|| ApiError::InvalidInput("no event template".into()))?;
        let (_, rules) = events::rules_for(&room.room_version)?;
        let state = if room.snapshot_nid == 0 {
            self.storage.legacy_current_state(room.room_nid).await?
        } else {
            self.storage.load_state(room.snapshot_nid).await?.0
        };
        let extremity_ids = self.storage.forward_extremities(&room).await?;
        let ids: Vec<&str> = extremity_ids.iter().map(String::as_str).collect();
        let extremities: Vec<_> = self
            .storage
            .events_by_id(&ids)
            .await?
            .into_values()
            .map(|e| e.pdu)
            .collect();
        let view = events::RoomView {
            room_id: &request.room_id,
            rules: &rules,
            state: &state,
            forward_extremities: &extremities,
        };
        let object = events::event_for_remote(
            &view,
            events::Template {
                event_type: &template.event_type,
                state_key: template.state_key.as_deref(),
                sender: &template.sender,
                content: parse_object(&template.content_json)?,
                redacts: template.redacts.as_deref(),
            },
        )?;
        Ok(pb::BuildEventResponse {
            room_version: room.room_version,
            event_json: serde_json::to_vec(&object)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        })
    }

    async fn query_joined_members(
        &self,
        request: pb::QueryJoinedMembersRequest,
    ) -> Result<pb::QueryJoinedMembersResponse, ApiError> {
        if self.storage.room(&request.room_id).await?.is_none() {
            return Ok(pb::QueryJoinedMembersResponse::default());
        }
        Ok(pb::QueryJoinedMembersResponse {
            room_exists: true,
            user_ids: self
                .storage
                .joined_members(&request.room_id, &request.server_name, request.limit)
                .await?,
        })
    }

    async fn receive_invite(
        &self,
        request: pb::ReceiveInviteRequest,
    ) -> Result<pb::InputResponse, ApiError> {
        ruma::RoomId::parse(&request.room_id)
            .map_err(|e| ApiError::InvalidInput(format!("room ID: {e}")))?;
        if self.storage.room(&request.room_id).await?.is_some() {
            // A room we are in: the invite is one of its events.
            let response = self
                .input_pdus(pb::InputPdusRequest {
                    room_id: request.room_id.clone(),
                    room_version: request.room_version,
                    pdus: vec![pb::InputPdu {
                        kind: pb::input_pdu::Kind::New as i32,
                        event_json: request.event_json,
                        ..Default::default()
                    }],
                })
                .await?;
            return match response.outcomes.first() {
                Some(o) if matches!(o.outcome.as_str(), "accepted" | "duplicate") => {
                    Ok(pb::InputResponse {
                        room_id: request.room_id,
                        event_ids: vec![o.event_id.clone()],
                        output_position: response.output_position,
                    })
                }
                Some(o) => Err(ApiError::Forbidden(format!("{}: {}", o.outcome, o.reason))),
                None => Err(ApiError::Internal("no outcome".into())),
            };
        }
        let event: serde_json::Value = serde_json::from_slice(&request.event_json)
            .map_err(|e| ApiError::InvalidInput(format!("the invite: {e}")))?;
        let (Some(invitee), Some(sender)) = (event["state_key"].as_str(), event["sender"].as_str())
        else {
            return Err(ApiError::InvalidInput(
                "the invite names no invitee or sender".into(),
            ));
        };
        self.storage
            .record_remote_invite(&request.room_id, invitee, &request.event_id, sender)
            .await?;
        let kind = topic_pb::roomserver_output::Kind::InviteReceived(topic_pb::InviteReceived {
            room_id: request.room_id.clone(),
            room_version: request.room_version,
            event_id: request.event_id.clone(),
            event_json: request.event_json,
            invite_room_state_json: request.invite_room_state_json,
        });
        self.announce_out_of_room(request.room_id, request.event_id, kind)
            .await
    }

    async fn remote_membership(
        &self,
        request: pb::RemoteMembershipRequest,
    ) -> Result<pb::InputResponse, ApiError> {
        ruma::RoomId::parse(&request.room_id)
            .map_err(|e| ApiError::InvalidInput(format!("room ID: {e}")))?;
        if !matches!(request.membership.as_str(), "leave" | "knock") {
            return Err(ApiError::InvalidInput(format!(
                "a remote membership of {:?}",
                request.membership
            )));
        }
        let leave = request.membership == "leave";
        let announced_event = request.event_id.clone();
        let kind =
            topic_pb::roomserver_output::Kind::RemoteMembership(topic_pb::RemoteMembership {
                room_id: request.room_id.clone(),
                user_id: request.user_id.clone(),
                event_id: request.event_id.clone(),
                event_json: request.event_json,
                membership: request.membership,
                stripped_state_json: request.stripped_state_json,
            });
        let announced = self
            .announce_out_of_room(request.room_id.clone(), request.event_id, kind)
            .await?;
        if leave {
            self.storage
                .forget_remote_invite(&request.room_id, &request.user_id)
                .await?;
        } else {
            self.storage
                .record_remote_knock(
                    &request.room_id,
                    &request.user_id,
                    &announced_event,
                    &request.via_server,
                )
                .await?;
        }
        Ok(announced)
    }

    async fn query_joined_rooms(
        &self,
        request: pb::QueryJoinedRoomsRequest,
    ) -> Result<pb::QueryJoinedRoomsResponse, ApiError> {
        if request.memberships.is_empty() {
            return Ok(pb::QueryJoinedRoomsResponse {
                room_ids: self.storage.joined_rooms(&request.user_id).await?,
            });
        }
        let mut room_ids = Vec::new();
        for membership in &request.memberships {
            room_ids.extend(
                self.storage
                    .rooms_with_membership(&request.user_id, membership)
                    .await?,
            );
        }
        room_ids.sort();
        room_ids.dedup();
        Ok(pb::QueryJoinedRoomsResponse { room_ids })
    }

    async fn query_server_visibility(
        &self,
        request: pb::QueryServerVisibilityRequest,
    ) -> Result<pb::QueryServerVisibilityResponse, ApiError> {
        self.server_visibility(request).await
    }

    async fn query_may_send_state(
        &self,
        request: pb::QueryMaySendStateRequest,
    ) -> Result<pb::QueryMaySendStateResponse, ApiError> {
        let room = self
            .storage
            .room(&request.room_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
        Ok(pb::QueryMaySendStateResponse {
            allowed: self
                .may_send_state(
                    &request.room_id,
                    &room.room_version,
                    &request.user_id,
                    &request.event_type,
                )
                .await?,
        })
    }
}

impl RoomserverService {
    /// Writes an output record about a room this server is not in (an
    /// invite from another server, its rejection): there is no room
    /// partition work to order it after, so it goes straight to the log.
    async fn announce_out_of_room(
        &self,
        room_id: String,
        event_id: String,
        kind: topic_pb::roomserver_output::Kind,
    ) -> Result<pb::InputResponse, ApiError> {
        let position = ganglion_api::topics::produce(
            &*self.log,
            &self.topics.roomserver_output,
            &room_id,
            &topic_pb::RoomserverOutput {
                version: PAYLOAD_VERSION,
                kind: Some(kind),
            },
        )
        .await?;
        Ok(pb::InputResponse {
            room_id,
            event_ids: vec![event_id],
            output_position: Some(position),
        })
    }
}
