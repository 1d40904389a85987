//! Auth and state resolution on hand-built DAGs, per room version: the
//! spec's expected outcome for forks, state resets, a banned user's
//! concurrent events, and power-level races. Pure: no database, no log.

use std::sync::Arc;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::Ed25519KeyPair;

use crate::events::{self, Pdu, RoomView, Signer, StateMap, Template};
use crate::resolution::{self, EventsById};

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const CAROL: &str = "@carol:example.org";

/// A room whose DAG a test builds by hand: every event names the events it
/// follows and the state it is built on.
struct Dag {
    room_id: String,
    rules: RoomVersionRules,
    key: Ed25519KeyPair,
    events: EventsById,
}

impl Dag {
    /// A room of `version` where Alice (creator, 100) has invited and
    /// joined Bob (50) and Carol (0). Returns the DAG, its last event and
    /// the state after it.
    fn new(version: &str) -> (Dag, Arc<Pdu>, StateMap) {
        let der = Ed25519KeyPair::generate();
        let key = Ed25519KeyPair::from_der(&der, "a_test".into()).expect("key");
        let (room_id, create) = events::build_create_event(
            version,
            ALICE,
            CanonicalJsonObject::new(),
            "!dag:example.org",
            &Signer {
                server_name: "example.org",
                key: &key,
            },
        )
        .expect("create");
        let (_, rules) = events::rules_for(version).expect("rules");
        let create = Arc::new(create);
        let steps_rules = rules.clone();
        let rules_ref = &steps_rules;
        let mut dag = Dag {
            room_id: room_id.to_string(),
            rules,
            key,
            events: EventsById::new(),
        };
        dag.events.insert(create.event_id.clone(), create.clone());
        let mut state = StateMap::new();
        state.insert(("m.room.create".into(), String::new()), create.clone());
        let mut last = create;
        let steps: Vec<(&str, &str, Option<&str>, serde_json::Value)> = vec![
            (
                ALICE,
                "m.room.member",
                Some(ALICE),
                serde_json::json!({"membership": "join"}),
            ),
            (
                ALICE,
                "m.room.power_levels",
                Some(""),
                levels(rules_ref, &[(ALICE, 100), (BOB, 50)]),
            ),
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
            last = dag.event(sender, kind, key, content, &[&last], &state);
            state = after(&state, &last);
        }
        (dag, last, state)
    }

    /// Builds (and authorises against `state`) an event following `prev`.
    fn event(
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

    fn try_event(
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
        Ok(pdu)
    }

    fn resolve(&self, forks: &[&StateMap]) -> StateMap {
        resolution::resolve(&self.rules, forks, &self.events).expect("resolves")
    }
}

/// Power levels content; room creators (version 12+) are not listed, they
/// outrank every level.
fn levels(rules: &RoomVersionRules, users: &[(&str, i64)]) -> serde_json::Value {
    let users: serde_json::Map<String, serde_json::Value> = users
        .iter()
        .filter(|(user, _)| {
            !(rules.authorization.explicitly_privilege_room_creators && *user == ALICE)
        })
        .map(|(user, level)| ((*user).to_owned(), serde_json::json!(level)))
        .collect();
    serde_json::json!({"users": users, "state_default": 50, "events_default": 0, "ban": 50, "kick": 50})
}

fn after(state: &StateMap, pdu: &Arc<Pdu>) -> StateMap {
    let mut next = state.clone();
    if let Some(key) = &pdu.state_key {
        next.insert((pdu.kind.to_string(), key.clone()), pdu.clone());
    }
    next
}

fn get<'a>(state: &'a StateMap, kind: &str, key: &str) -> &'a Arc<Pdu> {
    &state[&(kind.to_owned(), key.to_owned())]
}

fn membership(state: &StateMap, user: &str) -> String {
    let content: serde_json::Value =
        serde_json::from_str(get(state, "m.room.member", user).content.get()).expect("content");
    content["membership"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const VERSIONS: [&str; 12] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

#[test]
fn a_banned_users_concurrent_state_loses() {
    for version in VERSIONS {
        let (mut dag, base, state) = Dag::new(version);
        // Fork A: Alice bans Bob. Fork B, concurrently: Bob changes the topic.
        let ban = dag.event(
            ALICE,
            "m.room.member",
            Some(BOB),
            serde_json::json!({"membership": "ban"}),
            &[&base],
            &state,
        );
        let topic = dag.event(
            BOB,
            "m.room.topic",
            Some(""),
            serde_json::json!({"topic": "bob was here"}),
            &[&base],
            &state,
        );
        let (a, b) = (after(&state, &ban), after(&state, &topic));
        for forks in [[&a, &b], [&b, &a]] {
            let resolved = dag.resolve(&forks);
            assert_eq!(membership(&resolved, BOB), "ban", "v{version}");
            assert_eq!(
                get(&resolved, "m.room.topic", "").event_id,
                get(&state, "m.room.topic", "").event_id,
                "v{version}: the banned user's topic is not in the resolved state"
            );
        }
        // Bob's next event, after the merge, is refused by the resolved state.
        let merged = dag.resolve(&[&a, &b]);
        let late = dag.try_event(
            BOB,
            "m.room.message",
            None,
            serde_json::json!({"body": "still here?"}),
            &[&ban, &topic],
            &merged,
        );
        assert!(
            matches!(late, Err(events::EventError::Forbidden(_))),
            "v{version}"
        );
    }
}

#[test]
fn power_level_race_is_won_by_the_more_powerful() {
    for version in VERSIONS {
        let (mut dag, base, state) = Dag::new(version);
        // Alice demotes Bob while Bob, concurrently, raises Carol.
        let demote = dag.event(
            ALICE,
            "m.room.power_levels",
            Some(""),
            levels(&dag.rules, &[(ALICE, 100)]),
            &[&base],
            &state,
        );
        let raise = dag.event(
            BOB,
            "m.room.power_levels",
            Some(""),
            levels(&dag.rules, &[(ALICE, 100), (BOB, 50), (CAROL, 50)]),
            &[&base],
            &state,
        );
        let (a, b) = (after(&state, &demote), after(&state, &raise));
        for forks in [[&a, &b], [&b, &a]] {
            let resolved = dag.resolve(&forks);
            assert_eq!(
                get(&resolved, "m.room.power_levels", "").event_id,
                demote.event_id,
                "v{version}"
            );
        }
    }
}

#[test]
fn an_old_fork_does_not_reset_state() {
    // Room version 1's algorithm is known to reset state; from version 2 on
    // a fork from before a ban and a topic change cannot undo them.
    for version in &VERSIONS[1..] {
        let (mut dag, base, state) = Dag::new(version);
        let ban = dag.event(
            ALICE,
            "m.room.member",
            Some(BOB),
            serde_json::json!({"membership": "ban"}),
            &[&base],
            &state,
        );
        let s1 = after(&state, &ban);
        let topic = dag.event(
            ALICE,
            "m.room.topic",
            Some(""),
            serde_json::json!({"topic": "T1"}),
            &[&ban],
            &s1,
        );
        let s2 = after(&s1, &topic);
        let mut head = topic.clone();
        let mut main = s2.clone();
        for i in 0..5 {
            head = dag.event(
                ALICE,
                "m.room.message",
                None,
                serde_json::json!({"body": format!("m{i}")}),
                &[&head],
                &main,
            );
            main = after(&main, &head);
        }
        // Bob, from the state before his ban, sends a message and a name.
        let old = dag.event(
            BOB,
            "m.room.name",
            Some(""),
            serde_json::json!({"name": "mine"}),
            &[&base],
            &state,
        );
        let fork = after(&state, &old);
        // The fork is authorised by the state before it, not the current
        // state: a receiving server soft-fails it.
        assert!(events::authorise_against_state(&dag.rules, &fork, &old).is_ok());
        assert!(events::authorise_against_state(&dag.rules, &main, &old).is_err());
        let resolved = dag.resolve(&[&main, &fork]);
        assert_eq!(membership(&resolved, BOB), "ban", "v{version}");
        assert_eq!(
            get(&resolved, "m.room.topic", "").event_id,
            topic.event_id,
            "v{version}"
        );
        assert!(
            !resolved.contains_key(&("m.room.name".to_owned(), String::new())),
            "v{version}: a banned user's name is not in the state"
        );
    }
}

#[test]
fn concurrent_joins_and_leaves_merge() {
    for version in VERSIONS {
        let (mut dag, base, state) = Dag::new(version);
        // Carol leaves on one fork; Alice changes the topic on the other.
        let leave = dag.event(
            CAROL,
            "m.room.member",
            Some(CAROL),
            serde_json::json!({"membership": "leave"}),
            &[&base],
            &state,
        );
        let topic = dag.event(
            ALICE,
            "m.room.topic",
            Some(""),
            serde_json::json!({"topic": "T2"}),
            &[&base],
            &state,
        );
        let resolved = dag.resolve(&[&after(&state, &leave), &after(&state, &topic)]);
        assert_eq!(membership(&resolved, CAROL), "leave", "v{version}");
        assert_eq!(
            get(&resolved, "m.room.topic", "").event_id,
            topic.event_id,
            "v{version}"
        );
        assert_eq!(membership(&resolved, BOB), "join", "v{version}");
        assert_eq!(resolved.len(), state.len(), "v{version}");
    }
}

#[test]
fn events_fail_auth_against_their_own_auth_events() {
    for version in VERSIONS {
        let (mut dag, base, state) = Dag::new(version);
        // Carol (power 0) cannot set the topic (state_default 50).
        let refused = dag.try_event(
            CAROL,
            "m.room.topic",
            Some(""),
            serde_json::json!({"topic": "no"}),
            &[&base],
            &state,
        );
        assert!(
            matches!(refused, Err(events::EventError::Forbidden(_))),
            "v{version}"
        );
        // An outsider's event, whose auth events are the room's, fails
        // against them.
        let message = dag.event(
            BOB,
            "m.room.message",
            None,
            serde_json::json!({"body": "hello"}),
            &[&base],
            &state,
        );
        let auth: std::collections::HashMap<_, _> = message
            .auth_events
            .iter()
            .chain(events::create_event_id(&dag.rules, &message).as_ref())
            .filter_map(|id| dag.events.get(id).map(|e| (id.clone(), e.clone())))
            .collect();
        assert!(events::authorise_by_auth_events(&dag.rules, &message, &auth).is_ok());
        // Without its auth events (say a server left them out) it fails.
        let none = std::collections::HashMap::new();
        assert!(
            events::authorise_by_auth_events(&dag.rules, &message, &none).is_err(),
            "v{version}"
        );
        // A rejected auth event poisons the events it authorises.
        let mut poisoned = auth.clone();
        for event in poisoned.values_mut() {
            if event.kind.to_string() == "m.room.member" {
                let mut rejected = (**event).clone();
                rejected.rejected = true;
                *event = Arc::new(rejected);
            }
        }
        assert!(
            events::authorise_by_auth_events(&dag.rules, &message, &poisoned).is_err(),
            "v{version}"
        );
    }
}

#[test]
fn knocking_needs_version_7() {
    for version in VERSIONS {
        let (mut dag, base, state) = Dag::new(version);
        let rules = dag.event(
            ALICE,
            "m.room.join_rules",
            Some(""),
            serde_json::json!({"join_rule": "knock"}),
            &[&base],
            &state,
        );
        let state = after(&state, &rules);
        let knock = dag.try_event(
            "@dave:example.org",
            "m.room.member",
            Some("@dave:example.org"),
            serde_json::json!({"membership": "knock"}),
            &[&rules],
            &state,
        );
        let supported = version.parse::<u32>().unwrap_or(0) >= 7;
        assert_eq!(knock.is_ok(), supported, "v{version}: {knock:?}");
    }
}
