//! Events local users send: a new room (its create event and initial state)
//! and events built from templates on top of a room's head. Each input is
//! one transaction: the events, the states before and after each, the new
//! head, and the outputs.

use std::sync::Arc;

use ganglion_api::ApiError;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::topics as topic_pb;

use crate::RoomserverService;
use crate::api::parse_object;
use crate::consumers::input::{Answer, ProcessError, Processed};
use crate::events::{self, Pdu, RoomView, Signer, StateMap, Template};
use crate::head::{Head, StateDelta};
use crate::outputs::{self, OutputContext};
use crate::storage::{
    CurrentStateChange, EventFlags, HeadUpdate, ProcessedInput, RoomWriter, StorageError,
};

impl RoomserverService {
    fn signer(&self) -> Signer<'_> {
        Signer {
            server_name: &self.server_name,
            key: &self.signing_key.key_pair,
        }
    }

    /// An earlier delivery of the same input, answered again.
    async fn already_done(&self, request_id: &str) -> Result<Option<Processed>, ProcessError> {
        let Some((room_id, event_ids)) = self.storage.processed_input(request_id).await? else {
            return Ok(None);
        };
        let outputs = self.orphaned_outputs(&room_id).await?;
        Ok(Some(Processed {
            answer: Answer::Events(pb::InputResponse {
                room_id,
                event_ids,
                output_position: None,
            }),
            outputs,
        }))
    }

    /// The outputs of a room that a replica committed and then died before
    /// publishing. An input is redelivered only when its processing was
    /// not confirmed, so whoever processed it may have stopped between the
    /// commit and the log: its outputs go out now, before anything newer of
    /// the room, whichever replica owns the room now. (This replica's own
    /// published but not yet cleared outputs are left out; any other
    /// already published goes twice, which consumers take by event ID.)
    pub(crate) async fn orphaned_outputs(
        &self,
        room_id: &str,
    ) -> Result<Vec<(i64, Vec<u8>)>, ProcessError> {
        let mine = self.lock_published().clone();
        Ok(self
            .storage
            .pending_outputs_of(room_id)
            .await?
            .into_iter()
            .filter(|(seq, _)| !mine.contains(seq))
            .collect())
    }

    pub(crate) async fn new_room(
        &self,
        input: &topic_pb::RoomserverInput,
        new_room: &topic_pb::NewRoom,
    ) -> Result<Processed, ProcessError> {
        if let Some(done) = self.already_done(&input.request_id).await? {
            return Ok(done);
        }
        if self.storage.room(&input.room_id).await?.is_some() {
            return Err(ApiError::RoomInUse.into());
        }
        if let Some(alias) = &new_room.alias
            && self.storage.resolve_alias(alias).await?.is_some()
        {
            return Err(ApiError::RoomInUse.into());
        }
        let create = checked_create(new_room)?;
        let (_, rules) = events::rules_for(&new_room.room_version)?;
        let mut head = Head::empty(0, &new_room.room_version, rules);
        let mut writer = self
            .storage
            .begin_room_write(&input.room_id, Some(&new_room.room_version))
            .await?;
        head.room_nid = writer.room_nid;
        let mut outputs = Vec::new();
        let mut event_ids = Vec::new();
        self.append_new_room(
            &input.room_id,
            &mut writer,
            &mut head,
            create,
            new_room,
            &mut outputs,
            &mut event_ids,
        )
        .await?;
        let written = Written {
            new: &event_ids,
            answer: &event_ids,
        };
        self.finish_local(
            writer,
            head,
            input,
            written,
            new_room.alias.as_deref(),
            outputs,
        )
        .await
    }

    pub(crate) async fn new_local_events(
        &self,
        input: &topic_pb::RoomserverInput,
        new_events: &topic_pb::NewLocalEvents,
    ) -> Result<Processed, ProcessError> {
        // A redelivered input is recognised when its commit meets the
        // request already recorded (see `finish_local`): no lookup first on
        // the hot path.
        let room = self
            .storage
            .room(&input.room_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown room".into()))?;
        let mut head = self.take_head(&room).await?;
        let context = OutputContext {
            room_version: &room.room_version,
            device_id: &new_events.device_id,
            transaction_id: &new_events.transaction_id,
        };
        let result = async {
            let mut writer = self.storage.begin_room_write(&input.room_id, None).await?;
            let mut outputs = Vec::new();
            let mut event_ids = Vec::new();
            // What the request is answered with: the new events, and for a
            // state event that would change nothing, the one in place.
            let mut answer_ids = Vec::new();
            for template in &new_events.templates {
                if let Some(unchanged) = unchanged_state(&head, template) {
                    answer_ids.push(unchanged);
                    continue;
                }
                let pdu = self.build_on(&input.room_id, &head, template)?;
                if let Some(redacts) = &pdu.redacts {
                    self.check_redaction(&head, &pdu, redacts).await?;
                }
                self.append_local(
                    &mut writer,
                    &mut head,
                    pdu,
                    &context,
                    &mut outputs,
                    &mut event_ids,
                )
                .await?;
                answer_ids.extend(event_ids.last().cloned());
            }
            Ok::<_, ProcessError>((writer, outputs, event_ids, answer_ids))
        }
        .await;
        match result {
            Ok((writer, outputs, event_ids, answer_ids)) => {
                let written = Written {
                    new: &event_ids,
                    answer: &answer_ids,
                };
                self.finish_local(writer, head, input, written, None, outputs)
                    .await
            }
            // A redelivered input meets a head that has moved on (its sender
            // may have left since): it is answered as first processed.
            Err(ProcessError::Rejected(error)) => {
                match self.already_done(&input.request_id).await? {
                    Some(done) => Ok(done),
                    None => Err(ProcessError::Rejected(error)),
                }
            }
            // The head was advanced in memory only: drop it, the next input
            // reloads it from the database.
            Err(error) => Err(error),
        }
    }

    /// Inputs that may be written together (see [`groupable`]), grouped by
    /// room with each room's in log order, written in one transaction: what
    /// each input alone would have written, with one head update per room
    /// and one commit. An input refused before it wrote anything (not
    /// allowed, unknown room, a room ID or alias taken) changes nothing and
    /// is answered so; the others go ahead, each built on the head the ones
    /// before it left. An input refused after it wrote (a later event of a
    /// new room's initial state) fails the group with
    /// [`ProcessError::Rejected`]: its inputs are then taken one at a time.
    /// Answers come in the order of the groups' inputs, one after the other.
    pub(crate) async fn new_local_events_group(
        &self,
        groups: &[(&str, Vec<Grouped<'_>>)],
    ) -> Result<GroupProcessed, ProcessError> {
        let mut writer: Option<RoomWriter> = None;
        let mut heads = Vec::with_capacity(groups.len());
        let mut outputs = Vec::new();
        // The input (its index among all) and room of each output.
        let mut owners: Vec<(usize, &str)> = Vec::new();
        let mut answers: Vec<Result<Vec<String>, ApiError>> = Vec::new();
        let mut processed = Vec::new();
        // Aliases the group's new rooms took.
        let mut aliases: Vec<&str> = Vec::new();
        for (room_id, inputs) in groups {
            let mut head: Option<Head> = None;
            // Whether the writer is on this room yet.
            let mut on_room = false;
            let mut written = Vec::new();
            for (input, kind) in inputs {
                let index = answers.len();
                let before = outputs.len();
                let mut event_ids = Vec::new();
                match kind {
                    GroupedKind::NewRoom(new_room) => {
                        let taken = head.is_some()
                            || self.storage.room(room_id).await?.is_some()
                            || match &new_room.alias {
                                Some(alias) => {
                                    aliases.contains(&alias.as_str())
                                        || self.storage.resolve_alias(alias).await?.is_some()
                                }
                                None => false,
                            };
                        if taken {
                            answers.push(Err(ApiError::RoomInUse));
                            continue;
                        }
                        let create = match checked_create(new_room) {
                            Ok(create) => create,
                            Err(error) => {
                                answers.push(Err(error));
                                continue;
                            }
                        };
                        let writer = match &mut writer {
                            Some(writer) => {
                                writer
                                    .switch_room(room_id, Some(&new_room.room_version))
                                    .await?;
                                writer
                            }
                            slot => slot.insert(
                                self.storage
                                    .begin_room_write(room_id, Some(&new_room.room_version))
                                    .await?,
                            ),
                        };
                        on_room = true;
                        let (_, rules) = events::rules_for(&new_room.room_version)?;
                        let new_head = head.insert(Head::empty(
                            writer.room_nid,
                            &new_room.room_version,
                            rules,
                        ));
                        // Initial state refused after the create event was
                        // written fails the group: it is taken again one by one.
                        self.append_new_room(
                            room_id,
                            writer,
                            new_head,
                            create,
                            new_room,
                            &mut outputs,
                            &mut event_ids,
                        )
                        .await?;
                        if let Some(alias) = &new_room.alias {
                            writer.add_alias(alias).await?;
                            aliases.push(alias);
                        }
                        written.extend(event_ids.iter().cloned());
                        answers.push(Ok(event_ids.clone()));
                    }
                    GroupedKind::Events(new_events) => {
                        let current = match &mut head {
                            Some(head) => head,
                            slot => {
                                let Some(room) = self.storage.room(room_id).await? else {
                                    answers.push(Err(ApiError::NotFound("unknown room".into())));
                                    continue;
                                };
                                slot.insert(self.take_head(&room).await?)
                            }
                        };
                        let writer = match &mut writer {
                            Some(writer) => {
                                if !on_room {
                                    writer.switch_room(room_id, None).await?;
                                }
                                writer
                            }
                            slot => {
                                slot.insert(self.storage.begin_room_write(room_id, None).await?)
                            }
                        };
                        on_room = true;
                        let room_version = current.room_version.clone();
                        let context = OutputContext {
                            room_version: &room_version,
                            device_id: &new_events.device_id,
                            transaction_id: &new_events.transaction_id,
                        };
                        let mut answer_ids = Vec::new();
                        let mut refused = None;
                        for template in &new_events.templates {
                            if let Some(unchanged) = unchanged_state(current, template) {
                                answer_ids.push(unchanged);
                                continue;
                            }
                            let pdu = match self.build_on(room_id, current, template) {
                                Ok(pdu) => pdu,
                                // Refused before this input wrote anything:
                                // answered, and the group goes on.
                                Err(ProcessError::Rejected(error)) if event_ids.is_empty() => {
                                    refused = Some(error);
                                    break;
                                }
                                Err(error) => return Err(error),
                            };
                            // A storage failure fails the group: the heads,
                            // advanced in memory only, are dropped and
                            // reloaded by the next inputs.
                            self.append_local(
                                writer,
                                current,
                                pdu,
                                &context,
                                &mut outputs,
                                &mut event_ids,
                            )
                            .await?;
                            answer_ids.extend(event_ids.last().cloned());
                        }
                        if let Some(error) = refused {
                            answers.push(Err(error));
                            continue;
                        }
                        written.extend(event_ids.iter().cloned());
                        answers.push(Ok(answer_ids));
                    }
                }
                owners.extend(std::iter::repeat_n(
                    (index, *room_id),
                    outputs.len() - before,
                ));
                processed.push((*room_id, input.request_id.as_str(), index));
            }
            let Some(mut head) = head else {
                continue;
            };
            if !written.is_empty()
                && let Some(writer) = &mut writer
            {
                write_head(writer, &mut head, &written).await?;
                head.head_version += 1;
            }
            heads.push(head);
        }
        let Some(writer) = writer.filter(|_| !processed.is_empty()) else {
            // Every input refused: nothing to write. (A new room's head is
            // only kept once its room is committed.)
            for head in heads.into_iter().filter(|head| head.head_version > 0) {
                self.put_head(head);
            }
            return Ok(GroupProcessed {
                answers,
                outputs: Vec::new(),
            });
        };
        let recorded: Vec<ProcessedInput<'_>> = processed
            .iter()
            .map(|(room_id, request_id, index)| ProcessedInput {
                room_id,
                request_id,
                event_ids: answers[*index].as_deref().unwrap_or_default(),
            })
            .collect();
        let queued: Vec<(&str, &[u8])> = owners
            .iter()
            .zip(&outputs)
            .map(|((_, room_id), payload)| (*room_id, payload.as_slice()))
            .collect();
        let published = self.lock_published().clone();
        let seqs = writer.commit_many(&recorded, &queued, &published).await?;
        self.lock_published().retain(|seq| !published.contains(seq));
        for head in heads {
            self.put_head(head);
        }
        let outputs = owners
            .into_iter()
            .zip(seqs)
            .zip(outputs)
            .map(|(((owner, room_id), seq), payload)| GroupOutput {
                input: owner,
                room_id: room_id.to_owned(),
                seq,
                payload,
            })
            .collect();
        Ok(GroupProcessed { answers, outputs })
    }

    /// A user who has left (or was banned from) a room forgets it: views
    /// hear of it through `roomserver.output`, after the room's events.
    pub(crate) async fn forget_room_record(
        &self,
        input: &topic_pb::RoomserverInput,
        forget: &topic_pb::ForgetRoom,
    ) -> Result<Processed, ProcessError> {
        if let Some(done) = self.already_done(&input.request_id).await? {
            return Ok(done);
        }
        if self.storage.room(&input.room_id).await?.is_none() {
            return Err(ApiError::NotFound("unknown room".into()).into());
        }
        let membership = self
            .current_membership(&input.room_id, &forget.user_id)
            .await?;
        if !matches!(membership.as_str(), "leave" | "ban") {
            return Err(ApiError::InvalidInput(
                "only a room you have left can be forgotten".into(),
            )
            .into());
        }
        let writer = self.storage.begin_room_write(&input.room_id, None).await?;
        let outputs = vec![outputs::room_forgotten(&input.room_id, &forget.user_id)];
        let published = self.lock_published().clone();
        let seqs = writer
            .commit(&input.request_id, &[], None, &outputs, &published)
            .await?;
        self.lock_published().retain(|seq| !published.contains(seq));
        Ok(Processed {
            answer: Answer::Events(pb::InputResponse {
                room_id: input.room_id.clone(),
                event_ids: Vec::new(),
                output_position: None,
            }),
            outputs: seqs.into_iter().zip(outputs).collect(),
        })
    }

    /// A redaction names an event of its own room (400 otherwise, as an
    /// event of another room is not the room's to redact). Users may redact
    /// their own events; others' need the redact power.
    async fn check_redaction(
        &self,
        head: &Head,
        redaction: &Pdu,
        redacts: &ruma::OwnedEventId,
    ) -> Result<(), ProcessError> {
        let stored = self.storage.events_by_id(&[redacts.as_str()]).await?;
        if stored
            .get(redacts)
            .and_then(|s| s.pdu.room_id.as_ref())
            .is_some_and(|room| Some(room) != redaction.room_id.as_ref())
        {
            return Err(
                ApiError::InvalidInput("the event to redact is in another room".into()).into(),
            );
        }
        let target_sender = stored.get(redacts).map(|s| s.pdu.sender.clone());
        if target_sender.as_ref() == Some(&redaction.sender) {
            return Ok(());
        }
        if events::power_of(&head.rules, &head.state, &redaction.sender)
            >= events::power_needed(&head.state, "redact", 50)
        {
            return Ok(());
        }
        Err(ApiError::Forbidden("you may only redact your own events".into()).into())
    }

    fn build_on(
        &self,
        room_id: &str,
        head: &Head,
        template: &pb::EventTemplate,
    ) -> Result<Arc<Pdu>, ProcessError> {
        let view = RoomView {
            room_id,
            rules: &head.rules,
            state: &head.state,
            forward_extremities: &head.extremities,
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
            &self.signer(),
        )?;
        Ok(Arc::new(pdu))
    }

    /// Writes a new room's create event and its initial state, each built
    /// on the head the ones before it left: built one after another in
    /// memory, then written together (the events in one statement, their
    /// states' blocks and snapshots in one or two more, and their states
    /// set at commit), not event by event.
    #[allow(clippy::too_many_arguments)]
    async fn append_new_room(
        &self,
        room_id: &str,
        writer: &mut RoomWriter,
        head: &mut Head,
        create: Arc<Pdu>,
        new_room: &topic_pb::NewRoom,
        outputs: &mut Vec<Vec<u8>>,
        event_ids: &mut Vec<String>,
    ) -> Result<(), ProcessError> {
        let context = OutputContext {
            room_version: &new_room.room_version,
            device_id: "",
            transaction_id: "",
        };
        // The state before the first event, as NIDs.
        let mut state = match head.nids.take() {
            Some(nids) => nids,
            None => writer.nid_state(&head.state).await?,
        };
        let mut pdus: Vec<Arc<Pdu>> = Vec::with_capacity(new_room.initial_state.len() + 1);
        let mut built: Vec<(StateDelta, Vec<String>, Vec<String>)> =
            Vec::with_capacity(new_room.initial_state.len() + 1);
        let mut templates = new_room.initial_state.iter();
        let mut next = Some(create);
        while let Some(pdu) = next {
            let (delta, prev_extremities) = head.advance(&pdu);
            built.push((delta, prev_extremities, head.extremity_ids()));
            pdus.push(pdu);
            next = match templates.next() {
                Some(template) => Some(self.build_on(room_id, head, template)?),
                None => None,
            };
        }
        let flags = EventFlags {
            rejected: false,
            soft_failed: false,
            outlier: false,
            announce: false,
        };
        let event_nids = writer.insert_new_events(&pdus, &flags).await?;
        let keys = writer.state_key_nids_of(&pdus).await?;
        // The state before each event, and after the last.
        let mut states = Vec::with_capacity(pdus.len() + 1);
        states.push(state.clone());
        for (key, event_nid) in keys.iter().zip(&event_nids) {
            if let Some((kind, key)) = key {
                state.set(*kind, *key, *event_nid);
            }
            states.push(state.clone());
        }
        writer.snapshots(&mut states).await?;
        for (i, event_nid) in event_nids.iter().enumerate() {
            let (Some(before), Some(after)) = (states[i].snapshot_nid, states[i + 1].snapshot_nid)
            else {
                return Err(ProcessError::Storage(StorageError::Corrupt(
                    "a new room's state not written".into(),
                )));
            };
            writer.set_states(*event_nid, before, after);
        }
        head.nids = states.pop();
        for (pdu, (delta, prev_extremities, extremities)) in pdus.iter().zip(&built) {
            outputs.push(outputs::new_room_event(
                pdu,
                &context,
                delta,
                prev_extremities,
                extremities,
                None,
            ));
            event_ids.push(pdu.event_id.to_string());
        }
        Ok(())
    }

    /// Writes a locally built event on top of the head and advances it.
    async fn append_local(
        &self,
        writer: &mut RoomWriter,
        head: &mut Head,
        pdu: Arc<Pdu>,
        context: &OutputContext<'_>,
        outputs: &mut Vec<Vec<u8>>,
        event_ids: &mut Vec<String>,
    ) -> Result<(), ProcessError> {
        let nids = match &mut head.nids {
            Some(nids) => nids,
            slot => slot.insert(writer.nid_state(&head.state).await?),
        };
        let before = writer.snapshot(nids).await?;
        let flags = EventFlags {
            rejected: false,
            soft_failed: false,
            outlier: false,
            announce: false,
        };
        if let Some((kind, key)) = writer.state_key_nids(&pdu).await? {
            let event_nid = writer
                .insert_event(&pdu, &flags, Some(before), None)
                .await?;
            nids.set(kind, key, event_nid);
            let after = writer.snapshot(nids).await?;
            writer.set_state_after(event_nid, after);
        } else {
            writer
                .insert_event(&pdu, &flags, Some(before), Some(before))
                .await?;
        }
        let (delta, prev_extremities) = head.advance(&pdu);
        outputs.push(outputs::new_room_event(
            &pdu,
            context,
            &delta,
            &prev_extremities,
            &head.extremity_ids(),
            None,
        ));
        if let Some(redacts) = pdu.redacts.clone() {
            self.apply_redaction(writer, head, &pdu, &redacts, outputs)
                .await?;
        }
        event_ids.push(pdu.event_id.to_string());
        Ok(())
    }

    /// Applies an accepted redaction to the stored copy of its target (in
    /// the same room) and announces it.
    pub(crate) async fn apply_redaction(
        &self,
        writer: &mut RoomWriter,
        head: &mut Head,
        redaction: &Pdu,
        redacts: &ruma::OwnedEventId,
        outputs: &mut Vec<Vec<u8>>,
    ) -> Result<(), ProcessError> {
        let stored = self.storage.events_by_id(&[redacts.as_str()]).await?;
        let Some(target) = stored.get(redacts) else {
            // Not here (yet): recorded, applied should the event arrive.
            writer
                .redact(redaction.event_id.as_str(), redacts.as_str(), None)
                .await?;
            return Ok(());
        };
        if target.room_nid != head.room_nid {
            return Ok(());
        }
        let redacted = events::redact(&target.pdu, &head.rules)?;
        writer
            .redact(
                redaction.event_id.as_str(),
                redacts.as_str(),
                Some(&redacted),
            )
            .await?;
        let redacted_pdu = Arc::new(
            Pdu::from_json(redacts.as_str(), &redacted)
                .map_err(|_| StorageError::Corrupt(redacts.to_string()))?,
        );
        if let Some(key) = &target.pdu.state_key {
            let state_key = (target.pdu.kind.to_string(), key.clone());
            if head
                .state
                .get(&state_key)
                .is_some_and(|current| current.event_id == *redacts)
            {
                head.state.insert(state_key, redacted_pdu);
            }
        }
        outputs.push(outputs::redacted_event(
            redacts.as_str(),
            redaction.event_id.as_str(),
            &redacted,
        ));
        Ok(())
    }

    /// Moves the stored head to the in-memory one, commits, and keeps the head.
    async fn finish_local(
        &self,
        mut writer: RoomWriter,
        mut head: Head,
        input: &topic_pb::RoomserverInput,
        written: Written<'_>,
        alias: Option<&str>,
        outputs: Vec<Vec<u8>>,
    ) -> Result<Processed, ProcessError> {
        write_head(&mut writer, &mut head, written.new).await?;
        let published = self.lock_published().clone();
        let seqs = match writer
            .commit(
                &input.request_id,
                written.answer,
                alias,
                &outputs,
                &published,
            )
            .await
        {
            Ok(seqs) => seqs,
            Err(error) if error.is_unique_violation() => {
                return match self.already_done(&input.request_id).await? {
                    Some(done) => Ok(done),
                    None => Err(ApiError::RoomInUse.into()),
                };
            }
            Err(error) => return Err(error.into()),
        };
        self.lock_published().retain(|seq| !published.contains(seq));
        head.head_version += 1;
        self.put_head(head);
        Ok(Processed {
            answer: Answer::Events(pb::InputResponse {
                room_id: input.room_id.clone(),
                event_ids: written.answer.to_vec(),
                output_position: None,
            }),
            outputs: seqs.into_iter().zip(outputs).collect(),
        })
    }
}

/// An input of a group and what it asks for.
pub(crate) type Grouped<'a> = (&'a topic_pb::RoomserverInput, GroupedKind<'a>);

/// What an input of a group asks for.
#[derive(Clone, Copy)]
pub(crate) enum GroupedKind<'a> {
    NewRoom(&'a topic_pb::NewRoom),
    Events(&'a topic_pb::NewLocalEvents),
}

/// What a group of local inputs came to: each input's event IDs (or why
/// it was refused), in order, and the outputs to publish, in order.
pub(crate) struct GroupProcessed {
    pub(crate) answers: Vec<Result<Vec<String>, ApiError>>,
    pub(crate) outputs: Vec<GroupOutput>,
}

/// An output of a group: the input (its index) it belongs to, its room,
/// and its outbox seq.
pub(crate) struct GroupOutput {
    pub(crate) input: usize,
    pub(crate) room_id: String,
    pub(crate) seq: i64,
    pub(crate) payload: Vec<u8>,
}

/// What an input asks for when it may be written in a group with others:
/// a new room, or local events other than redactions (which look up their
/// target outside the transaction, where the group's own uncommitted
/// writes are not seen).
pub(crate) fn groupable(input: &topic_pb::RoomserverInput) -> Option<GroupedKind<'_>> {
    match &input.kind {
        Some(topic_pb::roomserver_input::Kind::NewRoom(new_room)) => {
            Some(GroupedKind::NewRoom(new_room))
        }
        Some(topic_pb::roomserver_input::Kind::NewLocalEvents(new_events))
            if !new_events.templates.is_empty()
                && new_events.templates.iter().all(|template| {
                    template.redacts.is_none() && template.event_type != "m.room.redaction"
                }) =>
        {
            Some(GroupedKind::Events(new_events))
        }
        _ => None,
    }
}

/// A new room's create event, parsed and checked.
fn checked_create(new_room: &topic_pb::NewRoom) -> Result<Arc<Pdu>, ApiError> {
    let (_, rules) = events::rules_for(&new_room.room_version)?;
    let (create, redacted) = events::parse_received(&new_room.create_event_json, &rules)?;
    if redacted {
        return Err(ApiError::InvalidInput("create event hash mismatch".into()));
    }
    events::check_create(&rules, &create)?;
    Ok(Arc::new(create))
}

/// The events a local input wrote (`new`) and those it is answered with
/// (`answer`: the new ones and, in their place, the state events a
/// template would have repeated).
struct Written<'a> {
    new: &'a [String],
    answer: &'a [String],
}

/// Moves the stored head to the in-memory one after local events
/// (`written`): its state as a snapshot, its current-state rows,
/// extremities and depth.
async fn write_head(
    writer: &mut RoomWriter,
    head: &mut Head,
    written: &[String],
) -> Result<(), ProcessError> {
    let nids = match &mut head.nids {
        Some(nids) => nids,
        slot => slot.insert(writer.nid_state(&head.state).await?),
    };
    let snapshot_nid = writer.snapshot(nids).await?;
    let changes = current_state_changes(&head.state, written);
    writer
        .set_head(&HeadUpdate {
            snapshot_nid,
            depth: head.depth,
            extremities: head.extremity_ids(),
            changes,
        })
        .await?;
    Ok(())
}

/// The state event in place when `template` would repeat it: same type,
/// state key, sender and content. Setting state to what it is, or joining
/// a room one has joined with the same profile, makes no new event.
fn unchanged_state(head: &Head, template: &pb::EventTemplate) -> Option<String> {
    let state_key = template.state_key.clone()?;
    if template.redacts.is_some() {
        return None;
    }
    let current = head.state.get(&(template.event_type.clone(), state_key))?;
    if current.sender.as_str() != template.sender {
        return None;
    }
    let content: serde_json::Value = serde_json::from_slice(&template.content_json).ok()?;
    (content == events::content_value(current)).then(|| current.event_id.to_string())
}

/// The current-state rows to write after local events: each state event
/// the batch added that is still in the head's state.
fn current_state_changes(state: &StateMap, event_ids: &[String]) -> Vec<CurrentStateChange> {
    let written: std::collections::HashSet<&str> = event_ids.iter().map(String::as_str).collect();
    state
        .iter()
        .filter(|(_, pdu)| written.contains(pdu.event_id.as_str()))
        .map(|((kind, key), pdu)| CurrentStateChange::set(kind, key, pdu))
        .collect()
}
