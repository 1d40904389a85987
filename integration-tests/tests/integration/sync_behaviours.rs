//! `/sync` as the spec describes it and clients rely on it: the state of
//! gapped incremental syncs, lazy-loaded members (and not sending them
//! twice), room summaries, rooms newly joined, current state under private
//! history, timeline limits counted after the filter, inline filters and
//! the federation event format.

use std::collections::BTreeMap;

use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::{Value, json};

/// Lazy-loaded members, the filter the sytest lazy-loading cases use.
fn lazy(limit: u32) -> Value {
    json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": limit}}})
}

/// A `/sync` with an inline filter: its body.
async fn sync(client: &Client, filter: &Value, since: Option<&str>) -> Value {
    let mut path = format!(
        "/_matrix/client/v3/sync?timeout=0&filter={}",
        encode(&filter.to_string())
    );
    if let Some(since) = since {
        path.push_str(&format!("&since={}", encode(since)));
    }
    let reply = client.call(Method::GET, &path, None).await;
    assert_eq!(reply.status, 200, "sync: {reply:?}");
    reply.body
}

fn next(body: &Value) -> String {
    body["next_batch"].as_str().unwrap_or_default().to_owned()
}

/// The joined room's section of a sync.
fn joined<'a>(body: &'a Value, room: &str) -> &'a Value {
    &body["rooms"]["join"][room]
}

/// The members in a joined room's `state`: member → membership.
fn state_members(body: &Value, room: &str) -> BTreeMap<String, String> {
    joined(body, room)["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| {
            (
                e["state_key"].as_str().unwrap_or_default().to_owned(),
                e["content"]["membership"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn expect(members: &[(&Client, &str)]) -> BTreeMap<String, String> {
    members
        .iter()
        .map(|(c, m)| (c.user_id.clone(), (*m).to_owned()))
        .collect()
}

/// `n` events of a made-up type from `client`.
async fn fillers(client: &Client, room: &str, n: usize, tag: &str) {
    for i in 0..n {
        let reply = client
            .call(
                Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/a.made.up.filler.type/{tag}{i}",
                    encode(room)
                ),
                Some(json!({"filler": i})),
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
}

async fn put_state(client: &Client, room: &str, kind: &str, key: &str, content: Value) -> String {
    let reply = client
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                encode(room),
                encode(key)
            ),
            Some(content),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A named public room of Alice's that `others` have joined.
async fn named_room(alice: &Client, others: &[&Client]) -> String {
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "A room name"}))
        .await;
    for other in others {
        assert_eq!(other.join(&room).await.status, 200);
    }
    room
}

#[tokio::test]
async fn lazy_loaded_members_in_every_kind_of_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = server.base_url.as_str();
    let alice = Client::register(base, "alice", "pw-alice-ll").await;
    let bob = Client::register(base, "bob", "pw-bob-ll").await;
    let charlie = Client::register(base, "charlie", "pw-charlie-ll").await;
    let dave = Client::register(base, "dave", "pw-dave-ll").await;
    let filter = lazy(10);

    // An initial sync: the timeline's senders and the user.
    let room = named_room(&alice, &[&bob, &charlie]).await;
    fillers(&bob, &room, 10, "a").await;
    fillers(&charlie, &room, 10, "b").await;
    let first = sync(&alice, &filter, None).await;
    assert_eq!(
        state_members(&first, &room),
        expect(&[(&alice, "join"), (&charlie, "join")])
    );

    // An incremental sync without a gap: only the new sender, once.
    let room = named_room(&alice, &[&bob, &charlie]).await;
    fillers(&bob, &room, 10, "c").await;
    let first = sync(&alice, &filter, None).await;
    let types: Vec<(String, String)> = joined(&first, &room)["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["state_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        !types.iter().any(|(_, key)| *key == charlie.user_id),
        "{types:?}"
    );
    charlie.send_text(&room, "c1", "hello").await;
    let second = sync(&alice, &filter, Some(&next(&first))).await;
    assert_eq!(state_members(&second, &room), expect(&[(&charlie, "join")]));
    let third = sync(&alice, &filter, Some(&next(&second))).await;
    assert!(
        third["rooms"]["join"].get(&room).is_none(),
        "an unchanged room is left out: {third}"
    );

    // Gapped incremental syncs include all state changes, and the members
    // the timeline needs, not those sent before.
    let room = named_room(&alice, &[&bob, &charlie]).await;
    fillers(&bob, &room, 10, "d").await;
    let first = sync(&alice, &filter, None).await;
    assert_eq!(
        state_members(&first, &room),
        expect(&[(&alice, "join"), (&bob, "join")])
    );
    assert_eq!(dave.join(&room).await.status, 200);
    fillers(&charlie, &room, 20, "e").await;
    let second = sync(&alice, &filter, Some(&next(&first))).await;
    assert_eq!(joined(&second, &room)["timeline"]["limited"], true);
    assert_eq!(
        state_members(&second, &room),
        expect(&[(&charlie, "join"), (&dave, "join")])
    );
    assert_eq!(dave.leave(&room).await.status, 200);
    fillers(&charlie, &room, 20, "f").await;
    let third = sync(&alice, &filter, Some(&next(&second))).await;
    assert_eq!(state_members(&third, &room), expect(&[(&dave, "leave")]));

    // Old leaves are present in gapped syncs; leaves in non-gapped ones are
    // in the timeline.
    let room = named_room(&alice, &[&bob, &charlie]).await;
    charlie.send_text(&room, "h1", "Hello world").await;
    fillers(&bob, &room, 10, "g").await;
    let first = sync(&alice, &filter, None).await;
    assert_eq!(charlie.leave(&room).await.status, 200);
    fillers(&bob, &room, 10, "h").await;
    let second = sync(&alice, &filter, Some(&next(&first))).await;
    assert_eq!(
        state_members(&second, &room),
        expect(&[(&charlie, "leave")])
    );
    assert_eq!(charlie.join(&room).await.status, 200);
    let third = sync(&alice, &filter, None).await;
    assert_eq!(charlie.leave(&room).await.status, 200);
    fillers(&bob, &room, 5, "i").await;
    let fourth = sync(&alice, &filter, Some(&next(&third))).await;
    let timeline = &joined(&fourth, &room)["timeline"]["events"];
    assert_eq!(timeline[0]["type"], "m.room.member", "{timeline}");
    assert_eq!(timeline[0]["state_key"], charlie.user_id.as_str());

    // Old members who start speaking, and members from the gap.
    let room = named_room(&alice, &[&bob, &charlie]).await;
    fillers(&bob, &room, 10, "j").await;
    let first = sync(&alice, &filter, None).await;
    fillers(&bob, &room, 10, "k").await;
    fillers(&charlie, &room, 10, "l").await;
    let second = sync(&alice, &filter, Some(&next(&first))).await;
    assert_eq!(state_members(&second, &room), expect(&[(&charlie, "join")]));

    // Not sent again by default; sent again when asked.
    for redundant in [false, true] {
        let room = named_room(&alice, &[&bob, &charlie]).await;
        let mut filter = lazy(10);
        filter["room"]["state"]["include_redundant_members"] = json!(redundant);
        fillers(&bob, &room, 10, "m").await;
        fillers(&charlie, &room, 5, "n").await;
        let first = sync(&alice, &filter, None).await;
        assert_eq!(
            state_members(&first, &room),
            expect(&[(&alice, "join"), (&bob, "join"), (&charlie, "join")]),
            "{}",
            joined(&first, &room)
        );
        bob.send_text(&room, "o", "from bob").await;
        charlie.send_text(&room, "o", "from charlie").await;
        let second = sync(&alice, &filter, Some(&next(&first))).await;
        let wanted = if redundant {
            expect(&[(&bob, "join"), (&charlie, "join")])
        } else {
            BTreeMap::new()
        };
        assert_eq!(
            state_members(&second, &room),
            wanted,
            "redundant: {redundant}"
        );
    }
}

#[tokio::test]
async fn room_summaries_name_unnamed_rooms_and_count_members() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = server.base_url.as_str();
    let alice = Client::register(base, "alice", "pw-alice-sum").await;
    let mut others = Vec::new();
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        others.push(Client::register(base, name, &format!("pw-{name}-sum")).await);
    }
    let filter = json!({"room": {"state": {"lazy_load_members": true}}});

    let unnamed = alice.create_room(json!({"preset": "public_chat"})).await;
    for other in &others[..2] {
        assert_eq!(other.join(&unnamed).await.status, 200);
    }
    let body = sync(&alice, &filter, None).await;
    assert_eq!(
        joined(&body, &unnamed)["summary"],
        json!({
            "m.joined_member_count": 3,
            "m.invited_member_count": 0,
            "m.heroes": [others[0].user_id, others[1].user_id],
        })
    );
    // The heroes' memberships come with it (when the timeline lacks them),
    // so a client can name the room.
    alice.send_text(&unnamed, "last", "the last word").await;
    let short = json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 1}}});
    let body = sync(&alice, &short, None).await;
    assert_eq!(
        state_members(&body, &unnamed),
        expect(&[(&alice, "join"), (&others[0], "join"), (&others[1], "join")])
    );

    let named = named_room(&alice, &[&others[0], &others[1]]).await;
    let body = sync(&alice, &filter, None).await;
    assert_eq!(
        joined(&body, &named)["summary"],
        json!({"m.joined_member_count": 3, "m.invited_member_count": 0})
    );

    let crowd = alice.create_room(json!({"preset": "public_chat"})).await;
    for other in &others {
        assert_eq!(other.join(&crowd).await.status, 200);
    }
    let body = sync(&alice, &filter, None).await;
    let mut heroes: Vec<String> = others.iter().map(|c| c.user_id.clone()).collect();
    heroes.sort();
    assert_eq!(
        joined(&body, &crowd)["summary"],
        json!({"m.joined_member_count": 6, "m.invited_member_count": 0, "m.heroes": heroes})
    );

    let counted = named_room(&alice, &[]).await;
    let counts = |body: &Value| joined(body, &counted)["summary"].clone();
    assert_eq!(others[0].join(&counted).await.status, 200);
    let body = sync(&alice, &filter, None).await;
    assert_eq!(
        counts(&body),
        json!({"m.joined_member_count": 2, "m.invited_member_count": 0})
    );
    assert_eq!(others[1].join(&counted).await.status, 200);
    let later = sync(&alice, &filter, Some(&next(&body))).await;
    assert_eq!(
        counts(&later),
        json!({"m.joined_member_count": 3, "m.invited_member_count": 0})
    );
    assert_eq!(others[0].leave(&counted).await.status, 200);
    let last = sync(&alice, &filter, Some(&next(&later))).await;
    assert_eq!(
        counts(&last),
        json!({"m.joined_member_count": 2, "m.invited_member_count": 0})
    );
}

#[tokio::test]
async fn newly_joined_rooms_private_history_and_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = server.base_url.as_str();
    let alice = Client::register(base, "alice", "pw-alice-nj").await;
    let bob = Client::register(base, "bob", "pw-bob-nj").await;
    let carol = Client::register(base, "carol", "pw-carol-nj").await;

    // A room newly joined in an incremental sync comes whole: its latest
    // events, limited, and no state before a timeline that holds it all.
    let plain = json!({"room": {"timeline": {"limit": 10}}});
    let first = sync(&bob, &plain, None).await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room).await.status, 200);
    let second = sync(&bob, &plain, Some(&next(&first))).await;
    let section = joined(&second, &room);
    assert!(section["timeline"]["prev_batch"].is_string(), "{section}");
    assert_eq!(section["timeline"]["limited"], true);
    assert_eq!(section["state"]["events"], json!([]), "{section}");
    let types: Vec<&str> = section["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types.first(), Some(&"m.room.create"), "{types:?}");
    let third = sync(&bob, &plain, Some(&next(&second))).await;
    assert!(third["rooms"]["join"].get(&room).is_none());

    // Presence comes with sharing a room: the members of a room newly
    // joined, and whoever newly joins one's room, once.
    sync(&alice, &plain, None).await;
    let senders = |body: &Value| -> Vec<String> {
        body["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["sender"].as_str().map(str::to_owned))
            .collect()
    };
    let first = sync(&carol, &plain, None).await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(carol.join(&room).await.status, 200);
    let second = sync(&carol, &plain, Some(&next(&first))).await;
    assert!(
        senders(&second).contains(&alice.user_id),
        "{}",
        second["presence"]
    );
    let third = sync(&carol, &plain, Some(&next(&second))).await;
    assert!(
        !senders(&third).contains(&alice.user_id),
        "once: {}",
        third["presence"]
    );
    let before = sync(&alice, &plain, None).await;
    assert_eq!(bob.join(&room).await.status, 200);
    let after = sync(&alice, &plain, Some(&next(&before))).await;
    assert!(
        senders(&after).contains(&bob.user_id),
        "{}",
        after["presence"]
    );

    // An invite, then the room joined: in `join` with its timeline, and
    // nothing left of the invite.
    let first = sync(&bob, &plain, None).await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let invited = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room)),
            Some(json!({"user_id": bob.user_id})),
        )
        .await;
    assert_eq!(invited.status, 200);
    let second = sync(&bob, &plain, Some(&next(&first))).await;
    let invite_state = &second["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(
        invite_state
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "invite"
                && e["sender"] == alice.user_id.as_str()),
        "{invite_state}"
    );
    assert_eq!(bob.join(&room).await.status, 200);
    let third = sync(&bob, &plain, Some(&next(&second))).await;
    assert!(
        joined(&third, &room)["timeline"]["events"].is_array(),
        "{third}"
    );
    assert!(third["rooms"]["invite"].get(&room).is_none(), "{third}");

    // Only messages, from before and after the join.
    let messages = json!({"room": {"timeline": {"types": ["m.room.message"], "limit": 10}, "state": {"types": []}}});
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    for i in 0..4 {
        alice
            .send_text(&room, &format!("a{i}"), &format!("before {i}"))
            .await;
    }
    let first = sync(&bob, &messages, None).await;
    for i in 0..4 {
        alice
            .send_text(&room, &format!("b{i}"), &format!("after {i}"))
            .await;
    }
    assert_eq!(bob.join(&room).await.status, 200);
    let second = sync(&bob, &messages, Some(&next(&first))).await;
    let timeline = &joined(&second, &room)["timeline"];
    assert_eq!(
        timeline["events"].as_array().map(Vec::len),
        Some(8),
        "{timeline}"
    );
    assert!(
        timeline["events"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| e["type"] == "m.room.message")
    );
    assert_eq!(timeline["limited"], true);

    // A display name change is not a new join: no whole state again.
    let only_custom = json!({
        "room": {"timeline": {"types": []}, "state": {"types": ["a.madeup.test.state"]},
                 "ephemeral": {"types": []}},
        "presence": {"types": []},
    });
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    put_state(
        &alice,
        &room,
        "a.madeup.test.state",
        "",
        json!({"my_key": 1}),
    )
    .await;
    let first = sync(&alice, &only_custom, None).await;
    assert_eq!(
        joined(&first, &room)["state"]["events"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    put_state(
        &alice,
        &room,
        "m.room.member",
        &alice.user_id,
        json!({"membership": "join", "displayname": "boris"}),
    )
    .await;
    alice.send_text(&room, "boris", "hi").await;
    let second = sync(&alice, &only_custom, Some(&next(&first))).await;
    assert!(second["rooms"]["join"].get(&room).is_none(), "{second}");

    // Private history: a member who rejoins sees who joined while they were
    // away, as that is the room's current state.
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room).await.status, 200);
    put_state(
        &alice,
        &room,
        "m.room.history_visibility",
        "",
        json!({"history_visibility": "joined"}),
    )
    .await;
    let first = sync(&bob, &plain, None).await;
    assert_eq!(bob.leave(&room).await.status, 200);
    assert_eq!(carol.join(&room).await.status, 200);
    assert_eq!(bob.join(&room).await.status, 200);
    let second = sync(&bob, &plain, Some(&next(&first))).await;
    let saw_carol = joined(&second, &room)["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str());
    assert!(saw_carol, "{}", joined(&second, &room));

    // The limit counts the events the filter lets through: one message
    // among twelve fillers fills a timeline of one, not limited.
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    alice.send_text(&room, "only", "the only message").await;
    fillers(&alice, &room, 12, "z").await;
    let one = json!({"room": {"timeline": {"limit": 1, "types": ["m.room.message"]}, "state": {"types": []}},
                     "account_data": {"types": []}, "presence": {"types": []}});
    let body = sync(&alice, &one, None).await;
    let timeline = &joined(&body, &room)["timeline"];
    assert_eq!(
        timeline["events"].as_array().map(Vec::len),
        Some(1),
        "{timeline}"
    );
    assert_eq!(timeline["events"][0]["content"]["body"], "the only message");
    assert_eq!(timeline["limited"], false);

    // An inline filter, and the federation format with event IDs.
    let members_only =
        json!({"room": {"state": {"types": ["m.room.member"]}, "timeline": {"limit": 0}}});
    let body = sync(&alice, &members_only, None).await;
    let section = joined(&body, &room);
    assert_eq!(
        section["state"]["events"].as_array().map(Vec::len),
        Some(1),
        "{section}"
    );
    assert_eq!(section["state"]["events"][0]["type"], "m.room.member");
    let federation = json!({"event_format": "federation", "room": {"timeline": {"limit": 1}}});
    let sent = alice.send_text(&room, "fed", "in federation format").await;
    let body = sync(&alice, &federation, None).await;
    let event = &joined(&body, &room)["timeline"]["events"][0];
    for key in [
        "event_id",
        "content",
        "room_id",
        "sender",
        "origin_server_ts",
        "type",
        "prev_events",
        "auth_events",
        "depth",
        "hashes",
        "signatures",
    ] {
        assert!(event.get(key).is_some(), "{key} in {event}");
    }
    assert_eq!(event["event_id"], sent.body["event_id"]);
}
