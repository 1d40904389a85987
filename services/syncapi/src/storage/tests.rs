//! The syncapi's tables against both database engines: one body per
//! behaviour, run once on SQLite and once on a scratch PostgreSQL database.

use super::{Batch, EventRow, HistoryEvent, MIGRATIONS, NewEvent, Storage, StorageError};
use crate::sync_token::Stream;
use ganglion_base::sql;

/// Each record's changes in a batch of its own, as the consumer applies
/// a record that arrives alone.
impl Storage {
    async fn apply_event(&self, event: &NewEvent<'_>) -> Result<(), StorageError> {
        let mut batch = self.batch().await?;
        batch.apply_event(event).await?;
        batch.consumed(Stream::Room, event.partition, event.offset);
        batch.commit().await
    }

    async fn apply_outliers(
        &self,
        (partition, offset): (u32, u64),
        room_id: &str,
        events: &[(String, String, Option<String>, String, String)],
    ) -> Result<(), StorageError> {
        let mut batch = self.batch().await?;
        batch.apply_outliers(partition, room_id, events).await?;
        batch.consumed(Stream::Room, partition, offset);
        batch.commit().await
    }

    async fn apply_history(
        &self,
        offset: u64,
        event: &HistoryEvent<'_>,
    ) -> Result<(), StorageError> {
        let mut batch = self.batch().await?;
        batch.apply_history(event).await?;
        batch.consumed(Stream::Room, event.partition, offset);
        batch.commit().await
    }
}

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const ROOM_A: &str = "!a:example.org";
const ROOM_B: &str = "!b:example.org";

/// Two tests of one body: `$sqlite` on SQLite, `$postgres` on a scratch
/// PostgreSQL database named after `$scratch`.
macro_rules! on_both_engines {
    ($body:ident, $sqlite:ident, $postgres:ident, $scratch:literal) => {
        #[tokio::test]
        async fn $sqlite() {
            let (storage, _dir) = open(None).await;
            $body(storage).await;
        }

        #[tokio::test]
        async fn $postgres() {
            let url = ganglion_base::testing::scratch_postgres($scratch).await;
            let (storage, _dir) = open(Some(url)).await;
            $body(storage).await;
        }
    };
}

async fn open(database_url: Option<String>) -> (Storage, tempfile::TempDir) {
    let (db, dir) = ganglion_base::testing::open_scratch("syncapi", MIGRATIONS, database_url).await;
    (Storage::new(db), dir)
}

fn entry(event_type: &str, state_key: &str, event_id: &str) -> (String, String, String, String) {
    (
        event_type.into(),
        state_key.into(),
        event_id.into(),
        String::new(),
    )
}

/// A timeline event as the consumer would pass it; state entries are added
/// by the caller.
fn event<'a>(
    partition: u32,
    offset: u64,
    room_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    state_key: Option<&'a str>,
    json: &'a str,
) -> NewEvent<'a> {
    NewEvent {
        partition,
        offset,
        room_id,
        event_id,
        event_type,
        state_key,
        sender: ALICE,
        membership: None,
        json,
        device_id: "",
        transaction_id: "",
        relates_to: None,
        state_removed: Vec::new(),
        state_added: Vec::new(),
        notified: &[],
        thread_id: "main",
    }
}

/// A state event that adds itself to current state.
fn state<'a>(
    partition: u32,
    offset: u64,
    room_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    state_key: &'a str,
    json: &'a str,
) -> NewEvent<'a> {
    NewEvent {
        state_added: vec![entry(event_type, state_key, event_id)],
        ..event(
            partition,
            offset,
            room_id,
            event_id,
            event_type,
            Some(state_key),
            json,
        )
    }
}

fn member<'a>(
    partition: u32,
    offset: u64,
    room_id: &'a str,
    event_id: &'a str,
    membership: &'a str,
    replaces: Option<&str>,
) -> NewEvent<'a> {
    NewEvent {
        membership: Some(membership),
        state_removed: replaces
            .map(|old| entry("m.room.member", ALICE, old))
            .into_iter()
            .collect(),
        ..state(
            partition,
            offset,
            room_id,
            event_id,
            "m.room.member",
            ALICE,
            "{\"type\":\"m.room.member\"}",
        )
    }
}

fn offsets(rows: &[EventRow]) -> Vec<u64> {
    rows.iter().map(|r| r.offset).collect()
}

fn event_ids(rows: &[EventRow]) -> Vec<&str> {
    rows.iter().map(|r| r.event_id.as_str()).collect()
}

/// The consumed positions of `roomserver.output`, by partition.
async fn sorted_positions(storage: &Storage) -> Vec<(u32, u64)> {
    let mut positions: Vec<(u32, u64)> = storage
        .positions()
        .await
        .expect("positions")
        .into_iter()
        .filter(|(stream, _, _)| *stream == crate::sync_token::Stream::Room)
        .map(|(_, partition, offset)| (partition, offset))
        .collect();
    positions.sort_unstable();
    positions
}

async fn sorted_memberships(storage: &Storage, user_id: &str) -> Vec<(String, String, u64)> {
    let mut memberships: Vec<(String, String, u64)> = storage
        .memberships(user_id)
        .await
        .expect("memberships")
        .into_iter()
        .map(|m| (m.room_id, m.membership, m.offset))
        .collect();
    memberships.sort_unstable();
    memberships
}

/// Room A on partition 1: create, join, message, name, leave at offsets
/// 10..=14. Room B on partition 0: create and join at offsets 5 and 6.
async fn timeline(storage: &Storage) {
    let events = [
        state(1, 10, ROOM_A, "$create_a", "m.room.create", "", "{\"c\":1}"),
        member(1, 11, ROOM_A, "$join_a", "join", None),
        NewEvent {
            device_id: "DEVICE",
            transaction_id: "txn1",
            relates_to: None,
            ..event(
                1,
                12,
                ROOM_A,
                "$message",
                "m.room.message",
                None,
                "{\"body\":\"hi\"}",
            )
        },
        state(
            1,
            13,
            ROOM_A,
            "$name",
            "m.room.name",
            "",
            "{\"name\":\"A\"}",
        ),
        member(1, 14, ROOM_A, "$leave_a", "leave", Some("$join_a")),
        state(0, 5, ROOM_B, "$create_b", "m.room.create", "", "{\"c\":2}"),
        member(0, 6, ROOM_B, "$join_b", "join", None),
    ];
    for event in &events {
        storage.apply_event(event).await.expect("apply event");
    }
}

async fn events_and_state(storage: Storage) {
    assert_eq!(sorted_positions(&storage).await, vec![]);
    assert_eq!(
        storage.room_partition(ROOM_A).await.expect("partition"),
        None
    );
    timeline(&storage).await;

    assert_eq!(sorted_positions(&storage).await, vec![(0, 7), (1, 15)]);
    assert_eq!(
        sorted_memberships(&storage, ALICE).await,
        vec![
            (ROOM_A.to_owned(), "leave".to_owned(), 14),
            (ROOM_B.to_owned(), "join".to_owned(), 6),
        ]
    );
    assert_eq!(sorted_memberships(&storage, BOB).await, vec![]);
    // The joined rooms with events at or after an offset come with the
    // memberships: room B (joined, events at 5 and 6), never room A (left).
    let active = |from: Option<u64>| {
        let storage = storage.clone();
        async move {
            let (memberships, active) = storage
                .memberships_with_activity(ALICE, from)
                .await
                .expect("memberships");
            assert_eq!(memberships.len(), 2);
            let mut active: Vec<String> = active.into_iter().collect();
            active.sort();
            active
        }
    };
    assert_eq!(active(Some(0)).await, [ROOM_B]);
    assert_eq!(active(Some(6)).await, [ROOM_B]);
    assert_eq!(active(Some(7)).await, Vec::<String>::new());
    assert_eq!(active(None).await, Vec::<String>::new());
    // Each membership with its room's partition (room A's events are in
    // partition 1, room B's in 0).
    let (memberships, _) = storage
        .memberships_with_activity(ALICE, None)
        .await
        .expect("memberships");
    let mut partitions: Vec<(String, u32)> = memberships
        .into_iter()
        .map(|m| (m.room_id, m.partition))
        .collect();
    partitions.sort();
    assert_eq!(partitions, [(ROOM_A.to_owned(), 1), (ROOM_B.to_owned(), 0)]);
    assert_eq!(
        storage.room_partition(ROOM_A).await.expect("partition"),
        Some(1)
    );
    assert_eq!(
        storage.room_partition(ROOM_B).await.expect("partition"),
        Some(0)
    );
    assert_eq!(
        storage
            .room_partition("!unknown:example.org")
            .await
            .expect("partition"),
        None
    );

    // Timelines: `from` inclusive, `to` exclusive, in either direction.
    let all = storage
        .room_events(ROOM_A, 0, u64::MAX, 100, false)
        .await
        .expect("events");
    assert_eq!(offsets(&all), vec![10, 11, 12, 13, 14]);
    assert_eq!(
        event_ids(&all),
        vec!["$create_a", "$join_a", "$message", "$name", "$leave_a"]
    );
    let message = &all[2];
    assert_eq!(message.event_type, "m.room.message");
    assert_eq!(message.state_key, None);
    assert_eq!(message.json, "{\"body\":\"hi\"}");
    assert_eq!(message.device_id, "DEVICE");
    assert_eq!(message.transaction_id, "txn1");
    assert_eq!(all[3].state_key.as_deref(), Some(""));
    assert_eq!(all[4].state_key.as_deref(), Some(ALICE));

    let newest_first = storage
        .room_events(ROOM_A, 0, u64::MAX, 100, true)
        .await
        .expect("events");
    assert_eq!(offsets(&newest_first), vec![14, 13, 12, 11, 10]);
    let bounded = storage
        .room_events(ROOM_A, 11, 14, 100, false)
        .await
        .expect("events");
    assert_eq!(offsets(&bounded), vec![11, 12, 13]);
    let bounded_back = storage
        .room_events(ROOM_A, 11, 14, 2, true)
        .await
        .expect("events");
    assert_eq!(offsets(&bounded_back), vec![13, 12]);
    let bounded_forward = storage
        .room_events(ROOM_A, 11, 14, 2, false)
        .await
        .expect("events");
    assert_eq!(offsets(&bounded_forward), vec![11, 12]);
    assert_eq!(
        offsets(
            &storage
                .room_events(ROOM_A, 12, 12, 100, false)
                .await
                .expect("events")
        ),
        Vec::<u64>::new()
    );
    assert_eq!(
        offsets(
            &storage
                .room_events(ROOM_B, 0, u64::MAX, 100, true)
                .await
                .expect("events")
        ),
        vec![6, 5]
    );

    // Current state: the leave replaced the join; the message is not state.
    let room_state = storage.room_state(ROOM_A).await.expect("state");
    assert_eq!(
        event_ids(&room_state),
        vec!["$create_a", "$name", "$leave_a"]
    );
    assert_eq!(offsets(&room_state), vec![10, 13, 14]);
    assert_eq!(room_state[1].json, "{\"name\":\"A\"}");
    assert_eq!(
        event_ids(&storage.room_state(ROOM_B).await.expect("state")),
        vec!["$create_b", "$join_b"]
    );
    assert_eq!(
        storage
            .room_state("!unknown:example.org")
            .await
            .expect("state")
            .len(),
        0
    );

    // A state change that removes an entry it does not hold leaves it alone.
    storage
        .apply_event(&NewEvent {
            state_removed: vec![entry("m.room.name", "", "$not_the_name")],
            ..event(1, 15, ROOM_A, "$stale", "m.room.message", None, "{}")
        })
        .await
        .expect("apply event");
    assert_eq!(
        event_ids(&storage.room_state(ROOM_A).await.expect("state")),
        vec!["$create_a", "$name", "$leave_a"]
    );
    assert_eq!(sorted_positions(&storage).await, vec![(0, 7), (1, 16)]);
}

async fn redelivery_changes_nothing(storage: Storage) {
    timeline(&storage).await;
    let before_events = storage
        .room_events(ROOM_A, 0, u64::MAX, 100, false)
        .await
        .expect("events");
    let before_state = storage.room_state(ROOM_A).await.expect("state");

    // The join again, at its own offset: the leave stays, positions stay.
    storage
        .apply_event(&member(1, 11, ROOM_A, "$join_a", "join", None))
        .await
        .expect("apply event twice");
    // The join again, re-published later in the log (an outbox replayed
    // after a crash): still no change, but the position moves past it.
    storage
        .apply_event(&member(1, 20, ROOM_A, "$join_a", "join", Some("$leave_a")))
        .await
        .expect("apply republished event");

    let after_events = storage
        .room_events(ROOM_A, 0, u64::MAX, 100, false)
        .await
        .expect("events");
    assert_eq!(offsets(&after_events), offsets(&before_events));
    assert_eq!(event_ids(&after_events), event_ids(&before_events));
    let after_state = storage.room_state(ROOM_A).await.expect("state");
    assert_eq!(event_ids(&after_state), event_ids(&before_state));
    assert_eq!(
        sorted_memberships(&storage, ALICE).await,
        vec![
            (ROOM_A.to_owned(), "leave".to_owned(), 14),
            (ROOM_B.to_owned(), "join".to_owned(), 6),
        ]
    );
    assert_eq!(sorted_positions(&storage).await, vec![(0, 7), (1, 21)]);

    // An older redelivery never moves a position back.
    storage
        .apply_event(&state(
            0,
            5,
            ROOM_B,
            "$create_b",
            "m.room.create",
            "",
            "{\"c\":2}",
        ))
        .await
        .expect("apply old event");
    assert_eq!(sorted_positions(&storage).await, vec![(0, 7), (1, 21)]);
}

async fn filters(storage: Storage) {
    let json = "{\"room\":{\"timeline\":{\"limit\":5}}}";
    let first = storage
        .insert_filter(ALICE, json)
        .await
        .expect("insert filter");
    let second = storage
        .insert_filter(ALICE, "{\"presence\":{}}")
        .await
        .expect("insert filter");
    assert_ne!(first, second);
    assert_eq!(
        storage
            .filter(ALICE, first)
            .await
            .expect("filter")
            .as_deref(),
        Some(json)
    );
    assert_eq!(
        storage
            .filter(ALICE, second)
            .await
            .expect("filter")
            .as_deref(),
        Some("{\"presence\":{}}")
    );
    assert_eq!(storage.filter(BOB, first).await.expect("filter"), None);
    assert_eq!(
        storage
            .filter(ALICE, first.max(second) + 1)
            .await
            .expect("filter"),
        None
    );
}

on_both_engines!(
    events_and_state,
    sqlite_events_and_state,
    postgres_events_and_state,
    "sync_storage"
);

/// The state before many rooms' timelines, read at once, is what reading
/// each room alone gives: entries as they stood before each room's own
/// position, ordered by when they became current; nothing for a room with
/// nothing before, or one unknown.
async fn state_before_many_rooms(storage: Storage) {
    timeline(&storage).await;
    let cases: Vec<(&str, u64)> = vec![
        (ROOM_A, 10),
        (ROOM_A, 12),
        (ROOM_A, 14),
        (ROOM_A, 100),
        (ROOM_B, 6),
        (ROOM_B, 100),
        ("!unknown:example.org", 100),
    ];
    let refs = |refs: &[crate::storage::StateRef]| -> Vec<(String, String, String, u64)> {
        refs.iter()
            .map(|r| {
                (
                    r.event_type.clone(),
                    r.state_key.clone(),
                    r.event_id.clone(),
                    r.offset,
                )
            })
            .collect()
    };
    for (room_id, before) in &cases {
        // One room per read, and then with a room of each kind beside it.
        let alone = storage
            .state_refs_at(room_id, *before, None)
            .await
            .expect("one room");
        let other = if *room_id == ROOM_A { ROOM_B } else { ROOM_A };
        let together = storage
            .state_refs_before(&[(room_id, *before), (other, 100)])
            .await
            .expect("many rooms");
        assert_eq!(
            refs(together.get(*room_id).map_or(&[][..], Vec::as_slice)),
            refs(&alone),
            "{room_id} before {before}"
        );
    }
    assert_eq!(
        refs(&storage.state_refs_at(ROOM_A, 12, None).await.expect("refs")),
        vec![
            (
                "m.room.create".into(),
                String::new(),
                "$create_a".into(),
                10
            ),
            ("m.room.member".into(), ALICE.into(), "$join_a".into(), 11),
        ]
    );
    // More rooms than one statement takes.
    let many: Vec<String> = (0..450).map(|n| format!("!r{n}:example.org")).collect();
    let mut wanted: Vec<(&str, u64)> = many.iter().map(|r| (r.as_str(), 100)).collect();
    wanted.push((ROOM_B, 100));
    let read = storage
        .state_refs_before(&wanted)
        .await
        .expect("many rooms");
    assert_eq!(read.len(), 1, "only the known room has state");
    assert_eq!(read[ROOM_B].len(), 2);
}

on_both_engines!(
    state_before_many_rooms,
    sqlite_state_before_many_rooms,
    postgres_state_before_many_rooms,
    "sync_storage_state_before"
);

on_both_engines!(
    redelivery_changes_nothing,
    sqlite_redelivery_changes_nothing,
    postgres_redelivery_changes_nothing,
    "sync_storage_redelivery"
);

on_both_engines!(
    filters,
    sqlite_filters,
    postgres_filters,
    "sync_storage_filters"
);

/// A backfilled event of ROOM_A as the consumer would pass it.
fn history<'a>(event_id: &'a str, depth: i64, json: &'a str) -> HistoryEvent<'a> {
    HistoryEvent {
        partition: 0,
        room_id: ROOM_A,
        event_id,
        event_type: "m.room.message",
        state_key: None,
        sender: BOB,
        json,
        depth,
        history_visibility: "",
        relates_to: None,
    }
}

async fn backfilled_history(storage: Storage) {
    // We joined through another server: the room's create event came as
    // an outlier, our join is the oldest event of the timeline.
    storage
        .apply_outliers(
            (0, 0),
            ROOM_A,
            &[(
                "$create".into(),
                "m.room.create".into(),
                Some(String::new()),
                BOB.into(),
                r#"{"type":"m.room.create","prev_events":[]}"#.into(),
            )],
        )
        .await
        .expect("outlier");
    storage
        .apply_event(&NewEvent {
            json: r#"{"type":"m.room.member","prev_events":["$m2"]}"#,
            ..member(0, 1, ROOM_A, "$join", "join", None)
        })
        .await
        .expect("join");
    assert_eq!(
        storage.history_gaps(ROOM_A).await.expect("gaps"),
        vec!["$m2"]
    );
    let page = storage
        .room_page(ROOM_A, (i64::MIN, i64::MAX), 10, true)
        .await
        .expect("page");
    assert_eq!(page.len(), 1, "outliers are no part of the timeline");

    // History arrives in any order; it sits by depth below everything
    // live, the outlier moves into it, redelivery changes nothing.
    for (offset, id, depth, json) in [
        (2, "$m2", 4, r#"{"prev_events":["$m1"]}"#),
        (3, "$m1", 3, r#"{"prev_events":["$create"]}"#),
        (4, "$m1b", 3, r#"{"prev_events":["$create"]}"#),
        (
            5,
            "$create",
            1,
            r#"{"type":"m.room.create","prev_events":[]}"#,
        ),
        (
            5,
            "$create",
            1,
            r#"{"type":"m.room.create","prev_events":[]}"#,
        ),
    ] {
        storage
            .apply_history(offset, &history(id, depth, json))
            .await
            .expect("history");
    }
    let back = storage
        .room_page(ROOM_A, (i64::MIN, i64::MAX), 10, true)
        .await
        .expect("page");
    let ids: Vec<&str> = back.iter().map(|(_, e)| e.event_id.as_str()).collect();
    assert_eq!(ids, vec!["$join", "$m2", "$m1b", "$m1", "$create"]);
    assert!(back.iter().skip(1).all(|(place, _)| *place < -1));
    assert_eq!(back[1].1.history_visibility, "shared");
    // Pages continue from a place, both ways.
    let older = storage
        .room_page(ROOM_A, (i64::MIN, back[2].0), 10, true)
        .await
        .expect("page");
    assert_eq!(older.len(), 2);
    let newer = storage
        .room_page(ROOM_A, (back[3].0, i64::MAX), 10, false)
        .await
        .expect("page");
    let ids: Vec<&str> = newer.iter().map(|(_, e)| e.event_id.as_str()).collect();
    assert_eq!(ids, vec!["$m1", "$m1b", "$m2", "$join"]);
    // Live windows never see history.
    assert_eq!(
        event_ids(
            &storage
                .room_events(ROOM_A, 0, u64::MAX, 10, true)
                .await
                .expect("events")
        ),
        vec!["$join"]
    );
    // Nothing is missing any more: the room's history is complete.
    assert!(storage.history_gaps(ROOM_A).await.expect("gaps").is_empty());
    assert_eq!(sorted_positions(&storage).await, vec![(0, 6)]);
}

on_both_engines!(
    backfilled_history,
    sqlite_backfilled_history,
    postgres_backfilled_history,
    "sync_storage_history"
);

/// To-device messages for devices that are gone: dropped when the device's
/// keys go, and by the pruning for devices that never had keys or that a
/// sender named after they went; live devices keep theirs.
async fn to_device_of_gone_devices(storage: Storage) {
    use super::At;
    use ganglion_api::proto::topics as topic_pb;
    let send = |offset: u64, recipient: &'static str, devices: &[&str]| topic_pb::ToDeviceEdu {
        version: 1,
        sender: BOB.into(),
        recipient: recipient.into(),
        event_type: "m.room_key_request".into(),
        message_id: format!("m{offset}"),
        messages: devices
            .iter()
            .map(|device_id| topic_pb::DeviceMessage {
                device_id: (*device_id).into(),
                content_json: b"{}".to_vec(),
            })
            .collect(),
    };
    let inbox = |device: &'static str| {
        let storage = &storage;
        async move {
            storage
                .to_device_inbox(ALICE, device, 0, u64::MAX, 100)
                .await
                .expect("inbox")
                .len()
        }
    };
    let at = |offset| At {
        partition: 0,
        offset,
    };
    storage
        .apply_to_device(at(1), &send(1, ALICE, &["KEYED", "KEYLESS", "LIVE"]))
        .await
        .expect("to-device");
    storage
        .apply_to_device(at(2), &send(2, BOB, &["BOBS"]))
        .await
        .expect("to-device");
    // KEYED is deleted with its keys.
    let deleted = topic_pb::DeviceKeyChange {
        version: 1,
        user_id: ALICE.into(),
        device_id: "KEYED".into(),
        stream_id: 1,
        deleted: true,
        device_keys_json: Vec::new(),
        signing_keys: false,
        seen_by: String::new(),
    };
    storage
        .apply_key_change(at(1), &deleted)
        .await
        .expect("key change");
    assert_eq!(inbox("KEYED").await, 0);
    assert_eq!(inbox("KEYLESS").await, 1);
    // The pruning: ALICE has only LIVE now; BOB's devices cannot be read
    // this round, so his messages stay.
    let cursor = std::sync::Mutex::new(String::new());
    let pruned = crate::pruning::prune_gone_devices(&storage, &cursor, |user_id| async move {
        if user_id == ALICE {
            Ok(vec!["LIVE".to_owned()])
        } else {
            Err("userapi unreachable")
        }
    })
    .await
    .expect("prune");
    assert_eq!(pruned, 1);
    assert_eq!(inbox("KEYLESS").await, 0);
    assert_eq!(inbox("LIVE").await, 1);
    let bobs = storage
        .to_device_inbox(BOB, "BOBS", 0, u64::MAX, 100)
        .await
        .expect("inbox");
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        *cursor.lock().expect("cursor"),
        "",
        "one batch: starts over"
    );
}

/// A signature of another user's keys is news to its signer alone: Alice
/// (who shares no room with Bob) hears that Bob's keys changed, Bob does
/// not; an ordinary change of Bob's keys reaches Bob.
async fn key_changes_seen_by_one_user(storage: Storage) {
    use super::At;
    use ganglion_api::proto::topics as topic_pb;
    let at = |offset| At {
        partition: 0,
        offset,
    };
    let signed = topic_pb::DeviceKeyChange {
        version: 1,
        user_id: BOB.into(),
        signing_keys: true,
        seen_by: ALICE.into(),
        ..Default::default()
    };
    storage
        .apply_key_change(at(3), &signed)
        .await
        .expect("signature");
    let users = |viewer: &'static str, since: u64| {
        let storage = &storage;
        async move {
            storage
                .key_changes_for(viewer, since)
                .await
                .expect("changes")
                .into_iter()
                .map(|(user, at)| (user, at.offset))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(users(ALICE, 0).await, [(BOB.to_owned(), 3)]);
    assert_eq!(users(ALICE, 4).await, []);
    assert_eq!(users(BOB, 0).await, []);
    let own = topic_pb::DeviceKeyChange {
        version: 1,
        user_id: BOB.into(),
        device_id: "BOBS".into(),
        ..Default::default()
    };
    storage.apply_key_change(at(5), &own).await.expect("own");
    assert_eq!(users(BOB, 0).await, [(BOB.to_owned(), 5)]);
    assert_eq!(users(ALICE, 0).await, [(BOB.to_owned(), 3)]);
}

on_both_engines!(
    key_changes_seen_by_one_user,
    sqlite_key_changes_seen_by_one_user,
    postgres_key_changes_seen_by_one_user,
    "sync_storage_private_key_changes"
);

on_both_engines!(
    to_device_of_gone_devices,
    sqlite_to_device_of_gone_devices,
    postgres_to_device_of_gone_devices,
    "sync_storage_to_device"
);

/// A record redelivered after a crash can come twice in one batch: the
/// message is stored once, indexed for search once, and the batch commits
/// (indexing it twice broke the batch for good, and the view stopped).
async fn a_message_twice_in_one_batch(storage: Storage) {
    let mut batch = storage.batch().await.expect("batch");
    batch
        .apply_event(&state(0, 1, ROOM_A, "$create", "m.room.create", "", "{}"))
        .await
        .expect("create");
    batch
        .apply_event(&member(0, 2, ROOM_A, "$join", "join", None))
        .await
        .expect("join");
    let json = r#"{"type":"m.room.message","content":{"msgtype":"m.text","body":"twice told"}}"#;
    let message = event(0, 3, ROOM_A, "$twice", "m.room.message", None, json);
    batch.apply_event(&message).await.expect("first");
    batch.apply_event(&message).await.expect("again");
    batch.consumed(Stream::Room, 0, 4);
    batch.commit().await.expect("the batch commits");
    let hits = storage
        .search(ALICE, &["twice".to_owned()], &["content.body"], 10)
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
}

on_both_engines!(
    a_message_twice_in_one_batch,
    sqlite_a_message_twice_in_one_batch,
    postgres_a_message_twice_in_one_batch,
    "sync_storage_twice"
);

/// Many records in one transaction: what the batch remembers of a room
/// (members, history visibility) follows the state its own records
/// change, notifications and bumps are written at commit, and the
/// positions reached are stored with the data; a batch dropped before it
/// commits leaves nothing.
async fn one_batch_of_many_records(storage: Storage) {
    let mut batch = storage.batch().await.expect("batch");
    let create = state(0, 1, ROOM_A, "$create", "m.room.create", "", "{}");
    batch.apply_event(&create).await.expect("create");
    batch.consumed(Stream::Room, 0, 1);
    assert_eq!(
        batch
            .local_members(ROOM_A, "example.org")
            .await
            .expect("members"),
        (Vec::new(), 0)
    );
    batch
        .apply_event(&member(0, 2, ROOM_A, "$join", "join", None))
        .await
        .expect("join");
    batch.consumed(Stream::Room, 0, 2);
    assert_eq!(
        batch
            .local_members(ROOM_A, "example.org")
            .await
            .expect("members"),
        (vec![ALICE.to_owned()], 1),
        "a join in the batch is seen by the batch"
    );
    batch
        .apply_event(&event(
            0,
            3,
            ROOM_A,
            "$before",
            "m.room.message",
            None,
            "{}",
        ))
        .await
        .expect("message");
    batch
        .apply_event(&state(
            0,
            4,
            ROOM_A,
            "$visibility",
            "m.room.history_visibility",
            "",
            r#"{"content":{"history_visibility":"joined"}}"#,
        ))
        .await
        .expect("visibility");
    let notified = [ganglion_base::push_rules::Notification {
        user_id: BOB.to_owned(),
        highlight: true,
        tweaks: serde_json::Map::new(),
    }];
    batch
        .apply_event(&NewEvent {
            notified: &notified,
            ..event(0, 5, ROOM_A, "$after", "m.room.message", None, "{}")
        })
        .await
        .expect("message");
    batch.consumed(Stream::Room, 0, 5);
    batch.consumed(Stream::Room, 0, 3);
    batch.commit().await.expect("commit");

    let visibility = |id: &str| {
        let storage = storage.clone();
        let id = id.to_owned();
        async move {
            storage
                .event(&id)
                .await
                .expect("event")
                .expect("stored")
                .history_visibility
        }
    };
    assert_eq!(visibility("$before").await, "shared");
    assert_eq!(
        visibility("$after").await,
        "joined",
        "a visibility change in the batch applies to the events after it"
    );
    let notifications = storage.notifications_for(BOB).await.expect("notifications");
    assert_eq!(notifications.len(), 1);
    assert_eq!(
        (notifications[0].notifications, notifications[0].highlights),
        (1, 1)
    );
    let rooms = storage.sliding_rooms(ALICE).await.expect("rooms");
    let after: i64 = sql::query_scalar("SELECT id FROM events WHERE event_id = '$after'")
        .fetch_one(&storage.db.pool)
        .await
        .expect("row");
    assert_eq!(
        rooms[0].bump_stamp, after as u64,
        "the batch's last message bumps the room"
    );
    assert_eq!(sorted_positions(&storage).await, vec![(0, 6)]);

    // Redelivered, even twice in one batch: nothing changes.
    let mut batch = storage.batch().await.expect("batch");
    for _ in 0..2 {
        batch
            .apply_event(&NewEvent {
                notified: &notified,
                ..event(0, 5, ROOM_A, "$after", "m.room.message", None, "{}")
            })
            .await
            .expect("message");
    }
    batch.consumed(Stream::Room, 0, 5);
    batch.commit().await.expect("commit");
    let notifications = storage.notifications_for(BOB).await.expect("notifications");
    assert_eq!(
        notifications
            .iter()
            .map(|row| row.notifications)
            .sum::<u64>(),
        1
    );

    // Dropped before commit: nothing of it stays.
    let mut batch = storage.batch().await.expect("batch");
    batch
        .apply_event(&event(0, 6, ROOM_A, "$lost", "m.room.message", None, "{}"))
        .await
        .expect("message");
    batch.consumed(Stream::Room, 0, 6);
    drop(batch);
    assert!(storage.event("$lost").await.expect("event").is_none());
    assert_eq!(sorted_positions(&storage).await, vec![(0, 6)]);

    // A batch starts from what committed batches knew of a room, and
    // never from what a dropped one learned.
    let members = |members: &[&str]| {
        (
            members.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            members.len(),
        )
    };
    async fn members_of(batch: &mut Batch) -> (Vec<String>, usize) {
        batch
            .local_members(ROOM_A, "example.org")
            .await
            .expect("members")
    }
    let leave = member(0, 6, ROOM_A, "$leave", "leave", Some("$join"));
    let mut batch = storage.batch().await.expect("batch");
    assert_eq!(members_of(&mut batch).await, members(&[ALICE]));
    batch.apply_event(&leave).await.expect("leave");
    assert_eq!(
        members_of(&mut batch).await,
        members(&[]),
        "the batch sees its own leave"
    );
    drop(batch);
    let mut batch = storage.batch().await.expect("batch");
    assert_eq!(
        members_of(&mut batch).await,
        members(&[ALICE]),
        "a dropped batch's leave is forgotten"
    );
    batch.apply_event(&leave).await.expect("leave");
    batch.consumed(Stream::Room, 0, 6);
    batch.commit().await.expect("commit");
    let mut batch = storage.batch().await.expect("batch");
    assert_eq!(
        members_of(&mut batch).await,
        members(&[]),
        "the next batch sees a committed leave"
    );
    batch
        .apply_event(&event(0, 7, ROOM_A, "$later", "m.room.message", None, "{}"))
        .await
        .expect("message");
    batch.consumed(Stream::Room, 0, 7);
    batch.commit().await.expect("commit");
    assert_eq!(
        visibility("$later").await,
        "joined",
        "the visibility a committed batch changed holds for later batches"
    );
}

on_both_engines!(
    one_batch_of_many_records,
    sqlite_one_batch_of_many_records,
    postgres_one_batch_of_many_records,
    "sync_storage_batch"
);

/// The state changes of a batch's events are written together when the
/// batch flushes; what they leave is what applying them one by one, in
/// order, would leave: a replaced entry holds the later event, an entry
/// set and then removed in the batch is gone, one removed in a later batch
/// too, and a redelivered event changes nothing even when its change
/// would go back in time.
async fn state_changes_of_a_batch_land_together(storage: Storage) {
    fn with<'a>(
        ev: NewEvent<'a>,
        removed: &[(&str, &str, &str)],
        added: &[(&str, &str, &str)],
    ) -> NewEvent<'a> {
        NewEvent {
            state_removed: removed.iter().map(|(t, k, id)| entry(t, k, id)).collect(),
            state_added: added.iter().map(|(t, k, id)| entry(t, k, id)).collect(),
            ..ev
        }
    }
    let mut batch = storage.batch().await.expect("batch");
    let events = [
        state(0, 1, ROOM_B, "$create", "m.room.create", "", "{}"),
        state(0, 2, ROOM_B, "$name1", "m.room.name", "", "{}"),
        with(
            event(0, 3, ROOM_B, "$name2", "m.room.name", Some(""), "{}"),
            &[("m.room.name", "", "$name1")],
            &[("m.room.name", "", "$name2")],
        ),
        state(0, 4, ROOM_B, "$topic", "m.room.topic", "", "{}"),
        // Resolution drops the topic and brings nothing in its place.
        with(
            event(0, 5, ROOM_B, "$drop", "m.room.avatar", Some("x"), "{}"),
            &[("m.room.topic", "", "$topic")],
            &[],
        ),
        state(0, 6, ROOM_B, "$avatar", "m.room.avatar", "", "{}"),
        with(
            event(0, 7, ROOM_B, "$unset", "m.room.join_rules", Some("y"), "{}"),
            &[("m.room.avatar", "", "$avatar")],
            &[],
        ),
        state(
            0,
            8,
            ROOM_B,
            "$hidden",
            "m.room.history_visibility",
            "",
            r#"{"content":{"history_visibility":"invited"}}"#,
        ),
        event(0, 9, ROOM_B, "$m1", "m.room.message", None, "{}"),
        // A visibility without a valid value counts as `shared`.
        state(
            0,
            10,
            ROOM_B,
            "$open",
            "m.room.history_visibility",
            "",
            r#"{"content":{}}"#,
        ),
        event(0, 11, ROOM_B, "$m2", "m.room.message", None, "{}"),
    ];
    for ev in &events {
        batch.apply_event(ev).await.expect("apply");
        batch.consumed(Stream::Room, 0, ev.offset);
    }
    batch.commit().await.expect("commit");

    let current = |storage: Storage| async move {
        let mut ids: Vec<String> = storage
            .room_state(ROOM_B)
            .await
            .expect("state")
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        current(storage.clone()).await,
        ["$create", "$name2", "$open"],
        "current state after the batch"
    );
    let history: Vec<(String, String, i64, Option<String>)> = sql::query_as(
        "SELECT event_type, state_key, log_offset, event_id FROM state_history
         WHERE room_id = $1 ORDER BY log_offset, event_type",
    )
    .bind(ROOM_B)
    .fetch_all(&storage.db.pool)
    .await
    .expect("history");
    let row = |t: &str, offset: i64, id: Option<&str>| {
        (t.to_owned(), String::new(), offset, id.map(str::to_owned))
    };
    assert_eq!(
        history,
        [
            row("m.room.create", 1, Some("$create")),
            row("m.room.name", 2, Some("$name1")),
            row("m.room.name", 3, Some("$name2")),
            row("m.room.topic", 4, Some("$topic")),
            row("m.room.topic", 5, None),
            row("m.room.avatar", 6, Some("$avatar")),
            row("m.room.avatar", 7, None),
            row("m.room.history_visibility", 8, Some("$hidden")),
            row("m.room.history_visibility", 10, Some("$open")),
        ]
    );
    let visibility = |id: &'static str| {
        let storage = storage.clone();
        async move {
            storage
                .event(id)
                .await
                .expect("event")
                .expect("stored")
                .history_visibility
        }
    };
    assert_eq!(visibility("$m1").await, "invited");
    assert_eq!(visibility("$m2").await, "shared");

    // Redelivered: the first name comes again, which changes nothing;
    // then the name is removed.
    let mut batch = storage.batch().await.expect("batch");
    batch
        .apply_event(&state(0, 2, ROOM_B, "$name1", "m.room.name", "", "{}"))
        .await
        .expect("again");
    batch
        .apply_event(&event(0, 12, ROOM_B, "$m3", "m.room.message", None, "{}"))
        .await
        .expect("message");
    batch.consumed(Stream::Room, 0, 12);
    batch.commit().await.expect("commit");
    assert_eq!(
        current(storage.clone()).await,
        ["$create", "$name2", "$open"],
        "a redelivered event changes nothing"
    );
    assert_eq!(visibility("$m3").await, "shared");
    let mut batch = storage.batch().await.expect("batch");
    batch
        .apply_event(&with(
            event(0, 13, ROOM_B, "$unname", "m.room.avatar", Some("z"), "{}"),
            &[("m.room.name", "", "$name2")],
            &[],
        ))
        .await
        .expect("removal");
    batch.consumed(Stream::Room, 0, 13);
    batch.commit().await.expect("commit");
    assert_eq!(current(storage.clone()).await, ["$create", "$open"]);

    // A resolved state brings thousands of entries in one event (given
    // twice over, the later one of each winning): written many to a
    // statement, each entry once.
    let members: Vec<(String, String)> = (0..3_000)
        .map(|n| (format!("@m{n}:example.org"), format!("$m{n}")))
        .collect();
    let mut big = with(
        event(
            0,
            14,
            ROOM_B,
            "$resolved",
            "m.room.member",
            Some("@m0:example.org"),
            "{}",
        ),
        &[],
        &[],
    );
    for round in 0..2 {
        for (user, event_id) in &members {
            big.state_added.push((
                "m.room.member".into(),
                user.clone(),
                if round == 0 {
                    "$stale".into()
                } else {
                    event_id.clone()
                },
                "join".into(),
            ));
        }
    }
    let mut batch = storage.batch().await.expect("batch");
    batch.apply_event(&big).await.expect("resolved state");
    batch.consumed(Stream::Room, 0, 14);
    batch.commit().await.expect("commit");
    let joined: Vec<(String, String)> = sql::query_as(
        "SELECT state_key, event_id FROM current_state
         WHERE room_id = $1 AND event_type = 'm.room.member' AND membership = 'join'
         ORDER BY state_key",
    )
    .bind(ROOM_B)
    .fetch_all(&storage.db.pool)
    .await
    .expect("members");
    let mut expected = members.clone();
    expected.sort();
    assert_eq!(joined, expected);
}

on_both_engines!(
    state_changes_of_a_batch_land_together,
    sqlite_state_changes_of_a_batch_land_together,
    postgres_state_changes_of_a_batch_land_together,
    "sync_storage_state_batch"
);

/// A database from before the notification counts (schema version 6)
/// gets them from the unread rows it has, per user, room and thread.
async fn notification_counts_from_unread_rows(database_url: Option<String>) {
    let before: Vec<_> = MIGRATIONS
        .iter()
        .copied()
        .filter(|m| m.version <= 6)
        .collect();
    let (db, _dir) = ganglion_base::testing::open_scratch("syncapi", &before, database_url).await;
    for (user, room, offset, thread, highlight) in [
        (BOB, ROOM_A, 1, "", 0),
        (BOB, ROOM_A, 2, "", 1),
        (BOB, ROOM_A, 3, "$thread", 0),
        (BOB, ROOM_B, 4, "", 0),
        (ALICE, ROOM_A, 5, "", 1),
    ] {
        sql::query(
            "INSERT INTO notifications (user_id, room_id, log_offset, thread_id, highlight)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(user)
        .bind(room)
        .bind(offset)
        .bind(thread)
        .bind(highlight)
        .execute(&db.pool)
        .await
        .expect("insert");
    }
    db.migrate("syncapi", MIGRATIONS).await.expect("migrate");
    let storage = Storage::new(db);
    let mut counts: Vec<_> = storage
        .notifications_for(BOB)
        .await
        .expect("counts")
        .into_iter()
        .map(|c| (c.room_id, c.thread_id, c.notifications, c.highlights))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            (ROOM_A.to_owned(), String::new(), 2, 1),
            (ROOM_A.to_owned(), "$thread".to_owned(), 1, 0),
            (ROOM_B.to_owned(), String::new(), 1, 0),
        ]
    );
}

#[tokio::test]
async fn sqlite_notification_counts_from_unread_rows() {
    notification_counts_from_unread_rows(None).await;
}

#[tokio::test]
async fn postgres_notification_counts_from_unread_rows() {
    let url = ganglion_base::testing::scratch_postgres("syncapi_counts").await;
    notification_counts_from_unread_rows(Some(url)).await;
}

/// A database from before current state kept its partitions (schema
/// version 10) gets each entry's partition from its event; an entry whose
/// event is not stored is left out of memberships, as before.
async fn current_state_partitions_from_events(database_url: Option<String>) {
    let before: Vec<_> = MIGRATIONS
        .iter()
        .copied()
        .filter(|m| m.version <= 10)
        .collect();
    let (db, _dir) = ganglion_base::testing::open_scratch("syncapi", &before, database_url).await;
    for (partition, offset, room, event_id) in [(2, 7, ROOM_A, "$in_a"), (5, 3, ROOM_B, "$in_b")] {
        sql::query(
            "INSERT INTO events (log_partition, log_offset, room_id, event_id, event_type,
                                 state_key, sender, json, device_id, transaction_id)
             VALUES ($1, $2, $3, $4, 'm.room.member', $5, $5, '{}', '', '')",
        )
        .bind(partition)
        .bind(offset)
        .bind(room)
        .bind(event_id)
        .bind(BOB)
        .execute(&db.pool)
        .await
        .expect("insert event");
    }
    for (room, event_id, membership, offset) in [
        (ROOM_A, "$in_a", "join", 7_i64),
        (ROOM_B, "$in_b", "invite", 3),
        ("!c:example.org", "$not_stored", "join", 9),
    ] {
        sql::query(
            "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership, log_offset)
             VALUES ($1, 'm.room.member', $2, $3, $4, $5)",
        )
        .bind(room)
        .bind(BOB)
        .bind(event_id)
        .bind(membership)
        .bind(offset)
        .execute(&db.pool)
        .await
        .expect("insert state");
    }
    db.migrate("syncapi", MIGRATIONS).await.expect("migrate");
    let storage = Storage::new(db);
    let (memberships, _) = storage
        .memberships_with_activity(BOB, None)
        .await
        .expect("memberships");
    let mut found: Vec<(String, String, u64, u32)> = memberships
        .into_iter()
        .map(|m| (m.room_id, m.membership, m.offset, m.partition))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (ROOM_A.to_owned(), "join".to_owned(), 7, 2),
            (ROOM_B.to_owned(), "invite".to_owned(), 3, 5),
        ]
    );
}

#[tokio::test]
async fn sqlite_current_state_partitions_from_events() {
    current_state_partitions_from_events(None).await;
}

#[tokio::test]
async fn postgres_current_state_partitions_from_events() {
    let url = ganglion_base::testing::scratch_postgres("syncapi_state_partitions").await;
    current_state_partitions_from_events(Some(url)).await;
}
