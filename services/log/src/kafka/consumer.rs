//! One member of a Kafka consumer group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt as _;
use parking_lot::Mutex;
use rdkafka::Offset;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::TopicPartitionList;

use super::{kafka_error, to_u32, to_u64};
use crate::{Consumer, LogError, Record};

/// First wait after a transient error; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a commit keeps retrying while the group coordinator is away.
const COMMIT_DEADLINE: Duration = Duration::from_secs(30);

pub(crate) struct KafkaConsumer {
    /// `None` only while dropping. Shared with blocking tasks (commits).
    consumer: Option<Arc<StreamConsumer>>,
    /// A reader has no group: its commits are no-ops.
    in_group: bool,
}

impl KafkaConsumer {
    pub(crate) fn new(consumer: StreamConsumer) -> Self {
        KafkaConsumer {
            consumer: Some(Arc::new(consumer)),
            in_group: true,
        }
    }

    pub(crate) fn reader(consumer: StreamConsumer) -> Self {
        KafkaConsumer {
            consumer: Some(Arc::new(consumer)),
            in_group: false,
        }
    }

    fn consumer(&self) -> Result<&Arc<StreamConsumer>, LogError> {
        self.consumer.as_ref().ok_or(LogError::Closed)
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Record, LogError> {
        let consumer = self.consumer()?;
        let mut backoff = FIRST_BACKOFF;
        loop {
            match consumer.recv().await {
                Ok(message) => return to_record(&message),
                Err(error) if is_permanent(&error) => return Err(kafka_error(error)),
                // The broker went away, the topic is not there yet, a
                // rebalance is under way...: librdkafka reconnects on its
                // own, so a consumer loop only has to keep asking.
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "Kafka consumer error; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn try_next(&mut self) -> Result<Option<Record>, LogError> {
        let consumer = self.consumer()?;
        // `recv` is cancel safe: polled once, it takes a message only when
        // one is already fetched.
        match consumer.recv().now_or_never() {
            Some(Ok(message)) => Ok(Some(to_record(&message)?)),
            Some(Err(error)) if is_permanent(&error) => Err(kafka_error(error)),
            // A transient error: `next` waits it out.
            Some(Err(_)) | None => Ok(None),
        }
    }

    async fn commit(&mut self, record: &Record) -> Result<(), LogError> {
        self.commit_all(&[record]).await
    }

    async fn commit_all(&mut self, records: &[&Record]) -> Result<(), LogError> {
        if !self.in_group || records.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for record in records {
            let partition = i32::try_from(record.partition).map_err(|_| {
                LogError::Kafka(format!("partition {} out of range", record.partition))
            })?;
            let next = i64::try_from(record.offset.saturating_add(1))
                .map_err(|_| LogError::Kafka(format!("offset {} out of range", record.offset)))?;
            offsets
                .add_partition_offset(&record.topic, partition, Offset::Offset(next))
                .map_err(kafka_error)?;
        }
        let offsets = Arc::new(offsets);
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let consumer = self.consumer()?.clone();
            let attempt = offsets.clone();
            // A synchronous commit waits for the coordinator's answer.
            let result =
                tokio::task::spawn_blocking(move || consumer.commit(&attempt, CommitMode::Sync))
                    .await
                    .map_err(|_| LogError::Closed)?;
            match result {
                Ok(()) => return Ok(()),
                Err(error)
                    if is_retriable_commit(&error) && started.elapsed() < COMMIT_DEADLINE =>
                {
                    tracing::warn!(%error, ?backoff, "Kafka commit failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                // E.g. the partition moved to another member: it resumes at
                // the previous commit, so the record comes again (at-least-once).
                Err(error) => return Err(kafka_error(error)),
            }
        }
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        let Some(Ok(list)) = self.consumer.as_ref().map(|c| c.assignment()) else {
            return Vec::new();
        };
        let mut assignment: Vec<(String, u32)> = list
            .elements()
            .iter()
            .filter_map(|element| {
                let partition = u32::try_from(element.partition()).ok()?;
                Some((element.topic().to_owned(), partition))
            })
            .collect();
        assignment.sort();
        assignment
    }
}

/// Held while a consumer of this process closes, so members leave their
/// groups one after another. tansu 0.6 (the test broker) mishandles two
/// LeaveGroups of one group arriving together: it keeps a departed member as
/// the group's leader and nobody can join the group again. A close takes a
/// few milliseconds, so the cost (a slower shutdown of many consumers) is small.
static CLOSING: Mutex<()> = Mutex::new(());

impl Drop for KafkaConsumer {
    /// Closing leaves the group (so the others take the partitions over at
    /// once rather than after the session timeout) and waits for the broker:
    /// do that on a blocking thread when there is a runtime.
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let close = move || {
            let _one_at_a_time = CLOSING.lock();
            drop(consumer);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(close)),
            Err(_) => close(),
        }
    }
}

fn to_record(message: &BorrowedMessage<'_>) -> Result<Record, LogError> {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Record {
        topic: message.topic().to_owned(),
        partition: to_u32(message.partition())?,
        offset: to_u64(message.offset())?,
        key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
    })
}

/// Errors retrying cannot fix: bad credentials, missing rights, a fatal
/// client state. Everything else (unreachable brokers, unknown topics while
/// they are being created, rebalances) passes with time.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(error, KafkaError::MessageConsumptionFatal(_))
        || matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::InvalidConfig
            )
        )
}

/// Commit failures caused by the coordinator being unreachable for a while,
/// as opposed to the member having lost the partition.
fn is_retriable_commit(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::WaitingForCoordinator
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_time_cannot_fix_end_a_consumer_loop() {
        let consumption = KafkaError::MessageConsumption;
        assert!(!is_permanent(&consumption(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_permanent(&consumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
        assert!(!is_permanent(&consumption(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(is_permanent(&consumption(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(is_permanent(&KafkaError::MessageConsumptionFatal(
            RDKafkaErrorCode::UnknownMemberId
        )));
    }

    #[test]
    fn commits_are_retried_only_while_the_coordinator_is_away() {
        let commit = KafkaError::ConsumerCommit;
        assert!(is_retriable_commit(&commit(
            RDKafkaErrorCode::CoordinatorNotAvailable
        )));
        assert!(is_retriable_commit(&commit(
            RDKafkaErrorCode::RequestTimedOut
        )));
        // The partition moved on: retrying cannot succeed.
        assert!(!is_retriable_commit(&commit(
            RDKafkaErrorCode::IllegalGeneration
        )));
        assert!(!is_retriable_commit(&commit(
            RDKafkaErrorCode::UnknownMemberId
        )));
    }
}
