//! The roomserver's tables against both database engines: one body per
//! behaviour, run once on SQLite and once on a scratch PostgreSQL database.

use ganglion_base::sql;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{EventFlags, HeadUpdate, MIGRATIONS, NidState, Storage};
use crate::events::{Pdu, StateMap};
use crate::tests::{ALICE, Dag, Tip};

const VERSION: &str = "10";

async fn open(database_url: Option<String>) -> (Storage, tempfile::TempDir) {
    let (db, dir) =
        ganglion_base::testing::open_scratch("roomserver", MIGRATIONS, database_url).await;
    (Storage::new(db, 1_000), dir)
}

/// A room built in memory the way the input consumer builds it: real,
/// signed events by Alice, each on top of the state and event before it.
struct Room {
    room_id: String,
    dag: Dag,
    tip: Tip,
}

impl Room {
    fn create(room_id: &str) -> (Room, Arc<Pdu>) {
        let (dag, tip) = Dag::empty(VERSION, room_id);
        let create = tip.last.clone();
        let room = Room {
            room_id: dag.room_id.clone(),
            dag,
            tip,
        };
        (room, create)
    }

    fn next(
        &mut self,
        event_type: &str,
        state_key: Option<&str>,
        body: serde_json::Value,
    ) -> Arc<Pdu> {
        self.dag
            .append(&mut self.tip, ALICE, event_type, state_key, body)
            .expect("event")
    }
}

fn ids(state: &StateMap) -> BTreeMap<(String, String), String> {
    state
        .iter()
        .map(|(key, pdu)| (key.clone(), pdu.event_id.to_string()))
        .collect()
}

const ACCEPTED: EventFlags = EventFlags {
    rejected: false,
    soft_failed: false,
    outlier: false,
    announce: false,
};

/// Writes events the way the consumer does: state before and after each,
/// the head moved to the last, outputs queued, all in one transaction.
async fn write_room(storage: &Storage) {
    let (mut room, create) = Room::create("!r:example.org");
    let join = room.next(
        "m.room.member",
        Some(ALICE),
        serde_json::json!({"membership": "join"}),
    );
    let name = room.next(
        "m.room.name",
        Some(""),
        serde_json::json!({"name": "first"}),
    );
    let message = room.next("m.room.message", None, serde_json::json!({"body": "hi"}));

    let mut writer = storage
        .begin_room_write(&room.room_id, Some(VERSION))
        .await
        .expect("begin");
    let mut nids = NidState::default();
    let mut afters = Vec::new();
    for pdu in [&create, &join, &name, &message] {
        let before = writer.snapshot(&mut nids).await.expect("snapshot");
        match writer.state_key_nids(pdu).await.expect("nids") {
            Some((kind, key)) => {
                let nid = writer
                    .insert_event(pdu, &ACCEPTED, Some(before), None)
                    .await
                    .expect("insert");
                nids.set(kind, key, nid);
                let after = writer.snapshot(&mut nids).await.expect("snapshot");
                writer.set_state_after(nid, after);
                afters.push(after);
            }
            None => {
                writer
                    .insert_event(pdu, &ACCEPTED, Some(before), Some(before))
                    .await
                    .expect("insert");
                afters.push(before);
            }
        }
    }
    let head_snapshot = writer.snapshot(&mut nids).await.expect("snapshot");
    writer
        .set_head(&HeadUpdate {
            snapshot_nid: head_snapshot,
            depth: message.depth,
            extremities: vec![message.event_id.to_string()],
            changes: room
                .tip
                .state
                .iter()
                .map(|((k, s), p)| super::CurrentStateChange::set(k, s, p))
                .collect(),
        })
        .await
        .expect("head");
    let event_ids: Vec<String> = [&create, &join, &name, &message]
        .iter()
        .map(|p| p.event_id.to_string())
        .collect();
    let seqs = writer
        .commit(
            "req-1",
            &event_ids,
            Some("#r:example.org"),
            &[b"out".to_vec()],
            &[],
        )
        .await
        .expect("commit");
    assert_eq!(seqs.len(), 1);

    // The message shares the name event's snapshot: no new rows for it.
    assert_eq!(afters[2], afters[3]);
    let row = storage
        .room(&room.room_id)
        .await
        .expect("room")
        .expect("exists");
    assert_eq!(row.snapshot_nid, head_snapshot);
    assert_eq!(row.head_version, 1);
    assert_eq!(row.depth, message.depth);
    let (state, loaded) = storage.load_state(row.snapshot_nid).await.expect("state");
    assert_eq!(ids(&state), ids(&room.tip.state));
    assert_eq!(loaded.entries, nids.entries);
    assert_eq!(
        storage.forward_extremities(&row).await.expect("ext"),
        vec![message.event_id.to_string()]
    );
    // A room last written before the extremities moved into its row reads
    // them from the table they were in.
    sql::query("UPDATE rooms SET extremities = NULL WHERE room_nid = $1")
        .bind(row.room_nid)
        .execute(&storage.db.pool)
        .await
        .expect("clear");
    for id in ["$b:example.org", "$a:example.org"] {
        sql::query("INSERT INTO forward_extremities (room_nid, event_id) VALUES ($1, $2)")
            .bind(row.room_nid)
            .bind(id)
            .execute(&storage.db.pool)
            .await
            .expect("legacy row");
    }
    let legacy = storage
        .room(&room.room_id)
        .await
        .expect("room")
        .expect("exists");
    assert_eq!(
        storage.forward_extremities(&legacy).await.expect("ext"),
        vec!["$a:example.org".to_owned(), "$b:example.org".to_owned()]
    );
    // The state before the name event lacks the name; the state at
    // each event reads back by event.
    let stored = storage
        .events_by_id(&[name.event_id.as_str(), message.event_id.as_str()])
        .await
        .expect("events");
    // The states after, written together at commit.
    assert_eq!(stored[&name.event_id].state_after, Some(afters[2]));
    assert_eq!(stored[&message.event_id].state_after, Some(afters[3]));
    let before_name = stored[&name.event_id].state_before.expect("has state");
    let (state, _) = storage.load_state(before_name).await.expect("state");
    assert_eq!(state.len(), 2);
    assert!(!state.contains_key(&("m.room.name".to_owned(), String::new())));
    assert!(!stored[&message.event_id].outlier);
    assert_eq!(
        storage
            .state_event(&room.room_id, "m.room.name", "")
            .await
            .expect("state event")
            .as_deref(),
        Some(&*name.json)
    );
    assert_eq!(
        storage
            .resolve_alias("#r:example.org")
            .await
            .expect("alias")
            .as_deref(),
        Some(room.room_id.as_str())
    );
    assert_eq!(
        storage.processed_input("req-1").await.expect("processed"),
        Some((room.room_id.clone(), event_ids))
    );
    // A fresh storage (another replica) reads the same state.
    let other = Storage::new(storage.db.clone(), 1_000);
    let (state, _) = other.load_state(row.snapshot_nid).await.expect("state");
    assert_eq!(ids(&state), ids(&room.tip.state));
}

/// A 10 000-member room: one membership change writes one block and one
/// snapshot row; equal states share one snapshot.
async fn big_room_shares_blocks(storage: &Storage) {
    let (mut room, create) = Room::create("!big:example.org");
    let mut writer = storage
        .begin_room_write(&room.room_id, Some(VERSION))
        .await
        .expect("begin");
    let create_nid = writer
        .insert_event(&create, &ACCEPTED, Some(0), None)
        .await
        .expect("create");
    let (kind, key) = writer
        .state_key_nids(&create)
        .await
        .expect("nids")
        .expect("state");
    let mut nids = NidState::default();
    nids.set(kind, key, create_nid);
    // Members as NIDs directly: the blocks do not care what the events are.
    let member_type = {
        let join = room.next(
            "m.room.member",
            Some(ALICE),
            serde_json::json!({"membership": "join"}),
        );
        writer
            .state_key_nids(&join)
            .await
            .expect("nids")
            .expect("state")
            .0
    };
    for member in 0..10_000i64 {
        nids.set(member_type, 1_000_000 + member, 5_000_000 + member);
    }
    let first = writer.snapshot(&mut nids).await.expect("snapshot");
    writer
        .commit("req-big", &[], None, &[], &[])
        .await
        .expect("commit");
    let (blocks_before, block_bytes_before, snapshots_before, _) =
        storage.state_storage_size().await.expect("size");

    let mut writer = storage
        .begin_room_write(&room.room_id, None)
        .await
        .expect("begin");
    nids.set(member_type, 1_000_000 + 42, 9_999_999);
    let second = writer.snapshot(&mut nids).await.expect("snapshot");
    // The same state again is the same snapshot.
    let mut again = NidState {
        entries: nids.entries.clone(),
        snapshot_nid: None,
    };
    assert_eq!(writer.snapshot(&mut again).await.expect("snapshot"), second);
    writer
        .commit("req-big-2", &[], None, &[], &[])
        .await
        .expect("commit");
    assert_ne!(first, second);
    let (blocks_after, block_bytes_after, snapshots_after, _) =
        storage.state_storage_size().await.expect("size");
    assert_eq!(blocks_after - blocks_before, 1, "one block rewritten");
    assert_eq!(snapshots_after - snapshots_before, 1, "one snapshot row");
    assert!(
        block_bytes_after - block_bytes_before < 4_096,
        "{} bytes",
        block_bytes_after - block_bytes_before
    );
    let read = storage.snapshot(second).await.expect("read");
    assert_eq!(read.entries, nids.entries);
}

/// A failed write leaves nothing behind, and its NIDs are not cached.
async fn rolled_back_write_leaves_nothing(storage: &Storage) {
    let (mut room, create) = Room::create("!gone:example.org");
    room.next(
        "m.room.member",
        Some(ALICE),
        serde_json::json!({"membership": "join"}),
    );
    let custom = room.next(
        "org.example.never",
        Some("never-key"),
        serde_json::json!({}),
    );
    {
        let mut writer = storage
            .begin_room_write(&room.room_id, Some(VERSION))
            .await
            .expect("begin");
        writer
            .insert_event(&create, &ACCEPTED, Some(0), None)
            .await
            .expect("insert");
        writer.state_key_nids(&custom).await.expect("nids");
        // Dropped without commit.
    }
    assert!(storage.room(&room.room_id).await.expect("room").is_none());
    assert!(
        storage
            .events_by_id(&[create.event_id.as_str()])
            .await
            .expect("events")
            .is_empty()
    );
    assert_eq!(
        storage
            .known_nid("org.example.never", "never-key")
            .await
            .expect("nid"),
        None
    );
}

/// Aliases, the published list and reports.
async fn directory_tables(storage: &Storage) {
    assert!(
        storage
            .add_alias("#a:example.org", "!r:example.org", ALICE)
            .await
            .expect("add")
    );
    assert!(
        !storage
            .add_alias("#a:example.org", "!other:example.org", ALICE)
            .await
            .expect("add")
    );
    assert_eq!(
        storage.alias("#a:example.org").await.expect("alias"),
        Some(("!r:example.org".to_owned(), ALICE.to_owned()))
    );
    assert_eq!(
        storage.aliases_of("!r:example.org").await.expect("aliases"),
        vec!["#a:example.org".to_owned(), "#r:example.org".to_owned()]
    );
    assert!(
        storage
            .remove_alias("#a:example.org")
            .await
            .expect("remove")
    );
    assert!(
        !storage
            .remove_alias("#a:example.org")
            .await
            .expect("remove")
    );
    storage
        .set_published("!r:example.org", true)
        .await
        .expect("publish");
    storage
        .set_published("!r:example.org", true)
        .await
        .expect("publish twice");
    assert!(
        storage
            .is_published("!r:example.org")
            .await
            .expect("published")
    );
    // The room written by `write_room` has Alice joined.
    assert_eq!(
        storage.published_rooms().await.expect("list"),
        vec![("!r:example.org".to_owned(), 1)]
    );
    storage
        .set_published("!r:example.org", false)
        .await
        .expect("unpublish");
    assert!(storage.published_rooms().await.expect("list").is_empty());
    storage
        .add_report("!r:example.org", Some("$e"), ALICE, "spam", Some(-100), 1)
        .await
        .expect("report");
    assert_eq!(
        storage.reports().await.expect("reports"),
        vec![(
            "!r:example.org".to_owned(),
            Some("$e".to_owned()),
            ALICE.to_owned(),
            "spam".to_owned()
        )]
    );
}

/// A group's transaction writes several rooms (creating one), records
/// every input with its room, queues its outputs in order, more than one
/// statement takes, and the next write clears the published ones.
async fn a_group_writes_several_rooms_at_once(storage: &Storage) {
    let (first, first_create) = Room::create("!group-one:example.org");
    let (second, second_create) = Room::create("!group-two:example.org");
    let mut writer = storage
        .begin_room_write(&first.room_id, Some(VERSION))
        .await
        .expect("begin");
    writer
        .insert_event(&first_create, &ACCEPTED, Some(0), None)
        .await
        .expect("first create");
    writer
        .switch_room(&second.room_id, Some(VERSION))
        .await
        .expect("second room");
    writer
        .insert_event(&second_create, &ACCEPTED, Some(0), None)
        .await
        .expect("second create");
    let first_ids = vec![first_create.event_id.to_string()];
    let second_ids = vec![second_create.event_id.to_string()];
    let processed = [
        super::ProcessedInput {
            room_id: &first.room_id,
            request_id: "group/one",
            event_ids: &first_ids,
        },
        super::ProcessedInput {
            room_id: &second.room_id,
            request_id: "group/two",
            event_ids: &second_ids,
        },
    ];
    // 150 outputs: three statements' worth, alternating rooms.
    let payloads: Vec<(String, Vec<u8>)> = (0..150)
        .map(|n| {
            let room = if n % 2 == 0 { &first } else { &second };
            (room.room_id.clone(), format!("output {n}").into_bytes())
        })
        .collect();
    let outputs: Vec<(&str, &[u8])> = payloads
        .iter()
        .map(|(room, payload)| (room.as_str(), payload.as_slice()))
        .collect();
    let seqs = writer
        .commit_many(&processed, &outputs, &[])
        .await
        .expect("commit");
    assert_eq!(seqs.len(), 150);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs follow the outputs"
    );
    for room in [&first, &second] {
        assert!(storage.room(&room.room_id).await.expect("room").is_some());
        let queued = storage
            .pending_outputs_of(&room.room_id)
            .await
            .expect("outbox");
        let expected: Vec<(i64, Vec<u8>)> = seqs
            .iter()
            .zip(&payloads)
            .filter(|(_, (r, _))| *r == room.room_id)
            .map(|(seq, (_, payload))| (*seq, payload.clone()))
            .collect();
        assert_eq!(queued, expected, "each output under its seq, in order");
    }
    assert_eq!(
        storage.processed_input("group/two").await.expect("lookup"),
        Some((second.room_id.clone(), second_ids.clone()))
    );
    // The next write clears 40 published outputs (three statements' worth).
    let writer = storage
        .begin_room_write(&first.room_id, None)
        .await
        .expect("begin");
    writer
        .commit("group/three", &[], None, &[], &seqs[..40])
        .await
        .expect("commit");
    let left = storage.pending_outputs().await.expect("outbox");
    assert_eq!(
        left.iter()
            .map(|o| o.seq)
            .filter(|seq| seqs.contains(seq))
            .collect::<Vec<_>>(),
        seqs[40..].to_vec()
    );
}

#[tokio::test]
async fn sqlite_storage() {
    let (storage, _dir) = open(None).await;
    write_room(&storage).await;
    directory_tables(&storage).await;
    big_room_shares_blocks(&storage).await;
    rolled_back_write_leaves_nothing(&storage).await;
    a_group_writes_several_rooms_at_once(&storage).await;
}

#[tokio::test]
async fn postgres_storage() {
    let url = ganglion_base::testing::scratch_postgres("rs_storage").await;
    let (storage, _dir) = open(Some(url)).await;
    write_room(&storage).await;
    directory_tables(&storage).await;
    big_room_shares_blocks(&storage).await;
    rolled_back_write_leaves_nothing(&storage).await;
    a_group_writes_several_rooms_at_once(&storage).await;
}
