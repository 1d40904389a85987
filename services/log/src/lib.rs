//! The log: Ganglion's backbone. Every accepted room event is written here once,
//! and every downstream view is built by consuming it.
//!
//! One trait ([`Log`], with its [`Consumer`]), two implementations:
//! [`EmbeddedLog`] (in-process, durable on local disk; the monolith's default)
//! and [`KafkaLog`] (Apache Kafka, or tansu in tests; the polylith's default).
//! Both honour the same semantics, proven by one conformance suite
//! (`tests/conformance`): keyed records land on one partition and keep their
//! order, consumer groups split partitions between members and resume from
//! their committed offsets, a new group replays from the start, and headers
//! travel with their record. Delivery is at-least-once: a consumer commits a
//! record only after its own work for that record is durable.
#![forbid(unsafe_code)]
// A failing test should panic with the error it hit.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod embedded;
mod error;
mod kafka;
pub mod testing;

use async_trait::async_trait;

pub use embedded::{EmbeddedConfig, EmbeddedLog};
pub use error::LogError;
pub use kafka::{KafkaConfig, KafkaLog};

/// The partition a key lands on in a topic with `partitions` partitions.
///
/// Both implementations use this function's rule (CRC-32 of the key modulo the
/// partition count; librdkafka's `consistent` partitioner computes the same), so
/// a key maps to the same partition number whichever log a deployment runs on,
/// and the empty key always maps to partition 0.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    crc32fast::hash(key) % partitions.max(1)
}

/// A record as a producer hands it to the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingRecord {
    /// Decides the partition: records with the same key keep their order.
    pub key: Vec<u8>,
    /// Small metadata travelling beside the payload (e.g. W3C `traceparent`).
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

/// A record as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
    /// Milliseconds since the Unix epoch, as stamped when the record was appended.
    pub timestamp_ms: i64,
}

impl Record {
    /// The value of the first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn position(&self) -> Position {
        Position {
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Where a record sits in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// An append-only, partitioned, replayable log.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Creates `topic` with `partitions` partitions if it does not exist yet.
    /// An existing topic is left as it is.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError>;

    /// Appends a record and returns where it was written once it is durable
    /// by the implementation's standard (on disk / acknowledged by the brokers).
    async fn produce(&self, topic: &str, record: OutgoingRecord) -> Result<Position, LogError>;

    /// Appends records in the order given (records of one partition keep
    /// it) and returns where each was written, once all are durable. An
    /// error may leave any prefix of each partition's records written: the
    /// caller produces them again, and consumers take a record twice.
    /// Implementations make the records durable together (one flush, one
    /// broker round trip) where they can.
    async fn produce_many(
        &self,
        topic: &str,
        records: Vec<OutgoingRecord>,
    ) -> Result<Vec<Position>, LogError> {
        let mut positions = Vec::with_capacity(records.len());
        for record in records {
            positions.push(self.produce(topic, record).await?);
        }
        Ok(positions)
    }

    /// Joins consumer group `group` for `topics`. Members of one group share
    /// the partitions; a group with no committed offset starts at offset 0.
    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, LogError>;

    /// Reads every partition of each topic from the given offsets (missing
    /// ones start at 0), outside any consumer group. For views that keep
    /// their positions in their own database, in the same transaction as the
    /// data they derive from each record: they resume exactly after their
    /// last committed transaction, and no group membership held by a broker
    /// (or by a crashed predecessor) can hold them back. `commit` is a no-op.
    async fn reader(&self, starts: &[(&str, Vec<u64>)]) -> Result<Box<dyn Consumer>, LogError>;

    /// For each partition of `topic`, the offset the next record will get
    /// (the high watermark). Used for lag metrics and readiness.
    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, LogError>;

    /// For each partition of `topic`, the offset consumer group `group`
    /// resumes at (`None` where it committed nothing), without joining it.
    /// A view that keeps its positions in its own database compares them
    /// with these to find the records a group handled while the view was
    /// elsewhere (a database rebuilt beside the live one).
    async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<Option<u64>>, LogError>;
}

/// One member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Waits, without polling, for the next record of a partition assigned to
    /// this member. Records of one partition arrive in offset order.
    async fn next(&mut self) -> Result<Record, LogError>;

    /// The next record if one is at hand now, without waiting: after
    /// [`next`](Consumer::next), a consumer takes what else has arrived
    /// and applies it as one batch.
    async fn try_next(&mut self) -> Result<Option<Record>, LogError>;

    /// Commits `record`: after a restart or a rebalance the group resumes at
    /// the record after it. Call only once the record's effects are durable.
    async fn commit(&mut self, record: &Record) -> Result<(), LogError>;

    /// Commits each of `records` (at most one per partition, as
    /// [`commit`](Consumer::commit) does), in one request where the log
    /// allows it.
    async fn commit_all(&mut self, records: &[&Record]) -> Result<(), LogError> {
        for record in records {
            self.commit(record).await?;
        }
        Ok(())
    }

    /// The (topic, partition) pairs currently assigned to this member.
    fn assignment(&self) -> Vec<(String, u32)>;
}
