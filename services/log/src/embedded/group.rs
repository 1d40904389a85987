//! Consumer groups of the embedded log: who should hold which partition, who
//! holds it now, and the group's committed offsets (durable on disk).
//!
//! A partition moves between members in two steps, as in Kafka's cooperative
//! protocol: the old holder releases it the next time it asks for a record
//! (that is, once it has finished the record it was working on), and only then
//! does the new holder take it, starting from the group's committed offset. So
//! two members never work on one partition (one room) at the same time, and
//! records the old holder did not commit are delivered again: at-least-once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::offsets::OffsetsJournal;
use crate::LogError;

/// A topic's partition, as groups refer to it.
pub(crate) type PartitionId = (String, u32);

pub(crate) struct Group {
    state: Mutex<GroupState>,
    /// Serialises writes of committed offsets, in the order they were made.
    /// Taken before `state` whenever both are needed.
    journal: Mutex<OffsetsJournal>,
    /// Bumped whenever membership changes or a partition is released, so
    /// members waiting for records look at their assignment again.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct GroupState {
    next_member: u64,
    /// Each member's topics, with their partition counts.
    members: BTreeMap<u64, Vec<(String, u32)>>,
    /// The member each partition should go to.
    target: HashMap<PartitionId, u64>,
    /// The member that holds each partition now.
    holders: HashMap<PartitionId, u64>,
    /// The offset each partition resumes at.
    committed: BTreeMap<PartitionId, u64>,
}

/// What a member must change after looking at the group.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Handover {
    /// Partitions it must stop reading.
    pub released: Vec<PartitionId>,
    /// Partitions it now holds, with the offset to start reading at.
    pub acquired: Vec<(PartitionId, u64)>,
}

impl Group {
    /// Loads the group's committed offsets from `path` (none if absent).
    pub(crate) fn load(path: PathBuf, fsync: bool) -> Result<Group, LogError> {
        let (journal, committed) = OffsetsJournal::open(path, fsync)?;
        Ok(Group {
            state: Mutex::new(GroupState {
                committed,
                ..GroupState::default()
            }),
            journal: Mutex::new(journal),
            changed: watch::Sender::new(0),
        })
    }

    /// Lowers the committed offset of a partition to `end` if it is past
    /// it, on disk too (so records appended after the cut are not skipped
    /// after another restart); returns the offset it was.
    pub(crate) fn clamp_committed(
        &self,
        topic: &str,
        partition: u32,
        end: u64,
    ) -> Result<Option<u64>, LogError> {
        let mut journal = self.journal.lock();
        let id = (topic.to_owned(), partition);
        let was = {
            let mut state = self.state.lock();
            match state.committed.get_mut(&id) {
                Some(committed) if *committed > end => std::mem::replace(committed, end),
                _ => return Ok(None),
            }
        };
        journal.append(&id, end)?;
        Ok(Some(was))
    }

    /// The offset each of a topic's `partitions` resumes at, if committed.
    pub(crate) fn committed(&self, topic: &str, partitions: u32) -> Vec<Option<u64>> {
        let state = self.state.lock();
        (0..partitions)
            .map(|partition| state.committed.get(&(topic.to_owned(), partition)).copied())
            .collect()
    }

    /// A receiver that sees every change of assignment.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Adds a member reading `topics` (name, partition count); returns its id.
    pub(crate) fn join(&self, topics: Vec<(String, u32)>) -> u64 {
        let member = {
            let mut state = self.state.lock();
            let member = state.next_member;
            state.next_member += 1;
            state.members.insert(member, topics);
            state.rebalance();
            member
        };
        self.bump();
        member
    }

    /// Removes a member; the partitions it held become free for the others.
    pub(crate) fn leave(&self, member: u64) {
        {
            let mut state = self.state.lock();
            state.members.remove(&member);
            state.holders.retain(|_, holder| *holder != member);
            state.rebalance();
        }
        self.bump();
    }

    /// Releases what `member` holds but should not, and takes what it should
    /// hold and nobody holds any more.
    pub(crate) fn hand_over(&self, member: u64) -> Handover {
        let handover = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let mut handover = Handover::default();
            state.holders.retain(|partition, holder| {
                let keep = *holder != member || state.target.get(partition) == Some(&member);
                if !keep {
                    handover.released.push(partition.clone());
                }
                keep
            });
            for (partition, target) in &state.target {
                if *target == member && !state.holders.contains_key(partition) {
                    state.holders.insert(partition.clone(), member);
                    let start = state.committed.get(partition).copied().unwrap_or(0);
                    handover.acquired.push((partition.clone(), start));
                }
            }
            handover.acquired.sort();
            handover
        };
        if !handover.released.is_empty() {
            self.bump();
        }
        handover
    }

    /// Records that the group resumes `partition` at `next_offset`, if
    /// `member` still holds it. A commit from a member that lost the partition
    /// is dropped (its new holder started from the committed offset and may be
    /// further along); the record is then delivered again, never skipped.
    pub(crate) fn commit(
        &self,
        member: u64,
        partition: PartitionId,
        next_offset: u64,
    ) -> Result<(), LogError> {
        let mut journal = self.journal.lock();
        let snapshot = {
            let mut state = self.state.lock();
            if state.holders.get(&partition) != Some(&member) {
                tracing::debug!(
                    topic = %partition.0,
                    partition = partition.1,
                    "dropping a commit for a partition this member no longer holds"
                );
                return Ok(());
            }
            if state.committed.get(&partition) == Some(&next_offset) {
                return Ok(());
            }
            state.committed.insert(partition.clone(), next_offset);
            journal.wants_compaction().then(|| state.committed.clone())
        };
        match snapshot {
            Some(committed) => journal.compact(&committed),
            None => journal.append(&partition, next_offset),
        }
    }

    fn bump(&self) {
        self.changed
            .send_modify(|version| *version = version.wrapping_add(1));
    }
}

impl GroupState {
    /// Spreads each topic's partitions round-robin over the members reading it.
    fn rebalance(&mut self) {
        let mut readers: BTreeMap<&str, (u32, Vec<u64>)> = BTreeMap::new();
        for (member, topics) in &self.members {
            for (topic, partitions) in topics {
                readers
                    .entry(topic)
                    .or_insert_with(|| (*partitions, Vec::new()))
                    .1
                    .push(*member);
            }
        }
        self.target.clear();
        for (topic, (partitions, members)) in readers {
            for partition in 0..partitions {
                let member = members[partition as usize % members.len()];
                self.target.insert((topic.to_owned(), partition), member);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn group(dir: &Path) -> Group {
        Group::load(dir.join("g.offsets"), false).unwrap()
    }

    fn partitions(handover: &Handover) -> Vec<u32> {
        handover.acquired.iter().map(|((_, p), _)| *p).collect()
    }

    #[test]
    fn a_joiner_waits_until_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let group = group(dir.path());
        let a = group.join(vec![("t".to_owned(), 4)]);
        assert_eq!(partitions(&group.hand_over(a)), vec![0, 1, 2, 3]);

        let b = group.join(vec![("t".to_owned(), 4)]);
        // `a` still holds everything: `b` gets nothing yet.
        assert_eq!(group.hand_over(b), Handover::default());
        let released = group.hand_over(a).released;
        assert_eq!(released.len(), 2);
        assert_eq!(partitions(&group.hand_over(b)).len(), 2);

        group.leave(a);
        assert_eq!(partitions(&group.hand_over(b)).len(), 2);
        assert_eq!(group.hand_over(b), Handover::default());
    }

    #[test]
    fn new_holders_start_at_the_committed_offset_which_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let group_a = group(dir.path());
        let a = group_a.join(vec![("t".to_owned(), 1)]);
        group_a.hand_over(a);
        group_a.commit(a, ("t".to_owned(), 0), 5).unwrap();

        let b = group_a.join(vec![("t".to_owned(), 1)]);
        // Partition 0 stays with `a` (round-robin by member id); a commit
        // from `b`, which never held it, changes nothing.
        group_a.commit(b, ("t".to_owned(), 0), 9).unwrap();
        drop(group_a);

        let reloaded = group(dir.path());
        let c = reloaded.join(vec![("t".to_owned(), 1)]);
        assert_eq!(
            reloaded.hand_over(c).acquired,
            vec![(("t".to_owned(), 0), 5)]
        );
    }
}
