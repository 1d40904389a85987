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
use rand::Rng;
use ruma::canonical_json::CanonicalJsonObject;
use tokio::sync::oneshot;

use crate::RoomserverService;
use crate::events::{self, Signer};

/// How long a caller waits for its input to be processed.
const INPUT_TIMEOUT: Duration = Duration::from_secs(30);

fn random_id(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect()
}

pub(crate) fn parse_object(bytes: &[u8]) -> Result<CanonicalJsonObject, ApiError> {
    if bytes.is_empty() {
        return Ok(CanonicalJsonObject::new());
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidInput(format!("content: {e}")))?;
    serde_json::from_value::<CanonicalJsonObject>(value)
        .map_err(|e| ApiError::InvalidInput(format!("content must be a JSON object: {e}")))
}

impl RoomserverService {
    /// Appends an input record and waits for its outcome.
    async fn submit(
        &self,
        room_id: &str,
        kind: topic_pb::roomserver_input::Kind,
    ) -> Result<pb::InputResponse, ApiError> {
        let request_id = random_id(24);
        let (sender, receiver) = oneshot::channel();
        self.lock_pending().insert(request_id.clone(), sender);
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
            self.lock_pending().remove(&request_id);
            return Err(ApiError::Unavailable(format!("roomserver.input: {error}")));
        }
        match tokio::time::timeout(INPUT_TIMEOUT, receiver).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ApiError::Internal("outcome dropped".into())),
            Err(_) => {
                self.lock_pending().remove(&request_id);
                Err(ApiError::Timeout)
            }
        }
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, oneshot::Sender<Result<pb::InputResponse, ApiError>>>,
    > {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands an outcome to the waiting caller, here or on the accepting replica.
    pub(crate) async fn deliver(
        &self,
        reply_to: &str,
        request_id: &str,
        outcome: Result<pb::InputResponse, ApiError>,
    ) {
        if reply_to == self.reply_to {
            if let Some(sender) = self.lock_pending().remove(request_id) {
                let _ = sender.send(outcome);
            }
            return;
        }
        let client = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            match peers.get(reply_to) {
                Some(client) => client.clone(),
                None => match RoomserverClient::new(reply_to) {
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
            Ok(accepted) => pb::outcome::Result::Accepted(accepted),
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
        self.submit(
            &room_id,
            topic_pb::roomserver_input::Kind::NewLocalEvents(topic_pb::NewLocalEvents {
                templates: request.templates,
                device_id: request.device_id,
                transaction_id: request.transaction_id,
            }),
        )
        .await
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
            topic_pb::roomserver_input::Kind::NewRoom(topic_pb::NewRoom {
                room_version: request.room_version,
                create_event_json: create.json.as_bytes().to_vec(),
                initial_state: request.initial_state,
                alias: request.alias,
            }),
        )
        .await
    }

    async fn deliver_outcome(&self, request: pb::Outcome) -> Result<Empty, ApiError> {
        let outcome = match request.result {
            Some(pb::outcome::Result::Accepted(accepted)) => Ok(accepted),
            Some(pb::outcome::Result::Rejected(error)) => Err(ApiError::from_wire_error(error)),
            None => Err(ApiError::Internal("empty outcome".into())),
        };
        if let Some(sender) = self.lock_pending().remove(&request.request_id) {
            let _ = sender.send(outcome);
        }
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
            return Ok(pb::QueryMembershipResponse::default());
        }
        let membership = self
            .storage
            .state_event(&request.room_id, "m.room.member", &request.user_id)
            .await?
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
            .and_then(|event| event["content"]["membership"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(pb::QueryMembershipResponse {
            room_exists: true,
            membership,
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
}
