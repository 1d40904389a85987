//! `roomserver.input`: build, authorise and persist events in order per room,
//! then publish them to `roomserver.output` and answer the caller.

use std::sync::Arc;
use std::sync::atomic::Ordering;
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
        // Outputs committed but not yet confirmed in the log (a crash or a
        // failed produce) go out before anything newer.
        if service.outbox_dirty.load(Ordering::Acquire) {
            service
                .publish_outbox()
                .await
                .map_err(|e| HandleError::Transient(e.to_string()))?;
            service.outbox_dirty.store(false, Ordering::Release);
        }
        let kind = match &input.kind {
            Some(topic_pb::roomserver_input::Kind::NewRoom(_)) => "new_room",
            _ => "new_events",
        };
        let outcome = match service.process(&input).await {
            Ok(Processed::Done { event_ids, outputs }) => {
                let position = match service.publish(&input.room_id, outputs).await {
                    Ok(position) => position,
                    Err(error) => {
                        // Committed, not published: the retry publishes the
                        // outbox and answers as for a redelivery.
                        service.outbox_dirty.store(true, Ordering::Release);
                        return Err(HandleError::Transient(error.to_string()));
                    }
                };
                EVENTS
                    .with_label_values(&["accepted"])
                    .inc_by(event_ids.len() as u64);
                Ok(pb::InputResponse {
                    room_id: input.room_id.clone(),
                    event_ids,
                    output_position: position.map(|p| service.position(p)),
                })
            }
            Ok(Processed::AlreadyDone { room_id, event_ids }) => {
                // A redelivery: the work is done; answer again without a position.
                Ok(pb::InputResponse {
                    room_id,
                    event_ids,
                    output_position: None,
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
    /// Builds and persists the events of one input.
    async fn process(&self, input: &topic_pb::RoomserverInput) -> Result<Processed, ProcessError> {
        let signer = Signer {
            server_name: &self.server_name,
            key: &self.signing_key.key_pair,
        };
        match &input.kind {
            Some(topic_pb::roomserver_input::Kind::NewRoom(new_room)) => {
                if self.storage.room(&input.room_id).await?.is_some() {
                    if let Some((room_id, event_ids)) =
                        self.storage.processed_input(&input.request_id).await?
                    {
                        return Ok(Processed::AlreadyDone { room_id, event_ids });
                    }
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
                let mut built = vec![Built {
                    pdu: create,
                    replaced: None,
                }];
                built.extend(build_all(
                    &input.room_id,
                    &rules,
                    (&mut state, &mut extremities, &mut depth),
                    &new_room.initial_state,
                    &signer,
                )?);
                let outputs = outputs(&built, &new_room.room_version, "", "");
                let batch = AppendBatch {
                    room_id: input.room_id.clone(),
                    new_room_version: Some(new_room.room_version.clone()),
                    events: built.iter().map(|b| b.pdu.clone()).collect(),
                    request_id: input.request_id.clone(),
                    outputs,
                    alias: new_room.alias.clone(),
                };
                let outputs = match self.append(&batch).await? {
                    Appended::Done(outputs) => outputs,
                    Appended::AlreadyDone(done) => return Ok(done),
                    Appended::Conflict => return Err(ApiError::RoomInUse.into()),
                };
                self.remember_room(&input.room_id, depth, state, extremities);
                Ok(Processed::Done {
                    event_ids: built.iter().map(|b| b.pdu.event_id.to_string()).collect(),
                    outputs,
                })
            }
            Some(topic_pb::roomserver_input::Kind::NewLocalEvents(new_events)) => {
                let room = self
                    .storage
                    .room(&input.room_id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
                let (_, rules) = events::rules_for(&room.room_version)?;
                let (mut state, mut extremities) =
                    match self.take_cached_room(&input.room_id, room.depth) {
                        Some(cached) => cached,
                        None => (
                            self.storage.current_state(room.room_nid).await?,
                            self.storage.forward_extremities(room.room_nid).await?,
                        ),
                    };
                let mut depth = room.depth;
                let built = build_all(
                    &input.room_id,
                    &rules,
                    (&mut state, &mut extremities, &mut depth),
                    &new_events.templates,
                    &signer,
                )?;
                let outputs = outputs(
                    &built,
                    &room.room_version,
                    &new_events.device_id,
                    &new_events.transaction_id,
                );
                let batch = AppendBatch {
                    room_id: input.room_id.clone(),
                    new_room_version: None,
                    events: built.iter().map(|b| b.pdu.clone()).collect(),
                    request_id: input.request_id.clone(),
                    outputs,
                    alias: None,
                };
                let outputs = match self.append(&batch).await? {
                    Appended::Done(outputs) => outputs,
                    Appended::AlreadyDone(done) => return Ok(done),
                    Appended::Conflict => {
                        return Err(ApiError::Internal("conflicting event".into()).into());
                    }
                };
                self.remember_room(&input.room_id, depth, state, extremities);
                Ok(Processed::Done {
                    event_ids: built.iter().map(|b| b.pdu.event_id.to_string()).collect(),
                    outputs,
                })
            }
            None => Err(ApiError::InvalidInput("empty input".into()).into()),
        }
    }

    /// Persists a batch; a unique violation means either a redelivered
    /// request (answered from what was stored) or a taken alias.
    async fn append(&self, batch: &AppendBatch) -> Result<Appended, ProcessError> {
        let published_through = self.published_through.load(Ordering::Acquire);
        match self.storage.append(batch, published_through).await {
            Ok(seqs) => Ok(Appended::Done(
                seqs.into_iter()
                    .zip(batch.outputs.iter().cloned())
                    .collect(),
            )),
            Err(error) if error.is_unique_violation() => {
                match self.storage.processed_input(&batch.request_id).await? {
                    Some((room_id, event_ids)) => {
                        Ok(Appended::AlreadyDone(Processed::AlreadyDone {
                            room_id,
                            event_ids,
                        }))
                    }
                    None => Ok(Appended::Conflict),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Publishes the outputs of a batch just committed, then clears them
    /// from the outbox; returns the last position.
    async fn publish(
        &self,
        room_id: &str,
        outputs: Vec<(i64, Vec<u8>)>,
    ) -> Result<Option<Position>, PublishError> {
        let _guard = self.publish_lock.lock().await;
        let mut last = None;
        let mut last_seq = None;
        for (seq, payload) in outputs {
            last = Some(self.produce_output(room_id, payload).await?);
            last_seq = Some(seq);
        }
        if let Some(seq) = last_seq {
            // Cleared by the next append's transaction: one commit fewer per
            // record. A crash before then re-publishes these outputs, which
            // consumers tolerate (they dedupe by event ID).
            self.published_through.fetch_max(seq, Ordering::AcqRel);
        }
        Ok(last)
    }

    /// Publishes whatever the outbox holds, oldest first (after a crash or a
    /// failed produce).
    pub(crate) async fn publish_outbox(&self) -> Result<Option<Position>, PublishError> {
        let _guard = self.publish_lock.lock().await;
        let mut last = None;
        let published_through = self.published_through.load(Ordering::Acquire);
        for pending in self.storage.pending_outputs().await? {
            if pending.seq > published_through {
                last = Some(
                    self.produce_output(&pending.room_id, pending.payload)
                        .await?,
                );
            }
            self.storage.delete_outputs_through(pending.seq).await?;
            self.published_through
                .fetch_max(pending.seq, Ordering::AcqRel);
        }
        Ok(last)
    }

    async fn produce_output(
        &self,
        room_id: &str,
        payload: Vec<u8>,
    ) -> Result<Position, PublishError> {
        let mut headers = Vec::new();
        ganglion_base::telemetry::inject_into_headers(&mut headers);
        Ok(self
            .log
            .produce(
                &self.topics.roomserver_output,
                OutgoingRecord {
                    key: room_id.as_bytes().to_vec(),
                    headers,
                    payload,
                },
            )
            .await?)
    }

    /// Takes the cached state and forward extremities of a room out of the
    /// cache if it is at `depth` (the stored depth: another replica's append
    /// raises it). Taken, not copied: the state of a large room is big, and
    /// it goes back in once the input is persisted (or is reloaded if not).
    fn take_cached_room(&self, room_id: &str, depth: i64) -> Option<(StateMap, Vec<String>)> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let cached = rooms.remove(room_id)?;
        (cached.depth == depth).then_some((cached.state, cached.extremities))
    }

    fn remember_room(&self, room_id: &str, depth: i64, state: StateMap, extremities: Vec<String>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.len() >= ROOM_CACHE_ROOMS && !rooms.contains_key(room_id) {
            // Crude but bounded: start over rather than track recency.
            rooms.clear();
        }
        rooms.insert(
            room_id.to_owned(),
            CachedRoom {
                depth,
                state,
                extremities,
            },
        );
    }
}

/// How many rooms' state the roomserver keeps in memory.
const ROOM_CACHE_ROOMS: usize = 1_000;

/// What the roomserver remembers of a room between inputs.
pub(crate) struct CachedRoom {
    depth: i64,
    state: StateMap,
    extremities: Vec<String>,
}

/// The result of processing an input.
enum Processed {
    /// Newly persisted: the event IDs and the (outbox seq, payload) outputs to publish.
    Done {
        event_ids: Vec<String>,
        outputs: Vec<(i64, Vec<u8>)>,
    },
    /// Persisted by an earlier delivery of the same record.
    AlreadyDone {
        room_id: String,
        event_ids: Vec<String>,
    },
}

enum Appended {
    Done(Vec<(i64, Vec<u8>)>),
    AlreadyDone(Processed),
    Conflict,
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

/// Builds `templates` in order on top of a room's head (state, forward
/// extremities, depth), advancing the head past each event.
fn build_all(
    room_id: &str,
    rules: &ruma::room_version_rules::RoomVersionRules,
    (state, extremities, depth): (&mut StateMap, &mut Vec<String>, &mut i64),
    templates: &[pb::EventTemplate],
    signer: &Signer<'_>,
) -> Result<Vec<Built>, ProcessError> {
    let mut built = Vec::with_capacity(templates.len());
    for template in templates {
        let pdu = build(room_id, rules, state, extremities, *depth, template, signer)?;
        let replaced = apply(state, extremities, depth, &pdu);
        built.push(Built { pdu, replaced });
    }
    Ok(built)
}

/// An event built on top of a room's head, with the state event it replaced.
struct Built {
    pdu: Arc<Pdu>,
    replaced: Option<Arc<Pdu>>,
}

/// One `roomserver.output` record per event, with the state it changed.
fn outputs(
    built: &[Built],
    room_version: &str,
    device_id: &str,
    transaction_id: &str,
) -> Vec<Vec<u8>> {
    built
        .iter()
        .map(|Built { pdu, replaced }| {
            let entry = |event_id: String| topic_pb::StateEntry {
                event_type: pdu.kind.to_string(),
                state_key: pdu.state_key.clone().unwrap_or_default(),
                event_id,
            };
            let added = pdu
                .state_key
                .as_ref()
                .map(|_| entry(pdu.event_id.to_string()));
            let removed = replaced
                .as_ref()
                .map(|previous| entry(previous.event_id.to_string()));
            encode(&topic_pb::RoomserverOutput {
                version: PAYLOAD_VERSION,
                kind: Some(topic_pb::roomserver_output::Kind::NewRoomEvent(
                    topic_pb::NewRoomEvent {
                        event_json: pdu.json.as_bytes().to_vec(),
                        room_version: room_version.to_owned(),
                        state_added: added.into_iter().collect(),
                        state_removed: removed.into_iter().collect(),
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

/// Advances a room's head past `pdu`; returns the state event it replaced.
fn apply(
    state: &mut StateMap,
    extremities: &mut Vec<String>,
    depth: &mut i64,
    pdu: &Arc<Pdu>,
) -> Option<Arc<Pdu>> {
    *extremities = vec![pdu.event_id.to_string()];
    *depth = pdu.depth;
    let state_key = pdu.state_key.as_ref()?;
    state.insert((pdu.kind.to_string(), state_key.clone()), pdu.clone())
}
