//! The roomserver's tables against both database engines: one body per
//! behaviour, run once on SQLite and once on a scratch PostgreSQL database.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::Ed25519KeyPair;

use super::{AppendBatch, MIGRATIONS, Storage};
use crate::events::{self, Pdu, RoomView, Signer, StateMap, Template};

const SERVER: &str = "example.org";
const ALICE: &str = "@alice:example.org";
const VERSION: &str = "10";

async fn open(database_url: Option<String>) -> (Storage, tempfile::TempDir) {
    let (db, dir) =
        ganglion_base::testing::open_scratch("roomserver", MIGRATIONS, database_url).await;
    (Storage { db }, dir)
}

fn key() -> Ed25519KeyPair {
    let der = Ed25519KeyPair::generate();
    Ed25519KeyPair::from_der(&der, "a_test".into()).expect("key")
}

fn content(json: serde_json::Value) -> CanonicalJsonObject {
    serde_json::from_value(json).expect("object")
}

/// A room built in memory the way the input consumer builds it: real,
/// signed events, each on top of the state and extremity before it.
struct Room {
    room_id: String,
    rules: RoomVersionRules,
    state: StateMap,
    extremities: Vec<String>,
    depth: i64,
    key: Ed25519KeyPair,
}

impl Room {
    /// A new room and its create event.
    fn create(room_id: &str) -> (Room, Arc<Pdu>) {
        let key = key();
        let (room_id, create) = events::build_create_event(
            VERSION,
            ALICE,
            CanonicalJsonObject::new(),
            room_id,
            &Signer {
                server_name: SERVER,
                key: &key,
            },
        )
        .expect("create event");
        let (_, rules) = events::rules_for(VERSION).expect("rules");
        let create = Arc::new(create);
        let mut state = StateMap::new();
        state.insert(("m.room.create".into(), String::new()), create.clone());
        let room = Room {
            room_id: room_id.to_string(),
            rules,
            state,
            extremities: vec![create.event_id.to_string()],
            depth: create.depth,
            key,
        };
        (room, create)
    }

    /// Builds the next event and advances the in-memory room past it.
    fn next(
        &mut self,
        event_type: &str,
        state_key: Option<&str>,
        body: serde_json::Value,
    ) -> Arc<Pdu> {
        let view = RoomView {
            room_id: &self.room_id,
            rules: &self.rules,
            state: &self.state,
            forward_extremities: &self.extremities,
            depth: self.depth,
        };
        let pdu = events::build_event(
            &view,
            Template {
                event_type,
                state_key,
                sender: ALICE,
                content: content(body),
                redacts: None,
            },
            &Signer {
                server_name: SERVER,
                key: &self.key,
            },
        )
        .expect("event");
        let pdu = Arc::new(pdu);
        if let Some(key) = &pdu.state_key {
            self.state
                .insert((pdu.kind.to_string(), key.clone()), pdu.clone());
        }
        self.extremities = vec![pdu.event_id.to_string()];
        self.depth = pdu.depth;
        pdu
    }
}

fn event_ids(state: &StateMap) -> BTreeMap<(String, String), String> {
    state
        .iter()
        .map(|(key, pdu)| (key.clone(), pdu.event_id.to_string()))
        .collect()
}

fn ids(events: &[Arc<Pdu>]) -> Vec<String> {
    events.iter().map(|p| p.event_id.to_string()).collect()
}

async fn pending(storage: &Storage) -> Vec<(i64, String, Vec<u8>)> {
    storage
        .pending_outputs()
        .await
        .expect("pending outputs")
        .into_iter()
        .map(|r| (r.seq, r.room_id, r.payload))
        .collect()
}

async fn append_and_read_back(storage: Storage) {
    let (mut room, create) = Room::create("!r:example.org");
    let room_id = room.room_id.clone();
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
    let message = room.next(
        "m.room.message",
        None,
        serde_json::json!({"msgtype": "m.text", "body": "hi"}),
    );
    let created = vec![create.clone(), join.clone(), name.clone(), message.clone()];
    let outputs: Vec<Vec<u8>> = (1..=4u8).map(|i| vec![i; 3]).collect();

    assert!(storage.room(&room_id).await.expect("room").is_none());
    let seqs = storage
        .append(
            &AppendBatch {
                room_id: room_id.clone(),
                new_room_version: Some(VERSION.into()),
                events: created.clone(),
                request_id: "req-create".into(),
                outputs: outputs.clone(),
                alias: Some("#room:example.org".into()),
            },
            0,
        )
        .await
        .expect("append create batch");
    assert_eq!(seqs.len(), 4);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs ascend: {seqs:?}"
    );

    // The room, its state and its extremity, as the next input would load them.
    let row = storage
        .room(&room_id)
        .await
        .expect("room")
        .expect("room exists");
    assert_eq!(row.room_version, VERSION);
    assert_eq!(row.depth, message.depth);
    assert!(
        storage
            .room("!other:example.org")
            .await
            .expect("room")
            .is_none()
    );

    let state = storage.current_state(row.room_nid).await.expect("state");
    assert_eq!(event_ids(&state), event_ids(&room.state));
    assert_eq!(state.len(), 3, "the message is not state");
    let loaded_name = &state[&("m.room.name".to_owned(), String::new())];
    assert_eq!(&*loaded_name.json, &*name.json);
    assert_eq!(loaded_name.depth, name.depth);
    assert_eq!(loaded_name.sender.as_str(), ALICE);

    assert_eq!(
        storage
            .forward_extremities(row.room_nid)
            .await
            .expect("extremities"),
        vec![message.event_id.to_string()]
    );
    assert_eq!(
        storage
            .state_event(&room_id, "m.room.member", ALICE)
            .await
            .expect("state event")
            .as_deref(),
        Some(&*join.json)
    );
    assert_eq!(
        storage
            .state_event(&room_id, "m.room.topic", "")
            .await
            .expect("state event"),
        None
    );
    assert_eq!(
        storage
            .state_event(&room_id, "m.room.message", "")
            .await
            .expect("state event"),
        None
    );
    assert_eq!(
        storage
            .resolve_alias("#room:example.org")
            .await
            .expect("alias")
            .as_deref(),
        Some(room_id.as_str())
    );
    assert_eq!(
        storage
            .resolve_alias("#none:example.org")
            .await
            .expect("alias"),
        None
    );

    assert_eq!(
        storage
            .processed_input("req-create")
            .await
            .expect("processed"),
        Some((room_id.clone(), ids(&created)))
    );
    assert_eq!(
        storage
            .processed_input("req-unknown")
            .await
            .expect("processed"),
        None
    );

    let expected: Vec<(i64, String, Vec<u8>)> = seqs
        .iter()
        .zip(&outputs)
        .map(|(seq, payload)| (*seq, room_id.clone(), payload.clone()))
        .collect();
    assert_eq!(pending(&storage).await, expected);

    // The next batch replaces a state entry, moves the extremity and, as its
    // outputs are committed, clears those already published.
    let rename = room.next(
        "m.room.name",
        Some(""),
        serde_json::json!({"name": "second"}),
    );
    let reply = room.next(
        "m.room.message",
        None,
        serde_json::json!({"msgtype": "m.text", "body": "again"}),
    );
    let more = storage
        .append(
            &AppendBatch {
                room_id: room_id.clone(),
                new_room_version: None,
                events: vec![rename.clone(), reply.clone()],
                request_id: "req-send".into(),
                outputs: vec![b"five".to_vec(), b"six".to_vec()],
                alias: None,
            },
            seqs[1],
        )
        .await
        .expect("append send batch");
    assert_eq!(more.len(), 2);
    assert!(
        more[0] > seqs[3] && more[1] > more[0],
        "{seqs:?} then {more:?}"
    );
    let after_second: Vec<(i64, String, Vec<u8>)> = expected[2..]
        .iter()
        .cloned()
        .chain([
            (more[0], room_id.clone(), b"five".to_vec()),
            (more[1], room_id.clone(), b"six".to_vec()),
        ])
        .collect();
    assert_eq!(pending(&storage).await, after_second);

    let row = storage
        .room(&room_id)
        .await
        .expect("room")
        .expect("room exists");
    assert_eq!(row.depth, reply.depth);
    let state = storage.current_state(row.room_nid).await.expect("state");
    assert_eq!(event_ids(&state), event_ids(&room.state));
    assert_eq!(
        state[&("m.room.name".to_owned(), String::new())].event_id,
        rename.event_id
    );
    assert_eq!(
        storage
            .forward_extremities(row.room_nid)
            .await
            .expect("extremities"),
        vec![reply.event_id.to_string()]
    );
    assert_eq!(
        storage
            .state_event(&room_id, "m.room.name", "")
            .await
            .expect("state event")
            .as_deref(),
        Some(&*rename.json)
    );
    assert_eq!(
        storage
            .processed_input("req-send")
            .await
            .expect("processed"),
        Some((room_id.clone(), ids(&[rename.clone(), reply.clone()])))
    );

    // A redelivered request fails as a unique violation and changes nothing,
    // not even the outbox rows it would have cleared.
    let topic = room.next("m.room.topic", Some(""), serde_json::json!({"topic": "t"}));
    let error = storage
        .append(
            &AppendBatch {
                room_id: room_id.clone(),
                new_room_version: None,
                events: vec![topic.clone()],
                request_id: "req-send".into(),
                outputs: vec![b"seven".to_vec()],
                alias: None,
            },
            more[1],
        )
        .await
        .expect_err("same request ID twice");
    assert!(error.is_unique_violation(), "{error:?}");
    assert_eq!(pending(&storage).await, after_second);
    assert_eq!(
        storage
            .state_event(&room_id, "m.room.topic", "")
            .await
            .expect("state event"),
        None
    );
    assert_eq!(
        storage
            .forward_extremities(row.room_nid)
            .await
            .expect("extremities"),
        vec![reply.event_id.to_string()]
    );
    assert_eq!(
        storage
            .processed_input("req-send")
            .await
            .expect("processed"),
        Some((room_id.clone(), ids(&[rename, reply.clone()])))
    );
    assert_eq!(
        storage
            .room(&room_id)
            .await
            .expect("room")
            .expect("room")
            .depth,
        reply.depth
    );

    // Publishing clears the outbox in order.
    storage
        .delete_outputs_through(seqs[3])
        .await
        .expect("delete outputs");
    assert_eq!(pending(&storage).await, after_second[2..].to_vec());
    storage
        .delete_outputs_through(more[1])
        .await
        .expect("delete outputs");
    assert_eq!(pending(&storage).await, vec![]);
}

async fn taken_alias_conflicts(storage: Storage) {
    let (first, create) = Room::create("!first:example.org");
    storage
        .append(
            &AppendBatch {
                room_id: first.room_id.clone(),
                new_room_version: Some(VERSION.into()),
                events: vec![create],
                request_id: "req-first".into(),
                outputs: vec![b"first".to_vec()],
                alias: Some("#taken:example.org".into()),
            },
            0,
        )
        .await
        .expect("first room");

    let (second, create) = Room::create("!second:example.org");
    let error = storage
        .append(
            &AppendBatch {
                room_id: second.room_id.clone(),
                new_room_version: Some(VERSION.into()),
                events: vec![create],
                request_id: "req-second".into(),
                outputs: vec![b"second".to_vec()],
                alias: Some("#taken:example.org".into()),
            },
            0,
        )
        .await
        .expect_err("alias already taken");
    assert!(error.is_unique_violation(), "{error:?}");
    // Not a redelivery: the consumer tells the two apart by this.
    assert_eq!(
        storage
            .processed_input("req-second")
            .await
            .expect("processed"),
        None
    );
    assert!(storage.room(&second.room_id).await.expect("room").is_none());
    assert_eq!(
        storage
            .resolve_alias("#taken:example.org")
            .await
            .expect("alias")
            .as_deref(),
        Some(first.room_id.as_str())
    );
    let outbox = pending(&storage).await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].1, first.room_id);
}

#[tokio::test]
async fn sqlite_append_and_read_back() {
    let (storage, _dir) = open(None).await;
    append_and_read_back(storage).await;
}

#[tokio::test]
async fn postgres_append_and_read_back() {
    let url = ganglion_base::testing::scratch_postgres("rs_storage").await;
    let (storage, _dir) = open(Some(url)).await;
    append_and_read_back(storage).await;
}

#[tokio::test]
async fn sqlite_taken_alias_conflicts() {
    let (storage, _dir) = open(None).await;
    taken_alias_conflicts(storage).await;
}

#[tokio::test]
async fn postgres_taken_alias_conflicts() {
    let url = ganglion_base::testing::scratch_postgres("rs_storage_alias").await;
    let (storage, _dir) = open(Some(url)).await;
    taken_alias_conflicts(storage).await;
}
