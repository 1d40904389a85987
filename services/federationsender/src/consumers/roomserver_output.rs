//! `roomserver.output`: membership changes keep each room's joined hosts;
//! every new event a local user sent is queued for the servers in the room
//! (before and after it, so a leave or kick still reaches the one who
//! left, and an invite its invitee's server). Events from other servers
//! are their origin's to send. One database transaction per batch of
//! records (one record when the consumer keeps up), which also stores
//! their positions: a record applied before (by this replica, another one,
//! or a rebuild) changes nothing. The group's offsets are committed after
//! it.
//!
//! Replayed ([`replay`]), the records only build the joined hosts: what
//! they would queue was delivered when they were new.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ganglion_api::consume::{HandleError, RecordHandler};
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::decode;
use ganglion_log::{Log, LogError, Record};
use serde_json::Value;
use tokio::sync::watch;

use crate::queues::Queues;
use crate::storage::{MemberChange, OutputEvent, Storage};
use ganglion_api::users::server_of;

pub(crate) struct OutputConsumer {
    pub(crate) storage: Storage,
    /// `None` when replaying: the joined hosts only, nothing queued.
    pub(crate) queues: Option<Arc<Queues>>,
    pub(crate) server_name: String,
    /// Per partition, the records taken without effect since its position
    /// was last stored, and the offset after the last of them.
    pub(crate) unstored: std::sync::Mutex<std::collections::HashMap<u32, (u64, u64)>>,
}

/// How many records without effect a partition takes before its position
/// is stored anyway: what a restart applies again (to no effect) stays
/// this short.
const UNSTORED_RECORDS: u64 = 1_000;

impl OutputConsumer {
    /// What a record asks of the joined hosts and queues; `None` for a
    /// record that asks nothing (not a new event, historical, an outlier).
    pub(crate) fn new(storage: Storage, queues: Option<Arc<Queues>>, server_name: String) -> Self {
        OutputConsumer {
            storage,
            queues,
            server_name,
            unstored: Default::default(),
        }
    }

    fn read(&self, record: &Record) -> Result<Option<OutputEvent>, HandleError> {
        let output: topic_pb::RoomserverOutput =
            decode(&record.payload).map_err(|e| HandleError::Permanent(e.to_string()))?;
        let Some(topic_pb::roomserver_output::Kind::NewRoomEvent(new)) = output.kind else {
            return Ok(None);
        };
        if new.historical || new.outlier {
            return Ok(None);
        }
        let pdu: Value = serde_json::from_slice(&new.event_json)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let Some(room_id) = pdu["room_id"].as_str() else {
            return Ok(None);
        };
        let mut changes: Vec<MemberChange> = new
            .state_removed
            .iter()
            .filter(|e| e.event_type == "m.room.member")
            .map(|e| MemberChange {
                user_id: e.state_key.clone(),
                joined: false,
            })
            .collect();
        changes.extend(
            new.state_added
                .iter()
                .filter(|e| e.event_type == "m.room.member")
                .map(|e| MemberChange {
                    user_id: e.state_key.clone(),
                    joined: e.membership == "join",
                }),
        );
        let sender = pdu["sender"].as_str().unwrap_or_default();
        let local = self.queues.is_some() && server_of(sender) == Some(self.server_name.as_str());
        let also = (pdu["type"] == "m.room.member")
            .then(|| pdu["state_key"].as_str().and_then(server_of))
            .flatten()
            .map(str::to_owned);
        Ok(Some(OutputEvent {
            at: Some((record.partition, record.offset)),
            room_id: room_id.to_owned(),
            changes,
            pdu: local.then(|| {
                (
                    new.event_id.clone(),
                    String::from_utf8_lossy(&new.event_json).into_owned(),
                )
            }),
            also,
        }))
    }
}

/// A consumer that keeps up applies one record at a time; one that has
/// fallen behind (or a new replica) applies what has arrived in one
/// transaction, reading each room's servers once.
#[async_trait]
impl RecordHandler for OutputConsumer {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        self.handle_batch(std::slice::from_ref(record)).await
    }

    fn takes_batches(&self) -> bool {
        true
    }

    async fn handle_batch(&self, records: &[Record]) -> Result<(), HandleError> {
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            events.extend(self.read(record)?);
        }
        if events.is_empty() {
            return Ok(());
        }
        // Events that change no membership and that nothing is queued for
        // (a room of our users only, or events of other servers) change
        // nothing here: no transaction, no lock, and their positions are
        // stored only now and then. Taken again after a restart they
        // change nothing again, as the joined hosts they read are those
        // the records before them left.
        if events
            .iter()
            .all(|e| e.changes.is_empty() && e.also.is_none())
            && self
                .storage
                .queues_nothing(&events, &self.server_name)
                .await
                .map_err(HandleError::storage)?
        {
            return self.taken_without_effect(records).await;
        }
        let applied = self
            .storage
            .apply_events(&events, &self.server_name)
            .await
            .map_err(HandleError::storage)?;
        let Some(queues) = &self.queues else {
            return Ok(());
        };
        if applied.destinations.is_empty() {
            return Ok(());
        }
        crate::internal_events::PDUS_QUEUED
            .with_label_values::<&str>(&[])
            .inc_by(applied.queued);
        queues.announce(&applied.destinations).await;
        Ok(())
    }
}

impl OutputConsumer {
    /// Counts records taken without effect, storing a partition's position
    /// once it has taken [`UNSTORED_RECORDS`] of them.
    async fn taken_without_effect(&self, records: &[Record]) -> Result<(), HandleError> {
        let due: Vec<(u32, u64)> = {
            let mut unstored = self.unstored.lock().unwrap_or_else(|p| p.into_inner());
            let mut due = Vec::new();
            for record in records {
                let (count, next) = unstored.entry(record.partition).or_insert((0, 0));
                *count += 1;
                *next = (*next).max(record.offset + 1);
                if *count >= UNSTORED_RECORDS {
                    due.push((record.partition, *next));
                    *count = 0;
                }
            }
            due
        };
        for (partition, next) in due {
            self.storage
                .store_position(partition, next)
                .await
                .map_err(HandleError::storage)?;
        }
        Ok(())
    }
}

/// Applies the membership changes of `roomserver.output` to the joined
/// hosts, from each partition's `from` up to its `to` (records past `to`
/// are left alone), queueing nothing. `done` follows the records read per
/// partition. What has arrived is applied in batches, one transaction
/// each. Transient failures are retried; a record that can never be
/// applied is skipped (the live consumer dead-lettered it).
pub(crate) async fn replay(
    log: Arc<dyn Log>,
    topic: &str,
    applying: OutputConsumer,
    from: &[u64],
    to: &[u64],
    done: &watch::Sender<Vec<u64>>,
) -> Result<(), LogError> {
    done.send_replace(from.to_vec());
    let left = |done: &[u64]| done.iter().zip(to).any(|(done, to)| done < to);
    if !left(from) {
        return Ok(());
    }
    let mut reader = log.reader(&[(topic, from.to_vec())]).await?;
    let wanted = |record: &Record| {
        to.get(record.partition as usize)
            .is_some_and(|to| record.offset < *to)
    };
    while left(&done.borrow()) {
        // What has arrived, up to a consumer's batch, in one transaction.
        let mut batch = vec![reader.next().await?];
        while batch.len() < ganglion_api::consume::MAX_BATCH {
            match reader.try_next().await? {
                Some(record) => batch.push(record),
                None => break,
            }
        }
        batch.retain(wanted);
        if batch.is_empty() {
            continue;
        }
        apply_replayed(&applying, &batch).await;
        done.send_modify(|done| {
            for record in &batch {
                if let Some(slot) = done.get_mut(record.partition as usize) {
                    *slot = (*slot).max(record.offset + 1);
                }
            }
        });
    }
    Ok(())
}

/// Applies replayed records as one batch, retrying transient failures; a
/// batch that can never be applied is applied record by record, skipping
/// the record at fault (the live consumer dead-lettered it).
async fn apply_replayed(applying: &OutputConsumer, batch: &[Record]) {
    let mut wait = Duration::from_millis(100);
    loop {
        match applying.handle_batch(batch).await {
            Ok(()) => return,
            Err(HandleError::Permanent(_)) if batch.len() > 1 => break,
            Err(HandleError::Permanent(error)) => {
                tracing::warn!(%error, "replay: a record skipped");
                return;
            }
            Err(HandleError::Transient(error)) => {
                tracing::warn!(%error, ?wait, "replay: retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    for record in batch {
        Box::pin(apply_replayed(applying, std::slice::from_ref(record))).await;
    }
}
