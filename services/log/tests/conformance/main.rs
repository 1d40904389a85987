//! The log conformance suite: every case runs against both implementations,
//! the embedded log (in a temporary directory) and the Kafka log (against a
//! real tansu broker this suite starts itself; the Kafka cases fail, rather
//! than skip, when `tansu` is not installed).
#![allow(clippy::unwrap_used)] // a failing test should panic with the error it hit

mod cases;
mod fixture;

/// Generates one test per case and implementation.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let mut fixture = crate::fixture::Fixture::embedded();
                    crate::fixture::run(crate::cases::$case(&mut fixture)).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let mut fixture = crate::fixture::Fixture::kafka().await;
                    crate::fixture::run(crate::cases::$case(&mut fixture)).await;
                }
            )*
        }
    };
}

conformance!(
    order_is_kept_per_key,
    consumers_resume_at_the_committed_offset,
    group_members_share_partitions,
    a_leavers_partitions_resume_at_its_last_commit,
    a_new_group_replays_from_the_start,
    headers_travel_with_their_record,
    a_waiting_consumer_wakes_on_append,
    end_offsets_are_high_watermarks,
    a_reader_starts_at_given_offsets,
    committed_offsets_are_read_without_joining,
    batches_are_taken_and_committed_together,
    records_produced_together_keep_their_order_and_positions,
);

/// What only the Kafka log has to survive: its broker going away.
mod kafka_only {
    use std::time::{Duration, Instant};

    use ganglion_log::{Log, OutgoingRecord};

    use crate::fixture::{DEADLINE, Fixture, next};

    fn record(text: &str) -> OutgoingRecord {
        OutgoingRecord {
            key: b"!room:example.org".to_vec(),
            headers: Vec::new(),
            payload: text.as_bytes().to_vec(),
        }
    }

    /// Produces until it succeeds, tolerating transient errors until the
    /// deadline (a caller of the log retries those with backoff too).
    async fn produce_eventually(log: &dyn Log, topic: &str, text: &str) {
        let deadline = Instant::now() + DEADLINE * 2;
        loop {
            match tokio::time::timeout(DEADLINE, log.produce(topic, record(text))).await {
                Ok(Ok(_)) => return,
                Ok(Err(error)) => assert!(
                    error.is_transient() && Instant::now() < deadline,
                    "produce: {error}"
                ),
                Err(_) => panic!("produce hung for {DEADLINE:?}"),
            }
        }
    }

    /// After the broker restarts empty (tansu keeps its state in memory),
    /// the same log produces again: its producer, which the broker no longer
    /// knows ("unknown producer ID" forever), is replaced.
    ///
    /// No consumer takes part: librdkafka 2.12.1 crashes (SIGSEGV in
    /// `rd_kafka_metadata_cache_find`) when a broker answers a consumer's
    /// metadata request for a topic ID it has never heard of, which only a
    /// broker that lost its topics does. `a_consumer_survives_a_broker_stall`
    /// covers consumers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_survives_a_broker_that_lost_its_state() {
        crate::fixture::run(producer_after_state_loss()).await;
    }

    async fn producer_after_state_loss() {
        let mut fixture = Fixture::kafka().await;
        let log = fixture.log();
        let topic = fixture.name("restart");
        log.ensure_topic(&topic, 1).await.unwrap();
        log.produce(&topic, record("before")).await.unwrap();

        fixture.restart_broker().await;
        let deadline = Instant::now() + DEADLINE;
        while let Err(error) = log.ensure_topic(&topic, 1).await {
            assert!(Instant::now() < deadline, "ensure_topic: {error}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        produce_eventually(&*log, &topic, "after").await;
        assert_eq!(log.end_offsets(&topic).await.unwrap(), vec![1]);
    }

    /// A broker restarted with its data (as a real Kafka keeps it): the
    /// records, the group's committed offsets and the log's producer and
    /// consumer all carry on; nothing is lost, nothing read twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_broker_restart_keeps_records_and_offsets() {
        crate::fixture::run(through_durable_restart()).await;
    }

    async fn through_durable_restart() {
        let mut fixture = Fixture::kafka_durable().await;
        let log = fixture.log();
        let topic = fixture.name("durable");
        let group = fixture.name("group");
        log.ensure_topic(&topic, 1).await.unwrap();
        for text in ["one", "two", "three"] {
            log.produce(&topic, record(text)).await.unwrap();
        }
        let mut consumer = log.consumer(&group, &[&topic]).await.unwrap();
        for text in ["one", "two"] {
            let received = next(&mut consumer).await;
            assert_eq!(received.payload, text.as_bytes());
            consumer.commit(&received).await.unwrap();
        }
        let waiting = tokio::spawn(async move {
            let received = consumer.next().await;
            (consumer, received)
        });
        let (mut consumer, received) = tokio::time::timeout(DEADLINE, waiting)
            .await
            .expect("the third record")
            .unwrap();
        assert_eq!(received.unwrap().payload, b"three");

        fixture.restart_broker().await;
        produce_eventually(&*log, &topic, "four").await;
        assert_eq!(
            log.committed_offsets(&group, &topic).await.unwrap(),
            vec![Some(2)],
            "the committed offset survived"
        );
        let received = next(&mut consumer).await;
        assert_eq!(received.payload, b"four", "nothing read twice");
        drop(consumer);
        // A new member resumes at the group's offset: what the first read
        // but never committed comes again.
        let mut again = log.consumer(&group, &[&topic]).await.unwrap();
        assert_eq!(next(&mut again).await.payload, b"three".to_vec());
    }

    /// A consumer waiting while its broker stalls keeps waiting (retrying
    /// inside `next()` whatever fails meanwhile) and receives what is
    /// produced once the broker is back.
    ///
    /// The stall is shorter than the 6 s session timeout on purpose: after a
    /// longer one the client rejoins under a new member ID, and tansu 0.6
    /// keeps the expired member as the group's leader forever, so nobody gets
    /// the partition again (Kafka expires it). That is the test broker's bug,
    /// not something a client can work around.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_survives_a_broker_stall() {
        crate::fixture::run(consumer_through_stall()).await;
    }

    async fn consumer_through_stall() {
        let mut fixture = Fixture::kafka().await;
        let log = fixture.log();
        let topic = fixture.name("outage");
        log.ensure_topic(&topic, 1).await.unwrap();
        log.produce(&topic, record("before")).await.unwrap();
        let mut consumer = log
            .consumer(&fixture.name("group"), &[&topic])
            .await
            .unwrap();
        let received = next(&mut consumer).await;
        assert_eq!(received.payload, b"before");
        consumer.commit(&received).await.unwrap();

        let waiting = tokio::spawn(async move {
            let received = consumer.next().await;
            (consumer, received)
        });
        fixture.freeze_broker(true);
        // The stall itself.
        tokio::time::sleep(Duration::from_secs(4)).await;
        fixture.freeze_broker(false);
        produce_eventually(&*log, &topic, "after").await;

        let (mut consumer, received) = tokio::time::timeout(DEADLINE, waiting)
            .await
            .expect("the waiting consumer got nothing after the stall")
            .unwrap();
        let received = received.unwrap();
        assert_eq!(received.payload, b"after");
        consumer.commit(&received).await.unwrap();
    }
}
