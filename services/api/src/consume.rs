//! The consumer loop every service uses: take a record, handle it (one
//! database transaction), commit its offset only after that, retry transient
//! failures with backoff, skip (and count) records that can never succeed.
//! Each record runs in a span continuing the producer's trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ganglion_base::health::ReadinessCheck;
use ganglion_base::metrics::{CONSUMED_RECORDS, CONSUMER_LAG, counter_vec};
use ganglion_base::telemetry;
use ganglion_log::{Consumer, Log, Record};
use tokio::sync::watch;
use tracing::Instrument;

/// How handling a record failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Worth retrying (database or network briefly unavailable).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help (an undecodable record); it is skipped.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A topic consumer: one record in, one database transaction.
#[async_trait]
pub trait RecordHandler: Send + Sync + 'static {
    /// Must be idempotent: a record may be delivered again after a crash.
    async fn handle(&self, record: &Record) -> Result<(), HandleError>;
}

/// Where a consumer has got to, for lag metrics and readiness.
#[derive(Default)]
pub struct ConsumerProgress {
    /// (topic, partition) → next offset to consume.
    next: Mutex<HashMap<(String, u32), u64>>,
}

impl ConsumerProgress {
    fn record(&self, record: &Record) {
        if let Ok(mut next) = self.next.lock() {
            next.insert((record.topic.clone(), record.partition), record.offset + 1);
        }
    }

    fn next_offset(&self, topic: &str, partition: u32) -> u64 {
        self.next
            .lock()
            .ok()
            .and_then(|next| next.get(&(topic.to_owned(), partition)).copied())
            .unwrap_or(0)
    }
}

/// A running consumer, as seen by metrics and `/readyz`.
pub struct ConsumerHandle {
    pub group: String,
    pub topics: Vec<String>,
    log: Arc<dyn Log>,
    progress: Arc<ConsumerProgress>,
    assignment: Arc<Mutex<Vec<(String, u32)>>>,
}

impl ConsumerHandle {
    /// Records not yet consumed, per assigned (topic, partition).
    pub async fn lag(&self) -> Result<Vec<(String, u32, u64)>, String> {
        let assignment = self
            .assignment
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for topic in &self.topics {
            let ends = self
                .log
                .end_offsets(topic)
                .await
                .map_err(|e| e.to_string())?;
            for (partition, end) in ends.iter().enumerate() {
                let partition = partition as u32;
                if !assignment
                    .iter()
                    .any(|(t, p)| t == topic && *p == partition)
                {
                    continue;
                }
                let next = self.progress.next_offset(topic, partition);
                out.push((topic.clone(), partition, end.saturating_sub(next)));
            }
        }
        Ok(out)
    }
}

/// Ready when the consumer is at most `max_lag` records behind on every partition.
#[async_trait]
impl ReadinessCheck for ConsumerHandle {
    fn name(&self) -> String {
        format!("consumer_{}", self.group)
    }
    async fn check(&self) -> Result<(), String> {
        let lag = self.lag().await?;
        let behind: u64 = lag.iter().map(|(_, _, l)| l).sum();
        if behind > 1000 {
            return Err(format!("{behind} records behind"));
        }
        Ok(())
    }
}

static SKIPPED: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    counter_vec(
        "ganglion_consumer_skipped_records_total",
        "Records skipped because handling them failed permanently",
        &["group", "topic"],
    )
});

/// Joins `group` on `topics` and runs `handler` on every record until
/// `shutdown` turns true. Returns the handle for readiness and lag.
pub async fn spawn(
    log: Arc<dyn Log>,
    group: &str,
    topics: &[&str],
    handler: Arc<dyn RecordHandler>,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<ConsumerHandle>, ganglion_log::LogError> {
    let consumer = log.consumer(group, topics).await?;
    Ok(run(log, group, topics, consumer, handler, shutdown))
}

/// Reads every partition of the topics from `starts` without a consumer
/// group (see [`Log::reader`]) and runs `handler` on every record. For views
/// whose handler stores the next position with its data; `name` labels
/// metrics and logs.
pub async fn spawn_reader(
    log: Arc<dyn Log>,
    name: &str,
    starts: &[(&str, Vec<u64>)],
    handler: Arc<dyn RecordHandler>,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<ConsumerHandle>, ganglion_log::LogError> {
    let consumer = log.reader(starts).await?;
    let topics: Vec<&str> = starts.iter().map(|(topic, _)| *topic).collect();
    Ok(run(log, name, &topics, consumer, handler, shutdown))
}

fn run(
    log: Arc<dyn Log>,
    group: &str,
    topics: &[&str],
    mut consumer: Box<dyn Consumer>,
    handler: Arc<dyn RecordHandler>,
    mut shutdown: watch::Receiver<bool>,
) -> Arc<ConsumerHandle> {
    let progress = Arc::new(ConsumerProgress::default());
    let assignment = Arc::new(Mutex::new(consumer.assignment()));
    let handle = Arc::new(ConsumerHandle {
        group: group.to_owned(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        log: log.clone(),
        progress: progress.clone(),
        assignment: assignment.clone(),
    });
    let group = group.to_owned();
    let mut lag_shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let record = tokio::select! {
                record = consumer.next() => record,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            if let Ok(mut a) = assignment.lock() {
                *a = consumer.assignment();
            }
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%group, %error, "consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if !handle_with_retries(&group, &*handler, &record, &mut shutdown).await {
                break;
            }
            commit_with_retries(&group, &mut *consumer, &record, &mut shutdown).await;
            progress.record(&record);
            CONSUMED_RECORDS
                .with_label_values(&[group.as_str(), record.topic.as_str()])
                .inc();
        }
        tracing::debug!(%group, "consumer stopped");
    });
    let lag_handle = handle.clone();
    tokio::spawn(async move {
        loop {
            if let Ok(lag) = lag_handle.lag().await {
                for (topic, partition, behind) in lag {
                    CONSUMER_LAG
                        .with_label_values(&[
                            lag_handle.group.as_str(),
                            topic.as_str(),
                            &partition.to_string(),
                        ])
                        .set(behind as i64);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = lag_shutdown.wait_for(|stop| *stop) => break,
            }
        }
    });
    handle
}

/// Returns false when shutting down before the record was handled.
async fn handle_with_retries(
    group: &str,
    handler: &dyn RecordHandler,
    record: &Record,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let span = tracing::info_span!(
        "consume",
        group,
        topic = %record.topic,
        partition = record.partition,
        offset = record.offset,
    );
    telemetry::continue_from_headers(&span, &record.headers);
    let mut backoff = Duration::from_millis(50);
    loop {
        match handler.handle(record).instrument(span.clone()).await {
            Ok(()) => return true,
            Err(HandleError::Permanent(error)) => {
                let _guard = span.enter();
                tracing::error!(%error, "skipping a record that cannot be handled");
                SKIPPED
                    .with_label_values(&[group, record.topic.as_str()])
                    .inc();
                return true;
            }
            Err(HandleError::Transient(error)) => {
                let _guard = span.enter();
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "handling failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn commit_with_retries(
    group: &str,
    consumer: &mut dyn Consumer,
    record: &Record,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match consumer.commit(record).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(group, %error, "commit failed; retrying");
            }
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
