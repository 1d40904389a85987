//! Room behaviours clients rely on, written from the spec's text (and,
//! where it is silent, from what Synapse does and clients expect):
//! idempotent state and joins, redactions confined to their room, a
//! deleted alias leaving the canonical alias, `/context` for outsiders,
//! `/messages` tokens, and room upgrades that carry the room over.

use ganglion_integration_tests::client::{Client, Reply, encode};
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::{Value, json};

async fn put(client: &Client, path: &str, body: Value) -> Reply {
    client.call(Method::PUT, path, Some(body)).await
}

async fn get(client: &Client, path: &str) -> Reply {
    client.call(Method::GET, path, None).await
}

async fn post(client: &Client, path: &str, body: Value) -> Reply {
    client.call(Method::POST, path, Some(body)).await
}

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", encode(room_id))
}

/// The IDs of the room's events, newest first, as `/messages` pages them.
async fn event_ids(client: &Client, room_id: &str) -> Vec<String> {
    client.messages(room_id, None, "b", 100).await["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn room_behaviours_clients_rely_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = server.base_url.as_str();
    let alice = Client::register(base, "alice", "pw-alice-rb").await;
    let bob = Client::register(base, "bob", "pw-bob-rb").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room).await.status, 200);

    // Setting state to the content it has, or joining again, makes no new
    // event: the answer names the event in place.
    let topic = put(
        &alice,
        &room_path(&room, "state/m.room.topic/"),
        json!({"topic": "same"}),
    )
    .await;
    assert_eq!(topic.status, 200, "{topic:?}");
    let before = event_ids(&alice, &room).await;
    let again = put(
        &alice,
        &room_path(&room, "state/m.room.topic/"),
        json!({"topic": "same"}),
    )
    .await;
    assert_eq!(again.body["event_id"], topic.body["event_id"], "{again:?}");
    let rejoin = bob.join(&room).await;
    assert_eq!(rejoin.status, 200);
    assert_eq!(event_ids(&alice, &room).await, before, "nothing new");
    // Other content, or another sender, is a new event.
    let changed = put(
        &alice,
        &room_path(&room, "state/m.room.topic/"),
        json!({"topic": "other"}),
    )
    .await;
    assert_ne!(changed.body["event_id"], topic.body["event_id"]);

    // A transaction ID names one request to one room: the same ID in
    // another room sends there.
    let elsewhere = alice.create_room(json!({})).await;
    let here = alice.send_text(&room, "same-txn", "here").await;
    let there = alice.send_text(&elsewhere, "same-txn", "there").await;
    assert_eq!((here.status, there.status), (200, 200));
    assert_ne!(here.body["event_id"], there.body["event_id"]);
    let retried = alice.send_text(&elsewhere, "same-txn", "there").await;
    assert_eq!(retried.body["event_id"], there.body["event_id"]);

    // The directory: `visibility` defaults to public; anything but public
    // or private is refused.
    let listing = format!("/_matrix/client/v3/directory/list/room/{}", encode(&room));
    assert_eq!(put(&alice, &listing, json!({})).await.status, 200);
    assert_eq!(get(&alice, &listing).await.body["visibility"], "public");
    assert_eq!(
        put(&alice, &listing, json!({"visibility": "hidden"}))
            .await
            .errcode(),
        "M_INVALID_PARAM"
    );
    assert_eq!(
        put(&alice, &listing, json!({"visibility": "private"}))
            .await
            .status,
        200
    );
    assert_eq!(get(&alice, &listing).await.body["visibility"], "private");

    // A redaction names an event of its own room.
    let other_room = alice.create_room(json!({})).await;
    let message = alice.send_text(&room, "m1", "hello").await;
    let message_id = message.body["event_id"].as_str().unwrap_or_default();
    let across = put(
        &alice,
        &room_path(&other_room, &format!("redact/{}/r1", encode(message_id))),
        json!({}),
    )
    .await;
    assert_eq!(across.status, 400, "{across:?}");
    let original = get(
        &alice,
        &room_path(&room, &format!("event/{}", encode(message_id))),
    )
    .await;
    assert_eq!(original.body["content"]["body"], "hello", "not redacted");

    // Deleting the alias the room names as canonical takes it out of the
    // canonical alias too.
    let alias = format!(
        "#rb:{}",
        alice.user_id.split_once(':').map_or("", |(_, s)| s)
    );
    let directory = format!("/_matrix/client/v3/directory/room/{}", encode(&alias));
    assert_eq!(
        put(&alice, &directory, json!({"room_id": room}))
            .await
            .status,
        200
    );
    assert_eq!(
        put(
            &alice,
            &room_path(&room, "state/m.room.canonical_alias/"),
            json!({"alias": alias, "alt_aliases": [alias]}),
        )
        .await
        .status,
        200
    );
    let deleted = alice.call(Method::DELETE, &directory, None).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    let canonical = get(&alice, &room_path(&room, "state/m.room.canonical_alias/")).await;
    assert_eq!(canonical.status, 200);
    assert!(canonical.body.get("alias").is_none(), "{canonical:?}");
    assert_eq!(canonical.body["alt_aliases"], json!([]), "{canonical:?}");

    // `/context` for someone who was never in a private room: 403, as for
    // `/messages`; an event they cannot see in a room they are in: 404.
    let eve = Client::register(base, "eve", "pw-eve-rb").await;
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    let secret = alice.send_text(&private, "s1", "secret").await;
    let secret_id = secret.body["event_id"].as_str().unwrap_or_default();
    let context = get(
        &eve,
        &room_path(&private, &format!("context/{}", encode(secret_id))),
    )
    .await;
    assert_eq!(
        (context.status, context.errcode()),
        (403, "M_FORBIDDEN"),
        "{context:?}"
    );

    // Lazy-loaded members in `/context` and `/messages`: exactly those who
    // sent the events returned.
    let chatty = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&chatty).await.status, 200);
    assert_eq!(eve.join(&chatty).await.status, 200);
    eve.send_text(&chatty, "e1", "from eve").await;
    for i in 0..3 {
        bob.send_text(&chatty, &format!("b{i}"), &format!("from bob {i}"))
            .await;
    }
    let last = alice.send_text(&chatty, "a1", "from alice").await;
    let last_id = last.body["event_id"].as_str().unwrap_or_default();
    let lazy = encode(&json!({"lazy_load_members": true}).to_string());
    let members = |body: &Value| -> Vec<String> {
        let mut members: Vec<String> = body["state"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect();
        members.sort();
        members
    };
    let context = get(
        &alice,
        &room_path(
            &chatty,
            &format!("context/{}?limit=2&filter={lazy}", encode(last_id)),
        ),
    )
    .await;
    assert_eq!(context.status, 200, "{context:?}");
    assert_eq!(
        members(&context.body),
        vec![alice.user_id.clone(), bob.user_id.clone()],
        "{context:?}"
    );
    // A filter that is not one is refused.
    for bad in [
        encode("{not json"),
        encode(&json!({"types": "m.room.message"}).to_string()),
    ] {
        let refused = get(
            &alice,
            &room_path(
                &chatty,
                &format!("context/{}?filter={bad}", encode(last_id)),
            ),
        )
        .await;
        assert_eq!(
            (refused.status, refused.errcode()),
            (400, "M_INVALID_PARAM"),
            "{refused:?}"
        );
    }
    let page = get(
        &alice,
        &room_path(&chatty, &format!("messages?dir=b&limit=3&filter={lazy}")),
    )
    .await;
    assert_eq!(
        members(&page.body),
        vec![alice.user_id.clone(), bob.user_id.clone()],
        "{page:?}"
    );

    // `/messages` gives `end` while the page has events, either way; an
    // empty page is the end.
    let forwards = alice.messages(&room, None, "f", 100).await;
    assert!(forwards["chunk"].as_array().is_some_and(|c| !c.is_empty()));
    let end = forwards["end"].as_str().expect("end after a short page");
    let rest = alice.messages(&room, Some(end), "f", 100).await;
    assert_eq!(rest["chunk"], json!([]), "{rest}");
    assert!(
        rest.get("end").is_none(),
        "no end after an empty page: {rest}"
    );
    let back = alice.messages(&room, None, "b", 1000).await;
    let end = back["end"].as_str().expect("end after a page");
    let past = alice.messages(&room, Some(end), "b", 10).await;
    assert_eq!(
        past["chunk"],
        json!([]),
        "the creation was the last: {past}"
    );
    assert!(past.get("end").is_none());
}

/// `POST /rooms/{roomId}/upgrade`: the spec's answer and errors, and the
/// room carried over: power levels above 100, bans, the directory entry,
/// and the upgrader's tags and direct chats; members who follow get theirs
/// carried when they join.
#[tokio::test]
async fn room_upgrades_carry_the_room_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = server.base_url.as_str();
    let alice = Client::register(base, "alice", "pw-alice-up").await;
    let bob = Client::register(base, "bob", "pw-bob-up").await;
    let carol = Client::register(base, "carol", "pw-carol-up").await;

    // No such room: 404, not 403.
    let server_name = alice.user_id.split_once(':').map_or("", |(_, s)| s);
    let missing = post(
        &alice,
        &room_path(&format!("!nowhere:{server_name}"), "upgrade"),
        json!({"new_version": "11"}),
    )
    .await;
    assert_eq!(
        (missing.status, missing.errcode()),
        (404, "M_NOT_FOUND"),
        "{missing:?}"
    );

    // Alice above 100 (as a room's creator may set it), state needing 150.
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "10",
            "power_level_content_override": {
                "users": {alice.user_id.clone(): 150, bob.user_id.clone(): 50},
                "state_default": 150,
            },
        }))
        .await;
    assert_eq!(bob.join(&room).await.status, 200);
    assert_eq!(carol.join(&room).await.status, 200);
    let ban = post(
        &alice,
        &room_path(&room, "ban"),
        json!({"user_id": carol.user_id, "reason": "spam"}),
    )
    .await;
    assert_eq!(ban.status, 200, "{ban:?}");
    let visibility = format!("/_matrix/client/v3/directory/list/room/{}", encode(&room));
    assert_eq!(
        put(&alice, &visibility, json!({"visibility": "public"}))
            .await
            .status,
        200
    );
    for (client, tag) in [(&alice, "u.work"), (&bob, "u.fun")] {
        let tags = format!(
            "/_matrix/client/v3/user/{}/rooms/{}/tags/{tag}",
            encode(&client.user_id),
            encode(&room)
        );
        assert_eq!(put(client, &tags, json!({"order": 0.5})).await.status, 200);
        let direct = format!(
            "/_matrix/client/v3/user/{}/account_data/m.direct",
            encode(&client.user_id)
        );
        assert_eq!(
            put(client, &direct, json!({"@someone:example.org": [room]}))
                .await
                .status,
            200
        );
    }

    let upgraded = post(
        &alice,
        &room_path(&room, "upgrade"),
        json!({"new_version": "11"}),
    )
    .await;
    assert_eq!(upgraded.status, 200, "{upgraded:?}");
    let new_room = upgraded.body["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned();
    let new_levels = get(&alice, &room_path(&new_room, "state/m.room.power_levels/")).await;
    assert_eq!(
        new_levels.body["users"][&alice.user_id], 150,
        "{new_levels:?}"
    );
    assert_eq!(new_levels.body["users"][&bob.user_id], 50);
    assert_eq!(new_levels.body["state_default"], 150);
    let banned = get(
        &alice,
        &room_path(
            &new_room,
            &format!("state/m.room.member/{}", encode(&carol.user_id)),
        ),
    )
    .await;
    assert_eq!(banned.body["membership"], "ban", "{banned:?}");
    assert_eq!(banned.body["reason"], "spam");
    let listed = get(
        &alice,
        &format!(
            "/_matrix/client/v3/directory/list/room/{}",
            encode(&new_room)
        ),
    )
    .await;
    assert_eq!(listed.body["visibility"], "public");
    assert_eq!(get(&alice, &visibility).await.body["visibility"], "private");
    // Tags and direct chats: the upgrader's at once, Bob's when he joins.
    let carried = |client: &Client| {
        let client = client.clone();
        let new_room = new_room.clone();
        async move {
            let tags = get(
                &client,
                &format!(
                    "/_matrix/client/v3/user/{}/rooms/{}/tags",
                    encode(&client.user_id),
                    encode(&new_room)
                ),
            )
            .await
            .body["tags"]
                .clone();
            let direct = get(
                &client,
                &format!(
                    "/_matrix/client/v3/user/{}/account_data/m.direct",
                    encode(&client.user_id)
                ),
            )
            .await
            .body["@someone:example.org"]
                .clone();
            (tags, direct)
        }
    };
    let (tags, direct) = carried(&alice).await;
    assert_eq!(tags["u.work"]["order"], 0.5, "{tags}");
    assert!(
        direct
            .as_array()
            .is_some_and(|d| d.contains(&json!(new_room))),
        "{direct}"
    );
    let (tags, _) = carried(&bob).await;
    assert!(tags.get("u.fun").is_none(), "not before he joins: {tags}");
    assert_eq!(bob.join(&new_room).await.status, 200);
    let (tags, direct) = carried(&bob).await;
    assert_eq!(tags["u.fun"]["order"], 0.5, "{tags}");
    assert!(
        direct
            .as_array()
            .is_some_and(|d| d.contains(&json!(new_room))),
        "{direct}"
    );
}
