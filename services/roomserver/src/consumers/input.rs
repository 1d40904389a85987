//! `roomserver.input`: build, authorise and persist events in order per room,
//! then publish them to `roomserver.output` and answer the caller.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use ganglion_api::ApiError;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, decode, encode};
use ganglion_log::{OutgoingRecord, Position, Record};
use ruma::canonical_json::CanonicalJsonObject;

use crate::RoomserverService;
use crate::api::parse_object;
use crate::events::{self, EventError, Pdu, RoomView, Signer, StateMap, Template};
use crate::internal_events::{EVENTS, INPUT_DURATION};
use crate::storage::{AppendBatch, StorageError};

pub(crate) struct InputConsumer {
    pub(crate) service: Arc<RoomserverService>,
}

/// Why an input was not accepted (the caller is told) or must be retried.
enum ProcessError {
    Rejected(ApiError),
    Storage(StorageError),
}

impl From<EventError> for ProcessError {
    fn from(error: EventError) -> Self {
        ProcessError::Rejected(error.into())
    }
}

impl From<StorageError> for ProcessError {
    fn from(error: StorageError) -> Self {
        ProcessError::Storage(error)
    }
}

impl From<ApiError> for ProcessError {
    fn from(error: ApiError) -> Self {
        ProcessError::Rejected(error)
    }
}

#[async_trait]
impl RecordHandler for InputConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let started = Instant::now();
        let input: topic_pb::RoomserverInput =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        let service = &self.service;
        // Outputs committed before a crash go out before anything newer.
        service
            .publish_outbox()
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        if let Some((room_id, event_ids)) = service
            .storage
            .processed_input(&input.request_id)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?
        {
            // A redelivery: the work is done; answer again without a position.
            let response = pb::InputResponse {
                room_id,
                event_ids,
                output_position: None,
            };
            service
                .deliver(&input.reply_to, &input.request_id, Ok(response))
                .await;
            return Ok(());
        }
        let kind = match &input.kind {
            Some(topic_pb::roomserver_input::Kind::NewRoom(_)) => "new_room",
            _ => "new_events",
        };
        let outcome = match service.process(&input).await {
            Ok(event_ids) => {
                let position = service
                    .publish_outbox()
                    .await
                    .map_err(|e| HandleError::Transient(e.to_string()))?;
                EVENTS
                    .with_label_values(&["accepted"])
                    .inc_by(event_ids.len() as u64);
                Ok(pb::InputResponse {
                    room_id: input.room_id.clone(),
                    event_ids,
                    output_position: position.map(|p| service.position(p)),
                })
            }
            Err(ProcessError::Rejected(error)) => {
                EVENTS.with_label_values(&["rejected"]).inc();
                tracing::info!(room_id = %input.room_id, %error, "input rejected");
                Err(error)
            }
            Err(ProcessError::Storage(error)) => {
                return Err(HandleError::Transient(error.to_string()));
            }
        };
        service
            .deliver(&input.reply_to, &input.request_id, outcome)
            .await;
        INPUT_DURATION
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

impl RoomserverService {
    /// Builds and persists the events of one input; returns their IDs.
    async fn process(
        &self,
        input: &topic_pb::RoomserverInput,
    ) -> Result<Vec<String>, ProcessError> {
        let signer = Signer {
            server_name: &self.server_name,
            key: &self.signing_key.key_pair,
        };
        match &input.kind {
            Some(topic_pb::roomserver_input::Kind::NewRoom(new_room)) => {
                if self.storage.room(&input.room_id).await?.is_some() {
                    return Err(ApiError::RoomInUse.into());
                }
                if let Some(alias) = &new_room.alias
                    && self.storage.resolve_alias(alias).await?.is_some()
                {
                    return Err(ApiError::RoomInUse.into());
                }
                let (_, rules) = events::rules_for(&new_room.room_version)?;
                let create = create_event_from(&new_room.create_event_json, &rules)?;
                events::check_create(&rules, &create)?;
                let mut state = StateMap::new();
                let mut extremities = vec![create.event_id.to_string()];
                let mut depth = create.depth;
                let create = Arc::new(create);
                state.insert(("m.room.create".into(), String::new()), create.clone());
                let mut built = vec![create];
                for template in &new_room.initial_state {
                    let pdu = build(
                        &input.room_id,
                        &rules,
                        &state,
                        &extremities,
                        depth,
                        template,
                        &signer,
                    )?;
                    apply(&mut state, &mut extremities, &mut depth, &pdu);
                    built.push(pdu);
                }
                let outputs =
                    self.outputs(&built, &new_room.room_version, &StateMap::new(), "", "");
                let batch = AppendBatch {
                    room_id: input.room_id.clone(),
                    new_room_version: Some(new_room.room_version.clone()),
                    events: built.clone(),
                    request_id: input.request_id.clone(),
                    outputs,
                    alias: new_room.alias.clone(),
                };
                match self.storage.append(&batch).await {
                    Err(e) if e.is_unique_violation() => return Err(ApiError::RoomInUse.into()),
                    other => other?,
                }
                Ok(built.iter().map(|p| p.event_id.to_string()).collect())
            }
            Some(topic_pb::roomserver_input::Kind::NewLocalEvents(new_events)) => {
                let room = self
                    .storage
                    .room(&input.room_id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
                let (_, rules) = events::rules_for(&room.room_version)?;
                let before = self.storage.current_state(room.room_nid).await?;
                let mut state = before.clone();
                let mut extremities = self.storage.forward_extremities(room.room_nid).await?;
                let mut depth = room.depth;
                let mut built = Vec::with_capacity(new_events.templates.len());
                for template in &new_events.templates {
                    let pdu = build(
                        &input.room_id,
                        &rules,
                        &state,
                        &extremities,
                        depth,
                        template,
                        &signer,
                    )?;
                    apply(&mut state, &mut extremities, &mut depth, &pdu);
                    built.push(pdu);
                }
                let outputs = self.outputs(
                    &built,
                    &room.room_version,
                    &before,
                    &new_events.device_id,
                    &new_events.transaction_id,
                );
                let batch = AppendBatch {
                    room_id: input.room_id.clone(),
                    new_room_version: None,
                    events: built.clone(),
                    request_id: input.request_id.clone(),
                    outputs,
                    alias: None,
                };
                self.storage.append(&batch).await?;
                Ok(built.iter().map(|p| p.event_id.to_string()).collect())
            }
            None => Err(ApiError::InvalidInput("empty input".into()).into()),
        }
    }

    /// One `roomserver.output` record per event, with the state it changed.
    fn outputs(
        &self,
        events: &[Arc<Pdu>],
        room_version: &str,
        state_before: &StateMap,
        device_id: &str,
        transaction_id: &str,
    ) -> Vec<Vec<u8>> {
        let mut state = state_before.clone();
        events
            .iter()
            .map(|pdu| {
                let mut added = Vec::new();
                let mut removed = Vec::new();
                if let Some(state_key) = &pdu.state_key {
                    let key = (pdu.kind.to_string(), state_key.clone());
                    if let Some(previous) = state.insert(key, pdu.clone()) {
                        removed.push(topic_pb::StateEntry {
                            event_type: pdu.kind.to_string(),
                            state_key: state_key.clone(),
                            event_id: previous.event_id.to_string(),
                        });
                    }
                    added.push(topic_pb::StateEntry {
                        event_type: pdu.kind.to_string(),
                        state_key: state_key.clone(),
                        event_id: pdu.event_id.to_string(),
                    });
                }
                encode(&topic_pb::RoomserverOutput {
                    version: PAYLOAD_VERSION,
                    kind: Some(topic_pb::roomserver_output::Kind::NewRoomEvent(
                        topic_pb::NewRoomEvent {
                            event_json: pdu.json.as_bytes().to_vec(),
                            room_version: room_version.to_owned(),
                            state_added: added,
                            state_removed: removed,
                            device_id: device_id.to_owned(),
                            transaction_id: transaction_id.to_owned(),
                            depth: pdu.depth,
                            event_id: pdu.event_id.to_string(),
                        },
                    )),
                })
            })
            .collect()
    }

    /// Publishes committed outputs in commit order; returns the last position.
    pub(crate) async fn publish_outbox(&self) -> Result<Option<Position>, PublishError> {
        let _guard = self.publish_lock.lock().await;
        let mut last = None;
        for pending in self.storage.pending_outputs().await? {
            let mut headers = Vec::new();
            ganglion_base::telemetry::inject_into_headers(&mut headers);
            let position = self
                .log
                .produce(
                    &self.topics.roomserver_output,
                    OutgoingRecord {
                        key: pending.room_id.into_bytes(),
                        headers,
                        payload: pending.payload,
                    },
                )
                .await?;
            self.storage.delete_output(pending.seq).await?;
            last = Some(position);
        }
        Ok(last)
    }
}

/// Why publishing the outbox failed (always retried).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// Reading or clearing the outbox failed.
    #[error("outbox storage")]
    Storage(#[from] StorageError),
    /// The log refused the record.
    #[error("roomserver.output")]
    Log(#[from] ganglion_log::LogError),
}

/// Reads the create event the API built, recomputing its ID from its content.
fn create_event_from(
    json: &[u8],
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<Pdu, ProcessError> {
    let object: CanonicalJsonObject = parse_object(json)?;
    let hash = ruma::signatures::reference_hash(&object, rules)
        .map_err(|e| ApiError::InvalidInput(format!("create event: {e}")))?;
    let text = std::str::from_utf8(json).map_err(|e| ApiError::InvalidInput(e.to_string()))?;
    Ok(Pdu::from_json(&format!("${hash}"), text)?)
}

fn build(
    room_id: &str,
    rules: &ruma::room_version_rules::RoomVersionRules,
    state: &StateMap,
    extremities: &[String],
    depth: i64,
    template: &pb::EventTemplate,
    signer: &Signer<'_>,
) -> Result<Arc<Pdu>, ProcessError> {
    let view = RoomView {
        room_id,
        rules,
        state,
        forward_extremities: extremities,
        depth,
    };
    let content = parse_object(&template.content_json)?;
    let pdu = events::build_event(
        &view,
        Template {
            event_type: &template.event_type,
            state_key: template.state_key.as_deref(),
            sender: &template.sender,
            content,
            redacts: template.redacts.as_deref(),
        },
        signer,
    )?;
    Ok(Arc::new(pdu))
}

fn apply(state: &mut StateMap, extremities: &mut Vec<String>, depth: &mut i64, pdu: &Arc<Pdu>) {
    if let Some(state_key) = &pdu.state_key {
        state.insert((pdu.kind.to_string(), state_key.clone()), pdu.clone());
    }
    *extremities = vec![pdu.event_id.to_string()];
    *depth = pdu.depth;
}
