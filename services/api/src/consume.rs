//! The consumer loop every service uses: take a record and whatever else
//! has already arrived (up to [`MAX_BATCH`] records where the handler takes
//! batches, [`MAX_GATHERED`] where it takes one record at a time, and
//! [`MAX_BATCH_BYTES`] of payload), handle them (one database transaction
//! per record, or per batch where the handler takes batches),
//! commit the offsets only after that (one commit per batch), retry
//! transient failures with backoff. A record that can never be applied is never
//! dropped silently: it goes to its topic's dead-letter topic
//! (`<topic>.deadletter`) with the error, the consumer group and its
//! position in headers, is counted and logged as an error, and only then is
//! its offset committed so the partition moves on.
//! Each record runs in a span continuing the producer's trace (a batch, in
//! one span continuing its first record's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Retrying cannot help (an undecodable record, a value the database
    /// can never store); it goes to the dead-letter topic.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandleError {
    /// Classifies a storage error by the database error in its chain: the
    /// database refusing the data itself (a value too long to index, out of
    /// range, against a constraint, not valid text) is permanent, anything
    /// else (a lost connection, a lock, a full pool) is worth retrying.
    pub fn storage<E: std::error::Error + 'static>(error: E) -> HandleError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut permanent = false;
        while let Some(current) = cause {
            if let Some(sqlx) = current.downcast_ref::<sqlx::Error>() {
                permanent = ganglion_base::database::refuses_the_data(sqlx);
                break;
            }
            cause = current.source();
        }
        let message = describe_chain(&error);
        if permanent {
            HandleError::Permanent(message)
        } else {
            HandleError::Transient(message)
        }
    }
}

/// An error and its causes, on one line.
fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = current.source();
    }
    message
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.deadletter")
}

/// The most records a handler that [takes batches](RecordHandler::takes_batches)
/// gets at once: what has arrived while the last batch was handled, so a
/// consumer that keeps up handles one record at a time and one that is
/// behind catches up in large transactions (measured: a syncapi rebuilds
/// at 11 700 records/s with batches of 512, 15 300 with 4 096, 24 900 with
/// 16 384).
pub const MAX_BATCH: usize = 16_384;

/// The most records taken at once for a handler that handles them one at a
/// time: their offsets commit together, and a rebalance waits for them.
pub const MAX_GATHERED: usize = 64;

/// The most payload bytes taken at once (at least one record).
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// A topic consumer: one record in, one database transaction (or a batch
/// of records in one, for handlers that say so).
#[async_trait]
pub trait RecordHandler: Send + Sync + 'static {
    /// Must be idempotent: a record may be delivered again after a crash.
    async fn handle(&self, record: &Record) -> Result<(), HandleError>;

    /// Whether [`handle_batch`](RecordHandler::handle_batch) applies a
    /// batch as one unit.
    fn takes_batches(&self) -> bool {
        false
    }

    /// Applies `records` (in log order within each partition) all or
    /// nothing, for a handler that [takes batches](RecordHandler::takes_batches).
    /// A permanent error makes the consumer handle the batch's records one
    /// by one, so only the record at fault goes to the dead letters.
    async fn handle_batch(&self, records: &[Record]) -> Result<(), HandleError> {
        for record in records {
            self.handle(record).await?;
        }
        Ok(())
    }

    /// Called once a record that could never be applied is on its
    /// dead-letter topic: a view that keeps its position with its data
    /// moves past the record here (so waiters for that position are not
    /// held until they time out).
    async fn dead_lettered(&self, _record: &Record) -> Result<(), HandleError> {
        Ok(())
    }
}

/// Where a consumer has got to, for lag metrics and readiness.
#[derive(Default)]
pub struct ConsumerProgress {
    /// (topic, partition) → next offset to consume.
    next: Mutex<HashMap<(String, u32), u64>>,
    /// Since when the record or batch at hand has failed (transiently, so
    /// it is being retried), and its last error.
    retrying: Mutex<Option<(Instant, String)>>,
}

impl ConsumerProgress {
    /// The record or batch at hand failed again (transiently).
    fn failed(&self, group: &str, topic: &str, error: &str) {
        RETRIES.with_label_values(&[group, topic]).inc();
        let mut retrying = self.retrying.lock().unwrap_or_else(|p| p.into_inner());
        let since = retrying
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        *retrying = Some((since, error.to_owned()));
    }

    /// The record or batch at hand is done with.
    fn settled(&self) {
        *self.retrying.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// How long the record or batch at hand has been retried, and why.
    pub fn retrying(&self) -> Option<(Duration, String)> {
        self.retrying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(since, error)| (since.elapsed(), error.clone()))
    }

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
    /// The topics' end offsets as last asked, and when: probes of
    /// `/readyz` from every caller share one ask a second (and wait for
    /// one under way rather than asking again).
    ends: tokio::sync::Mutex<Option<(Instant, Vec<Vec<u64>>)>>,
}

/// How long end offsets asked of the log serve readiness checks.
const ENDS_FRESH_FOR: Duration = Duration::from_secs(1);

impl ConsumerHandle {
    /// Each topic's end offsets (in `topics` order), asked at most once a
    /// [`ENDS_FRESH_FOR`].
    async fn end_offsets(&self) -> Result<Vec<Vec<u64>>, String> {
        let mut cached = self.ends.lock().await;
        if let Some((asked, ends)) = &*cached
            && asked.elapsed() < ENDS_FRESH_FOR
        {
            return Ok(ends.clone());
        }
        let mut ends = Vec::with_capacity(self.topics.len());
        for topic in &self.topics {
            ends.push(
                self.log
                    .end_offsets(topic)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        *cached = Some((Instant::now(), ends.clone()));
        Ok(ends)
    }

    /// Records not yet consumed, per assigned (topic, partition).
    pub async fn lag(&self) -> Result<Vec<(String, u32, u64)>, String> {
        let assignment = self
            .assignment
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (topic, ends) in self.topics.iter().zip(self.end_offsets().await?) {
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
        if let Some((for_how_long, error)) = self.progress.retrying()
            && for_how_long >= STUCK_AFTER
        {
            return Err(format!(
                "retrying the same records for {} s: {error}",
                for_how_long.as_secs()
            ));
        }
        let lag = self.lag().await?;
        let behind: u64 = lag.iter().map(|(_, _, l)| l).sum();
        if behind > 1000 {
            return Err(format!("{behind} records behind"));
        }
        Ok(())
    }
}

static DEAD_LETTERS: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        counter_vec(
            "ganglion_consumer_dead_letters_total",
            "Records that could never be applied, sent to their dead-letter topic",
            &["group", "topic"],
        )
    });

/// How long a consumer may retry the same records before `/readyz` says
/// so: an error that never clears (a full disk, a bug that keeps failing
/// one transaction) stops the view behind it, and lag alone would show it
/// only once 1 000 records had piled up.
const STUCK_AFTER: Duration = Duration::from_secs(30);

static RETRIES: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    counter_vec(
        "ganglion_consumer_retries_total",
        "Transient failures of a record or batch, each retried after a backoff",
        &["group", "topic"],
    )
});

static BATCHES: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    counter_vec(
        "ganglion_consumer_batches_total",
        "Batches of records taken at once (records / batches: the mean batch)",
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
        ends: tokio::sync::Mutex::new(None),
    });
    // Every series a dashboard or alert asks for exists from the start, at 0.
    for topic in topics {
        CONSUMED_RECORDS.with_label_values(&[group, *topic]);
        RETRIES.with_label_values(&[group, *topic]);
        DEAD_LETTERS.with_label_values(&[group, *topic]);
        BATCHES.with_label_values(&[group, *topic]);
    }
    let group = group.to_owned();
    let mut lag_shutdown = shutdown.clone();
    let limit = if handler.takes_batches() {
        MAX_BATCH
    } else {
        MAX_GATHERED
    };
    tokio::spawn(async move {
        loop {
            let record = tokio::select! {
                record = consumer.next() => record,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let first = match record {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%group, %error, "consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut bytes = first.payload.len();
            let mut batch = vec![first];
            while batch.len() < limit && bytes < MAX_BATCH_BYTES {
                match consumer.try_next().await {
                    Ok(Some(record)) => {
                        bytes += record.payload.len();
                        batch.push(record);
                    }
                    // An error shows again at the next `next`.
                    Ok(None) | Err(_) => break,
                }
            }
            let assigned = consumer.assignment();
            // Taking records may have run a rebalance: a partition taken
            // away meanwhile is another member's now, from our last commit,
            // so its records are left to it (a room is written by one
            // member at a time).
            batch.retain(|record| {
                assigned.iter().any(|(topic, partition)| {
                    *topic == record.topic && *partition == record.partition
                })
            });
            if let Ok(mut a) = assignment.lock() {
                *a = assigned;
            }
            if let Some(first) = batch.first() {
                BATCHES
                    .with_label_values(&[group.as_str(), first.topic.as_str()])
                    .inc();
            }
            let handled =
                handle_all(&*log, &group, &*handler, &progress, &batch, &mut shutdown).await;
            let done = &batch[..handled];
            commit_with_retries(&group, &mut *consumer, done, &mut shutdown).await;
            for record in done {
                progress.record(record);
                CONSUMED_RECORDS
                    .with_label_values(&[group.as_str(), record.topic.as_str()])
                    .inc();
            }
            if handled < batch.len() {
                break;
            }
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

/// Handles `batch`: as one unit where the handler takes batches (falling
/// back to one record at a time when that fails for good), else record by
/// record. Returns how many records, from the first, were handled (or
/// dead-lettered): fewer than all only when shutting down.
async fn handle_all(
    log: &dyn Log,
    group: &str,
    handler: &dyn RecordHandler,
    progress: &ConsumerProgress,
    batch: &[Record],
    shutdown: &mut watch::Receiver<bool>,
) -> usize {
    if batch.len() > 1 && handler.takes_batches() {
        match handle_batch_with_retries(group, handler, progress, batch, shutdown).await {
            Some(true) => return batch.len(),
            Some(false) => {}
            None => return 0,
        }
    }
    for (handled, record) in batch.iter().enumerate() {
        if !handle_with_retries(log, group, handler, progress, record, shutdown).await {
            return handled;
        }
    }
    batch.len()
}

/// Applies a batch as one unit, retrying transient failures: `Some(true)`
/// once applied, `Some(false)` when it failed for good (its records are
/// then handled one at a time), `None` when shutting down first.
async fn handle_batch_with_retries(
    group: &str,
    handler: &dyn RecordHandler,
    progress: &ConsumerProgress,
    batch: &[Record],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<bool> {
    let first = batch.first()?;
    let span = tracing::info_span!(
        "consume_batch",
        group,
        topic = %first.topic,
        records = batch.len(),
    );
    telemetry::continue_from_headers(&span, &first.headers);
    let mut backoff = Duration::from_millis(50);
    loop {
        match handler.handle_batch(batch).instrument(span.clone()).await {
            Ok(()) => {
                progress.settled();
                return Some(true);
            }
            Err(HandleError::Permanent(error)) => {
                let _guard = span.enter();
                tracing::info!(%error, "a batch failed for good; applying its records one by one");
                return Some(false);
            }
            Err(HandleError::Transient(error)) => {
                progress.failed(group, &first.topic, &error);
                let _guard = span.enter();
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "handling a batch failed; retrying");
            }
        }
        if !back_off(&mut backoff, shutdown).await {
            return None;
        }
    }
}

/// Waits `backoff`, then doubles it (up to 5 s); false when shutting down
/// first.
async fn back_off(backoff: &mut Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.wait_for(|stop| *stop) => return false,
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    true
}

/// Returns false when shutting down before the record was handled (or
/// dead-lettered).
async fn handle_with_retries(
    log: &dyn Log,
    group: &str,
    handler: &dyn RecordHandler,
    progress: &ConsumerProgress,
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
            Ok(()) => {
                progress.settled();
                return true;
            }
            Err(HandleError::Permanent(error)) => {
                progress.settled();
                if !dead_letter(log, group, record, &error, shutdown)
                    .instrument(span.clone())
                    .await
                {
                    return false;
                }
                if let Err(error) = handler.dead_lettered(record).instrument(span.clone()).await {
                    let _guard = span.enter();
                    tracing::warn!(%error, "could not move past a dead letter");
                }
                return true;
            }
            Err(HandleError::Transient(error)) => {
                progress.failed(group, &record.topic, &error);
                let _guard = span.enter();
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "handling failed; retrying");
            }
        }
        if !back_off(&mut backoff, shutdown).await {
            return false;
        }
    }
}

/// Puts a record that can never be applied on its dead-letter topic, with
/// the error; retried until the log takes it (or shutdown), so the record is
/// never lost. Returns false when shutting down first.
async fn dead_letter(
    log: &dyn Log,
    group: &str,
    record: &Record,
    error: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tracing::error!(
        %error,
        "a record cannot be applied: moving it to the dead-letter topic"
    );
    let topic = dead_letter_topic(&record.topic);
    let mut headers = record.headers.clone();
    headers.extend([
        (
            "ganglion-dead-letter-error".to_owned(),
            error.as_bytes().to_vec(),
        ),
        (
            "ganglion-dead-letter-group".to_owned(),
            group.as_bytes().to_vec(),
        ),
        (
            "ganglion-dead-letter-topic".to_owned(),
            record.topic.as_bytes().to_vec(),
        ),
        (
            "ganglion-dead-letter-partition".to_owned(),
            record.partition.to_string().into_bytes(),
        ),
        (
            "ganglion-dead-letter-offset".to_owned(),
            record.offset.to_string().into_bytes(),
        ),
    ]);
    let outgoing = ganglion_log::OutgoingRecord {
        key: record.key.clone(),
        headers,
        payload: record.payload.clone(),
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let produced = match log.ensure_topic(&topic, 1).await {
            Ok(()) => log.produce(&topic, outgoing.clone()).await,
            Err(error) => Err(error),
        };
        match produced {
            Ok(position) => {
                DEAD_LETTERS
                    .with_label_values(&[group, record.topic.as_str()])
                    .inc();
                tracing::error!(
                    dead_letter_topic = %topic,
                    dead_letter_offset = position.offset,
                    "record moved to the dead-letter topic"
                );
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "could not write a dead letter; retrying");
            }
        }
        if !back_off(&mut backoff, shutdown).await {
            return false;
        }
    }
}

/// Commits the last of `records` in each partition, in one request.
async fn commit_with_retries(
    group: &str,
    consumer: &mut dyn Consumer,
    records: &[Record],
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut lasts: HashMap<(&str, u32), &Record> = HashMap::new();
    for record in records {
        lasts.insert((record.topic.as_str(), record.partition), record);
    }
    if lasts.is_empty() {
        return;
    }
    let lasts: Vec<&Record> = lasts.into_values().collect();
    let mut backoff = Duration::from_millis(50);
    loop {
        match consumer.commit_all(&lasts).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ganglion_log::{EmbeddedLog, OutgoingRecord};

    /// Fails permanently on payloads starting with `poison`, transiently
    /// on the first try of payloads starting with `flaky`.
    struct Picky {
        handled: Mutex<Vec<String>>,
        moved_past: Mutex<Vec<u64>>,
        flaked: Mutex<bool>,
    }

    #[async_trait]
    impl RecordHandler for Picky {
        async fn handle(&self, record: &Record) -> Result<(), HandleError> {
            let text = String::from_utf8_lossy(&record.payload).into_owned();
            if text.starts_with("poison") {
                return Err(HandleError::Permanent(format!("cannot apply {text}")));
            }
            if text.starts_with("flaky") {
                let mut flaked = self.flaked.lock().expect("lock");
                if !*flaked {
                    *flaked = true;
                    return Err(HandleError::Transient("try again".into()));
                }
            }
            self.handled.lock().expect("lock").push(text);
            Ok(())
        }

        async fn dead_lettered(&self, record: &Record) -> Result<(), HandleError> {
            self.moved_past.lock().expect("lock").push(record.offset);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_record_that_can_never_be_applied_goes_to_the_dead_letters_and_the_partition_moves_on()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path()).expect("log"));
        log.ensure_topic("things", 1).await.expect("topic");
        for payload in ["one", "poison pill", "flaky two", "three"] {
            log.produce(
                "things",
                OutgoingRecord {
                    key: b"k".to_vec(),
                    headers: vec![("traceparent".into(), b"t".to_vec())],
                    payload: payload.as_bytes().to_vec(),
                },
            )
            .await
            .expect("produce");
        }
        let handler = Arc::new(Picky {
            handled: Mutex::new(Vec::new()),
            moved_past: Mutex::new(Vec::new()),
            flaked: Mutex::new(false),
        });
        let (stop, shutdown) = watch::channel(false);
        let before = DEAD_LETTERS.with_label_values(&["picky", "things"]).get();
        spawn(log.clone(), "picky", &["things"], handler.clone(), shutdown)
            .await
            .expect("consumer");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while handler.handled.lock().expect("lock").len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the partition moved on"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(true);
        assert_eq!(
            *handler.handled.lock().expect("lock"),
            ["one", "flaky two", "three"],
            "a transient failure is retried, a permanent one skipped over"
        );
        assert_eq!(*handler.moved_past.lock().expect("lock"), [1]);
        assert_eq!(
            DEAD_LETTERS.with_label_values(&["picky", "things"]).get(),
            before + 1
        );

        // The dead letter keeps the record whole, with why and where from.
        let mut reader = log
            .reader(&[(dead_letter_topic("things").as_str(), vec![0])])
            .await
            .expect("reader");
        let letter = tokio::time::timeout(Duration::from_secs(5), reader.next())
            .await
            .expect("a dead letter")
            .expect("record");
        assert_eq!(letter.payload, b"poison pill");
        assert_eq!(letter.key, b"k");
        assert_eq!(letter.header("traceparent"), Some(&b"t"[..]));
        assert_eq!(
            letter.header("ganglion-dead-letter-error"),
            Some(&b"cannot apply poison pill"[..])
        );
        assert_eq!(
            letter.header("ganglion-dead-letter-group"),
            Some(&b"picky"[..])
        );
        assert_eq!(
            letter.header("ganglion-dead-letter-topic"),
            Some(&b"things"[..])
        );
        assert_eq!(
            letter.header("ganglion-dead-letter-offset"),
            Some(&b"1"[..])
        );
    }

    /// Takes batches: a batch holding a `poison` record fails for good,
    /// one holding a `flaky` record fails once for a while.
    #[derive(Default)]
    struct Batcher {
        applied: Mutex<Vec<String>>,
        batch_sizes: Mutex<Vec<usize>>,
        flaked: Mutex<bool>,
    }

    #[async_trait]
    impl RecordHandler for Batcher {
        async fn handle(&self, record: &Record) -> Result<(), HandleError> {
            let text = String::from_utf8_lossy(&record.payload).into_owned();
            if text.starts_with("poison") {
                return Err(HandleError::Permanent(format!("cannot apply {text}")));
            }
            self.applied.lock().expect("lock").push(text);
            Ok(())
        }

        fn takes_batches(&self) -> bool {
            true
        }

        async fn handle_batch(&self, records: &[Record]) -> Result<(), HandleError> {
            let texts: Vec<String> = records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
                .collect();
            if texts.iter().any(|t| t.starts_with("poison")) {
                return Err(HandleError::Permanent("a poisoned batch".into()));
            }
            if texts.iter().any(|t| t.starts_with("flaky")) {
                let mut flaked = self.flaked.lock().expect("lock");
                if !*flaked {
                    *flaked = true;
                    return Err(HandleError::Transient("try again".into()));
                }
            }
            self.batch_sizes.lock().expect("lock").push(records.len());
            self.applied.lock().expect("lock").extend(texts);
            Ok(())
        }
    }

    /// Fails every record transiently until `release` is set.
    struct Stubborn {
        release: std::sync::atomic::AtomicBool,
        handled: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl RecordHandler for Stubborn {
        async fn handle(&self, record: &Record) -> Result<(), HandleError> {
            if !self.release.load(std::sync::atomic::Ordering::Acquire) {
                return Err(HandleError::Transient("the disk is full".into()));
            }
            let text = String::from_utf8_lossy(&record.payload).into_owned();
            self.handled.lock().expect("lock").push(text);
            Ok(())
        }
    }

    /// A record retried again and again is counted and shown (how long,
    /// and the error) to readiness; once it goes through, nothing is.
    #[tokio::test]
    async fn a_record_retried_again_and_again_is_counted_and_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path()).expect("log"));
        log.ensure_topic("stuck", 1).await.expect("topic");
        log.produce(
            "stuck",
            OutgoingRecord {
                key: b"k".to_vec(),
                headers: Vec::new(),
                payload: b"one".to_vec(),
            },
        )
        .await
        .expect("produce");
        let handler = Arc::new(Stubborn {
            release: std::sync::atomic::AtomicBool::new(false),
            handled: Mutex::new(Vec::new()),
        });
        let (_stop, shutdown) = watch::channel(false);
        let handle = spawn(
            log.clone(),
            "stubborn",
            &["stuck"],
            handler.clone(),
            shutdown,
        )
        .await
        .expect("consumer");
        let retries = || RETRIES.with_label_values(&["stubborn", "stuck"]).get();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while retries() < 3 {
            assert!(std::time::Instant::now() < deadline, "not retried");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (for_how_long, error) = handle.progress.retrying().expect("shown as retrying");
        assert!(error.contains("the disk is full"), "{error}");
        assert!(
            for_how_long >= Duration::from_millis(100),
            "{for_how_long:?}"
        );
        assert!(for_how_long < STUCK_AFTER);
        assert_eq!(
            handle.check().await,
            Ok(()),
            "ready until it has been stuck a while"
        );
        handler
            .release
            .store(true, std::sync::atomic::Ordering::Release);
        while handler.handled.lock().expect("lock").is_empty() {
            assert!(std::time::Instant::now() < deadline, "never went through");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(handle.progress.retrying().is_none());
    }

    #[tokio::test]
    async fn a_backlog_is_applied_in_batches_and_a_poisoned_batch_record_by_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path()).expect("log"));
        log.ensure_topic("backlog", 1).await.expect("topic");
        let mut sent = Vec::new();
        let produce = |texts: Vec<String>| {
            let log = log.clone();
            async move {
                for text in texts {
                    log.produce(
                        "backlog",
                        OutgoingRecord {
                            key: b"k".to_vec(),
                            headers: Vec::new(),
                            payload: text.into_bytes(),
                        },
                    )
                    .await
                    .expect("produce");
                }
            }
        };
        let text = |n: usize| match n {
            10 => "flaky 10".to_owned(),
            600 => "poison 600".to_owned(),
            n => format!("record {n}"),
        };
        // A backlog before the consumer starts: one batch.
        produce((0..500).map(text).collect()).await;
        sent.extend((0..500).map(text));
        let handler = Arc::new(Batcher::default());
        let (stop, shutdown) = watch::channel(false);
        let consumer = spawn(
            log.clone(),
            "batcher",
            &["backlog"],
            handler.clone(),
            shutdown,
        )
        .await
        .expect("consumer");
        let wait_for = |count: usize| {
            let handler = handler.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while handler.applied.lock().expect("lock").len() < count {
                    assert!(std::time::Instant::now() < deadline, "{count} applied");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        wait_for(500).await;
        assert_eq!(
            handler.batch_sizes.lock().expect("lock").first(),
            Some(&500),
            "the backlog is one batch, retried whole after a transient failure"
        );
        // More, one of them poisoned: whatever batch holds it is applied
        // record by record, and the poisoned one dead-lettered.
        produce((500..700).map(text).collect()).await;
        sent.extend((500..700).map(text).filter(|t| !t.starts_with("poison")));
        wait_for(sent.len()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while consumer.progress.next_offset("backlog", 0) < 700 {
            assert!(
                std::time::Instant::now() < deadline,
                "the backlog was committed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(true);
        assert_eq!(
            *handler.applied.lock().expect("lock"),
            sent,
            "every record once, in order, the poisoned one left out"
        );
        assert_eq!(
            log.committed_offsets("batcher", "backlog")
                .await
                .expect("offsets"),
            [Some(700)]
        );
    }

    /// A member that lets a second member join its group while it is taking
    /// a batch (at its `join_at`th `try_next`), so the rebalance lands in
    /// the middle of the gathering.
    struct JoinsMidBatch {
        inner: Box<dyn Consumer>,
        log: Arc<dyn Log>,
        tries: usize,
        join_at: usize,
        joined: Arc<tokio::sync::Mutex<Option<Box<dyn Consumer>>>>,
    }

    #[async_trait]
    impl Consumer for JoinsMidBatch {
        async fn next(&mut self) -> Result<Record, ganglion_log::LogError> {
            self.inner.next().await
        }

        async fn try_next(&mut self) -> Result<Option<Record>, ganglion_log::LogError> {
            self.tries += 1;
            if self.tries == self.join_at {
                let second = self.log.consumer("movers", &["moving"]).await?;
                *self.joined.lock().await = Some(second);
            }
            self.inner.try_next().await
        }

        async fn commit(&mut self, record: &Record) -> Result<(), ganglion_log::LogError> {
            self.inner.commit(record).await
        }

        fn assignment(&self) -> Vec<(String, u32)> {
            self.inner.assignment()
        }
    }

    #[tokio::test]
    async fn records_of_a_partition_taken_away_while_gathering_are_left_to_its_new_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path()).expect("log"));
        log.ensure_topic("moving", 2).await.expect("topic");
        // Ten records in each partition.
        let mut per_partition: [Vec<String>; 2] = Default::default();
        let mut n = 0;
        while per_partition.iter().any(|texts| texts.len() < 10) {
            let key = format!("room {n}");
            let partition = ganglion_log::partition_for_key(key.as_bytes(), 2) as usize;
            n += 1;
            if per_partition[partition].len() == 10 {
                continue;
            }
            let text = format!("p{partition} #{}", per_partition[partition].len());
            log.produce(
                "moving",
                OutgoingRecord {
                    key: key.into_bytes(),
                    headers: Vec::new(),
                    payload: text.clone().into_bytes(),
                },
            )
            .await
            .expect("produce");
            per_partition[partition].push(text);
        }
        let joined = Arc::new(tokio::sync::Mutex::new(None));
        let first = JoinsMidBatch {
            inner: log.consumer("movers", &["moving"]).await.expect("consumer"),
            log: log.clone(),
            tries: 0,
            // Both partitions are read in turn, so by then the batch holds
            // records of each.
            join_at: 6,
            joined: joined.clone(),
        };
        let handler = Arc::new(Batcher::default());
        let (stop, shutdown) = watch::channel(false);
        let handle = run(
            log.clone(),
            "movers",
            &["moving"],
            Box::new(first),
            handler.clone(),
            shutdown,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut second = loop {
            if let Some(second) = joined.lock().await.take() {
                break second;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second member joined"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // The second member gets one partition from its start (nothing of it
        // was committed): every record of it once.
        let mut moved = Vec::new();
        while moved.len() < 10 {
            let record = tokio::time::timeout(Duration::from_secs(10), second.next())
                .await
                .expect("the moved partition's records")
                .expect("a record");
            moved.push(record);
        }
        let partition = moved[0].partition as usize;
        assert!(moved.iter().all(|r| r.partition as usize == partition));
        let texts: Vec<String> = moved
            .iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect();
        assert_eq!(texts, per_partition[partition]);
        // The first member applied its own partition, and nothing of the
        // one taken away, though its first batch had held some of it.
        let kept = 1 - partition;
        while handle.progress.next_offset("moving", kept as u32) < 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "the kept partition applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(true);
        assert_eq!(*handler.applied.lock().expect("lock"), per_partition[kept]);
        assert_eq!(
            *handle.assignment.lock().expect("lock"),
            vec![("moving".to_owned(), kept as u32)]
        );
    }
}
