//! The Kafka log: the polylith's log, on Apache Kafka (tansu in tests).
//!
//! librdkafka does the hard parts (reconnecting, retrying, rebalancing); this
//! module chooses settings that give the log's semantics — idempotent
//! `acks=all` production, manual commits after processing, cooperative
//! rebalancing (the only strategy under which tansu recovers the partitions
//! of a member that died) — and keeps the process alive through broker
//! restarts: a producer that stops delivering is replaced, and a consumer
//! retries transient errors inside `next()` instead of surfacing them.

mod consumer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use self::consumer::KafkaConsumer;
use crate::{Consumer, Log, LogError, OutgoingRecord, Position};

/// How to reach the Kafka cluster and how the log's topics are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap brokers.
    pub brokers: String,
    /// Names this process in broker logs and metrics.
    pub client_id: String,
    /// Replicas per partition for topics created by `ensure_topic`: 3 in
    /// production so a broker can fail without losing acknowledged records,
    /// 1 for a single test broker.
    pub replication_factor: i32,
    /// How often clients refresh topic metadata. Lower than librdkafka's
    /// five minutes so recreated topics and new partitions are noticed soon.
    pub metadata_refresh_interval_ms: u32,
    /// Longest a fetch waits at the broker for records: the latency floor of
    /// a consumer on a broker that holds fetches for the whole wait (tansu
    /// 0.6 does); Apache Kafka answers as soon as records arrive.
    pub fetch_wait_max_ms: u32,
    /// How long a produce may keep retrying before it fails.
    pub delivery_timeout_ms: u32,
    /// Deadline for admin and metadata requests (topic creation, watermarks).
    pub request_timeout_ms: u32,
    /// Further librdkafka properties for every client (e.g. `security.protocol`,
    /// `sasl.*`); applied last, so they override the settings above.
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// A config for `brokers` with the defaults for everything else.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            ..KafkaConfig::default()
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".to_owned(),
            client_id: "ganglion".to_owned(),
            replication_factor: 3,
            metadata_refresh_interval_ms: 10_000,
            fetch_wait_max_ms: 100,
            delivery_timeout_ms: 30_000,
            request_timeout_ms: 10_000,
            properties: Vec::new(),
        }
    }
}

/// The log on a Kafka cluster.
pub struct KafkaLog {
    config: KafkaConfig,
    /// Replaced as a whole when it stops delivering (an idempotent producer
    /// never recovers from one by itself, e.g. "unknown producer ID" after the
    /// brokers lost their state).
    producer: RwLock<Arc<FutureProducer>>,
    admin: AdminClient<DefaultClientContext>,
}

impl KafkaLog {
    /// Creates the clients. Nothing is sent to the brokers yet, so this
    /// succeeds while they are unreachable; librdkafka connects when needed.
    pub fn new(config: KafkaConfig) -> Result<Self, LogError> {
        let producer = create_producer(&config)?;
        let admin = client_config(&config, |_| {})
            .create()
            .map_err(kafka_error)?;
        Ok(KafkaLog {
            config,
            producer: RwLock::new(Arc::new(producer)),
            admin,
        })
    }

    fn producer(&self) -> Arc<FutureProducer> {
        self.producer.read().clone()
    }

    /// Swaps in a new producer unless another task already replaced `broken`.
    fn replace_producer(&self, broken: Arc<FutureProducer>) -> Result<(), LogError> {
        let old = {
            let mut current = self.producer.write();
            if !Arc::ptr_eq(&current, &broken) {
                return Ok(());
            }
            std::mem::replace(&mut *current, Arc::new(create_producer(&self.config)?))
        };
        drop(broken);
        tracing::warn!("replaced the Kafka producer after it stopped delivering");
        // Purged records fail at once; their callers retry with the new producer.
        old.purge(PurgeConfig::default().queue().inflight());
        // Destroying a client joins its threads: keep that off the runtime
        // (unless a concurrent produce still holds the old one; after the
        // purge, destroying it is quick anyway).
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms.into())
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        let partitions = i32::try_from(partitions)
            .ok()
            .filter(|count| *count > 0)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a topic needs between 1 and 2^31 - 1 partitions",
                )
            })?;
        // The log is the record every view is rebuilt from: kept forever,
        // whatever the broker's default retention (7 days on Apache Kafka).
        let new_topic = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1");
        let options = AdminOptions::new()
            .request_timeout(Some(self.request_timeout()))
            .operation_timeout(Some(self.request_timeout()));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(kafka_error)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Kafka(format!("creating topic {name}: {code}")));
                }
            }
        }
        Ok(())
    }

    async fn produce(&self, topic: &str, record: OutgoingRecord) -> Result<Position, LogError> {
        let mut retried = false;
        loop {
            let producer = self.producer();
            let outgoing = future_record(topic, &record);
            let queue_timeout = Duration::from_millis(self.config.delivery_timeout_ms.into());
            match producer.send(outgoing, Timeout::After(queue_timeout)).await {
                Ok(delivery) => {
                    return Ok(Position {
                        partition: to_u32(delivery.partition)?,
                        offset: to_u64(delivery.offset)?,
                    });
                }
                // A record that failed with a broken producer (or was purged
                // when another task replaced it) is sent once more with the
                // new one: at worst it is stored twice, which consumers
                // tolerate, never lost.
                Err((error, _))
                    if !retried
                        && (needs_new_producer(&producer, &error)
                            || !Arc::ptr_eq(&producer, &self.producer())) =>
                {
                    retried = true;
                    self.replace_producer(producer)?;
                }
                Err((error, _)) => return Err(produce_error(topic, &record, error)),
            }
        }
    }

    async fn produce_many(
        &self,
        topic: &str,
        records: Vec<OutgoingRecord>,
    ) -> Result<Vec<Position>, LogError> {
        if records.len() < 2 {
            let mut positions = Vec::with_capacity(1);
            for record in records {
                positions.push(self.produce(topic, record).await?);
            }
            return Ok(positions);
        }
        // All enqueued at once, in order (the idempotent producer keeps a
        // partition's order across its retries), and awaited together: one
        // broker round trip rather than one per record. A failure is
        // returned rather than retried with a new producer here, where
        // retries of several records could cross; the caller produces them
        // again one at a time.
        let producer = self.producer();
        let queue_timeout = Duration::from_millis(self.config.delivery_timeout_ms.into());
        let mut pending = Vec::with_capacity(records.len());
        for record in &records {
            let mut outgoing = future_record(topic, record);
            // Each record is enqueued before the next, whatever a full
            // queue makes it wait.
            let started = std::time::Instant::now();
            let delivery = loop {
                match producer.send_result(outgoing) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if started.elapsed() < queue_timeout =>
                    {
                        outgoing = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err(produce_error(topic, record, error)),
                }
            };
            pending.push(delivery);
        }
        let mut positions = Vec::with_capacity(pending.len());
        for (delivery, record) in pending.into_iter().zip(&records) {
            match delivery.await {
                Ok(Ok(delivery)) => positions.push(Position {
                    partition: to_u32(delivery.partition)?,
                    offset: to_u64(delivery.offset)?,
                }),
                Ok(Err((error, _))) => {
                    if needs_new_producer(&producer, &error) {
                        self.replace_producer(producer.clone())?;
                    }
                    return Err(produce_error(topic, record, error));
                }
                Err(_) => {
                    return Err(LogError::Kafka(format!(
                        "producing to {topic}: the producer was replaced before delivery"
                    )));
                }
            }
        }
        Ok(positions)
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, LogError> {
        let consumer: StreamConsumer = client_config(&self.config, |config| {
            config
                .set("group.id", group)
                .set(
                    "fetch.wait.max.ms",
                    self.config.fetch_wait_max_ms.to_string(),
                )
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("enable.partition.eof", "false")
                // The only strategy under which tansu hands a dead member's
                // partitions to the survivors; it also moves fewer partitions.
                .set("partition.assignment.strategy", "cooperative-sticky")
                // Notice a dead member in seconds, not the default 45 s.
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "2000");
        })
        .create()
        .map_err(kafka_error)?;
        rdkafka::consumer::Consumer::subscribe(&consumer, topics).map_err(kafka_error)?;
        Ok(Box::new(KafkaConsumer::new(consumer)))
    }

    async fn reader(&self, starts: &[(&str, Vec<u64>)]) -> Result<Box<dyn Consumer>, LogError> {
        let mut assignment = TopicPartitionList::new();
        for (topic, start) in starts {
            let partitions = self.end_offsets(topic).await?.len();
            for partition in 0..partitions {
                let offset = start.get(partition).copied().unwrap_or(0);
                let offset = i64::try_from(offset)
                    .map_err(|_| LogError::Kafka(format!("offset {offset} out of range")))?;
                let partition = i32::try_from(partition)
                    .map_err(|_| LogError::Kafka(format!("partition {partition} out of range")))?;
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(offset))
                    .map_err(kafka_error)?;
            }
        }
        // librdkafka wants a group.id even for assign(); a unique one that is
        // never joined or committed to keeps any broker-side group out of it.
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let group = format!(
            "{}-reader-{}-{unique}",
            self.config.client_id,
            std::process::id()
        );
        let consumer: StreamConsumer = client_config(&self.config, |config| {
            config
                .set("group.id", &group)
                .set(
                    "fetch.wait.max.ms",
                    self.config.fetch_wait_max_ms.to_string(),
                )
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false");
        })
        .create()
        .map_err(kafka_error)?;
        rdkafka::consumer::Consumer::assign(&consumer, &assignment).map_err(kafka_error)?;
        Ok(Box::new(KafkaConsumer::reader(consumer)))
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        let producer = self.producer();
        let topic = topic.to_owned();
        let timeout = self.request_timeout();
        // Metadata and watermark requests block until the broker answers.
        tokio::task::spawn_blocking(move || {
            let client = producer.client();
            let metadata = client
                .fetch_metadata(Some(&topic), timeout)
                .map_err(kafka_error)?;
            let found = metadata
                .topics()
                .iter()
                .find(|found| found.name() == topic)
                .ok_or_else(|| LogError::UnknownTopic(topic.clone()))?;
            if let Some(error) = found.error() {
                return Err(match RDKafkaErrorCode::from(error) {
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                        LogError::UnknownTopic(topic.clone())
                    }
                    code => LogError::Kafka(format!("metadata for {topic}: {code}")),
                });
            }
            let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
            partitions.sort_unstable();
            // One request per partition, up to 16 at once: a slow broker
            // costs a round trip per 16 partitions, not one per partition.
            let mut ends = Vec::with_capacity(partitions.len());
            for group in partitions.chunks(16) {
                std::thread::scope(|scope| -> Result<(), LogError> {
                    let asking: Vec<_> = group
                        .iter()
                        .map(|&partition| {
                            let topic = topic.as_str();
                            scope.spawn(move || client.fetch_watermarks(topic, partition, timeout))
                        })
                        .collect();
                    for answer in asking {
                        let (_, high) = answer
                            .join()
                            .map_err(|_| LogError::Kafka("a watermark request panicked".into()))?
                            .map_err(kafka_error)?;
                        ends.push(to_u64(high)?);
                    }
                    Ok(())
                })?;
            }
            Ok(ends)
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<Option<u64>>, LogError> {
        let partitions = self.end_offsets(topic).await?.len();
        let mut wanted = TopicPartitionList::new();
        for partition in 0..partitions {
            let partition = i32::try_from(partition)
                .map_err(|_| LogError::Kafka(format!("partition {partition} out of range")))?;
            wanted.add_partition(topic, partition);
        }
        // A consumer that never subscribes asks the group's coordinator
        // (OffsetFetch) without joining the group.
        let asking: BaseConsumer = client_config(&self.config, |config| {
            config
                .set("group.id", group)
                .set("enable.auto.commit", "false");
        })
        .create()
        .map_err(kafka_error)?;
        let timeout = self.request_timeout();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let found = asking
                .committed_offsets(wanted, timeout)
                .map_err(kafka_error)?;
            let mut offsets = vec![None; partitions];
            for element in found.elements_for_topic(&topic) {
                if let (Ok(partition), Offset::Offset(offset)) =
                    (usize::try_from(element.partition()), element.offset())
                    && let (Some(slot), Ok(offset)) = (offsets.get_mut(partition), to_u64(offset))
                {
                    *slot = Some(offset);
                }
            }
            Ok(offsets)
        })
        .await
        .map_err(|_| LogError::Closed)?
    }
}

/// The settings every client shares; `role` adds its own, and the operator's
/// `properties` come last so they can override anything.
fn client_config(config: &KafkaConfig, role: impl FnOnce(&mut ClientConfig)) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set(
            "topic.metadata.refresh.interval.ms",
            config.metadata_refresh_interval_ms.to_string(),
        )
        // Topics exist because `ensure_topic` made them, as in the embedded
        // log; a typo must fail rather than create a topic.
        .set("allow.auto.create.topics", "false");
    role(&mut client);
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

fn create_producer(config: &KafkaConfig) -> Result<FutureProducer, LogError> {
    client_config(config, |client| {
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // CRC-32 of the key, empty key included: the same partition as
            // the embedded log picks (`crate::partition_for_key`).
            .set("partitioner", "consistent")
            // No wait for more records: each hop of an event through the
            // services would wait for it. Records that arrive while a
            // request is in flight still go out together.
            .set("linger.ms", "0")
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string());
    })
    .create()
    .map_err(kafka_error)
}

/// Whether `error` means this producer may never deliver again.
///
/// A delivery timeout counts: when a broker forgets an idempotent producer
/// (restarted without its state), librdkafka keeps bumping the producer's
/// epoch and the broker keeps answering "unknown producer ID", so records
/// time out forever; a new producer starts clean. If the brokers are merely
/// unreachable, a new producer costs nothing more than the old one.
/// A record as the producer takes it, its headers included.
fn future_record<'a>(topic: &'a str, record: &'a OutgoingRecord) -> FutureRecord<'a, [u8], [u8]> {
    let headers = record.headers.iter().fold(
        OwnedHeaders::new_with_capacity(record.headers.len()),
        |headers, (name, value)| {
            headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            })
        },
    );
    FutureRecord::to(topic)
        .key(record.key.as_slice())
        .payload(record.payload.as_slice())
        .headers(headers)
}

fn needs_new_producer(producer: &FutureProducer, error: &KafkaError) -> bool {
    producer.client().fatal_error().is_some()
        || matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::MessageTimedOut
            )
        )
}

fn produce_error(topic: &str, record: &OutgoingRecord, error: KafkaError) -> LogError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => LogError::RecordTooLarge(
            record.key.len()
                + record.payload.len()
                + record
                    .headers
                    .iter()
                    .map(|(name, value)| name.len() + value.len())
                    .sum::<usize>(),
        ),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            LogError::UnknownTopic(topic.to_owned())
        }
        _ => kafka_error(error),
    }
}

pub(crate) fn kafka_error(error: KafkaError) -> LogError {
    LogError::Kafka(error.to_string())
}

pub(crate) fn to_u32(value: i32) -> Result<u32, LogError> {
    u32::try_from(value).map_err(|_| LogError::Kafka(format!("negative partition {value}")))
}

pub(crate) fn to_u64(value: i64) -> Result<u64, LogError> {
    u64::try_from(value).map_err(|_| LogError::Kafka(format!("negative offset {value}")))
}

#[cfg(test)]
mod tests {
    use super::{KafkaConfig, KafkaLog};

    /// The clients take TLS and SASL settings (librdkafka is built with
    /// TLS); nothing is reached at creation.
    #[tokio::test]
    async fn clients_take_tls_and_sasl_settings() {
        for protocol in ["ssl", "sasl_ssl", "sasl_plaintext"] {
            let mut config = KafkaConfig::new("127.0.0.1:1");
            config.properties = vec![
                ("security.protocol".into(), protocol.into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.username".into(), "ganglion".into()),
                ("sasl.password".into(), "secret".into()),
            ];
            assert!(KafkaLog::new(config).is_ok(), "{protocol}");
        }
        let mut unknown = KafkaConfig::new("127.0.0.1:1");
        unknown.properties = vec![("security.protocol".into(), "carrier_pigeon".into())];
        assert!(KafkaLog::new(unknown).is_err());
    }
}
