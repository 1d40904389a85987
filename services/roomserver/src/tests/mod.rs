//! Roomserver tests beyond single modules: auth and state resolution on
//! hand-built DAGs (`dag.rs`, pure) and the input consumer receiving such
//! DAGs for real (`received.rs`: SQLite, the embedded log).

mod dag;
mod group;
mod received;

use std::sync::Arc;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::Ed25519KeyPair;

use crate::events::{self, Pdu, RoomView, Signer, StateMap, Template};
use crate::resolution::{self, EventsById};

pub(crate) const ALICE: &str = "@alice:example.org";
pub(crate) const BOB: &str = "@bob:example.org";
pub(crate) const CAROL: &str = "@carol:example.org";

/// A room whose DAG a test builds by hand: every event names the events it
/// follows and the state it is built on.
pub(crate) struct Dag {
    pub(crate) room_id: String,
    pub(crate) rules: RoomVersionRules,
    key: Ed25519KeyPair,
    pub(crate) events: EventsById,
    /// Every event, in the order built.
    pub(crate) order: Vec<Arc<Pdu>>,
}

/// The end of a linear history: its last event and the state after it.
pub(crate) struct Tip {
    pub(crate) last: Arc<Pdu>,
    pub(crate) state: StateMap,
}

impl Dag {
    /// A room of `version` with only Alice's create event, and its tip.
    /// `room_id` is used by versions whose room ID is not the create event's.
    pub(crate) fn empty(version: &str, room_id: &str) -> (Dag, Tip) {
        let der = Ed25519KeyPair::generate();
        let key = Ed25519KeyPair::from_der(&der, "a_test".into()).expect("key");
        let (room_id, create) = events::build_create_event(
            version,
            ALICE,
            CanonicalJsonObject::new(),
            room_id,
            &Signer {
                server_name: "example.org",
                key: &key,
            },
        )
        .expect("create");
        let (_, rules) = events::rules_for(version).expect("rules");
        let create = Arc::new(create);
        let mut dag = Dag {
            room_id: room_id.to_string(),
            rules,
            key,
            events: EventsById::new(),
            order: vec![create.clone()],
        };
        dag.events.insert(create.event_id.clone(), create.clone());
        let mut state = StateMap::new();
        state.insert(("m.room.create".into(), String::new()), create.clone());
        (
            dag,
            Tip {
                last: create,
                state,
            },
        )
    }

    /// A room of `version` where Alice (creator, 100) has invited and
    /// joined Bob (50) and Carol (0). Returns the DAG, its last event and
    /// the state after it.
    pub(crate) fn new(version: &str) -> (Dag, Arc<Pdu>, StateMap) {
        let (mut dag, mut tip) = Dag::empty(version, "!dag:example.org");
        let power_levels = levels(&dag.rules, &[(ALICE, 100), (BOB, 50)]);
        let steps: Vec<(&str, &str, Option<&str>, serde_json::Value)> = vec![
            (
                ALICE,
                "m.room.member",
                Some(ALICE),
                serde_json::json!({"membership": "join"}),
            ),
            (ALICE, "m.room.power_levels", Some(""), power_levels),
            (
                ALICE,
                "m.room.join_rules",
                Some(""),
                serde_json::json!({"join_rule": "invite"}),
            ),
            (
                ALICE,
                "m.room.topic",
                Some(""),
                serde_json::json!({"topic": "T0"}),
            ),
            (
                ALICE,
                "m.room.member",
                Some(BOB),
                serde_json::json!({"membership": "invite"}),
            ),
            (
                BOB,
                "m.room.member",
                Some(BOB),
                serde_json::json!({"membership": "join"}),
            ),
            (
                ALICE,
                "m.room.member",
                Some(CAROL),
                serde_json::json!({"membership": "invite"}),
            ),
            (
                CAROL,
                "m.room.member",
                Some(CAROL),
                serde_json::json!({"membership": "join"}),
            ),
        ];
        for (sender, kind, key, content) in steps {
            dag.append(&mut tip, sender, kind, key, content)
                .unwrap_or_else(|e| panic!("{kind} by {sender}: {e}"));
        }
        (dag, tip.last, tip.state)
    }

    /// Builds an event on the tip of a linear history and moves the tip.
    pub(crate) fn append(
        &mut self,
        tip: &mut Tip,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: serde_json::Value,
    ) -> Result<Arc<Pdu>, events::EventError> {
        let pdu = self.try_event(sender, kind, state_key, content, &[&tip.last], &tip.state)?;
        tip.state = after(&tip.state, &pdu);
        tip.last = pdu.clone();
        Ok(pdu)
    }

    /// Builds (and authorises against `state`) an event following `prev`.
    pub(crate) fn event(
        &mut self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: serde_json::Value,
        prev: &[&Arc<Pdu>],
        state: &StateMap,
    ) -> Arc<Pdu> {
        self.try_event(sender, kind, state_key, content, prev, state)
            .unwrap_or_else(|e| panic!("{kind} by {sender}: {e}"))
    }

    pub(crate) fn try_event(
        &mut self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: serde_json::Value,
        prev: &[&Arc<Pdu>],
        state: &StateMap,
    ) -> Result<Arc<Pdu>, events::EventError> {
        let prev: Vec<Arc<Pdu>> = prev.iter().map(|p| (*p).clone()).collect();
        let pdu = Arc::new(events::build_event(
            &RoomView {
                room_id: &self.room_id,
                rules: &self.rules,
                state,
                forward_extremities: &prev,
            },
            Template {
                event_type: kind,
                state_key,
                sender,
                content: serde_json::from_value(content).expect("object"),
                redacts: None,
            },
            &Signer {
                server_name: "example.org",
                key: &self.key,
            },
        )?);
        self.events.insert(pdu.event_id.clone(), pdu.clone());
        self.order.push(pdu.clone());
        Ok(pdu)
    }

    pub(crate) fn resolve(&self, forks: &[&StateMap]) -> StateMap {
        resolution::resolve(&self.rules, forks, &self.events).expect("resolves")
    }
}

/// Power levels content; room creators (version 12+) are not listed, they
/// outrank every level.
pub(crate) fn levels(rules: &RoomVersionRules, users: &[(&str, i64)]) -> serde_json::Value {
    let users: serde_json::Map<String, serde_json::Value> = users
        .iter()
        .filter(|(user, _)| {
            !(rules.authorization.explicitly_privilege_room_creators && *user == ALICE)
        })
        .map(|(user, level)| ((*user).to_owned(), serde_json::json!(level)))
        .collect();
    serde_json::json!({"users": users, "state_default": 50, "events_default": 0, "ban": 50, "kick": 50})
}

pub(crate) fn after(state: &StateMap, pdu: &Arc<Pdu>) -> StateMap {
    let mut next = state.clone();
    if let Some(key) = &pdu.state_key {
        next.insert((pdu.kind.to_string(), key.clone()), pdu.clone());
    }
    next
}

pub(crate) fn get<'a>(state: &'a StateMap, kind: &str, key: &str) -> &'a Arc<Pdu> {
    &state[&(kind.to_owned(), key.to_owned())]
}

pub(crate) fn membership(state: &StateMap, user: &str) -> String {
    let content: serde_json::Value =
        serde_json::from_str(get(state, "m.room.member", user).content.get()).expect("content");
    content["membership"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
