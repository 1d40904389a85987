//! A group's committed offsets on disk: an append-only journal of commits,
//! compacted into a snapshot now and then.
//!
//! Consumers commit after every record, so a commit must be cheap: appending
//! a few dozen bytes costs well under a microsecond, where rewriting a file
//! and renaming it over the old one costs ~100 µs on ext4 (which flushes on
//! rename-over). The last entry for a partition wins; a torn last entry (a
//! crash mid-append) is ignored, so the group resumes at the commit before it
//! and the record comes again: at-least-once.
//!
//! With fsync on, the journal is flushed at most once a second (or every
//! [`FLUSH_EVERY`] commits), not at every commit: a commit acknowledges
//! nothing to anyone, and every consumer is idempotent, so a power cut
//! that loses the last second of commits only delivers those records
//! again. Flushing each commit was one `fdatasync` per consumer group per
//! record, on the consumer's own thread: more flushes than the records
//! and the roomserver's commits together.
//!
//! ```text
//! file  := MAGIC entry*
//! entry := body_len:u32 crc32(body):u32 body
//! body  := partition:u32 next_offset:u64 topic(UTF-8, the rest)
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::group::PartitionId;
use super::write_atomically;
use crate::LogError;

const MAGIC: &[u8; 8] = b"GNGOFS\x00\x01";
/// Appends between compactions: bounds the file (about 60 bytes an entry)
/// and the time a reload takes.
const COMPACT_AFTER: u64 = 10_000;
/// Commits between flushes, at most (with fsync on).
const FLUSH_EVERY: u64 = 1_000;
/// Time between flushes, at most, while commits come (with fsync on).
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct OffsetsJournal {
    path: PathBuf,
    file: File,
    end: u64,
    appended: u64,
    fsync: bool,
    /// Commits appended since the last flush, and when that was.
    unflushed: u64,
    flushed_at: std::time::Instant,
}

impl OffsetsJournal {
    /// Reads the committed offsets at `path` (none if there is no file) and
    /// compacts them, so the journal starts small.
    pub(crate) fn open(
        path: PathBuf,
        fsync: bool,
    ) -> Result<(OffsetsJournal, BTreeMap<PartitionId, u64>), LogError> {
        let committed = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a ganglion offsets file", path.display()),
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error.into()),
        };
        let file = write_snapshot(&path, &committed, fsync)?;
        let end = file.metadata()?.len();
        let journal = OffsetsJournal {
            path,
            file,
            end,
            appended: 0,
            fsync,
            unflushed: 0,
            flushed_at: std::time::Instant::now(),
        };
        Ok((journal, committed))
    }

    /// Whether the next commit should rewrite the whole snapshot instead.
    pub(crate) fn wants_compaction(&self) -> bool {
        self.appended >= COMPACT_AFTER
    }

    /// Appends one commit.
    pub(crate) fn append(&mut self, partition: &PartitionId, offset: u64) -> Result<(), LogError> {
        let entry = encode_entry(partition, offset);
        // On failure `end` stays: the next append overwrites the partial bytes.
        self.file.write_all_at(&entry, self.end)?;
        if self.fsync {
            self.unflushed += 1;
            if self.unflushed >= FLUSH_EVERY || self.flushed_at.elapsed() >= FLUSH_INTERVAL {
                self.file.sync_data()?;
                self.unflushed = 0;
                self.flushed_at = std::time::Instant::now();
            }
        }
        self.end += entry.len() as u64;
        self.appended += 1;
        Ok(())
    }

    /// Replaces the journal with `committed` (which includes the newest commit).
    pub(crate) fn compact(
        &mut self,
        committed: &BTreeMap<PartitionId, u64>,
    ) -> Result<(), LogError> {
        self.file = write_snapshot(&self.path, committed, self.fsync)?;
        self.end = self.file.metadata()?.len();
        self.appended = 0;
        self.unflushed = 0;
        self.flushed_at = std::time::Instant::now();
        Ok(())
    }
}

/// Writes `committed` as a fresh journal (atomically) and opens it to append.
fn write_snapshot(
    path: &PathBuf,
    committed: &BTreeMap<PartitionId, u64>,
    fsync: bool,
) -> Result<File, LogError> {
    let mut bytes = MAGIC.to_vec();
    for (partition, offset) in committed {
        bytes.extend_from_slice(&encode_entry(partition, *offset));
    }
    write_atomically(path, &bytes, fsync)?;
    Ok(OpenOptions::new().write(true).open(path)?)
}

fn encode_entry((topic, partition): &PartitionId, offset: u64) -> Vec<u8> {
    let body_len = 12 + topic.len();
    let mut entry = Vec::with_capacity(8 + body_len);
    // Topic names are at most 249 bytes (`validate_name`).
    entry.extend_from_slice(&(body_len as u32).to_le_bytes());
    entry.extend_from_slice(&[0; 4]);
    entry.extend_from_slice(&partition.to_le_bytes());
    entry.extend_from_slice(&offset.to_le_bytes());
    entry.extend_from_slice(topic.as_bytes());
    let crc = crc32fast::hash(&entry[8..]);
    entry[4..8].copy_from_slice(&crc.to_le_bytes());
    entry
}

/// The offsets a journal holds, stopping at a torn or corrupt entry;
/// `None` if the bytes are not a journal at all.
fn parse(bytes: &[u8]) -> Option<BTreeMap<PartitionId, u64>> {
    let mut committed = BTreeMap::new();
    let (magic, mut rest) = bytes.split_at_checked(MAGIC.len())?;
    if magic != MAGIC {
        return None;
    }
    while let Some((header, after)) = rest.split_at_checked(8) {
        let body_len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
        let Some((body, after)) = after.split_at_checked(body_len) else {
            break;
        };
        if body_len < 12 || crc32fast::hash(body) != crc {
            break;
        }
        let partition = u32::from_le_bytes(body[..4].try_into().ok()?);
        let offset = u64::from_le_bytes(body[4..12].try_into().ok()?);
        let Ok(topic) = std::str::from_utf8(&body[12..]) else {
            break;
        };
        committed.insert((topic.to_owned(), partition), offset);
        rest = after;
    }
    Some(committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(topic: &str, partition: u32) -> PartitionId {
        (topic.to_owned(), partition)
    }

    /// Persisted data: the format must never change silently.
    #[test]
    fn entry_format_is_stable() {
        let hex: String = encode_entry(&id("t", 2), 17)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "0d000000de10fb83020000001100000000000000\
                         74"
            .replace(' ', "")
        );
    }

    #[test]
    fn the_last_commit_wins_across_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.offsets");
        let (mut journal, committed) = OffsetsJournal::open(path.clone(), false).unwrap();
        assert!(committed.is_empty());
        journal.append(&id("a", 0), 1).unwrap();
        journal.append(&id("a", 0), 2).unwrap();
        journal.append(&id("b", 1), 7).unwrap();
        drop(journal);

        let (mut journal, committed) = OffsetsJournal::open(path.clone(), false).unwrap();
        assert_eq!(
            committed,
            BTreeMap::from([(id("a", 0), 2), (id("b", 1), 7)])
        );
        let newer = BTreeMap::from([(id("a", 0), 3), (id("b", 1), 7)]);
        journal.compact(&newer).unwrap();
        journal.append(&id("b", 1), 8).unwrap();
        drop(journal);

        let (_, committed) = OffsetsJournal::open(path, false).unwrap();
        assert_eq!(
            committed,
            BTreeMap::from([(id("a", 0), 3), (id("b", 1), 8)])
        );
    }

    #[test]
    fn a_torn_last_commit_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.offsets");
        let (mut journal, _) = OffsetsJournal::open(path.clone(), false).unwrap();
        journal.append(&id("a", 0), 1).unwrap();
        journal.append(&id("a", 0), 2).unwrap();
        drop(journal);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 3).unwrap();
        drop(file);

        let (_, committed) = OffsetsJournal::open(path.clone(), false).unwrap();
        assert_eq!(committed, BTreeMap::from([(id("a", 0), 1)]));
        std::fs::write(&path, b"something else").unwrap();
        assert!(OffsetsJournal::open(path, false).is_err());
    }

    /// Commits not yet flushed that a power cut lost, whole pages of them
    /// gone or zeroed, leave the group at an earlier commit: those records
    /// come again, none is skipped.
    #[test]
    fn lost_unflushed_commits_resume_earlier() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.offsets");
        let (mut journal, _) = OffsetsJournal::open(path.clone(), true).unwrap();
        for offset in 1..=50 {
            journal.append(&id("a", 0), offset).unwrap();
            journal.append(&id("b", 1), offset * 2).unwrap();
        }
        drop(journal);
        let bytes = std::fs::read(&path).unwrap();
        let entry = encode_entry(&id("a", 0), 1).len();
        // Everything after the tenth commit of "a" zeroed, as a page the
        // disk never got.
        let kept = MAGIC.len() + 19 * entry + 1;
        let mut damaged = bytes[..kept].to_vec();
        damaged.resize(bytes.len(), 0);
        std::fs::write(&path, &damaged).unwrap();
        let (_, committed) = OffsetsJournal::open(path, true).unwrap();
        assert_eq!(committed.get(&id("a", 0)), Some(&10));
        assert_eq!(committed.get(&id("b", 1)), Some(&18));
    }
}
