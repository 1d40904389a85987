//! The embedded log: the monolith's log, in-process and durable on local disk.
//!
//! Layout under the log directory:
//!
//! ```text
//! LOCK                              held (flock) while a process has the log open
//! topics/<topic>/partitions         the partition count, written last on creation
//! topics/<topic>/<partition>.log    append-only records (see `partition.rs`)
//! groups/<group>.offsets            committed offsets (see `offsets.rs`)
//! ```
//!
//! Appends go to the page cache with one `pwrite`. With
//! [`EmbeddedConfig::fsync`] (the monolith's default) a record is flushed to
//! disk before it is acknowledged or delivered, and appenders that arrive
//! while a flush is in progress are flushed together by the next one (group
//! commit: one `fdatasync` for many concurrent sends). Without it, records
//! are visible at once and survive a crash of the process (even `kill -9`),
//! not a power cut. A crash mid-append leaves a torn record at the end of a
//! file; opening the log cuts it, and committed offsets (and reader starts)
//! past a partition's end are lowered to it, so a consumer never skips the
//! records appended after a cut. Waiting consumers are
//! woken through a `watch` channel per topic, so delivery takes microseconds
//! and nothing polls.

mod consumer;
mod group;
mod offsets;
mod partition;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use self::consumer::EmbeddedConsumer;
use self::group::Group;
use self::partition::{PartitionFile, encode};
use crate::{Consumer, Log, LogError, OutgoingRecord, Position, partition_for_key};

/// How the embedded log trades speed for durability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Flush each append (and each commit) to disk before it is acknowledged
    /// and delivered. Off by default: a record in the page cache already
    /// survives a crash of the process, and a flush costs milliseconds on
    /// most disks; turn it on when the host itself may lose power.
    pub fsync: bool,
    /// Topics whose records are never flushed one by one, even with `fsync`
    /// on: requests whose producer awaits their outcome (`roomserver.input`).
    /// A power cut that loses one loses a request nobody was answered; what
    /// its processing wrote is flushed where it is kept. Their consumers'
    /// offsets are lowered to what survived, so records appended after are
    /// not skipped.
    pub unflushed_topics: Vec<String>,
}

/// The embedded log. Cloning is cheap and shares the same open log.
///
/// Only one `EmbeddedLog` may have a directory open at a time (in this or any
/// other process); it is released once this value, its clones and every
/// consumer made from it are dropped.
#[derive(Clone)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    dir: PathBuf,
    config: EmbeddedConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    /// Holds the directory's lock for as long as the log is open.
    _lock: File,
}

pub(crate) struct Topic {
    name: String,
    partitions: Vec<Arc<PartitionFile>>,
    /// Whether each append is flushed before it is acknowledged and visible.
    flushed: bool,
    /// Bumped after every append, to wake the topic's waiting consumers.
    appended: watch::Sender<u64>,
}

impl Topic {
    fn partition_count(&self) -> u32 {
        // Partition counts come from a u32 (`ensure_topic`, the metadata file).
        self.partitions.len() as u32
    }
}

impl EmbeddedConfig {
    /// Whether appends to `topic` are flushed one by one.
    fn flushes(&self, topic: &str) -> bool {
        self.fsync && !self.unflushed_topics.iter().any(|t| t == topic)
    }
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in `dir` with the default config.
    ///
    /// Opening reads every partition file once to rebuild its index (memory:
    /// eight bytes per record) and cut torn tails, so it blocks for as long as
    /// reading the log takes; call it at start-up, before serving.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, LogError> {
        Self::open_with(dir, EmbeddedConfig::default())
    }

    /// Opens (creating if needed) the log in `dir`.
    pub fn open_with(dir: impl Into<PathBuf>, config: EmbeddedConfig) -> Result<Self, LogError> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("topics"))?;
        std::fs::create_dir_all(dir.join("groups"))?;
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LogError::DirectoryInUse(dir)),
            Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
        }
        let mut topics = HashMap::new();
        for entry in std::fs::read_dir(dir.join("topics"))? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let meta = entry.path().join("partitions");
            if validate_name(&name).is_err() || !meta.exists() {
                // Not ours, or a creation that crashed before it finished
                // (`ensure_topic` will complete it).
                continue;
            }
            let text = std::fs::read_to_string(&meta)?;
            let partitions = text.trim().parse::<u32>().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} holds no partition count", meta.display()),
                )
            })?;
            let flushed = config.flushes(&name);
            let topic = open_topic(&entry.path(), &name, partitions, config.fsync, flushed)?;
            topics.insert(name, Arc::new(topic));
        }
        Ok(EmbeddedLog {
            shared: Arc::new(Shared {
                dir,
                config,
                topics: RwLock::new(topics),
                groups: Mutex::new(HashMap::new()),
                _lock: lock,
            }),
        })
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        self.shared
            .topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_owned()))
    }

    fn group(&self, name: &str) -> Result<Arc<Group>, LogError> {
        validate_name(name)?;
        let mut groups = self.shared.groups.lock();
        if let Some(group) = groups.get(name) {
            return Ok(group.clone());
        }
        let path = self
            .shared
            .dir
            .join("groups")
            .join(format!("{name}.offsets"));
        let group = Arc::new(Group::load(path, self.shared.config.fsync)?);
        // Offsets committed past a partition's end when it was opened (its
        // tail was lost to a power cut) would skip the records appended
        // since; re-reading a few is safe, skipping is not.
        for topic in self.shared.topics.read().values() {
            for (partition, file) in topic.partitions.iter().enumerate() {
                let end = file.opened_end;
                if let Some(was) = group.clamp_committed(&topic.name, partition as u32, end)? {
                    tracing::warn!(
                        group = name,
                        topic = %topic.name,
                        partition,
                        committed = was,
                        end,
                        "a committed offset pointed past the partition's end: resuming at the end"
                    );
                }
            }
        }
        groups.insert(name.to_owned(), group.clone());
        Ok(group)
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        validate_name(topic)?;
        if partitions == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a topic needs at least one partition",
            )
            .into());
        }
        // Creation is rare: doing its file work under the lock keeps two
        // concurrent callers from creating the topic twice.
        let mut topics = self.shared.topics.write();
        if topics.contains_key(topic) {
            return Ok(());
        }
        let fsync = self.shared.config.fsync;
        let dir = self.shared.dir.join("topics").join(topic);
        std::fs::create_dir_all(&dir)?;
        let flushed = self.shared.config.flushes(topic);
        let opened = open_topic(&dir, topic, partitions, fsync, flushed)?;
        // The partition count goes last: a topic is complete once it exists.
        write_atomically(
            &dir.join("partitions"),
            format!("{partitions}\n").as_bytes(),
            fsync,
        )?;
        if fsync {
            sync_dir(&self.shared.dir.join("topics"))?;
        }
        topics.insert(topic.to_owned(), Arc::new(opened));
        Ok(())
    }

    async fn produce(&self, topic: &str, record: OutgoingRecord) -> Result<Position, LogError> {
        let topic = self.topic(topic)?;
        let partition = partition_for_key(&record.key, topic.partition_count());
        let frame = encode(&record, now_ms())?;
        let file = topic
            .partitions
            .get(partition as usize)
            .ok_or_else(|| LogError::UnknownTopic(topic.name.clone()))?;
        let fsync = topic.flushed;
        // Writing to the page cache is a memory copy; handing it to a blocking
        // thread would cost more than it saves. Only the flush goes there.
        let offset = file.append(&frame, !fsync)?;
        if fsync {
            make_durable(file, offset).await?;
        }
        topic
            .appended
            .send_modify(|version| *version = version.wrapping_add(1));
        Ok(Position { partition, offset })
    }

    async fn produce_many(
        &self,
        topic: &str,
        records: Vec<OutgoingRecord>,
    ) -> Result<Vec<Position>, LogError> {
        let topic = self.topic(topic)?;
        let fsync = topic.flushed;
        let mut positions = Vec::with_capacity(records.len());
        // The last offset appended to each partition: one flush covers all.
        let mut last: HashMap<u32, u64> = HashMap::new();
        for record in &records {
            let partition = partition_for_key(&record.key, topic.partition_count());
            let frame = encode(record, now_ms())?;
            let file = topic
                .partitions
                .get(partition as usize)
                .ok_or_else(|| LogError::UnknownTopic(topic.name.clone()))?;
            let offset = file.append(&frame, !fsync)?;
            last.insert(partition, offset);
            positions.push(Position { partition, offset });
        }
        if fsync {
            for (partition, offset) in last {
                make_durable(&topic.partitions[partition as usize], offset).await?;
            }
        }
        topic
            .appended
            .send_modify(|version| *version = version.wrapping_add(1));
        Ok(positions)
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, LogError> {
        let mut subscribed: Vec<Arc<Topic>> = Vec::new();
        for name in topics {
            let topic = self.topic(name)?;
            if !subscribed.iter().any(|t| t.name == topic.name) {
                subscribed.push(topic);
            }
        }
        let group = self.group(group)?;
        Ok(Box::new(EmbeddedConsumer::new(
            self.shared.clone(),
            group,
            subscribed,
        )))
    }

    async fn reader(&self, starts: &[(&str, Vec<u64>)]) -> Result<Box<dyn Consumer>, LogError> {
        let mut topics: Vec<Arc<Topic>> = Vec::new();
        let mut offsets = Vec::new();
        for (name, start) in starts {
            let topic = self.topic(name)?;
            if !topics.iter().any(|t| t.name == topic.name) {
                // A start past a partition's end when it was opened (a view
                // that stored a position the log then lost) resumes there.
                let start = start
                    .iter()
                    .enumerate()
                    .map(|(partition, offset)| {
                        topic
                            .partitions
                            .get(partition)
                            .map_or(*offset, |file| (*offset).min(file.opened_end))
                    })
                    .collect();
                topics.push(topic);
                offsets.push(start);
            }
        }
        Ok(Box::new(EmbeddedConsumer::reader(
            self.shared.clone(),
            topics,
            offsets,
        )))
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        let topic = self.topic(topic)?;
        Ok(topic
            .partitions
            .iter()
            .map(|partition| partition.high_watermark())
            .collect())
    }

    async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<Option<u64>>, LogError> {
        let topic = self.topic(topic)?;
        Ok(self
            .group(group)?
            .committed(&topic.name, topic.partition_count()))
    }
}

/// Returns once the record at `offset` is on disk and visible. One flush
/// runs at a time per partition; whoever waited for it finds their record
/// covered, or flushes everything appended so far for all who queued.
async fn make_durable(file: &Arc<PartitionFile>, offset: u64) -> Result<(), LogError> {
    let _turn = file.flushing.lock().await;
    if file.high_watermark() > offset {
        return Ok(());
    }
    let upto = file.appended();
    let flushing = file.clone();
    tokio::task::spawn_blocking(move || flushing.sync())
        .await
        .map_err(|_| LogError::Closed)??;
    file.publish(upto.saturating_sub(1));
    Ok(())
}

/// Opens a topic's partitions; `fsync` flushes its files' creation and
/// repairs, `flushed` each append.
fn open_topic(
    dir: &Path,
    name: &str,
    partitions: u32,
    fsync: bool,
    flushed: bool,
) -> Result<Topic, LogError> {
    let mut files = Vec::new();
    for partition in 0..partitions {
        let path = dir.join(format!("{partition}.log"));
        let opened = PartitionFile::open(&path, name, partition, fsync)?;
        if opened.truncated_bytes > 0 {
            tracing::warn!(
                topic = name,
                partition,
                bytes = opened.truncated_bytes,
                "cut a torn tail from the log (a crash interrupted an append)"
            );
        }
        files.push(Arc::new(opened.partition));
    }
    if fsync {
        sync_dir(dir)?;
    }
    Ok(Topic {
        name: name.to_owned(),
        partitions: files,
        flushed,
        appended: watch::Sender::new(0),
    })
}

/// Kafka's rule for topic and group names, which also makes them safe file
/// names; the embedded log enforces it so names that work here work on Kafka.
fn validate_name(name: &str) -> Result<(), LogError> {
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(LogError::InvalidName(name.to_owned()))
    }
}

/// Replaces `path` with `contents` so a crash leaves either the old or the new
/// file, never a mix: write a temporary file beside it, then rename.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], fsync: bool) -> Result<(), LogError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, contents)?;
    if fsync {
        File::open(&temporary)?.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if fsync && let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Makes a directory's entries (new files, renames) durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafkas_rule() {
        for good in ["roomserver.output", "a", "A-b_c.9"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_directory_is_opened_by_one_log_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path()).unwrap();
        assert!(matches!(
            EmbeddedLog::open(dir.path()),
            Err(LogError::DirectoryInUse(_))
        ));
        log.ensure_topic("t", 1).await.unwrap();
        let consumer = log.consumer("g", &["t"]).await.unwrap();
        drop(log);
        // The consumer still uses the log.
        assert!(EmbeddedLog::open(dir.path()).is_err());
        drop(consumer);
        assert!(EmbeddedLog::open(dir.path()).is_ok());
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_on_reopen_and_later_appends_work() {
        let dir = tempfile::tempdir().unwrap();
        let record = |payload: &str| OutgoingRecord {
            key: b"!room:example.org".to_vec(),
            headers: Vec::new(),
            payload: payload.as_bytes().to_vec(),
        };
        {
            let log = EmbeddedLog::open(dir.path()).unwrap();
            log.ensure_topic("t", 1).await.unwrap();
            for payload in ["one", "two", "three"] {
                log.produce("t", record(payload)).await.unwrap();
            }
        }
        let file = dir.path().join("topics/t/0.log");
        let len = std::fs::metadata(&file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let log = EmbeddedLog::open(dir.path()).unwrap();
        assert_eq!(log.end_offsets("t").await.unwrap(), vec![2]);
        let position = log.produce("t", record("four")).await.unwrap();
        assert_eq!(
            position,
            Position {
                partition: 0,
                offset: 2
            }
        );
        let mut consumer = log.consumer("g", &["t"]).await.unwrap();
        let mut payloads = Vec::new();
        for _ in 0..3 {
            payloads.push(String::from_utf8(consumer.next().await.unwrap().payload).unwrap());
        }
        assert_eq!(payloads, ["one", "two", "four"]);
    }

    /// A power cut can lose a partition's tail after its consumers
    /// committed past it (without fsync the offsets journal and the
    /// partition files are flushed independently). Consumers resume at the
    /// end, and read every record appended after the cut; so do readers
    /// whose stored start is past the end, and a second restart keeps it.
    #[tokio::test]
    async fn offsets_past_a_lost_tail_resume_at_the_end_without_skipping() {
        let dir = tempfile::tempdir().unwrap();
        let record = |payload: &str| OutgoingRecord {
            key: b"k".to_vec(),
            headers: Vec::new(),
            payload: payload.as_bytes().to_vec(),
        };
        let file = dir.path().join("topics/t/0.log");
        let kept_len;
        {
            let log = EmbeddedLog::open(dir.path()).unwrap();
            log.ensure_topic("t", 1).await.unwrap();
            log.produce("t", record("one")).await.unwrap();
            kept_len = std::fs::metadata(&file).unwrap().len();
            for payload in ["two", "three"] {
                log.produce("t", record(payload)).await.unwrap();
            }
            let mut consumer = log.consumer("g", &["t"]).await.unwrap();
            for _ in 0..3 {
                let record = consumer.next().await.unwrap();
                consumer.commit(&record).await.unwrap();
            }
        }
        // The cut: only "one" made it to disk; the group had committed 3.
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(kept_len)
            .unwrap();
        {
            let log = EmbeddedLog::open(dir.path()).unwrap();
            assert_eq!(log.end_offsets("t").await.unwrap(), vec![1]);
            // Written after the restart, before any consumer runs again.
            for payload in ["four", "five", "six"] {
                log.produce("t", record(payload)).await.unwrap();
            }
            let mut reader = log.reader(&[("t", vec![3])]).await.unwrap();
            assert_eq!(reader.next().await.unwrap().payload, b"four");
            let mut consumer = log.consumer("g", &["t"]).await.unwrap();
            assert_eq!(consumer.next().await.unwrap().payload, b"four");
            // Killed before it commits anything.
        }
        let log = EmbeddedLog::open(dir.path()).unwrap();
        let mut consumer = log.consumer("g", &["t"]).await.unwrap();
        let mut payloads = Vec::new();
        for _ in 0..3 {
            let record = consumer.next().await.unwrap();
            payloads.push(String::from_utf8(record.payload.clone()).unwrap());
            consumer.commit(&record).await.unwrap();
        }
        assert_eq!(payloads, ["four", "five", "six"]);
    }

    /// Concurrent sends with fsync on are flushed together and each is
    /// acknowledged only once on disk (visible to consumers in order).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fsync_mode_flushes_concurrent_sends_together() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open_with(
            dir.path(),
            EmbeddedConfig {
                fsync: true,
                ..EmbeddedConfig::default()
            },
        )
        .unwrap();
        log.ensure_topic("t", 1).await.unwrap();
        let sends = (0..64).map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                let record = OutgoingRecord {
                    key: b"k".to_vec(),
                    headers: Vec::new(),
                    payload: format!("{i}").into_bytes(),
                };
                let position = log.produce("t", record).await.unwrap();
                // Acknowledged means visible (and so flushed).
                assert!(log.end_offsets("t").await.unwrap()[0] > position.offset);
                position.offset
            })
        });
        let mut offsets = Vec::new();
        for send in sends.collect::<Vec<_>>() {
            offsets.push(send.await.unwrap());
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..64).collect::<Vec<u64>>());
        let mut consumer = log.consumer("g", &["t"]).await.unwrap();
        for expected in 0..64 {
            assert_eq!(consumer.next().await.unwrap().offset, expected);
        }
    }

    /// With fsync on, a topic named unflushed is written without a flush
    /// per append (its records are visible at once, the file is never
    /// synced for them) while the others still are.
    #[tokio::test]
    async fn unflushed_topics_skip_the_flush_in_fsync_mode() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            fsync: true,
            unflushed_topics: vec!["requests".to_owned()],
        };
        assert!(config.flushes("t"));
        assert!(!config.flushes("requests"));
        let log = EmbeddedLog::open_with(dir.path(), config.clone()).unwrap();
        log.ensure_topic("requests", 1).await.unwrap();
        log.ensure_topic("t", 1).await.unwrap();
        assert!(!log.topic("requests").unwrap().flushed);
        assert!(log.topic("t").unwrap().flushed);
        let position = log
            .produce("requests", OutgoingRecord::default())
            .await
            .unwrap();
        assert_eq!(log.end_offsets("requests").await.unwrap(), vec![1]);
        let mut consumer = log.consumer("g", &["requests"]).await.unwrap();
        assert_eq!(consumer.next().await.unwrap().offset, position.offset);
        drop(consumer);
        drop(log);
        // Reopened, the topic is still the unflushed kind.
        let log = EmbeddedLog::open_with(dir.path(), config).unwrap();
        assert!(!log.topic("requests").unwrap().flushed);
        assert!(log.topic("t").unwrap().flushed);
    }

    #[tokio::test]
    async fn fsync_mode_delivers_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            fsync: true,
            ..EmbeddedConfig::default()
        };
        {
            let log = EmbeddedLog::open_with(dir.path(), config.clone()).unwrap();
            log.ensure_topic("t", 2).await.unwrap();
            log.produce("t", OutgoingRecord::default()).await.unwrap();
            let mut consumer = log.consumer("g", &["t"]).await.unwrap();
            let record = consumer.next().await.unwrap();
            consumer.commit(&record).await.unwrap();
        }
        let log = EmbeddedLog::open_with(dir.path(), config).unwrap();
        assert_eq!(log.end_offsets("t").await.unwrap(), vec![1, 0]);
        let mut consumer = log.consumer("g", &["t"]).await.unwrap();
        log.produce("t", OutgoingRecord::default()).await.unwrap();
        assert_eq!(consumer.next().await.unwrap().offset, 1);
    }

    #[tokio::test]
    async fn unknown_topics_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path()).unwrap();
        assert!(matches!(
            log.produce("nope", OutgoingRecord::default()).await,
            Err(LogError::UnknownTopic(_))
        ));
        assert!(matches!(
            log.consumer("g", &["nope"]).await,
            Err(LogError::UnknownTopic(_))
        ));
        assert!(matches!(
            log.ensure_topic("../escape", 1).await,
            Err(LogError::InvalidName(_))
        ));
        log.ensure_topic("t", 1).await.unwrap();
        assert!(matches!(
            log.consumer("a/b", &["t"]).await,
            Err(LogError::InvalidName(_))
        ));
    }
}
