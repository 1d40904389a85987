//! What a case runs against: a log, a way to restart it, unique names, and
//! for Kafka a tansu broker started (and stopped) per test.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ganglion_log::testing::Tansu;
use ganglion_log::{Consumer, EmbeddedLog, KafkaConfig, KafkaLog, Log, Record};

/// How long any single condition may take to come true. Generous: a member
/// joining a tansu group gets its partitions about 3 s after subscribing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Runs a case with an overall deadline, so a hang fails instead of stalling.
pub async fn run(case: impl Future<Output = ()>) {
    // `RUST_LOG=rdkafka=debug` shows what the clients did, for failing cases.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    if tokio::time::timeout(Duration::from_secs(180), case)
        .await
        .is_err()
    {
        panic!("the case did not finish within 180 s");
    }
}

pub struct Fixture {
    backend: Backend,
    log: Option<Arc<dyn Log>>,
}

enum Backend {
    Embedded(tempfile::TempDir),
    Kafka { config: KafkaConfig, broker: Tansu },
}

impl Fixture {
    pub fn embedded() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path()).unwrap();
        Fixture {
            backend: Backend::Embedded(dir),
            log: Some(Arc::new(log)),
        }
    }

    pub async fn kafka() -> Fixture {
        Fixture::kafka_on(Tansu::start().await)
    }

    /// On a broker whose data survives its restarts.
    pub async fn kafka_durable() -> Fixture {
        Fixture::kafka_on(Tansu::start_durable().await)
    }

    fn kafka_on(broker: Tansu) -> Fixture {
        let config = KafkaConfig {
            client_id: "ganglion-log-conformance".to_owned(),
            replication_factor: 1,
            metadata_refresh_interval_ms: 1_000,
            // Long enough for a loaded test machine, short enough that a
            // producer stuck after a broker restart is replaced soon.
            delivery_timeout_ms: 10_000,
            ..KafkaConfig::new(format!("127.0.0.1:{}", broker.port))
        };
        let log = KafkaLog::new(config.clone()).unwrap();
        Fixture {
            backend: Backend::Kafka { config, broker },
            log: Some(Arc::new(log)),
        }
    }

    pub fn log(&self) -> Arc<dyn Log> {
        self.log.clone().unwrap()
    }

    /// Drops the log and opens it again, as a restarted process would: the
    /// embedded log reopens its directory (proving its data is on disk), the
    /// Kafka log connects anew. Drop every consumer first.
    pub async fn restart(&mut self) {
        let log = self.log.take().unwrap();
        assert_eq!(
            Arc::strong_count(&log),
            1,
            "the case still holds the log it wants to restart"
        );
        drop(log);
        let reopened: Arc<dyn Log> = match &self.backend {
            Backend::Embedded(dir) => Arc::new(EmbeddedLog::open(dir.path()).unwrap()),
            Backend::Kafka { config, .. } => Arc::new(KafkaLog::new(config.clone()).unwrap()),
        };
        self.log = Some(reopened);
    }

    /// Stops the Kafka broker and starts an empty one on the same port, as a
    /// broker that restarts and lost its state (tansu keeps it in memory).
    pub async fn restart_broker(&mut self) {
        let Backend::Kafka { broker, .. } = &mut self.backend else {
            panic!("only the Kafka log has a broker");
        };
        broker.restart().await;
    }

    /// Freezes (`true`) or thaws the Kafka broker: while frozen it accepts
    /// no requests, as a broker behind a network partition.
    pub fn freeze_broker(&mut self, frozen: bool) {
        let Backend::Kafka { broker, .. } = &self.backend else {
            panic!("only the Kafka log has a broker");
        };
        broker.freeze(frozen);
    }

    /// A topic or group name no other case (or run) uses.
    pub fn name(&self, what: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!(
            "{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// The next record, or a panic naming what was awaited.
pub async fn next(consumer: &mut Box<dyn Consumer>) -> Record {
    match tokio::time::timeout(DEADLINE, consumer.next()).await {
        Ok(record) => record.unwrap(),
        Err(_) => panic!("no record arrived within {DEADLINE:?}"),
    }
}

/// Keeps `consumers` asking for records (none may arrive) until `settled`
/// holds for their assignments: a Kafka member only learns its partitions
/// while it polls, and an embedded member takes a partition over when the
/// previous holder asks for its next record.
pub async fn await_assignment(
    consumers: &mut [&mut Box<dyn Consumer>],
    settled: impl Fn(&[Vec<(String, u32)>]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let assignments: Vec<_> = consumers.iter().map(|c| c.assignment()).collect();
        if settled(&assignments) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "assignments did not settle within {DEADLINE:?}: {assignments:?}"
        );
        for consumer in consumers.iter_mut() {
            if let Ok(record) =
                tokio::time::timeout(Duration::from_millis(100), consumer.next()).await
            {
                panic!("got a record while none was produced: {record:?}");
            }
        }
    }
}
