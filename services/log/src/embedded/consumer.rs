//! One member of an embedded consumer group.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::select_all;
use tokio::sync::watch;

use super::group::Group;
use super::{Shared, Topic};
use crate::{Consumer, LogError, Record};

pub(crate) struct EmbeddedConsumer {
    /// Keeps the log (and its directory lock) alive while this member exists.
    _shared: Arc<Shared>,
    /// `None` for a reader: it holds every partition and commits nothing.
    group: Option<Arc<Group>>,
    member: u64,
    topics: Vec<Arc<Topic>>,
    /// One per entry of `topics`: bumped on every append to that topic.
    appended: Vec<watch::Receiver<u64>>,
    group_changed: Option<watch::Receiver<u64>>,
    /// The group version the current holdings were computed at.
    synced_version: Option<u64>,
    held: Vec<Cursor>,
    /// Where the next round-robin scan over `held` starts, so a busy
    /// partition cannot starve the others.
    next_turn: usize,
}

/// A held partition and the offset of the next record to deliver from it.
struct Cursor {
    /// Index into `topics`.
    topic: usize,
    partition: u32,
    offset: u64,
}

impl EmbeddedConsumer {
    pub(crate) fn new(shared: Arc<Shared>, group: Arc<Group>, topics: Vec<Arc<Topic>>) -> Self {
        let member = group.join(
            topics
                .iter()
                .map(|topic| (topic.name.clone(), topic.partition_count()))
                .collect(),
        );
        let appended = topics
            .iter()
            .map(|topic| topic.appended.subscribe())
            .collect();
        let group_changed = Some(group.subscribe());
        EmbeddedConsumer {
            _shared: shared,
            group: Some(group),
            member,
            topics,
            appended,
            group_changed,
            synced_version: None,
            held: Vec::new(),
            next_turn: 0,
        }
    }

    /// A reader of every partition of `topics`, from `starts` (per topic,
    /// per partition; missing entries start at 0).
    pub(crate) fn reader(
        shared: Arc<Shared>,
        topics: Vec<Arc<Topic>>,
        starts: Vec<Vec<u64>>,
    ) -> Self {
        let appended = topics
            .iter()
            .map(|topic| topic.appended.subscribe())
            .collect();
        let mut held = Vec::new();
        for (index, topic) in topics.iter().enumerate() {
            for partition in 0..topic.partition_count() {
                let offset = starts
                    .get(index)
                    .and_then(|offsets| offsets.get(partition as usize))
                    .copied()
                    .unwrap_or(0);
                held.push(Cursor {
                    topic: index,
                    partition,
                    offset,
                });
            }
        }
        EmbeddedConsumer {
            _shared: shared,
            group: None,
            member: 0,
            topics,
            appended,
            group_changed: None,
            synced_version: None,
            held,
            next_turn: 0,
        }
    }

    /// Applies the group's current assignment to `held`.
    fn sync_assignment(&mut self) {
        let Some(group) = &self.group else { return };
        let handover = group.hand_over(self.member);
        self.held.retain(|cursor| {
            let name = &self.topics[cursor.topic].name;
            !handover
                .released
                .iter()
                .any(|(topic, partition)| topic == name && *partition == cursor.partition)
        });
        for ((topic, partition), offset) in handover.acquired {
            if let Some(index) = self.topics.iter().position(|t| t.name == topic) {
                self.held.push(Cursor {
                    topic: index,
                    partition,
                    offset,
                });
            }
        }
    }

    /// The next visible record, taking held partitions in turn. Does not
    /// await, so a cancelled `next()` never loses a record.
    fn read_next(&mut self) -> Result<Option<Record>, LogError> {
        let count = self.held.len();
        for step in 0..count {
            let index = (self.next_turn + step) % count;
            let cursor = &mut self.held[index];
            let topic = &self.topics[cursor.topic];
            let Some(partition) = topic.partitions.get(cursor.partition as usize) else {
                continue;
            };
            if let Some(record) = partition.read(&topic.name, cursor.partition, cursor.offset)? {
                cursor.offset += 1;
                self.next_turn = (index + 1) % count;
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Waits until a topic gets a record or the group's assignment changes.
    async fn changed(&mut self) -> Result<(), LogError> {
        type Change<'a> =
            Pin<Box<dyn Future<Output = Result<(), watch::error::RecvError>> + Send + 'a>>;
        let mut changes: Vec<Change<'_>> = self
            .appended
            .iter_mut()
            .map(|receiver| Box::pin(receiver.changed()) as Change<'_>)
            .collect();
        if let Some(group_changed) = &mut self.group_changed {
            changes.push(Box::pin(group_changed.changed()));
        }
        let (result, _, _) = select_all(changes).await;
        result.map_err(|_| LogError::Closed)
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn next(&mut self) -> Result<Record, LogError> {
        loop {
            // Mark every change seen *before* looking for records: a record
            // appended after this point bumps a version again, so `changed()`
            // returns at once and no wake-up is lost.
            for receiver in &mut self.appended {
                receiver.borrow_and_update();
            }
            if let Some(group_changed) = &mut self.group_changed {
                let version = *group_changed.borrow_and_update();
                if self.synced_version != Some(version) {
                    self.synced_version = Some(version);
                    self.sync_assignment();
                }
            }
            if let Some(record) = self.read_next()? {
                return Ok(record);
            }
            self.changed().await?;
        }
    }

    async fn try_next(&mut self) -> Result<Option<Record>, LogError> {
        if let Some(group_changed) = &mut self.group_changed {
            let version = *group_changed.borrow_and_update();
            if self.synced_version != Some(version) {
                self.synced_version = Some(version);
                self.sync_assignment();
            }
        }
        self.read_next()
    }

    async fn commit(&mut self, record: &Record) -> Result<(), LogError> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        group.commit(
            self.member,
            (record.topic.clone(), record.partition),
            record.offset.saturating_add(1),
        )
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        let mut assignment: Vec<(String, u32)> = self
            .held
            .iter()
            .map(|cursor| (self.topics[cursor.topic].name.clone(), cursor.partition))
            .collect();
        assignment.sort();
        assignment
    }
}

impl Drop for EmbeddedConsumer {
    /// Leaving hands this member's partitions to the rest of the group, which
    /// resumes them at the committed offsets.
    fn drop(&mut self) {
        if let Some(group) = &self.group {
            group.leave(self.member);
        }
    }
}
