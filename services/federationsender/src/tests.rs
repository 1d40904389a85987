//! The federationsender's storage against both database engines.

use crate::storage::{MemberChange, Storage};

fn join(user: &str) -> MemberChange {
    MemberChange {
        user_id: user.into(),
        joined: true,
    }
}

fn leave(user: &str) -> MemberChange {
    MemberChange {
        user_id: user.into(),
        joined: false,
    }
}

/// A storage on a fresh database (SQLite, or PostgreSQL at `database_url`).
async fn scratch(database_url: Option<String>) -> (Storage, tempfile::TempDir) {
    let (db, dir) = ganglion_base::testing::open_scratch(
        "federationsender",
        crate::storage::MIGRATIONS,
        database_url,
    )
    .await;
    (Storage { db }, dir)
}

async fn queues_follow_membership(database_url: Option<String>) {
    let (storage, _dir) = scratch(database_url).await;
    let own = "ours.example";
    // Our user creates the room: nobody else to send to.
    let sent = storage
        .apply_event(
            None,
            "!r",
            &[join("@a:ours.example")],
            Some(("$1", "{\"n\":1}")),
            None,
            own,
        )
        .await
        .expect("apply")
        .expect("applied");
    assert!(sent.is_empty());
    // A remote join (not ours to send), then our message goes to them.
    storage
        .apply_event(None, "!r", &[join("@b:them.example")], None, None, own)
        .await
        .expect("apply")
        .expect("applied");
    let sent = storage
        .apply_event(None, "!r", &[], Some(("$2", "{\"n\":2}")), None, own)
        .await
        .expect("apply")
        .expect("applied");
    assert_eq!(sent, ["them.example"]);
    // Redelivered: queued once.
    storage
        .apply_event(None, "!r", &[], Some(("$2", "{\"n\":2}")), None, own)
        .await
        .expect("apply")
        .expect("applied");
    // An invite reaches the invitee's server though it is not in the room.
    let sent = storage
        .apply_event(
            None,
            "!r",
            &[leave("@c:third.example")],
            Some(("$3", "{\"n\":3}")),
            Some("third.example"),
            own,
        )
        .await
        .expect("apply")
        .expect("applied");
    assert_eq!(sent, ["them.example", "third.example"]);
    // A kick reaches the kicked user's server, then nothing more does.
    let sent = storage
        .apply_event(
            None,
            "!r",
            &[leave("@b:them.example")],
            Some(("$4", "{\"n\":4}")),
            Some("them.example"),
            own,
        )
        .await
        .expect("apply")
        .expect("applied");
    assert_eq!(sent, ["them.example"]);
    let sent = storage
        .apply_event(None, "!r", &[], Some(("$5", "{\"n\":5}")), None, own)
        .await
        .expect("apply")
        .expect("applied");
    assert!(sent.is_empty());

    let queued = storage.queued("them.example", 50).await.expect("queued");
    let bodies: Vec<&str> = queued.iter().map(|q| q.json.as_str()).collect();
    assert_eq!(bodies, ["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]);
    assert_eq!(
        storage
            .unleased_destinations_with_work(0)
            .await
            .expect("work")
            .len(),
        2
    );
    // Leases: one replica at a time per destination; renewed by its
    // holder, taken over once expired, free again once released. A leased
    // destination is not swept.
    assert!(
        storage
            .claim_lease("them.example", "a", 1_000, 61_000)
            .await
            .expect("claim")
    );
    assert!(
        !storage
            .claim_lease("them.example", "b", 2_000, 62_000)
            .await
            .expect("claim")
    );
    assert!(
        storage
            .claim_lease("them.example", "a", 30_000, 90_000)
            .await
            .expect("renew")
    );
    assert_eq!(
        storage
            .unleased_destinations_with_work(40_000)
            .await
            .expect("work")
            .len(),
        1,
        "them.example is held"
    );
    assert!(
        !storage
            .claim_lease("them.example", "b", 89_000, 149_000)
            .await
            .expect("claim")
    );
    assert!(
        storage
            .claim_lease("them.example", "b", 91_000, 151_000)
            .await
            .expect("expired")
    );
    assert!(
        !storage
            .claim_lease("them.example", "a", 92_000, 152_000)
            .await
            .expect("lost")
    );
    storage
        .release_lease("them.example", "a")
        .await
        .expect("not held: nothing");
    assert!(
        !storage
            .claim_lease("them.example", "a", 93_000, 153_000)
            .await
            .expect("claim")
    );
    storage
        .release_lease("them.example", "b")
        .await
        .expect("release");
    assert!(
        storage
            .claim_lease("them.example", "a", 94_000, 154_000)
            .await
            .expect("free")
    );
    storage
        .release_lease("them.example", "a")
        .await
        .expect("release");
    // Failures count up; delivery clears them and the queue.
    let until = storage
        .failed("them.example", 100, 123)
        .await
        .expect("failed");
    assert_eq!(until, 1);
    assert_eq!(
        storage
            .failed("them.example", 100, 456)
            .await
            .expect("failed"),
        2
    );
    assert_eq!(
        storage.retry_state("them.example").await.expect("state"),
        (2, 456)
    );
    storage
        .delivered("them.example", Some(queued[1].id), None)
        .await
        .expect("delivered");
    let left = storage.queued("them.example", 50).await.expect("queued");
    assert_eq!(left.len(), 1);
    assert_eq!(
        storage.retry_state("them.example").await.expect("state"),
        (0, 0)
    );

    // A destination failing since long ago has its queue dropped; one
    // failing since recently keeps it.
    storage
        .failed("them.example", 1_000, 2_000)
        .await
        .expect("failed");
    assert_eq!(
        storage.prune_dead_destinations(1_000).await.expect("prune"),
        0
    );
    assert_eq!(
        storage.prune_dead_destinations(1_001).await.expect("prune"),
        1
    );
    assert!(
        storage
            .queued("them.example", 50)
            .await
            .expect("queued")
            .is_empty()
    );
    assert_eq!(
        storage.retry_state("them.example").await.expect("state").0,
        1,
        "still tried"
    );
}

/// A record is applied once, whichever replica (or rebuild) comes to it:
/// its place in the log is stored with the joined hosts.
async fn records_are_applied_once(database_url: Option<String>) {
    let (storage, _dir) = scratch(database_url).await;
    let own = "ours.example";
    let apply = |at: (u32, u64), user: &'static str| {
        let storage = storage.clone();
        async move {
            storage
                .apply_event(Some(at), "!r", &[join(user)], Some(("$e", "{}")), None, own)
                .await
                .expect("apply")
        }
    };
    assert!(apply((0, 5), "@b:them.example").await.is_some());
    assert!(apply((0, 5), "@c:third.example").await.is_none(), "again");
    assert!(apply((0, 3), "@c:third.example").await.is_none(), "earlier");
    assert!(
        apply((1, 0), "@c:third.example").await.is_some(),
        "elsewhere"
    );
    let mut hosts = storage.joined_hosts("!r").await.expect("hosts");
    hosts.sort();
    assert_eq!(hosts, ["them.example", "third.example"]);
    let mut positions = storage.output_positions().await.expect("positions");
    positions.sort();
    assert_eq!(positions, [(0, 6), (1, 1)]);
    // Positions only move forward.
    storage
        .advance_positions(&[2, 9, 4])
        .await
        .expect("advance");
    let mut positions = storage.output_positions().await.expect("positions");
    positions.sort();
    assert_eq!(positions, [(0, 6), (1, 9), (2, 4)]);
}

/// A batch of records in one transaction behaves as the records one by
/// one: a room's servers as each event leaves them (a join in the middle
/// of the batch reaches the events after it, a kick still reaches the one
/// kicked), each destination's queue in log order, a record repeated in
/// the batch or applied before changes nothing.
async fn a_batch_applies_as_its_records_one_by_one(database_url: Option<String>) {
    let (storage, _dir) = scratch(database_url).await;
    let own = "ours.example";
    let event = |at: (u32, u64), room: &str, changes: Vec<MemberChange>, n: Option<u32>| {
        crate::storage::OutputEvent {
            at: Some(at),
            room_id: room.to_owned(),
            changes,
            pdu: n.map(|n| (format!("${n}"), format!("{{\"n\":{n}}}"))),
            also: None,
        }
    };
    // Applied before the batch: a remote member in room one.
    storage
        .apply_event(
            Some((0, 0)),
            "!one",
            &[join("@b:them.example")],
            None,
            None,
            own,
        )
        .await
        .expect("apply")
        .expect("applied");
    let batch = vec![
        event((0, 0), "!one", vec![join("@x:never.example")], Some(100)),
        event((0, 1), "!one", vec![join("@a:ours.example")], Some(1)),
        event((1, 0), "!two", vec![join("@a:ours.example")], Some(2)),
        event((1, 1), "!two", vec![join("@c:third.example")], None),
        event((1, 2), "!two", vec![], Some(3)),
        event((0, 2), "!one", vec![], Some(4)),
        event((0, 2), "!one", vec![], Some(4)),
        event((0, 3), "!one", vec![leave("@b:them.example")], Some(5)),
        event((0, 4), "!one", vec![], Some(6)),
        event((1, 3), "!two", vec![], Some(7)),
    ];
    let applied = storage.apply_events(&batch, own).await.expect("batch");
    assert_eq!(
        applied,
        crate::storage::Applied {
            applied: vec![false, true, true, true, true, true, false, true, true, true],
            destinations: vec!["them.example".to_owned(), "third.example".to_owned()],
            queued: 5,
        }
    );
    let ids = |queued: Vec<crate::storage::QueuedPdu>| -> Vec<String> {
        queued.into_iter().map(|q| q.json).collect()
    };
    assert_eq!(
        ids(storage.queued("them.example", 50).await.expect("queued")),
        ["{\"n\":1}", "{\"n\":4}", "{\"n\":5}"]
    );
    assert_eq!(
        ids(storage.queued("third.example", 50).await.expect("queued")),
        ["{\"n\":3}", "{\"n\":7}"]
    );
    assert!(
        storage
            .queued("never.example", 50)
            .await
            .expect("queued")
            .is_empty()
    );
    let mut positions = storage.output_positions().await.expect("positions");
    positions.sort();
    assert_eq!(positions, [(0, 5), (1, 4)]);
    // The same batch again (a redelivery after a crash): nothing changes.
    let again = storage.apply_events(&batch, own).await.expect("again");
    assert!(again.applied.iter().all(|applied| !applied));
    assert!(again.destinations.is_empty());
    assert_eq!(storage.queue_depth("them.example").await.expect("depth"), 3);
    assert_eq!(
        storage.joined_hosts("!one").await.expect("hosts"),
        ["ours.example"]
    );
}

/// A batch that queues more PDUs than it keeps in memory writes them as
/// it goes, each destination's in log order.
async fn a_large_batch_queues_in_order(database_url: Option<String>) {
    let (storage, _dir) = scratch(database_url).await;
    let own = "ours.example";
    let servers: Vec<String> = (0..50).map(|n| format!("s{n}.example")).collect();
    let mut batch = vec![crate::storage::OutputEvent {
        at: Some((0, 0)),
        room_id: "!big".to_owned(),
        changes: servers.iter().map(|s| join(&format!("@u:{s}"))).collect(),
        pdu: None,
        also: None,
    }];
    for n in 1..=100u64 {
        batch.push(crate::storage::OutputEvent {
            at: Some((0, n)),
            room_id: "!big".to_owned(),
            changes: Vec::new(),
            pdu: Some((format!("${n}"), n.to_string())),
            also: None,
        });
    }
    let applied = storage.apply_events(&batch, own).await.expect("batch");
    assert_eq!(applied.queued, 5_000);
    assert_eq!(applied.destinations.len(), 50);
    for server in [&servers[0], &servers[49]] {
        let queued = storage.queued(server, 500).await.expect("queued");
        let order: Vec<String> = queued.into_iter().map(|q| q.json).collect();
        let expected: Vec<String> = (1..=100).map(|n: u64| n.to_string()).collect();
        assert_eq!(order, expected);
    }
}

#[tokio::test]
async fn sqlite_a_large_batch_queues_in_order() {
    a_large_batch_queues_in_order(None).await;
}

#[tokio::test]
async fn postgres_a_large_batch_queues_in_order() {
    a_large_batch_queues_in_order(Some(
        ganglion_base::testing::scratch_postgres("federationsender").await,
    ))
    .await;
}

#[tokio::test]
async fn sqlite_a_batch_applies_as_its_records_one_by_one() {
    a_batch_applies_as_its_records_one_by_one(None).await;
}

#[tokio::test]
async fn postgres_a_batch_applies_as_its_records_one_by_one() {
    a_batch_applies_as_its_records_one_by_one(Some(
        ganglion_base::testing::scratch_postgres("federationsender").await,
    ))
    .await;
}

#[tokio::test]
async fn sqlite_records_are_applied_once() {
    records_are_applied_once(None).await;
}

#[tokio::test]
async fn postgres_records_are_applied_once() {
    records_are_applied_once(Some(
        ganglion_base::testing::scratch_postgres("federationsender").await,
    ))
    .await;
}

#[tokio::test]
async fn sqlite_queues_follow_membership() {
    queues_follow_membership(None).await;
}

#[tokio::test]
async fn postgres_queues_follow_membership() {
    queues_follow_membership(Some(
        ganglion_base::testing::scratch_postgres("federationsender").await,
    ))
    .await;
}

#[test]
fn to_device_messages_of_local_senders_go_to_the_recipients_server() {
    use crate::consumers::edus::to_device_edu;
    use ganglion_api::proto::topics as topic_pb;
    let message = |sender: &str, recipient: &str| topic_pb::ToDeviceEdu {
        version: 1,
        sender: sender.into(),
        recipient: recipient.into(),
        event_type: "m.room.encrypted".into(),
        message_id: "f".repeat(64),
        messages: vec![
            topic_pb::DeviceMessage {
                device_id: "*".into(),
                content_json: br#"{"a":1}"#.to_vec(),
            },
            topic_pb::DeviceMessage {
                device_id: "D".into(),
                content_json: br#"{"b":2}"#.to_vec(),
            },
        ],
    };
    let (destination, edu) =
        to_device_edu("ours", &message("@s:ours", "@r:theirs")).expect("an EDU");
    assert_eq!(destination, "theirs");
    assert_eq!(edu["edu_type"], "m.direct_to_device");
    let content = &edu["content"];
    assert_eq!(content["sender"], "@s:ours");
    assert_eq!(content["type"], "m.room.encrypted");
    assert_eq!(content["messages"]["@r:theirs"]["*"]["a"], 1);
    assert_eq!(content["messages"]["@r:theirs"]["D"]["b"], 2);
    let id = content["message_id"].as_str().expect("message_id");
    assert_eq!(id.chars().count(), 32, "the spec's maximum");
    // Another recipient of the same send: another ID.
    let (_, other) = to_device_edu("ours", &message("@s:ours", "@q:theirs")).expect("an EDU");
    assert_ne!(other["content"]["message_id"], id);
    // Not ours to send: a remote sender, or a local recipient.
    assert!(to_device_edu("ours", &message("@s:theirs", "@r:other")).is_none());
    assert!(to_device_edu("ours", &message("@s:ours", "@r:ours")).is_none());
}

/// A `roomserver.output` record: `user` takes `membership` in `room`.
fn membership_record(
    room: &str,
    user: &str,
    membership: &str,
    n: usize,
) -> ganglion_log::OutgoingRecord {
    use ganglion_api::proto::topics as topic_pb;
    let pdu = serde_json::json!({
        "room_id": room,
        "sender": user,
        "type": "m.room.member",
        "state_key": user,
        "content": {"membership": membership},
    });
    let output = topic_pb::RoomserverOutput {
        version: 1,
        kind: Some(topic_pb::roomserver_output::Kind::NewRoomEvent(
            topic_pb::NewRoomEvent {
                event_json: pdu.to_string().into_bytes(),
                event_id: format!("$m{n}"),
                state_added: vec![topic_pb::StateEntry {
                    event_type: "m.room.member".into(),
                    state_key: user.into(),
                    event_id: format!("$m{n}"),
                    membership: membership.into(),
                }],
                ..Default::default()
            },
        )),
    };
    ganglion_log::OutgoingRecord {
        key: room.as_bytes().to_vec(),
        headers: Vec::new(),
        payload: ganglion_api::topics::encode(&output),
    }
}

/// Produces `count` membership changes over eight rooms (`first` a
/// multiple of three): two remote users join, then the first of them leaves.
async fn produce_memberships(log: &dyn ganglion_log::Log, topic: &str, first: usize, count: usize) {
    for n in first..first + count {
        let (who, membership) = if n % 3 == 2 {
            (n - 2, "leave")
        } else {
            (n, "join")
        };
        let room = format!("!r{}:ours.example", who % 8);
        let user = format!("@u{who}:s{}.example", who % 5);
        log.produce(topic, membership_record(&room, &user, membership, n))
            .await
            .expect("produce");
    }
}

/// Waits until `group` has committed every record of `topic`.
async fn until_consumed(log: &dyn ganglion_log::Log, group: &str, topic: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ends = log.end_offsets(topic).await.expect("ends");
        let committed = log
            .committed_offsets(group, topic)
            .await
            .expect("committed");
        if ends
            .iter()
            .zip(&committed)
            .all(|(end, committed)| *end == 0 || *committed == Some(*end))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{committed:?} of {ends:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `ganglion rebuild federationsender`: the joined hosts rebuilt into a
/// second database equal the live ones; switched to after the live group
/// went on, the rebuilt database first applies what the group handled in
/// between, and then stands where the group stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_view_equals_the_live_one_and_catches_up_when_switched_to() {
    use std::sync::Arc;

    use crate::consumers::roomserver_output::OutputConsumer;
    use ganglion_api::topics::Topics;
    use ganglion_base::Database;
    use ganglion_log::Log;

    let log_dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn Log> = Arc::new(ganglion_log::EmbeddedLog::open(log_dir.path()).expect("log"));
    let (live_config, _live_dir) = ganglion_base::testing::service_config("federationsender", None);
    let (rebuilt_config, _rebuilt_dir) =
        ganglion_base::testing::service_config("federationsender", None);
    let topic = Topics::new(&live_config.log.topic_prefix).roomserver_output;
    let group = format!("{}federationsender", live_config.log.topic_prefix);
    log.ensure_topic(&topic, live_config.log.partitions)
        .await
        .expect("topic");
    produce_memberships(log.as_ref(), &topic, 0, 300).await;

    let open = |config: &ganglion_base::Config| {
        let config = config.clone();
        async move {
            Storage {
                db: Database::open_for_service_one_writer(
                    &config,
                    "federationsender",
                    crate::storage::MIGRATIONS,
                )
                .await
                .expect("database"),
            }
        }
    };
    let live = open(&live_config).await;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let _consumer = ganglion_api::consume::spawn(
        log.clone(),
        &group,
        &[topic.as_str()],
        Arc::new(OutputConsumer::new(
            live.clone(),
            None,
            "ours.example".into(),
        )),
        shutdown,
    )
    .await
    .expect("consumer");
    until_consumed(log.as_ref(), &group, &topic).await;

    let rebuild = crate::rebuild(&rebuilt_config, log.clone())
        .await
        .expect("rebuild");
    let progress = rebuild.progress();
    assert_eq!(
        progress.iter().map(|(_, end)| end).sum::<u64>(),
        300,
        "where the live group stood when it began: {progress:?}"
    );
    rebuild.finish().await.expect("rebuilt");
    let rebuilt = open(&rebuilt_config).await;
    let members = live.joined_members().await.expect("members");
    assert_eq!(
        members.len(),
        100,
        "every user of the 200 who joined and did not leave"
    );
    assert_eq!(rebuilt.joined_members().await.expect("members"), members);
    let mut positions = rebuilt.output_positions().await.expect("positions");
    positions.sort();
    let ends = log.end_offsets(&topic).await.expect("ends");
    assert_eq!(
        positions.iter().map(|(_, next)| *next).collect::<Vec<_>>(),
        ends
    );
    assert!(
        rebuilt
            .queued("s1.example", 50)
            .await
            .expect("queued")
            .is_empty(),
        "history is not delivered again"
    );

    // The live group goes on while the operator prepares the switch.
    produce_memberships(log.as_ref(), &topic, 300, 90).await;
    until_consumed(log.as_ref(), &group, &topic).await;
    assert_ne!(
        rebuilt.joined_members().await.expect("members"),
        live.joined_members().await.expect("members")
    );

    crate::catch_up(&log, &rebuilt, &group, &topic, &rebuilt_config)
        .await
        .expect("caught up");
    assert_eq!(
        rebuilt.joined_members().await.expect("members"),
        live.joined_members().await.expect("members")
    );
    // Nothing left to apply: a second start reads nothing.
    let committed = log
        .committed_offsets(&group, &topic)
        .await
        .expect("committed");
    let mut positions = rebuilt.output_positions().await.expect("positions");
    positions.sort();
    for (partition, next) in positions {
        assert_eq!(
            committed[partition as usize],
            Some(next),
            "partition {partition}"
        );
    }
}

/// Whether events that change no membership would queue anything: only a
/// local event of a room where another server is joined does.
#[tokio::test]
async fn only_local_events_of_rooms_with_other_servers_queue() {
    let (storage, _dir) = scratch(None).await;
    let own = "ours.example";
    storage
        .apply_event(
            Some((0, 0)),
            "!mixed",
            &[join("@a:ours.example"), join("@b:them.example")],
            None,
            None,
            own,
        )
        .await
        .expect("apply");
    storage
        .apply_event(
            Some((0, 1)),
            "!ours",
            &[join("@a:ours.example")],
            None,
            None,
            own,
        )
        .await
        .expect("apply");
    let event = |room: &str, local: bool| crate::storage::OutputEvent {
        at: Some((0, 9)),
        room_id: room.to_owned(),
        changes: Vec::new(),
        pdu: local.then(|| ("$e".to_owned(), "{}".to_owned())),
        also: None,
    };
    let nothing = |events: Vec<crate::storage::OutputEvent>| {
        let storage = storage.clone();
        async move { storage.queues_nothing(&events, own).await.expect("read") }
    };
    assert!(nothing(vec![event("!ours", true), event("!unknown", true)]).await);
    assert!(
        nothing(vec![event("!mixed", false)]).await,
        "theirs to send"
    );
    assert!(!nothing(vec![event("!ours", true), event("!mixed", true)]).await);
}

/// Records that change nothing here take no transaction; their positions
/// are stored once a partition has taken a thousand of them, so a restart
/// takes at most that many again (to no effect).
#[tokio::test]
async fn records_without_effect_store_their_position_now_and_then() {
    use crate::consumers::roomserver_output::OutputConsumer;
    use ganglion_api::consume::RecordHandler;
    use ganglion_api::proto::topics as topic_pb;

    let (storage, _dir) = scratch(None).await;
    let consumer = OutputConsumer::new(storage.clone(), None, "ours.example".into());
    let message = |offset: u64| {
        let output = topic_pb::RoomserverOutput {
            version: 1,
            kind: Some(topic_pb::roomserver_output::Kind::NewRoomEvent(
                topic_pb::NewRoomEvent {
                    event_json: serde_json::json!({
                        "room_id": "!r:ours.example",
                        "sender": "@a:ours.example",
                        "type": "m.room.message",
                        "content": {"body": "hi"},
                    })
                    .to_string()
                    .into_bytes(),
                    event_id: format!("$m{offset}"),
                    ..Default::default()
                },
            )),
        };
        ganglion_log::Record {
            topic: "roomserver.output".into(),
            partition: 0,
            offset,
            key: Vec::new(),
            headers: Vec::new(),
            payload: ganglion_api::topics::encode(&output),
            timestamp_ms: 0,
        }
    };
    let records: Vec<_> = (0..2_500).map(message).collect();
    for batch in records[..999].chunks(100) {
        consumer.handle_batch(batch).await.expect("handled");
    }
    assert!(
        storage
            .output_positions()
            .await
            .expect("positions")
            .is_empty()
    );
    for batch in records[999..].chunks(100) {
        consumer.handle_batch(batch).await.expect("handled");
    }
    // Stored after the thousandth record and the two thousandth.
    assert_eq!(
        storage.output_positions().await.expect("positions"),
        [(0, 2_000)]
    );
}
