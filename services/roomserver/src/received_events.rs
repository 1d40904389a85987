//! Complete PDUs from elsewhere (federation, backfill, joins): the checks
//! the spec performs on receipt of a PDU, in order, and what each outcome
//! means for the room.
//!
//! 1. Format and size; the content hash (a mismatch redacts the event).
//! 2. Auth against the event's own auth events: a failure stores it as
//!    rejected (it never becomes state, an extremity, or visible).
//! 3. Outliers stop here: stored without state.
//! 4. The state before the event (resolved when its prev_events fork);
//!    auth against that state: a failure stores it as rejected.
//! 5. New events are checked against the current state too: a failure
//!    soft-fails them (stored with state, but not an extremity, not sent).
//! 6. Accepted new events move the room: forward extremities, current
//!    state (resolved across the extremities), an output record.
//!    Old (backfilled) events are announced as historical and move nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ganglion_api::ApiError;
use ganglion_api::proto::roomserver as pb;
use ganglion_api::proto::topics as topic_pb;
use ruma::OwnedEventId;

use crate::RoomserverService;
use crate::consumers::input::{Answer, ProcessError, Processed};
use crate::events::{self, Pdu, StateMap};
use crate::head::{Head, extremities_after, state_delta};
use crate::outputs::{self, OutputContext};
use crate::resolution::{self, EventsById};
use crate::storage::{
    CurrentStateChange, EventFlags, HeadUpdate, NidState, RoomWriter, StoredEvent,
};

/// Resolutions over more state entries than this run on a blocking thread.
const BLOCKING_RESOLUTION_ENTRIES: usize = 1_000;

/// What happened to one PDU.
struct Outcome {
    event_id: String,
    outcome: &'static str,
    reason: String,
}

/// The work of one input record.
/// A received PDU as parsed: the event, and whether its content hash
/// failed (it is then kept redacted).
type Parsed = Result<(Pdu, bool), events::EventError>;

struct Batch {
    /// Events written in this transaction (not yet visible outside it).
    written: HashMap<OwnedEventId, StoredEvent>,
    /// Auth events read from the database in this input: a join's
    /// thousands of member events name the same few.
    auth_read: HashMap<OwnedEventId, Arc<Pdu>>,
    /// The stored events a PDU's given state named (a join's thousands).
    state_read: HashMap<OwnedEventId, StoredEvent>,
    outputs: Vec<Vec<u8>>,
    /// Outlier state events this input asked to announce as they are
    /// stored (a join's state): announced ahead of its other outputs.
    announce: Vec<Arc<Pdu>>,
    /// Current-state rows to set or remove when the head moved.
    changes: BTreeMap<(String, String), Option<Arc<Pdu>>>,
    head_moved: bool,
}

impl RoomserverService {
    pub(crate) async fn input_pdus_record(
        &self,
        input: &topic_pb::RoomserverInput,
        pdus: &topic_pb::InputPdus,
    ) -> Result<Processed, ProcessError> {
        if let Some((room_id, event_ids)) = self.storage.processed_input(&input.request_id).await? {
            let outputs = self.orphaned_outputs(&room_id).await?;
            return Ok(Processed {
                answer: Answer::Pdus(pb::InputPdusResponse {
                    outcomes: event_ids
                        .into_iter()
                        .map(|event_id| pb::PduOutcome {
                            event_id,
                            outcome: "duplicate".into(),
                            reason: String::new(),
                        })
                        .collect(),
                    output_position: None,
                }),
                outputs,
            });
        }
        let (_, rules) = events::rules_for(&pdus.room_version)?;
        let room = self.storage.room(&input.room_id).await?;
        if let Some(room) = &room
            && room.room_version != pdus.room_version
        {
            return Err(ApiError::InvalidInput(format!(
                "room {} has version {}, not {}",
                input.room_id, room.room_version, pdus.room_version
            ))
            .into());
        }
        let mut writer = self
            .storage
            .begin_room_write(&input.room_id, Some(&pdus.room_version))
            .await?;
        let mut head = match &room {
            Some(room) => self.take_head(room).await?,
            None => Head::empty(writer.room_nid, &pdus.room_version, rules),
        };
        let mut batch = Batch {
            written: HashMap::new(),
            auth_read: HashMap::new(),
            state_read: HashMap::new(),
            outputs: Vec::new(),
            announce: Vec::new(),
            changes: BTreeMap::new(),
            head_moved: false,
        };
        // Every PDU parsed first (on every core), so one query tells which
        // are stored.
        let parsed = ganglion_base::parallel::map(&pdus.pdus, |pdu| {
            events::parse_received(&pdu.event_json, &head.rules)
        });
        let ids: Vec<&str> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|(pdu, _)| pdu.event_id.as_str())
            .collect();
        let stored_before = self.storage.events_by_id(&ids).await?;
        let mut outcomes = Vec::with_capacity(pdus.pdus.len());
        for (pdu, parsed) in pdus.pdus.iter().zip(parsed) {
            let outcome = self
                .receive(
                    &mut writer,
                    &mut head,
                    &mut batch,
                    (&input.room_id, pdu),
                    (parsed, &stored_before),
                )
                .await?;
            if outcome.outcome != "accepted" && outcome.outcome != "outlier" {
                tracing::info!(
                    room_id = %input.room_id,
                    event_id = %outcome.event_id,
                    outcome = outcome.outcome,
                    reason = %outcome.reason,
                    "received event not accepted"
                );
            }
            outcomes.push(outcome);
        }
        self.insert_queued_outliers(&mut writer, &mut batch).await?;
        if batch.head_moved {
            let nids = match &mut head.nids {
                Some(nids) => nids,
                slot => slot.insert(writer.nid_state(&head.state).await?),
            };
            let snapshot_nid = writer.snapshot(nids).await?;
            writer
                .set_head(&HeadUpdate {
                    snapshot_nid,
                    depth: head.depth,
                    extremities: head.extremity_ids(),
                    changes: batch
                        .changes
                        .into_iter()
                        .map(|((kind, key), event)| match event {
                            Some(event) => CurrentStateChange::set(&kind, &key, &event),
                            None => CurrentStateChange {
                                kind,
                                state_key: key,
                                event: None,
                            },
                        })
                        .collect(),
                })
                .await?;
            head.head_version += 1;
        }
        if !batch.announce.is_empty() {
            let announced: Vec<&Pdu> = batch.announce.iter().map(Arc::as_ref).collect();
            let mut outputs = outputs::outlier_batches(&announced, &head.room_version);
            outputs.append(&mut batch.outputs);
            batch.outputs = outputs;
        }
        let event_ids: Vec<String> = outcomes.iter().map(|o| o.event_id.clone()).collect();
        let published = self.lock_published().clone();
        let seqs = writer
            .commit(
                &input.request_id,
                &event_ids,
                None,
                &batch.outputs,
                &published,
            )
            .await?;
        self.lock_published().retain(|seq| !published.contains(seq));
        self.put_head(head);
        Ok(Processed {
            answer: Answer::Pdus(pb::InputPdusResponse {
                outcomes: outcomes
                    .into_iter()
                    .map(|o| pb::PduOutcome {
                        event_id: o.event_id,
                        outcome: o.outcome.into(),
                        reason: o.reason,
                    })
                    .collect(),
                output_position: None,
            }),
            outputs: seqs.into_iter().zip(batch.outputs).collect(),
        })
    }

    /// Events by ID from this batch or the database.
    async fn lookup(
        &self,
        batch: &Batch,
        ids: &[&OwnedEventId],
    ) -> Result<HashMap<OwnedEventId, StoredEvent>, ProcessError> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match batch.written.get(*id) {
                Some(stored) => {
                    found.insert((*id).clone(), stored.clone());
                }
                None => missing.push(id.as_str()),
            }
        }
        if !missing.is_empty() {
            found.extend(self.storage.events_by_id(&missing).await?);
        }
        Ok(found)
    }

    /// An event's auth events as far as known: written in this input, read
    /// earlier in it, or read now (and kept for the rest of the input).
    async fn auth_events(
        &self,
        batch: &mut Batch,
        ids: &[&OwnedEventId],
    ) -> Result<HashMap<OwnedEventId, Arc<Pdu>>, ProcessError> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match batch
                .written
                .get(*id)
                .map(|stored| &stored.pdu)
                .or_else(|| batch.auth_read.get(*id))
            {
                Some(pdu) => {
                    found.insert((*id).clone(), pdu.clone());
                }
                None => missing.push(id.as_str()),
            }
        }
        if !missing.is_empty() {
            for (id, stored) in self.storage.events_by_id(&missing).await? {
                batch.auth_read.insert(id.clone(), stored.pdu.clone());
                found.insert(id, stored.pdu);
            }
        }
        Ok(found)
    }

    /// The state after a stored event (not an outlier).
    async fn state_after(
        &self,
        writer: &mut RoomWriter,
        head: &Head,
        event: &StoredEvent,
    ) -> Result<Option<(StateMap, NidState)>, ProcessError> {
        let Some(snapshot) = event.state_after else {
            return Ok(None);
        };
        if let Some(nids) = &head.nids
            && nids.snapshot_nid == Some(snapshot)
        {
            return Ok(Some((head.state.clone(), nids.clone())));
        }
        Ok(Some(writer.load_state(snapshot).await?))
    }

    /// Every event resolution may consult: the forks' state events and
    /// their full auth chains.
    async fn resolution_events(
        &self,
        batch: &Batch,
        forks: &[&StateMap],
    ) -> Result<EventsById, ProcessError> {
        let mut events = EventsById::new();
        for fork in forks {
            for pdu in fork.values() {
                events.insert(pdu.event_id.clone(), pdu.clone());
            }
        }
        let mut frontier: HashSet<OwnedEventId> = events
            .values()
            .flat_map(|e| e.auth_events.iter().cloned())
            .filter(|id| !events.contains_key(id))
            .collect();
        while !frontier.is_empty() {
            let ids: Vec<&OwnedEventId> = frontier.iter().collect();
            let loaded = self.lookup(batch, &ids).await?;
            let mut next = HashSet::new();
            for (id, stored) in loaded {
                for auth in &stored.pdu.auth_events {
                    if !events.contains_key(auth) && !frontier.contains(auth) {
                        next.insert(auth.clone());
                    }
                }
                events.insert(id, stored.pdu);
            }
            // Auth events we do not hold are skipped, as the spec allows.
            frontier = next
                .into_iter()
                .filter(|id| !events.contains_key(id))
                .collect();
        }
        Ok(events)
    }

    /// Resolves forks, on a blocking thread when they are large.
    async fn resolve(
        &self,
        head: &Head,
        batch: &Batch,
        forks: Vec<StateMap>,
    ) -> Result<StateMap, ProcessError> {
        let refs: Vec<&StateMap> = forks.iter().collect();
        let events = self.resolution_events(batch, &refs).await?;
        let rules = head.rules.clone();
        let size: usize = forks.iter().map(|f| f.len()).sum();
        if size > BLOCKING_RESOLUTION_ENTRIES {
            let resolved = tokio::task::spawn_blocking(move || {
                let refs: Vec<&StateMap> = forks.iter().collect();
                resolution::resolve(&rules, &refs, &events)
            })
            .await
            .map_err(|e| ApiError::Internal(format!("state resolution: {e}")))??;
            Ok(resolved)
        } else {
            Ok(resolution::resolve(&rules, &refs, &events)?)
        }
    }

    async fn receive(
        &self,
        writer: &mut RoomWriter,
        head: &mut Head,
        batch: &mut Batch,
        (room_id, input): (&str, &pb::InputPdu),
        (parsed, stored_before): (Parsed, &HashMap<OwnedEventId, StoredEvent>),
    ) -> Result<Outcome, ProcessError> {
        let kind = pb::input_pdu::Kind::try_from(input.kind).unwrap_or(pb::input_pdu::Kind::New);
        if kind != pb::input_pdu::Kind::Outlier {
            self.insert_queued_outliers(writer, batch).await?;
        }
        let rejected = |event_id: &str, reason: String| Outcome {
            event_id: event_id.to_owned(),
            outcome: "rejected",
            reason,
        };
        let (pdu, _hash_mismatch) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return Ok(rejected("", error.to_string())),
        };
        let pdu = Arc::new(pdu);
        let event_id = pdu.event_id.to_string();
        let pdu_room = match &pdu.room_id {
            Some(room) => room.to_string(),
            // Version 12 create events carry no room ID: it is their own.
            None => format!("!{}", &event_id[1..]),
        };
        if pdu_room != room_id {
            return Ok(rejected(&event_id, format!("event belongs to {pdu_room}")));
        }
        let existing = batch
            .written
            .get(&pdu.event_id)
            .or_else(|| stored_before.get(&pdu.event_id));
        if let Some(existing) = existing
            && (!existing.outlier || kind == pb::input_pdu::Kind::Outlier)
        {
            return Ok(Outcome {
                event_id,
                outcome: "duplicate",
                reason: String::new(),
            });
        }
        let was_outlier = existing.map(|e| e.event_nid);

        // Check 4: the event's own auth events.
        let create_id = events::create_event_id(&head.rules, &pdu);
        let auth_ids: Vec<&OwnedEventId> =
            pdu.auth_events.iter().chain(create_id.as_ref()).collect();
        let auth = self.auth_events(batch, &auth_ids).await?;
        if let Some(missing) = auth_ids.iter().find(|id| !auth.contains_key(**id)) {
            return Ok(Outcome {
                event_id,
                outcome: "missing_auth_events",
                reason: format!("auth event {missing} is not known"),
            });
        }
        if let Err(error) = events::authorise_by_auth_events(&head.rules, &pdu, &auth) {
            let flags = EventFlags {
                rejected: true,
                soft_failed: false,
                outlier: kind == pb::input_pdu::Kind::Outlier,
                announce: false,
            };
            self.store(writer, batch, head, &pdu, flags, None).await?;
            return Ok(rejected(&event_id, error.to_string()));
        }
        if kind == pb::input_pdu::Kind::Outlier {
            let flags = EventFlags {
                rejected: false,
                soft_failed: false,
                outlier: true,
                announce: input.announce,
            };
            self.store(writer, batch, head, &pdu, flags, None).await?;
            return Ok(Outcome {
                event_id,
                outcome: "outlier",
                reason: String::new(),
            });
        }

        // Check 5: the state before the event.
        let (state_before, mut nids_before) = if input.has_state_before {
            let ids: Vec<OwnedEventId> = input
                .state_before
                .iter()
                .filter_map(|id| ruma::EventId::parse(id).ok())
                .collect();
            let refs: Vec<&OwnedEventId> = ids.iter().collect();
            let found = self.lookup(batch, &refs).await?;
            if found.len() != ids.len() {
                return Ok(Outcome {
                    event_id,
                    outcome: "missing_state",
                    reason: "state_before names events not stored".into(),
                });
            }
            writer.know_nids(
                found
                    .iter()
                    .map(|(id, stored)| (id.to_string(), stored.event_nid)),
            );
            let mut state = StateMap::new();
            for (id, stored) in found {
                if let Some(key) = &stored.pdu.state_key {
                    state.insert(
                        (stored.pdu.kind.to_string(), key.clone()),
                        stored.pdu.clone(),
                    );
                }
                // Announced as outliers below if they become current.
                batch.state_read.insert(id, stored);
            }
            let nids = writer.nid_state(&state).await?;
            (state, nids)
        } else {
            let prev_ids: Vec<&OwnedEventId> = pdu.prev_events.iter().collect();
            let prevs = self.lookup(batch, &prev_ids).await?;
            let mut forks = Vec::with_capacity(prevs.len());
            for id in &pdu.prev_events {
                let state = match prevs.get(id) {
                    Some(prev) => self.state_after(writer, head, prev).await?,
                    None => None,
                };
                match state {
                    Some(state) => forks.push(state),
                    None => {
                        return Ok(Outcome {
                            event_id,
                            outcome: "missing_prev_events",
                            reason: format!("no state after prev event {id}"),
                        });
                    }
                }
            }
            match forks.len() {
                0 => (StateMap::new(), NidState::default()),
                1 => forks.remove(0),
                _ => {
                    let maps: Vec<StateMap> = forks.into_iter().map(|(s, _)| s).collect();
                    let resolved = self.resolve(head, batch, maps).await?;
                    let nids = writer.nid_state(&resolved).await?;
                    (resolved, nids)
                }
            }
        };
        if (pdu.kind.to_string() != "m.room.create" || !state_before.is_empty())
            && let Err(error) = events::authorise_against_state(&head.rules, &state_before, &pdu)
        {
            let before = writer.snapshot(&mut nids_before).await?;
            let flags = EventFlags {
                rejected: true,
                soft_failed: false,
                outlier: false,
                announce: false,
            };
            self.store(writer, batch, head, &pdu, flags, Some((before, before)))
                .await?;
            return Ok(rejected(&event_id, error.to_string()));
        }

        // Check 6: soft failure against the current state (new events only).
        let soft_failed = kind == pb::input_pdu::Kind::New
            && !head.state.is_empty()
            && events::authorise_against_state(&head.rules, &head.state, &pdu).is_err();

        // History is shown under the visibility in force when it was sent.
        let visibility_before = if kind == pb::input_pdu::Kind::Old {
            events::history_visibility(&state_before)
        } else {
            None
        };
        let before = writer.snapshot(&mut nids_before).await?;
        let mut state_after = state_before;
        let mut nids_after = nids_before;
        let event_nid = match was_outlier {
            Some(nid) => {
                writer.de_outlier(nid, before, before).await?;
                // Later events of this input find it with its state.
                batch.written.insert(
                    pdu.event_id.clone(),
                    StoredEvent {
                        event_nid: nid,
                        room_nid: head.room_nid,
                        pdu: pdu.clone(),
                        state_before: Some(before),
                        state_after: Some(before),
                        soft_failed: false,
                        outlier: false,
                        // Only outliers are announced as outliers.
                        announced: false,
                    },
                );
                nid
            }
            None => {
                let flags = EventFlags {
                    rejected: false,
                    soft_failed,
                    outlier: false,
                    announce: false,
                };
                self.store(writer, batch, head, &pdu, flags, Some((before, before)))
                    .await?
            }
        };
        if let Some((kind, key)) = writer.state_key_nids(&pdu).await? {
            nids_after.set(kind, key, event_nid);
            let after = writer.snapshot(&mut nids_after).await?;
            writer.set_state_after(event_nid, after);
            if let Some(stored) = batch.written.get_mut(&pdu.event_id) {
                stored.state_after = Some(after);
            }
            state_after.insert(
                (
                    pdu.kind.to_string(),
                    pdu.state_key.clone().unwrap_or_default(),
                ),
                pdu.clone(),
            );
        }
        if soft_failed {
            return Ok(Outcome {
                event_id,
                outcome: "soft_failed",
                reason: "not allowed by the room's current state".into(),
            });
        }
        let context = OutputContext {
            room_version: &head.room_version,
            device_id: "",
            transaction_id: "",
        };
        let prev_extremities = head.extremity_ids();
        if kind == pb::input_pdu::Kind::Old {
            batch.outputs.push(outputs::new_room_event(
                &pdu,
                &context,
                &Vec::new(),
                &prev_extremities,
                &prev_extremities,
                Some(visibility_before.as_deref().unwrap_or_default()),
            ));
            return Ok(Outcome {
                event_id,
                outcome: "accepted",
                reason: String::new(),
            });
        }

        // The room moves forward.
        let extremities = extremities_after(&head.extremities, &pdu);
        let (new_state, new_nids) = if extremities.len() == 1 {
            (state_after, nids_after)
        } else {
            let mut forks = vec![state_after];
            let others: Vec<&OwnedEventId> = extremities
                .iter()
                .filter(|e| e.event_id != pdu.event_id)
                .map(|e| &e.event_id)
                .collect();
            let stored = self.lookup(batch, &others).await?;
            for other in stored.values() {
                if let Some((state, _)) = self.state_after(writer, head, other).await? {
                    forks.push(state);
                }
            }
            let resolved = self.resolve(head, batch, forks).await?;
            let nids = writer.nid_state(&resolved).await?;
            (resolved, nids)
        };
        let delta = state_delta(&head.state, &new_state);
        for (key, added, _) in &delta {
            batch.changes.insert(key.clone(), added.clone());
        }
        // State that came as outliers (with a join to another server's
        // room) was never announced: views get it before the event.
        let added: Vec<&OwnedEventId> = delta
            .iter()
            .filter_map(|(_, added, _)| added.as_ref().map(|e| &e.event_id))
            .filter(|id| **id != pdu.event_id)
            .collect();
        if !added.is_empty() {
            let unread: Vec<&OwnedEventId> = added
                .iter()
                .copied()
                .filter(|id| !batch.state_read.contains_key(*id))
                .collect();
            let mut stored = self.lookup(batch, &unread).await?;
            for id in &added {
                if let Some(read) = batch.state_read.get(*id) {
                    stored.entry((*id).clone()).or_insert_with(|| read.clone());
                }
            }
            let outliers: Vec<&Pdu> = added
                .iter()
                .filter_map(|id| stored.get(*id))
                // Announced when stored, or, stored before that was done, now.
                .filter(|event| event.outlier && !event.announced)
                .map(|event| event.pdu.as_ref())
                .collect();
            batch
                .outputs
                .extend(outputs::outlier_batches(&outliers, &head.room_version));
        }
        head.state = new_state;
        head.nids = Some(new_nids);
        head.extremities = extremities;
        head.depth = head.depth.max(pdu.depth);
        batch.head_moved = true;
        batch.outputs.push(outputs::new_room_event(
            &pdu,
            &context,
            &delta,
            &prev_extremities,
            &head.extremity_ids(),
            None,
        ));
        if let Some(redacts) = pdu.redacts.clone()
            && self.redaction_allowed(head, batch, &pdu, &redacts).await?
        {
            self.apply_redaction(writer, head, &pdu, &redacts, &mut batch.outputs)
                .await?;
        }
        Ok(Outcome {
            event_id,
            outcome: "accepted",
            reason: String::new(),
        })
    }

    /// The spec's check when a redaction is applied (room versions 3+): the
    /// redacting user has the redact power, or is on the server of the
    /// event's sender.
    async fn redaction_allowed(
        &self,
        head: &Head,
        batch: &Batch,
        redaction: &Pdu,
        redacts: &OwnedEventId,
    ) -> Result<bool, ProcessError> {
        let target = self.lookup(batch, &[redacts]).await?;
        let Some(target) = target.get(redacts) else {
            return Ok(false);
        };
        Ok(
            target.pdu.sender.server_name() == redaction.sender.server_name()
                || events::power_of(&head.rules, &head.state, &redaction.sender)
                    >= events::power_needed(&head.state, "redact", 50),
        )
    }

    /// Inserts the outliers [`Self::store`] queued and gives them their
    /// NIDs in the batch.
    async fn insert_queued_outliers(
        &self,
        writer: &mut RoomWriter,
        batch: &mut Batch,
    ) -> Result<(), ProcessError> {
        for (event_id, event_nid) in writer.insert_queued_outliers().await? {
            if let Some(stored) = batch.written.get_mut(&event_id) {
                stored.event_nid = event_nid;
            }
        }
        Ok(())
    }

    /// Writes a received event with its flags; returns its NID (0 for an
    /// outlier, which has its NID once queued outliers are inserted).
    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        writer: &mut RoomWriter,
        batch: &mut Batch,
        head: &Head,
        pdu: &Arc<Pdu>,
        flags: EventFlags,
        state: Option<(i64, i64)>,
    ) -> Result<i64, ProcessError> {
        // Outliers wait to be inserted many to a statement: their NIDs are
        // filled in before anything that is not an outlier is received.
        let event_nid = if flags.outlier {
            writer.queue_outlier(pdu, &flags);
            0
        } else {
            writer
                .insert_event(pdu, &flags, state.map(|s| s.0), state.map(|s| s.1))
                .await?
        };
        let announced = flags.announced(pdu);
        if announced {
            batch.announce.push(pdu.clone());
        }
        // Copied only to be marked rejected (a join stores thousands).
        let stored_pdu = if flags.rejected == pdu.rejected {
            pdu.clone()
        } else {
            let mut copy = (**pdu).clone();
            copy.rejected = flags.rejected;
            Arc::new(copy)
        };
        batch.written.insert(
            pdu.event_id.clone(),
            StoredEvent {
                event_nid,
                room_nid: head.room_nid,
                pdu: stored_pdu,
                state_before: state.map(|s| s.0),
                state_after: state.map(|s| s.1),
                soft_failed: flags.soft_failed,
                outlier: flags.outlier,
                announced,
            },
        );
        Ok(event_nid)
    }
}
