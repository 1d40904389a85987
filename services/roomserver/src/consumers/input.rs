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
use ganglion_api::topics::decode;
use ganglion_log::{OutgoingRecord, Position, Record};

use crate::RoomserverService;
use crate::events::EventError;
use crate::head::HeadError;
use crate::internal_events::{EVENTS, INPUT_DURATION};
use crate::local_events::{GroupOutput, Grouped, GroupedKind, groupable};
use crate::storage::StorageError;

pub(crate) struct InputConsumer {
    pub(crate) service: Arc<RoomserverService>,
}

/// Why an input was not accepted (the caller is told) or must be retried.
pub(crate) enum ProcessError {
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

impl From<HeadError> for ProcessError {
    fn from(error: HeadError) -> Self {
        match error {
            HeadError::Storage(e) => ProcessError::Storage(e),
            HeadError::Event(e) => e.into(),
        }
    }
}

/// What the caller of an input is told.
#[derive(Clone)]
pub(crate) enum Answer {
    Events(pb::InputResponse),
    Pdus(pb::InputPdusResponse),
}

impl Answer {
    fn set_position(&mut self, position: Option<ganglion_api::proto::common::LogPosition>) {
        match self {
            Answer::Events(r) => r.output_position = position,
            Answer::Pdus(r) => r.output_position = position,
        }
    }
    fn accepted(&self) -> u64 {
        match self {
            Answer::Events(r) => r.event_ids.len() as u64,
            Answer::Pdus(r) => r
                .outcomes
                .iter()
                .filter(|o| o.outcome == "accepted")
                .count() as u64,
        }
    }
}

/// The result of processing an input: the answer, and the (outbox seq,
/// payload) outputs to publish (none for a redelivered input).
pub(crate) struct Processed {
    pub(crate) answer: Answer,
    pub(crate) outputs: Vec<(i64, Vec<u8>)>,
}

#[async_trait]
impl RecordHandler for InputConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let started = Instant::now();
        let input: topic_pb::RoomserverInput =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        self.publish_outbox_if_dirty().await?;
        self.handle_input(&input, started).await
    }

    fn takes_batches(&self) -> bool {
        true
    }

    /// Inputs that piled up while the last were handled: runs of new
    /// rooms and local events are written as one group (one transaction, one
    /// flush of the log for their outputs), each room's in its order;
    /// anything else is handled on its own, after what was pending before
    /// it. A group that fails for good (or meets an input already
    /// processed) makes the consumer take the records one at a time, which
    /// answers every input as a single one would.
    async fn handle_batch(&self, records: &[Record]) -> Result<(), HandleError> {
        let started = Instant::now();
        let inputs = records
            .iter()
            .map(|record| decode::<topic_pb::RoomserverInput>(&record.payload))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        self.publish_outbox_if_dirty().await?;
        let grouped: Vec<&str> = inputs
            .iter()
            .filter(|input| groupable(input).is_some())
            .map(|input| input.request_id.as_str())
            .collect();
        let done = self
            .service
            .storage
            .processed_among(&grouped)
            .await
            .map_err(HandleError::storage)?;
        if !done.is_empty() {
            return Err(HandleError::Permanent(
                "a batch with redelivered inputs is taken one at a time".into(),
            ));
        }
        // A client's retries of one transaction, appended together: the
        // first is processed, the others answered with what it made.
        let mut distinct = std::collections::HashSet::with_capacity(grouped.len());
        if !grouped.iter().all(|id| distinct.insert(*id)) {
            return Err(HandleError::Permanent(
                "a batch with retried inputs is taken one at a time".into(),
            ));
        }
        // The pending group: each room's inputs, rooms in order of appearance.
        let mut groups: Vec<(&str, Vec<Grouped<'_>>)> = Vec::new();
        for input in &inputs {
            match groupable(input) {
                Some(kind) => match groups.iter_mut().find(|(room, _)| *room == input.room_id) {
                    Some((_, group)) => group.push((input, kind)),
                    None => groups.push((&input.room_id, vec![(input, kind)])),
                },
                None => {
                    self.handle_group(std::mem::take(&mut groups), started)
                        .await?;
                    self.handle_input(input, started).await?;
                }
            }
        }
        self.handle_group(groups, started).await
    }
}

impl InputConsumer {
    /// Outputs committed but not yet confirmed in the log (a crash or a
    /// failed produce) go out before anything newer.
    async fn publish_outbox_if_dirty(&self) -> Result<(), HandleError> {
        let service = &self.service;
        if service.outbox_dirty.load(Ordering::Acquire) {
            service
                .publish_outbox()
                .await
                .map_err(HandleError::storage)?;
            service.outbox_dirty.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Writes a group, publishes its outputs together and answers each
    /// input.
    async fn handle_group(
        &self,
        groups: Vec<(&str, Vec<Grouped<'_>>)>,
        started: Instant,
    ) -> Result<(), HandleError> {
        let inputs: Vec<&topic_pb::RoomserverInput> = groups
            .iter()
            .flat_map(|(_, group)| group.iter().map(|(input, _)| *input))
            .collect();
        match inputs.as_slice() {
            [] => return Ok(()),
            [input] => return self.handle_input(input, started).await,
            _ => {}
        }
        let service = &self.service;
        let processed = match service.new_local_events_group(&groups).await {
            Ok(processed) => processed,
            Err(ProcessError::Rejected(error)) => {
                return Err(HandleError::Permanent(format!("group refused: {error}")));
            }
            Err(ProcessError::Storage(error)) if error.is_unique_violation() => {
                return Err(HandleError::Permanent(
                    "a group met an input already processed".into(),
                ));
            }
            Err(ProcessError::Storage(error)) => return Err(HandleError::storage(error)),
        };
        let mut positions = vec![None; inputs.len()];
        if !processed.outputs.is_empty() {
            let owners: Vec<usize> = processed.outputs.iter().map(|o| o.input).collect();
            let published = match service.publish_many(processed.outputs).await {
                Ok(published) => published,
                Err(error) => {
                    // Committed, not published: the retry publishes the
                    // outbox and answers as for redeliveries.
                    service.outbox_dirty.store(true, Ordering::Release);
                    return Err(HandleError::Transient(error.to_string()));
                }
            };
            for (owner, position) in owners.into_iter().zip(published) {
                positions[owner] = Some(service.position(position));
            }
        }
        let mut deliveries = Vec::with_capacity(inputs.len());
        for ((input, answer), position) in inputs.iter().zip(processed.answers).zip(positions) {
            let outcome = match answer {
                Ok(event_ids) => {
                    EVENTS
                        .with_label_values(&["accepted"])
                        .inc_by(event_ids.len() as u64);
                    Ok(Answer::Events(pb::InputResponse {
                        room_id: input.room_id.clone(),
                        event_ids,
                        output_position: position,
                    }))
                }
                Err(error) => {
                    EVENTS.with_label_values(&["rejected"]).inc();
                    tracing::info!(room_id = %input.room_id, %error, "input rejected");
                    Err(error)
                }
            };
            deliveries.push(service.deliver(&input.reply_to, &input.request_id, outcome));
        }
        futures::future::join_all(deliveries).await;
        let elapsed = started.elapsed().as_secs_f64();
        for (_, kind) in groups.iter().flat_map(|(_, group)| group) {
            let label = match kind {
                GroupedKind::NewRoom(_) => "new_room",
                GroupedKind::Events(_) => "new_events",
            };
            INPUT_DURATION.with_label_values(&[label]).observe(elapsed);
        }
        Ok(())
    }

    /// Handles one input on its own.
    async fn handle_input(
        &self,
        input: &topic_pb::RoomserverInput,
        started: Instant,
    ) -> Result<(), HandleError> {
        let service = &self.service;
        let (kind, processed) = match &input.kind {
            Some(topic_pb::roomserver_input::Kind::NewRoom(new_room)) => {
                ("new_room", service.new_room(input, new_room).await)
            }
            Some(topic_pb::roomserver_input::Kind::NewLocalEvents(new_events)) => (
                "new_events",
                service.new_local_events(input, new_events).await,
            ),
            Some(topic_pb::roomserver_input::Kind::InputPdus(pdus)) => {
                ("pdus", service.input_pdus_record(input, pdus).await)
            }
            Some(topic_pb::roomserver_input::Kind::ForgetRoom(forget)) => {
                ("forget", service.forget_room_record(input, forget).await)
            }
            None => (
                "empty",
                Err(ApiError::InvalidInput("empty input".into()).into()),
            ),
        };
        let outcome = match processed {
            Ok(Processed {
                mut answer,
                outputs,
            }) => {
                if !outputs.is_empty() {
                    let position = match service.publish(&input.room_id, outputs).await {
                        Ok(position) => position,
                        Err(error) => {
                            // Committed, not published: the retry publishes the
                            // outbox and answers as for a redelivery.
                            service.outbox_dirty.store(true, Ordering::Release);
                            return Err(HandleError::Transient(error.to_string()));
                        }
                    };
                    answer.set_position(position.map(|p| service.position(p)));
                }
                EVENTS
                    .with_label_values(&["accepted"])
                    .inc_by(answer.accepted());
                Ok(answer)
            }
            Err(ProcessError::Rejected(error)) => {
                EVENTS.with_label_values(&["rejected"]).inc();
                tracing::info!(room_id = %input.room_id, %error, "input rejected");
                Err(error)
            }
            Err(ProcessError::Storage(error)) => {
                let failure = HandleError::storage(error);
                if let HandleError::Permanent(reason) = &failure {
                    // Nothing was written; the caller hears now rather than
                    // timing out, and the input goes to the dead letters.
                    let refused = ApiError::InvalidInput(format!("cannot be stored: {reason}"));
                    service
                        .deliver(&input.reply_to, &input.request_id, Err(refused))
                        .await;
                }
                return Err(failure);
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
    /// Publishes the outputs of a group just committed, together (one flush
    /// or broker round trip); they are cleared from the outbox by the next
    /// write. Returns each output's position.
    async fn publish_many(&self, outputs: Vec<GroupOutput>) -> Result<Vec<Position>, PublishError> {
        let _guard = self.publish_lock.lock().await;
        let mut headers = Vec::new();
        ganglion_base::telemetry::inject_into_headers(&mut headers);
        let (seqs, records): (Vec<i64>, Vec<OutgoingRecord>) = outputs
            .into_iter()
            .map(|output| {
                (
                    output.seq,
                    OutgoingRecord {
                        key: output.room_id.into_bytes(),
                        headers: headers.clone(),
                        payload: output.payload,
                    },
                )
            })
            .unzip();
        let positions = self
            .log
            .produce_many(&self.topics.roomserver_output, records)
            .await?;
        self.lock_published().extend(seqs);
        Ok(positions)
    }

    /// Publishes the outputs of a batch just committed; they are cleared
    /// from the outbox by the next write. Returns the last position.
    async fn publish(
        &self,
        room_id: &str,
        outputs: Vec<(i64, Vec<u8>)>,
    ) -> Result<Option<Position>, PublishError> {
        let _guard = self.publish_lock.lock().await;
        let mut last = None;
        for (seq, payload) in outputs {
            last = Some(self.produce_output(room_id, payload).await?);
            // Cleared by the next write's transaction: one commit fewer per
            // record. A crash before then re-publishes these outputs, which
            // consumers tolerate (they dedupe by event ID).
            self.lock_published().push(seq);
        }
        Ok(last)
    }

    pub(crate) fn lock_published(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes whatever the outbox holds, oldest first (after a crash or a
    /// failed produce).
    pub(crate) async fn publish_outbox(&self) -> Result<Option<Position>, PublishError> {
        let _guard = self.publish_lock.lock().await;
        let mut last = None;
        let published: Vec<i64> = self.lock_published().clone();
        for pending in self.storage.pending_outputs().await? {
            if !published.contains(&pending.seq) {
                last = Some(
                    self.produce_output(&pending.room_id, pending.payload)
                        .await?,
                );
            }
            self.storage.delete_output(pending.seq).await?;
        }
        self.lock_published().clear();
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
