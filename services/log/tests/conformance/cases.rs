//! The semantics every producer and consumer of the log relies on
//! (docs/architecture.md, "The log"), one function per promise, each run against both logs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ganglion_log::{Consumer, OutgoingRecord, Position, Record, partition_for_key};
use tokio::sync::{mpsc, watch};

use crate::fixture::{DEADLINE, Fixture, await_assignment, next};

fn record(key: &str, payload: impl Into<String>) -> OutgoingRecord {
    OutgoingRecord {
        key: key.as_bytes().to_vec(),
        headers: Vec::new(),
        payload: payload.into().into_bytes(),
    }
}

fn payload(record: &Record) -> String {
    String::from_utf8(record.payload.clone()).unwrap()
}

/// Records with one key land on one partition, the same partition in both
/// implementations, and come out in the order they went in.
pub async fn order_is_kept_per_key(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("order");
    log.ensure_topic(&topic, 4).await.unwrap();
    let keys = [
        "!a:example.org",
        "!b:example.org",
        "!c:example.org",
        "@d:example.org",
    ];
    let mut positions = HashMap::new();
    for i in 0..25 {
        for key in keys {
            let sent = format!("{key}/{i}");
            let position = log.produce(&topic, record(key, &sent)).await.unwrap();
            assert_eq!(position.partition, partition_for_key(key.as_bytes(), 4));
            positions.insert(sent, position);
        }
    }

    let mut consumer = log
        .consumer(&fixture.name("group"), &[&topic])
        .await
        .unwrap();
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for _ in 0..positions.len() {
        let received = next(&mut consumer).await;
        let text = payload(&received);
        assert_eq!(Some(&received.position()), positions.get(&text), "{text}");
        let (key, i) = text.split_once('/').unwrap();
        assert_eq!(received.key, key.as_bytes());
        seen.entry(key.to_owned())
            .or_default()
            .push(i.parse().unwrap());
    }
    for key in keys {
        assert_eq!(seen[key], (0..25).collect::<Vec<_>>(), "order of {key}");
    }
}

/// A consumer that restarts (with the log itself restarted) resumes after the
/// last record it committed; what it read but did not commit comes again.
pub async fn consumers_resume_at_the_committed_offset(fixture: &mut Fixture) {
    let topic = fixture.name("resume");
    let group = fixture.name("group");
    {
        let log = fixture.log();
        log.ensure_topic(&topic, 2).await.unwrap();
        for i in 0..10 {
            log.produce(&topic, record("!room:example.org", i.to_string()))
                .await
                .unwrap();
        }
        let mut consumer = log.consumer(&group, &[&topic]).await.unwrap();
        for i in 0..5 {
            let received = next(&mut consumer).await;
            assert_eq!(payload(&received), i.to_string());
            consumer.commit(&received).await.unwrap();
        }
        // Read, then "crash" before committing.
        assert_eq!(payload(&next(&mut consumer).await), "5");
    }
    fixture.restart().await;

    let log = fixture.log();
    log.produce(&topic, record("!room:example.org", "10"))
        .await
        .unwrap();
    let mut consumer = log.consumer(&group, &[&topic]).await.unwrap();
    for i in 5..=10 {
        let received = next(&mut consumer).await;
        assert_eq!(payload(&received), i.to_string());
        consumer.commit(&received).await.unwrap();
    }
    let partition = partition_for_key(b"!room:example.org", 2) as usize;
    assert_eq!(log.end_offsets(&topic).await.unwrap()[partition], 11);
}

/// Two members of one group split the partitions between them; together
/// they see every record exactly once, and their commits count for the group.
pub async fn group_members_share_partitions(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("shared");
    let group = fixture.name("group");
    log.ensure_topic(&topic, 4).await.unwrap();
    let mut first = log.consumer(&group, &[&topic]).await.unwrap();
    let mut second = log.consumer(&group, &[&topic]).await.unwrap();
    await_assignment(&mut [&mut first, &mut second], |assignments| {
        let all: BTreeSet<_> = assignments.iter().flatten().collect();
        assignments.iter().all(|a| !a.is_empty())
            && all.len() == 4
            && assignments.iter().map(Vec::len).sum::<usize>() == 4
    })
    .await;

    let keys: Vec<String> = (0..40).map(|i| format!("@user{i}:example.org")).collect();
    let used: BTreeSet<u32> = keys
        .iter()
        .map(|key| partition_for_key(key.as_bytes(), 4))
        .collect();
    assert_eq!(used.len(), 4, "the keys must cover every partition");
    for key in &keys {
        log.produce(&topic, record(key, key.clone())).await.unwrap();
    }

    let (received_tx, mut received) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let members: Vec<_> = [first, second]
        .into_iter()
        .enumerate()
        .map(|(member, consumer)| {
            tokio::spawn(consume_until_stopped(
                member,
                consumer,
                received_tx.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    let mut by_member: [BTreeSet<String>; 2] = Default::default();
    let mut total = 0;
    while total < keys.len() {
        let (member, text) = tokio::time::timeout(DEADLINE, received.recv())
            .await
            .expect("the members stopped receiving records")
            .unwrap();
        let fresh = !by_member.iter().any(|seen| seen.contains(&text));
        assert!(fresh, "{text} was delivered twice");
        by_member[member].insert(text);
        total += 1;
    }
    stop.send(true).unwrap();
    for (member, task) in members.into_iter().enumerate() {
        let consumer = task.await.unwrap();
        assert!(
            !by_member[member].is_empty(),
            "member {member} received nothing"
        );
        drop(consumer);
    }

    // Both members committed everything: a newcomer sees only new records.
    let mut newcomer = log.consumer(&group, &[&topic]).await.unwrap();
    log.produce(&topic, record("@late:example.org", "late"))
        .await
        .unwrap();
    assert_eq!(payload(&next(&mut newcomer).await), "late");
}

/// Reads and commits records until told to stop, reporting each as
/// (member, payload) and checking it came from a partition the member holds.
async fn consume_until_stopped(
    member: usize,
    mut consumer: Box<dyn Consumer>,
    received: mpsc::UnboundedSender<(usize, String)>,
    mut stopped: watch::Receiver<bool>,
) -> Box<dyn Consumer> {
    loop {
        tokio::select! {
            _ = stopped.changed() => return consumer,
            record = consumer.next() => {
                let record = record.unwrap();
                let partition = (record.topic.clone(), record.partition);
                assert!(
                    consumer.assignment().contains(&partition),
                    "got {partition:?}, not in {:?}",
                    consumer.assignment()
                );
                consumer.commit(&record).await.unwrap();
                let _ = received.send((member, payload(&record)));
            }
        }
    }
}

/// When a member leaves, another takes its partitions over from the last
/// commit: what the leaver read without committing is delivered again, what
/// the remaining member already read of its own partitions is not.
pub async fn a_leavers_partitions_resume_at_its_last_commit(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("handover");
    let group = fixture.name("group");
    log.ensure_topic(&topic, 2).await.unwrap();
    let mut stayer = log.consumer(&group, &[&topic]).await.unwrap();
    let mut leaver = log.consumer(&group, &[&topic]).await.unwrap();
    await_assignment(&mut [&mut stayer, &mut leaver], |assignments| {
        assignments.iter().all(|a| a.len() == 1) && assignments[0] != assignments[1]
    })
    .await;
    // One key per partition.
    let key_for = |partition: u32| {
        (0..)
            .map(|i| format!("!room{i}:example.org"))
            .find(|key| partition_for_key(key.as_bytes(), 2) == partition)
            .unwrap()
    };
    let stayer_key = key_for(stayer.assignment()[0].1);
    let leaver_key = key_for(leaver.assignment()[0].1);
    for i in 0..4 {
        for key in [&stayer_key, &leaver_key] {
            log.produce(&topic, record(key, format!("{key}/{i}")))
                .await
                .unwrap();
        }
    }
    for (consumer, key) in [(&mut stayer, &stayer_key), (&mut leaver, &leaver_key)] {
        for i in 0..4 {
            let received = next(consumer).await;
            assert_eq!(payload(&received), format!("{key}/{i}"));
            if i < 2 {
                consumer.commit(&received).await.unwrap();
            }
        }
    }
    drop(leaver);

    for i in 2..4 {
        let received = next(&mut stayer).await;
        assert_eq!(payload(&received), format!("{leaver_key}/{i}"));
        stayer.commit(&received).await.unwrap();
    }
    assert_eq!(stayer.assignment().len(), 2);
}

/// A group that has never committed starts at the beginning of the log, no
/// matter how far other groups got.
pub async fn a_new_group_replays_from_the_start(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("replay");
    log.ensure_topic(&topic, 2).await.unwrap();
    let sent: BTreeSet<String> = (0..10).map(|i| format!("record {i}")).collect();
    for (i, text) in sent.iter().enumerate() {
        log.produce(&topic, record(&format!("key{i}"), text.clone()))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let mut consumer = log
            .consumer(&fixture.name("group"), &[&topic])
            .await
            .unwrap();
        let mut received = BTreeSet::new();
        for _ in 0..sent.len() {
            let record = next(&mut consumer).await;
            consumer.commit(&record).await.unwrap();
            received.insert(payload(&record));
        }
        assert_eq!(received, sent);
    }
}

/// Headers (order, duplicates and empty values included), key, payload and
/// timestamp reach the consumer as produced.
pub async fn headers_travel_with_their_record(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("headers");
    log.ensure_topic(&topic, 1).await.unwrap();
    let sent = OutgoingRecord {
        key: b"!room:example.org".to_vec(),
        headers: vec![
            (
                "traceparent".to_owned(),
                b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec(),
            ),
            ("empty".to_owned(), Vec::new()),
            ("twice".to_owned(), b"1".to_vec()),
            ("twice".to_owned(), vec![0, 255, 7]),
        ],
        payload: br#"{"type":"m.room.message"}"#.to_vec(),
    };
    let before = now_ms();
    let position = log.produce(&topic, sent.clone()).await.unwrap();
    let mut consumer = log
        .consumer(&fixture.name("group"), &[&topic])
        .await
        .unwrap();
    let received = next(&mut consumer).await;
    assert_eq!(received.position(), position);
    assert_eq!(received.key, sent.key);
    assert_eq!(received.headers, sent.headers);
    assert_eq!(received.payload, sent.payload);
    assert_eq!(received.header("twice"), Some(&b"1"[..]));
    let skew = 60_000;
    assert!(
        (before - skew..now_ms() + skew).contains(&received.timestamp_ms),
        "timestamp {} is not about now",
        received.timestamp_ms
    );
}

/// A consumer waiting for records is woken by an append, again and again.
pub async fn a_waiting_consumer_wakes_on_append(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("wake");
    log.ensure_topic(&topic, 1).await.unwrap();
    let mut consumer = log
        .consumer(&fixture.name("group"), &[&topic])
        .await
        .unwrap();
    await_assignment(&mut [&mut consumer], |assignments| {
        assignments[0].len() == 1
    })
    .await;
    for i in 0..3 {
        let waiting = tokio::spawn(async move {
            let received = consumer.next().await.unwrap();
            (consumer, received)
        });
        let position = log
            .produce(&topic, record("!room:example.org", i.to_string()))
            .await
            .unwrap();
        let (returned, received) = tokio::time::timeout(DEADLINE, waiting)
            .await
            .expect("the waiting consumer was not woken")
            .unwrap();
        consumer = returned;
        assert_eq!(received.position(), position);
        assert_eq!(payload(&received), i.to_string());
    }
}

/// `end_offsets` counts each partition's records; `ensure_topic` leaves an
/// existing topic as it is.
pub async fn end_offsets_are_high_watermarks(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("watermarks");
    log.ensure_topic(&topic, 3).await.unwrap();
    log.ensure_topic(&topic, 3).await.unwrap();
    log.ensure_topic(&topic, 5).await.unwrap();
    assert_eq!(log.end_offsets(&topic).await.unwrap(), vec![0, 0, 0]);
    let mut expected = vec![0; 3];
    for i in 0..12 {
        let key = format!("@u{i}:example.org");
        let Position { partition, offset } = log.produce(&topic, record(&key, "x")).await.unwrap();
        assert_eq!(offset, expected[partition as usize]);
        expected[partition as usize] += 1;
    }
    assert_eq!(log.end_offsets(&topic).await.unwrap(), expected);
}

fn now_ms() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(elapsed.as_millis()).unwrap()
}

/// A reader takes every partition from the offsets it is given, with no
/// group: two readers from different positions each see exactly their
/// suffix of every partition, in order, and later appends wake them.
pub async fn a_reader_starts_at_given_offsets(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("reader");
    log.ensure_topic(&topic, 2).await.unwrap();
    let mut positions: Vec<Position> = Vec::new();
    for i in 0..10 {
        let position = log
            .produce(&topic, record(&format!("key{i}"), format!("record {i}")))
            .await
            .unwrap();
        positions.push(position);
    }
    let ends = log.end_offsets(&topic).await.unwrap();
    assert_eq!(ends.iter().sum::<u64>(), 10);
    // From the start: everything.
    let mut all = log.reader(&[(&topic, vec![0, 0])]).await.unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        let record = next(&mut all).await;
        all.commit(&record).await.unwrap();
        seen.insert(payload(&record));
    }
    assert_eq!(seen.len(), 10);
    // From the middle of each partition: only what comes after.
    let starts: Vec<u64> = ends.iter().map(|end| end / 2).collect();
    let expected: BTreeSet<String> = positions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.offset >= starts[p.partition as usize])
        .map(|(i, _)| format!("record {i}"))
        .collect();
    let mut suffix = log.reader(&[(&topic, starts.clone())]).await.unwrap();
    let mut got = BTreeSet::new();
    let mut last: HashMap<u32, u64> = HashMap::new();
    for _ in 0..expected.len() {
        let record = next(&mut suffix).await;
        assert!(record.offset >= starts[record.partition as usize]);
        if let Some(previous) = last.insert(record.partition, record.offset) {
            assert!(record.offset > previous, "in order per partition");
        }
        got.insert(payload(&record));
    }
    assert_eq!(got, expected);
    // A later append reaches a waiting reader.
    log.produce(&topic, record("key-late", "late".to_owned()))
        .await
        .unwrap();
    assert_eq!(payload(&next(&mut suffix).await), "late");
    let mut all_partitions = suffix.assignment();
    all_partitions.sort();
    assert_eq!(all_partitions, vec![(topic.clone(), 0), (topic.clone(), 1)]);
}

/// A group's committed offsets can be read without joining it: `None` where
/// it committed nothing, the next offset where it did, for any group name.
pub async fn committed_offsets_are_read_without_joining(fixture: &mut Fixture) {
    let topic = fixture.name("committed");
    let group = fixture.name("group");
    let log = fixture.log();
    log.ensure_topic(&topic, 2).await.unwrap();
    for i in 0..4 {
        log.produce(&topic, record("!room:example.org", i.to_string()))
            .await
            .unwrap();
    }
    let partition = partition_for_key(b"!room:example.org", 2) as usize;
    assert_eq!(
        log.committed_offsets(&group, &topic).await.unwrap(),
        vec![None, None]
    );
    {
        let mut consumer = log.consumer(&group, &[&topic]).await.unwrap();
        for _ in 0..3 {
            let received = next(&mut consumer).await;
            consumer.commit(&received).await.unwrap();
        }
    }
    let mut expected = vec![None, None];
    expected[partition] = Some(3);
    assert_eq!(
        log.committed_offsets(&group, &topic).await.unwrap(),
        expected
    );
    // Asking did not join: a member of the group still gets every partition
    // at once, and resumes where the group stopped.
    let mut consumer = log.consumer(&group, &[&topic]).await.unwrap();
    assert_eq!(payload(&next(&mut consumer).await), "3");
    assert!(
        log.committed_offsets(&fixture.name("other"), &topic)
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
}

/// After `next`, `try_next` hands over what has already arrived without
/// waiting (and says so when nothing has); one `commit_all` of the last
/// record of each partition counts for the group as separate commits would.
pub async fn batches_are_taken_and_committed_together(fixture: &mut Fixture) {
    let topic = fixture.name("batch");
    let group = fixture.name("group");
    let keys = ["!a:example.org", "!b:example.org", "!c:example.org"];
    let log = fixture.log();
    log.ensure_topic(&topic, 4).await.unwrap();
    let mut sent = BTreeSet::new();
    for i in 0..30 {
        let key = keys[i % keys.len()];
        let text = format!("{key}/{i}");
        log.produce(&topic, record(key, &text)).await.unwrap();
        sent.insert(text);
    }
    let mut consumer = log.consumer(&group, &[&topic]).await.unwrap();
    let mut taken = vec![next(&mut consumer).await];
    let deadline = std::time::Instant::now() + DEADLINE;
    // A broker hands records over as its fetches arrive: keep taking
    // until all are here.
    while taken.len() < sent.len() {
        assert!(std::time::Instant::now() < deadline, "try_next stalled");
        match consumer.try_next().await.unwrap() {
            Some(record) => taken.push(record),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let started = std::time::Instant::now();
    assert!(consumer.try_next().await.unwrap().is_none());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "try_next waited for a record"
    );
    let got: BTreeSet<String> = taken.iter().map(payload).collect();
    assert_eq!(got, sent);
    // Per partition, in order.
    let mut last: HashMap<u32, &Record> = HashMap::new();
    for record in &taken {
        if let Some(before) = last.insert(record.partition, record) {
            assert!(before.offset < record.offset);
        }
    }
    let lasts: Vec<&Record> = last.values().copied().collect();
    assert!(lasts.len() > 1, "the keys spread over partitions");
    consumer.commit_all(&lasts).await.unwrap();
    drop(consumer);
    let committed = log.committed_offsets(&group, &topic).await.unwrap();
    for record in &lasts {
        assert_eq!(
            committed[record.partition as usize],
            Some(record.offset + 1),
            "partition {}",
            record.partition
        );
    }
    // The group resumes after the batch.
    log.produce(&topic, record(keys[0], "after")).await.unwrap();
    let mut consumer = log.consumer(&group, &[&topic]).await.unwrap();
    assert_eq!(payload(&next(&mut consumer).await), "after");
}

/// Records produced together land as if produced one by one: each key's
/// records on its partition in the order given, each at the position
/// returned, with its headers.
pub async fn records_produced_together_keep_their_order_and_positions(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.name("many");
    log.ensure_topic(&topic, 4).await.unwrap();
    let keys = ["!a:example.org", "!b:example.org", "!c:example.org"];
    // A first record alone, so positions do not all start at zero.
    log.produce(&topic, record(keys[0], "alone")).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..40 {
        let key = keys[i % keys.len()];
        let mut outgoing = record(key, format!("{key}/{i}"));
        outgoing.headers = vec![("n".to_owned(), i.to_string().into_bytes())];
        batch.push(outgoing);
    }
    let texts: Vec<String> = batch
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    let positions = log.produce_many(&topic, batch).await.unwrap();
    assert_eq!(positions.len(), texts.len());
    // Each key's positions grow in the order given, on the key's partition.
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (text, position) in texts.iter().zip(&positions) {
        let key = text.split_once('/').unwrap().0;
        assert_eq!(position.partition, partition_for_key(key.as_bytes(), 4));
        if let Some(before) = last.insert(position.partition, position.offset) {
            assert!(position.offset > before, "{text} after the one before it");
        }
    }
    assert!(
        log.produce_many(&topic, Vec::new())
            .await
            .unwrap()
            .is_empty(),
        "nothing to produce is no error"
    );

    let mut reader = log.reader(&[(&topic, vec![0; 4])]).await.unwrap();
    let mut found: HashMap<String, Record> = HashMap::new();
    for _ in 0..=texts.len() {
        let received = next(&mut reader).await;
        found.insert(payload(&received), received);
    }
    for (i, (text, position)) in texts.iter().zip(&positions).enumerate() {
        let received = &found[text];
        assert_eq!(&received.position(), position, "{text}");
        assert_eq!(received.header("n"), Some(i.to_string().as_bytes()));
    }
}
