//! The room APIs as several users see them: every membership transition and
//! its refusals, reading state and members, aliases, the room directory,
//! redactions, reports and upgrades. Run against any deployment.

use ganglion_integration_tests::client::{Client, Reply, encode, message_bodies};
use reqwest::Method;
use serde_json::{Value, json};

async fn post(client: &Client, path: &str, body: Value) -> Reply {
    client.call(Method::POST, path, Some(body)).await
}

async fn get(client: &Client, path: &str) -> Reply {
    client.call(Method::GET, path, None).await
}

async fn put(client: &Client, path: &str, body: Value) -> Reply {
    client.call(Method::PUT, path, Some(body)).await
}

fn room_path(room_id: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", encode(room_id))
}

fn member_event<'a>(state: &'a Value, user: &str) -> Option<&'a Value> {
    state
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == user)
}

async fn membership(reader: &Client, room_id: &str, user: &str) -> String {
    let state = get(reader, &room_path(room_id, "state")).await;
    assert_eq!(state.status, 200, "{state:?}");
    member_event(&state.body, user)
        .and_then(|e| e["content"]["membership"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn moderate(actor: &Client, room_id: &str, action: &str, target: &str) -> Reply {
    post(
        actor,
        &room_path(room_id, action),
        json!({"user_id": target, "reason": format!("{action} for testing")}),
    )
    .await
}

pub(crate) async fn memberships_and_their_refusals(base_url: &str) {
    let alice = Client::register(base_url, "m_alice", "pw-alice-1").await;
    let bob = Client::register(base_url, "m_bob", "pw-bob-1").await;
    let carol = Client::register(base_url, "m_carol", "pw-carol-1").await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;

    // Uninvited: refused. Invited: in.
    let refused = bob.join(&room_id).await;
    assert_eq!((refused.status, refused.errcode()), (403, "M_FORBIDDEN"));
    assert_eq!(
        moderate(&alice, &room_id, "invite", &bob.user_id)
            .await
            .status,
        200
    );
    assert_eq!(membership(&alice, &room_id, &bob.user_id).await, "invite");
    let again = moderate(&alice, &room_id, "invite", &bob.user_id).await;
    assert_eq!(
        again.status, 200,
        "inviting an invited user again: {again:?}"
    );
    assert_eq!(bob.join(&room_id).await.status, 200);
    let joined_again = moderate(&alice, &room_id, "invite", &bob.user_id).await;
    assert_eq!(
        joined_again.errcode(),
        "M_FORBIDDEN",
        "a joined user cannot be invited"
    );

    // Bob (power 0) cannot kick, ban or invite-by-power; Alice can.
    assert_eq!(
        moderate(&bob, &room_id, "kick", &alice.user_id)
            .await
            .errcode(),
        "M_FORBIDDEN"
    );
    assert_eq!(
        moderate(&bob, &room_id, "ban", &alice.user_id)
            .await
            .errcode(),
        "M_FORBIDDEN"
    );
    let kicked = moderate(&alice, &room_id, "kick", &bob.user_id).await;
    assert_eq!(kicked.status, 200, "{kicked:?}");
    let state = get(&alice, &room_path(&room_id, "state")).await;
    let event = member_event(&state.body, &bob.user_id).expect("bob's membership");
    assert_eq!(event["content"]["membership"], "leave");
    assert_eq!(event["content"]["reason"], "kick for testing");
    assert_eq!(event["sender"], alice.user_id.as_str());
    let twice = moderate(&alice, &room_id, "kick", &bob.user_id).await;
    assert_eq!(
        twice.errcode(),
        "M_FORBIDDEN",
        "kicking someone not in the room"
    );

    // Bob, kicked, reads the state as it was when he left, not after.
    let rename = put(
        &alice,
        &room_path(&room_id, "state/m.room.name/"),
        json!({"name": "later"}),
    )
    .await;
    assert_eq!(rename.status, 200);
    let seen = get(&bob, &room_path(&room_id, "state")).await;
    assert_eq!(seen.status, 200, "{seen:?}");
    assert!(
        seen.body
            .as_array()
            .is_some_and(|s| !s.iter().any(|e| e["type"] == "m.room.name"))
    );
    assert_eq!(
        member_event(&seen.body, &bob.user_id).expect("leave")["content"]["membership"],
        "leave"
    );
    let name = get(&bob, &room_path(&room_id, "state/m.room.name/")).await;
    assert_eq!(name.errcode(), "M_NOT_FOUND", "named after he left");
    let rules = get(&bob, &room_path(&room_id, "state/m.room.join_rules/")).await;
    assert_eq!(rules.body["join_rule"], "invite");
    // Carol, never in the room, reads nothing.
    assert_eq!(
        get(&carol, &room_path(&room_id, "state")).await.errcode(),
        "M_FORBIDDEN"
    );
    assert_eq!(
        get(&carol, &room_path(&room_id, "members")).await.errcode(),
        "M_FORBIDDEN"
    );

    // Bans hold until lifted, even for someone never in the room.
    assert_eq!(
        moderate(&alice, &room_id, "ban", &carol.user_id)
            .await
            .status,
        200
    );
    assert_eq!(
        moderate(&alice, &room_id, "invite", &carol.user_id)
            .await
            .errcode(),
        "M_FORBIDDEN"
    );
    assert_eq!(carol.join(&room_id).await.errcode(), "M_FORBIDDEN");
    let kick_banned = moderate(&alice, &room_id, "kick", &carol.user_id).await;
    assert_eq!(kick_banned.errcode(), "M_FORBIDDEN", "a kick never unbans");
    assert_eq!(
        moderate(&alice, &room_id, "unban", &carol.user_id)
            .await
            .status,
        200
    );
    assert_eq!(membership(&alice, &room_id, &carol.user_id).await, "leave");
    assert_eq!(
        moderate(&alice, &room_id, "unban", &carol.user_id)
            .await
            .errcode(),
        "M_FORBIDDEN"
    );
    assert_eq!(
        carol.join(&room_id).await.errcode(),
        "M_FORBIDDEN",
        "still not invited"
    );

    let before_carol = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Knocking: only where the join rules allow it (room versions 7+).
    let knock_path = format!("/_matrix/client/v3/knock/{}", encode(&room_id));
    assert_eq!(
        post(&carol, &knock_path, json!({})).await.errcode(),
        "M_FORBIDDEN"
    );
    let rules = put(
        &alice,
        &room_path(&room_id, "state/m.room.join_rules/"),
        json!({"join_rule": "knock"}),
    )
    .await;
    assert_eq!(rules.status, 200);
    let knocked = post(&carol, &knock_path, json!({"reason": "let me in"})).await;
    assert_eq!(knocked.status, 200, "{knocked:?}");
    assert_eq!(knocked.body["room_id"], room_id.as_str());
    assert_eq!(membership(&alice, &room_id, &carol.user_id).await, "knock");
    assert_eq!(
        moderate(&alice, &room_id, "invite", &carol.user_id)
            .await
            .status,
        200
    );
    assert_eq!(carol.join(&room_id).await.status, 200);
    let v6 = alice
        .create_room(json!({"preset": "private_chat", "room_version": "6"}))
        .await;
    let rules = put(
        &alice,
        &room_path(&v6, "state/m.room.join_rules/"),
        json!({"join_rule": "knock"}),
    )
    .await;
    assert_eq!(rules.status, 200);
    let v6_knock = format!("/_matrix/client/v3/knock/{}", encode(&v6));
    let refused = post(&bob, &v6_knock, json!({})).await;
    assert_eq!(
        refused.errcode(),
        "M_FORBIDDEN",
        "no knocking before version 7: {refused:?}"
    );

    // Members, filtered; joined members; joined rooms.
    let members = get(&alice, &room_path(&room_id, "members?not_membership=leave")).await;
    let users: Vec<&str> = members.body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(users.contains(&alice.user_id.as_str()) && users.contains(&carol.user_id.as_str()));
    assert!(!users.contains(&bob.user_id.as_str()));
    let left = get(&alice, &room_path(&room_id, "members?membership=leave")).await;
    assert_eq!(left.body["chunk"].as_array().map(Vec::len), Some(1));
    let bad = get(&alice, &room_path(&room_id, "members?membership=dancing")).await;
    assert_eq!(bad.errcode(), "M_INVALID_PARAM");
    // Members at an earlier point of the timeline.
    let then = get(
        &alice,
        &room_path(
            &room_id,
            &format!("members?membership=join&at={}", encode(&before_carol)),
        ),
    )
    .await;
    let then: Vec<&str> = then.body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(
        then,
        vec![alice.user_id.as_str()],
        "carol had not joined yet"
    );
    let bad_at = get(&alice, &room_path(&room_id, "members?at=yesterday")).await;
    assert_eq!(bad_at.errcode(), "M_INVALID_PARAM");
    let joined = get(&alice, &room_path(&room_id, "joined_members")).await;
    let joined = joined.body["joined"].as_object().expect("joined");
    assert_eq!(joined.len(), 2);
    assert!(joined.contains_key(&carol.user_id));
    let rooms = get(&carol, "/_matrix/client/v3/joined_rooms").await;
    assert_eq!(rooms.body["joined_rooms"], json!([room_id]));
    let bob_rooms = get(&bob, "/_matrix/client/v3/joined_rooms").await;
    assert_eq!(bob_rooms.body["joined_rooms"], json!([]));

    // Leaving with a reason.
    let leave = post(
        &carol,
        &room_path(&room_id, "leave"),
        json!({"reason": "bye"}),
    )
    .await;
    assert_eq!(leave.status, 200);
    let state = get(&alice, &room_path(&room_id, "state")).await;
    assert_eq!(
        member_event(&state.body, &carol.user_id).expect("carol")["content"]["reason"],
        "bye"
    );

    // Forgetting: only a room one has left; then its history is gone.
    let forget_path = room_path(&room_id, "forget");
    let still_in = post(&alice, &forget_path, json!({})).await;
    assert_eq!((still_in.status, still_in.errcode()), (400, "M_UNKNOWN"));
    let messages = room_path(&room_id, "messages?dir=b");
    assert_eq!(bob.call(Method::GET, &messages, None).await.status, 200);
    assert_eq!(post(&bob, &forget_path, json!({})).await.status, 200);
    let gone = bob.call(Method::GET, &messages, None).await;
    assert_eq!(gone.errcode(), "M_FORBIDDEN", "forgotten history: {gone:?}");

    // Bad input changes nothing.
    let bad_user = post(
        &alice,
        &room_path(&room_id, "invite"),
        json!({"user_id": "not a user"}),
    )
    .await;
    assert_eq!(bad_user.errcode(), "M_INVALID_PARAM");
    let no_user = post(&alice, &room_path(&room_id, "ban"), json!({})).await;
    assert_eq!(no_user.errcode(), "M_BAD_JSON");
    let bad_room = post(
        &alice,
        &room_path("not-a-room", "invite"),
        json!({"user_id": bob.user_id}),
    )
    .await;
    assert_eq!(bad_room.errcode(), "M_INVALID_PARAM");
}

pub(crate) async fn aliases_directory_redactions_reports_upgrades(base_url: &str) {
    let alice = Client::register(base_url, "d_alice", "pw-alice-2").await;
    let bob = Client::register(base_url, "d_bob", "pw-bob-2").await;
    let server = alice
        .user_id
        .split(':')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    // Rooms created at once by one user with the same request are all
    // made, each its own (version 12 names a room after its create event).
    let at_once = futures::future::join_all(
        (0..8).map(|_| post(&alice, "/_matrix/client/v3/createRoom", json!({}))),
    )
    .await;
    let mut ids = std::collections::HashSet::new();
    for reply in &at_once {
        assert_eq!(reply.status, 200, "{reply:?}");
        ids.insert(
            reply.body["room_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 8, "{at_once:?}");
    let room_id = alice
        .create_room(json!({"preset": "public_chat", "name": "Garden party", "topic": "roses"}))
        .await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let alias = format!("#garden:{server}");
    let alias_path = format!("/_matrix/client/v3/directory/room/{}", encode(&alias));

    // Aliases.
    assert_eq!(
        put(&alice, &alias_path, json!({"room_id": room_id}))
            .await
            .status,
        200
    );
    let taken = put(&bob, &alias_path, json!({"room_id": room_id})).await;
    assert_eq!(taken.status, 409, "{taken:?}");
    let resolved = get(&bob, &alias_path).await;
    assert_eq!(resolved.body["room_id"], room_id.as_str());
    assert_eq!(resolved.body["servers"], json!([server]));
    let listed = get(&bob, &room_path(&room_id, "aliases")).await;
    assert_eq!(listed.body["aliases"], json!([alias]));
    let outsider = Client::register(base_url, "d_eve", "pw-eve-2").await;
    assert_eq!(
        get(&outsider, &room_path(&room_id, "aliases"))
            .await
            .errcode(),
        "M_FORBIDDEN"
    );
    let remote = format!(
        "/_matrix/client/v3/directory/room/{}",
        encode("#x:elsewhere.example")
    );
    assert_eq!(
        put(&alice, &remote, json!({"room_id": room_id}))
            .await
            .errcode(),
        "M_INVALID_PARAM"
    );
    let invalid = format!("/_matrix/client/v3/directory/room/{}", encode("garden"));
    assert_eq!(
        put(&alice, &invalid, json!({"room_id": room_id}))
            .await
            .errcode(),
        "M_INVALID_PARAM"
    );
    let bob_alias = format!(
        "/_matrix/client/v3/directory/room/{}",
        encode(&format!("#bobs:{server}"))
    );
    assert_eq!(
        put(&bob, &bob_alias, json!({"room_id": room_id}))
            .await
            .status,
        200
    );
    assert_eq!(
        outsider
            .call(Method::DELETE, &bob_alias, None)
            .await
            .errcode(),
        "M_FORBIDDEN"
    );
    // Alice, an admin, may remove Bob's alias.
    assert_eq!(
        alice.call(Method::DELETE, &bob_alias, None).await.status,
        200
    );
    assert_eq!(get(&alice, &bob_alias).await.errcode(), "M_NOT_FOUND");

    // The canonical alias must point here.
    let canonical = room_path(&room_id, "state/m.room.canonical_alias/");
    let elsewhere = alice.create_room(json!({"preset": "private_chat"})).await;
    let other_alias = format!("#elsewhere:{server}");
    let other_path = format!("/_matrix/client/v3/directory/room/{}", encode(&other_alias));
    assert_eq!(
        put(&alice, &other_path, json!({"room_id": elsewhere}))
            .await
            .status,
        200
    );
    assert_eq!(
        put(&alice, &canonical, json!({"alias": other_alias}))
            .await
            .errcode(),
        "M_BAD_ALIAS"
    );
    assert_eq!(
        put(&alice, &canonical, json!({"alias": "nonsense"}))
            .await
            .errcode(),
        "M_INVALID_PARAM"
    );
    assert_eq!(
        put(
            &alice,
            &canonical,
            json!({"alias": alias, "alt_aliases": [other_alias]})
        )
        .await
        .errcode(),
        "M_BAD_ALIAS"
    );
    assert_eq!(
        put(&alice, &canonical, json!({"alias": alias}))
            .await
            .status,
        200
    );

    // The directory.
    let listing = format!(
        "/_matrix/client/v3/directory/list/room/{}",
        encode(&room_id)
    );
    assert_eq!(get(&bob, &listing).await.body["visibility"], "private");
    assert_eq!(
        put(&bob, &listing, json!({"visibility": "public"}))
            .await
            .errcode(),
        "M_FORBIDDEN"
    );
    assert_eq!(
        put(&alice, &listing, json!({"visibility": "sideways"}))
            .await
            .errcode(),
        "M_INVALID_PARAM"
    );
    assert_eq!(
        put(&alice, &listing, json!({"visibility": "public"}))
            .await
            .status,
        200
    );
    assert_eq!(get(&bob, &listing).await.body["visibility"], "public");
    let second = alice
        .create_room(json!({"preset": "public_chat", "name": "Tea house"}))
        .await;
    let second_listing = format!("/_matrix/client/v3/directory/list/room/{}", encode(&second));
    assert_eq!(
        put(&alice, &second_listing, json!({"visibility": "public"}))
            .await
            .status,
        200
    );
    let public = get(&outsider, "/_matrix/client/v3/publicRooms").await;
    assert_eq!(public.status, 200, "{public:?}");
    let chunk = public.body["chunk"].as_array().expect("chunk");
    assert_eq!(chunk.len(), 2);
    // Most members first.
    assert_eq!(chunk[0]["room_id"], room_id.as_str());
    assert_eq!(chunk[0]["name"], "Garden party");
    assert_eq!(chunk[0]["topic"], "roses");
    assert_eq!(chunk[0]["canonical_alias"], alias.as_str());
    assert_eq!(chunk[0]["num_joined_members"], 2);
    assert_eq!(chunk[0]["join_rule"], "public");
    assert_eq!(chunk[0]["world_readable"], false);
    let page = get(&outsider, "/_matrix/client/v3/publicRooms?limit=1").await;
    assert_eq!(page.body["chunk"].as_array().map(Vec::len), Some(1));
    let next = page.body["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let page2 = get(
        &outsider,
        &format!(
            "/_matrix/client/v3/publicRooms?limit=1&since={}",
            encode(&next)
        ),
    )
    .await;
    assert_eq!(page2.body["chunk"][0]["room_id"], second.as_str());
    assert!(page2.body["prev_batch"].is_string());
    let search = post(
        &outsider,
        "/_matrix/client/v3/publicRooms",
        json!({"filter": {"generic_search_term": "TEA"}}),
    )
    .await;
    assert_eq!(search.body["chunk"].as_array().map(Vec::len), Some(1));
    assert_eq!(search.body["chunk"][0]["room_id"], second.as_str());
    let typed = post(
        &outsider,
        "/_matrix/client/v3/publicRooms",
        json!({"filter": {"room_types": ["m.space"]}}),
    )
    .await;
    assert_eq!(typed.body["chunk"].as_array().map(Vec::len), Some(0));
    let untyped = post(
        &outsider,
        "/_matrix/client/v3/publicRooms",
        json!({"filter": {"room_types": [null]}}),
    )
    .await;
    assert_eq!(untyped.body["chunk"].as_array().map(Vec::len), Some(2));
    let bad_since = get(&outsider, "/_matrix/client/v3/publicRooms?since=garbage").await;
    assert_eq!(bad_since.errcode(), "M_INVALID_PARAM");
    let bad_limit = get(&outsider, "/_matrix/client/v3/publicRooms?limit=-3").await;
    assert_eq!(bad_limit.errcode(), "M_INVALID_PARAM");

    // Redactions: only one's own events without the redact power; the
    // stored copy every reader sees is redacted.
    let sent = alice.send_text(&room_id, "secret", "the secret").await;
    let secret_id = sent.body["event_id"].as_str().expect("event id").to_owned();
    let redact_path =
        |txn: &str| room_path(&room_id, &format!("redact/{}/{txn}", encode(&secret_id)));
    assert_eq!(
        put(&bob, &redact_path("b1"), json!({})).await.errcode(),
        "M_FORBIDDEN"
    );
    let redacted = put(&alice, &redact_path("a1"), json!({"reason": "oops"})).await;
    assert_eq!(redacted.status, 200, "{redacted:?}");
    let again = put(&alice, &redact_path("a1"), json!({"reason": "oops"})).await;
    assert_eq!(
        again.body["event_id"], redacted.body["event_id"],
        "idempotent per transaction"
    );
    let history = bob.messages(&room_id, None, "b", 50).await;
    assert!(!message_bodies(&history["chunk"]).contains(&"the secret".to_owned()));
    let copy = history["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .find(|e| e["event_id"] == secret_id.as_str())
        .expect("the redacted event is still in the timeline");
    assert_eq!(copy["content"], json!({}));
    let because = &copy["unsigned"]["redacted_because"];
    assert_eq!(because["event_id"], redacted.body["event_id"], "{copy}");
    assert_eq!(because["type"], "m.room.redaction");
    assert_eq!(because["content"]["reason"], "oops");
    assert_eq!(because["sender"], alice.user_id.as_str());
    let bad_event = put(
        &alice,
        &room_path(&room_id, "redact/not-an-event/x"),
        json!({}),
    )
    .await;
    assert_eq!(bad_event.errcode(), "M_INVALID_PARAM");

    // Reports.
    let report = |event: &str| room_path(&room_id, &format!("report/{}", encode(event)));
    assert_eq!(
        post(
            &bob,
            &report(&secret_id),
            json!({"reason": "spam", "score": -100})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        post(&bob, &report(&secret_id), json!({"score": 5}))
            .await
            .errcode(),
        "M_INVALID_PARAM"
    );
    assert_eq!(
        post(&bob, &report("$unknown"), json!({"reason": "?"}))
            .await
            .errcode(),
        "M_NOT_FOUND"
    );
    assert_eq!(
        post(&outsider, &report(&secret_id), json!({"reason": "?"}))
            .await
            .errcode(),
        "M_NOT_FOUND"
    );
    assert_eq!(
        post(
            &bob,
            &room_path(&room_id, "report"),
            json!({"reason": "whole room"})
        )
        .await
        .status,
        200
    );

    // Upgrades.
    let upgrade = room_path(&room_id, "upgrade");
    assert_eq!(
        post(&bob, &upgrade, json!({"new_version": "11"}))
            .await
            .errcode(),
        "M_FORBIDDEN"
    );
    assert_eq!(
        post(&alice, &upgrade, json!({"new_version": "99"}))
            .await
            .errcode(),
        "M_UNSUPPORTED_ROOM_VERSION"
    );
    let upgraded = post(&alice, &upgrade, json!({"new_version": "12"})).await;
    assert_eq!(upgraded.status, 200, "{upgraded:?}");
    let new_room = upgraded.body["replacement_room"]
        .as_str()
        .expect("replacement")
        .to_owned();
    let tombstone = get(&bob, &room_path(&room_id, "state/m.room.tombstone/")).await;
    assert_eq!(tombstone.body["replacement_room"], new_room.as_str());
    let new_state = get(&alice, &room_path(&new_room, "state")).await;
    let find = |kind: &str| {
        new_state
            .body
            .as_array()
            .and_then(|s| s.iter().find(|e| e["type"] == kind))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        find("m.room.create")["content"]["predecessor"]["room_id"],
        room_id.as_str()
    );
    assert_eq!(find("m.room.create")["content"]["room_version"], "12");
    assert_eq!(find("m.room.name")["content"]["name"], "Garden party");
    assert_eq!(find("m.room.topic")["content"]["topic"], "roses");
    assert_eq!(find("m.room.join_rules")["content"]["join_rule"], "public");
    assert_eq!(
        find("m.room.canonical_alias")["content"]["alias"],
        alias.as_str()
    );
    assert_eq!(
        get(&bob, &alias_path).await.body["room_id"],
        new_room.as_str(),
        "the alias moved"
    );
    let new_listing = format!(
        "/_matrix/client/v3/directory/list/room/{}",
        encode(&new_room)
    );
    assert_eq!(get(&bob, &new_listing).await.body["visibility"], "public");
    assert_eq!(get(&bob, &listing).await.body["visibility"], "private");
    // The old room is for moderators now; Bob follows the tombstone.
    assert_eq!(
        bob.send_text(&room_id, "late", "hello?").await.errcode(),
        "M_FORBIDDEN"
    );
    assert_eq!(bob.join(&new_room).await.status, 200);
    assert_eq!(
        bob.send_text(&new_room, "new", "hello again").await.status,
        200
    );
}

async fn send_event(client: &Client, room_id: &str, txn: &str, content: Value) -> String {
    let reply = put(
        client,
        &room_path(room_id, &format!("send/m.room.message/{txn}")),
        content,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn set_visibility(client: &Client, room_id: &str, visibility: &str) {
    let reply = put(
        client,
        &room_path(room_id, "state/m.room.history_visibility/"),
        json!({"history_visibility": visibility}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// Every message body `reader` can page back through.
async fn readable_bodies(reader: &Client, room_id: &str) -> Vec<String> {
    let page = reader.messages(room_id, None, "b", 100).await;
    let mut bodies = message_bodies(&page["chunk"]);
    bodies.reverse();
    bodies
}

pub(crate) async fn history_visibility_on_every_read_path(base_url: &str) {
    let alice = Client::register(base_url, "h_alice", "pw-alice-3").await;
    let bob = Client::register(base_url, "h_bob", "pw-bob-3").await;
    let carol = Client::register(base_url, "h_carol", "pw-carol-3").await;
    let dave = Client::register(base_url, "h_dave", "pw-dave-3").await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
    let text = |body: &str| json!({"msgtype": "m.text", "body": body});

    send_event(&alice, &room_id, "m0", text("m0 shared")).await;
    set_visibility(&alice, &room_id, "joined").await;
    let m1 = send_event(&alice, &room_id, "m1", text("m1 joined-only")).await;
    assert_eq!(
        moderate(&alice, &room_id, "invite", &bob.user_id)
            .await
            .status,
        200
    );
    send_event(&alice, &room_id, "m2", text("m2 while bob is invited")).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let m3 = send_event(&alice, &room_id, "m3", text("m3 bob is here")).await;

    // /messages, /event, /context and /sync agree on what Bob may see.
    assert_eq!(
        readable_bodies(&bob, &room_id).await,
        vec!["m0 shared", "m3 bob is here"]
    );
    let event = |id: &str| room_path(&room_id, &format!("event/{}", encode(id)));
    assert_eq!(get(&bob, &event(&m1)).await.errcode(), "M_NOT_FOUND");
    let seen = get(&bob, &event(&m3)).await;
    assert_eq!(seen.body["content"]["body"], "m3 bob is here");
    assert_eq!(seen.body["event_id"], m3.as_str());
    let context = get(
        &bob,
        &room_path(&room_id, &format!("context/{}?limit=20", encode(&m3))),
    )
    .await;
    assert_eq!(context.status, 200, "{context:?}");
    let before = message_bodies(&context.body["events_before"]);
    assert_eq!(before, vec!["m0 shared"], "context hides m1 and m2");
    let context_state = context.body["state"].as_array().expect("state");
    assert!(
        context_state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()),
        "the state at m3 has bob"
    );
    assert!(
        !context_state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str()),
        "carol joined after m3"
    );
    assert!(context.body["start"].is_string() && context.body["end"].is_string());
    let sync = bob.sync(None, 0, 50).await;
    let timeline = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    assert_eq!(
        message_bodies(timeline),
        vec!["m0 shared", "m3 bob is here"]
    );

    // `invited`: Carol sees what was sent once she was invited.
    set_visibility(&alice, &room_id, "invited").await;
    assert_eq!(
        moderate(&alice, &room_id, "invite", &carol.user_id)
            .await
            .status,
        200
    );
    send_event(&alice, &room_id, "m4", text("m4 carol is invited")).await;
    assert_eq!(carol.join(&room_id).await.status, 200);
    assert_eq!(
        readable_bodies(&carol, &room_id).await,
        vec!["m0 shared", "m4 carol is invited"]
    );

    // `world_readable`: anyone, member or not.
    set_visibility(&alice, &room_id, "world_readable").await;
    let m5 = send_event(&alice, &room_id, "m5", text("m5 for the world")).await;
    assert_eq!(
        get(&dave, &event(&m5)).await.body["content"]["body"],
        "m5 for the world"
    );
    assert_eq!(get(&dave, &event(&m3)).await.errcode(), "M_NOT_FOUND");
    assert_eq!(
        readable_bodies(&dave, &room_id).await,
        vec!["m5 for the world"]
    );

    // Bob leaves: what he saw stays his, later history only if world-readable.
    assert_eq!(
        post(&bob, &room_path(&room_id, "leave"), json!({}))
            .await
            .status,
        200
    );
    send_event(&alice, &room_id, "m6", text("m6 world, bob gone")).await;
    set_visibility(&alice, &room_id, "joined").await;
    let m7 = send_event(&alice, &room_id, "m7", text("m7 members only")).await;
    assert_eq!(get(&bob, &event(&m7)).await.errcode(), "M_NOT_FOUND");
    assert_eq!(get(&bob, &event(&m3)).await.status, 200);
    let bodies = readable_bodies(&bob, &room_id).await;
    assert!(bodies.contains(&"m3 bob is here".to_owned()), "{bodies:?}");
    assert!(
        bodies.contains(&"m6 world, bob gone".to_owned()),
        "{bodies:?}"
    );
    assert!(
        !bodies.contains(&"m7 members only".to_owned()),
        "{bodies:?}"
    );
    assert!(
        !bodies.contains(&"m0 shared".to_owned()),
        "shared history left with him: {bodies:?}"
    );

    // Someone never in a room that is not world-readable reads nothing.
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    let hidden = send_event(&alice, &private, "p0", text("private")).await;
    let page = dave
        .call(Method::GET, &room_path(&private, "messages?dir=b"), None)
        .await;
    assert_eq!(page.errcode(), "M_FORBIDDEN");
    let path = room_path(&private, &format!("event/{}", encode(&hidden)));
    assert_eq!(get(&dave, &path).await.errcode(), "M_NOT_FOUND");
}

pub(crate) async fn relations_threads_and_bundles(base_url: &str) {
    let alice = Client::register(base_url, "r_alice", "pw-alice-4").await;
    let bob = Client::register(base_url, "r_bob", "pw-bob-4").await;
    let carol = Client::register(base_url, "r_carol", "pw-carol-4").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    assert_eq!(carol.join(&room_id).await.status, 200);
    let root = send_event(
        &alice,
        &room_id,
        "root",
        json!({"msgtype": "m.text", "body": "root"}),
    )
    .await;
    let thread = |body: &str| {
        json!({"msgtype": "m.text", "body": body,
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    };
    let t1 = send_event(&bob, &room_id, "t1", thread("first reply")).await;
    let t2 = send_event(&alice, &room_id, "t2", thread("second reply")).await;
    let edit = send_event(
        &alice,
        &room_id,
        "edit",
        json!({"msgtype": "m.text", "body": "* root!", "m.new_content": {"msgtype": "m.text", "body": "root!"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    // An edit by someone else is not the edit.
    send_event(
        &bob,
        &room_id,
        "fake-edit",
        json!({"msgtype": "m.text", "body": "* hijack", "m.new_content": {"body": "hijack"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    let reference = send_event(
        &carol,
        &room_id,
        "ref",
        json!({"msgtype": "m.text", "body": "see above",
               "m.relates_to": {"rel_type": "m.reference", "event_id": root}}),
    )
    .await;

    let relations = |rest: &str| {
        format!(
            "/_matrix/client/v1/rooms/{}/relations/{}{rest}",
            encode(&room_id),
            encode(&root)
        )
    };
    let all = get(&carol, &relations("")).await;
    assert_eq!(all.status, 200, "{all:?}");
    let ids: Vec<&str> = all.body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[0], reference.as_str(), "newest first");
    let threads = get(&carol, &relations("/m.thread")).await;
    let ids: Vec<&str> = threads.body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids, vec![t2.as_str(), t1.as_str()]);
    let typed = get(&carol, &relations("/m.thread/m.room.message?dir=f")).await;
    let ids: Vec<&str> = typed.body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids, vec![t1.as_str(), t2.as_str()]);
    let first = get(&carol, &relations("/m.thread?limit=1")).await;
    let next = first.body["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let second = get(
        &carol,
        &relations(&format!("/m.thread?limit=1&from={}", encode(&next))),
    )
    .await;
    assert_eq!(second.body["chunk"][0]["event_id"], t1.as_str());
    assert!(second.body.get("next_batch").is_none(), "{second:?}");
    assert_eq!(
        get(&carol, &relations("?dir=sideways")).await.errcode(),
        "M_INVALID_PARAM"
    );
    assert_eq!(
        get(&carol, &relations("?from=nonsense")).await.errcode(),
        "M_INVALID_PARAM"
    );

    // Bundled aggregations wherever the root is served.
    let served = get(
        &carol,
        &room_path(&room_id, &format!("event/{}", encode(&root))),
    )
    .await;
    let bundle = &served.body["unsigned"]["m.relations"];
    assert_eq!(bundle["m.thread"]["count"], 2, "{bundle}");
    assert_eq!(bundle["m.thread"]["latest_event"]["event_id"], t2.as_str());
    assert_eq!(
        bundle["m.thread"]["current_user_participated"], false,
        "carol did not take part"
    );
    assert_eq!(bundle["m.replace"]["event_id"], edit.as_str());
    assert_eq!(
        bundle["m.reference"]["chunk"],
        json!([{"event_id": reference}])
    );
    let as_bob = get(
        &bob,
        &room_path(&room_id, &format!("event/{}", encode(&root))),
    )
    .await;
    assert_eq!(
        as_bob.body["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        true
    );
    let page = carol.messages(&room_id, None, "b", 50).await;
    let in_messages = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .expect("root");
    assert_eq!(
        in_messages["unsigned"]["m.relations"]["m.thread"]["count"],
        2
    );
    let sync = carol.sync(None, 0, 50).await;
    let in_sync = sync["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .cloned()
        .expect("root in sync");
    assert_eq!(in_sync["unsigned"]["m.relations"]["m.thread"]["count"], 2);

    // Threads of the room.
    let list = format!("/_matrix/client/v1/rooms/{}/threads", encode(&room_id));
    let roots = get(&carol, &list).await;
    assert_eq!(
        roots.body["chunk"].as_array().map(Vec::len),
        Some(1),
        "{roots:?}"
    );
    assert_eq!(roots.body["chunk"][0]["event_id"], root.as_str());
    assert_eq!(
        get(&carol, &format!("{list}?include=participated"))
            .await
            .body["chunk"],
        json!([])
    );
    assert_eq!(
        get(&bob, &format!("{list}?include=participated"))
            .await
            .body["chunk"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        get(&bob, &format!("{list}?include=everything"))
            .await
            .errcode(),
        "M_INVALID_PARAM"
    );

    // A redacted reply no longer counts.
    let redact = put(
        &bob,
        &room_path(&room_id, &format!("redact/{}/r1", encode(&t1))),
        json!({}),
    )
    .await;
    assert_eq!(redact.status, 200, "{redact:?}");
    let threads = get(&carol, &relations("/m.thread")).await;
    assert_eq!(threads.body["chunk"].as_array().map(Vec::len), Some(1));
}

/// Bad room inputs get the spec's errors and store nothing.
pub(crate) async fn bad_room_input_changes_nothing(base_url: &str) {
    let alice = Client::register(base_url, "b_alice", "pw-alice-5").await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
    let before = readable_bodies(&alice, &room_id).await;
    let send = |txn: &str| room_path(&room_id, &format!("send/m.room.message/{txn}"));
    // Numbers that are not canonical JSON: floats, and integers past 2^53.
    for (txn, content) in [
        ("f1", json!({"body": "float", "n": 1.5})),
        (
            "f2",
            json!({"body": "huge", "n": 9_007_199_254_740_992_u64}),
        ),
        ("f3", json!({"body": "nested", "deep": {"x": [0.25]}})),
    ] {
        let reply = put(&alice, &send(txn), content).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, "M_BAD_JSON"),
            "{txn}: {reply:?}"
        );
    }
    let state = put(
        &alice,
        &room_path(&room_id, "state/org.example/"),
        json!({"n": -1.0e3}),
    )
    .await;
    assert_eq!(state.errcode(), "M_BAD_JSON");
    let created = post(
        &alice,
        "/_matrix/client/v3/createRoom",
        json!({"initial_state": [{"type": "org.example", "content": {"n": 0.5}}]}),
    )
    .await;
    assert_eq!(created.errcode(), "M_BAD_JSON");
    let created = post(
        &alice,
        "/_matrix/client/v3/createRoom",
        json!({"visibility": "sideways"}),
    )
    .await;
    assert_eq!(created.errcode(), "M_INVALID_PARAM");
    // Invalid identifiers.
    let bad_room = put(
        &alice,
        "/_matrix/client/v3/rooms/not-a-room/send/m.room.message/x",
        json!({"body": "x"}),
    )
    .await;
    assert_eq!(bad_room.errcode(), "M_INVALID_PARAM");
    let bad_alias = post(
        &alice,
        &format!("/_matrix/client/v3/join/{}", encode("#no-server")),
        json!({}),
    )
    .await;
    assert_eq!(bad_alias.errcode(), "M_INVALID_PARAM");
    let unknown_alias = post(
        &alice,
        &format!("/_matrix/client/v3/join/{}", encode("#nobody:localhost")),
        json!({}),
    )
    .await;
    assert_eq!(unknown_alias.errcode(), "M_NOT_FOUND");
    let long_type = "t".repeat(256);
    let reply = put(
        &alice,
        &room_path(&room_id, &format!("send/{long_type}/x")),
        json!({}),
    )
    .await;
    // An event field over its size limit, as Synapse answers it.
    assert_eq!((reply.status, reply.errcode()), (413, "M_TOO_LARGE"));
    // A member event whose state key is not a user ID; a state key naming
    // another user.
    let reply = put(
        &alice,
        &room_path(&room_id, "state/m.room.member/not-a-user"),
        json!({"membership": "join"}),
    )
    .await;
    assert_eq!(reply.errcode(), "M_INVALID_PARAM", "{reply:?}");
    let reply = put(
        &alice,
        &room_path(
            &room_id,
            &format!("state/org.example/{}", encode("@someone:else")),
        ),
        json!({}),
    )
    .await;
    assert_eq!(reply.errcode(), "M_FORBIDDEN", "{reply:?}");
    // Nothing of it reached the room.
    assert_eq!(readable_bodies(&alice, &room_id).await, before);
    let state = get(&alice, &room_path(&room_id, "state")).await;
    assert!(
        state
            .body
            .as_array()
            .is_some_and(|s| !s.iter().any(|e| e["type"] == "org.example"))
    );
    // createRoom with visibility public lists the room.
    let listed = post(
        &alice,
        "/_matrix/client/v3/createRoom",
        json!({"visibility": "public", "name": "Listed"}),
    )
    .await;
    let listed_id = listed.body["room_id"].as_str().expect("room").to_owned();
    let listing = format!(
        "/_matrix/client/v3/directory/list/room/{}",
        encode(&listed_id)
    );
    assert_eq!(get(&alice, &listing).await.body["visibility"], "public");
}

/// Guests: registered without a password, joining only rooms whose guest
/// access allows it, and doing only what the spec lets guests do.
pub(crate) async fn guests_where_guest_access_allows(base_url: &str) {
    let http = reqwest::Client::new();
    let registered = ganglion_integration_tests::client::request(
        &http,
        Method::POST,
        &format!("{base_url}/_matrix/client/v3/register?kind=guest"),
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(registered.status, 200, "{registered:?}");
    let guest = Client {
        base_url: base_url.to_owned(),
        http: http.clone(),
        user_id: registered.body["user_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        access_token: registered.body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        device_id: registered.body["device_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let whoami = get(&guest, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(whoami.body["is_guest"], true);
    let odd = ganglion_integration_tests::client::request(
        &http,
        Method::POST,
        &format!("{base_url}/_matrix/client/v3/register?kind=robot"),
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(odd.errcode(), "M_INVALID_PARAM");

    let alice = Client::register(base_url, "g_alice", "pw-alice-6").await;
    let forbidden = post(&guest, "/_matrix/client/v3/createRoom", json!({})).await;
    assert_eq!(
        (forbidden.status, forbidden.errcode()),
        (403, "M_GUEST_ACCESS_FORBIDDEN")
    );
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    let refused = guest.join(&room_id).await;
    assert_eq!(
        refused.errcode(),
        "M_GUEST_ACCESS_FORBIDDEN",
        "public_chat forbids guests"
    );
    let allow = put(
        &alice,
        &room_path(&room_id, "state/m.room.guest_access/"),
        json!({"guest_access": "can_join"}),
    )
    .await;
    assert_eq!(allow.status, 200);
    assert_eq!(guest.join(&room_id).await.status, 200);
    assert_eq!(
        guest
            .send_text(&room_id, "g1", "hello from a guest")
            .await
            .status,
        200
    );
    // Since v1.2 guests send any event type, and state too (their power
    // level, not their being a guest, decides that).
    let other = put(
        &guest,
        &room_path(&room_id, "send/org.example.custom/g2"),
        json!({}),
    )
    .await;
    assert_eq!(other.status, 200, "{other:?}");
    let state = put(
        &guest,
        &room_path(&room_id, "state/m.room.topic/"),
        json!({"topic": "x"}),
    )
    .await;
    assert_eq!((state.status, state.errcode()), (403, "M_FORBIDDEN"));
    // What the spec opens to guests, and what clients need beside it.
    for path in [
        "/_matrix/client/v3/sync?timeout=0",
        "/_matrix/client/v3/capabilities",
        "/_matrix/client/v3/joined_rooms",
        &room_path(&room_id, "state"),
        &room_path(&room_id, "messages?dir=b"),
        &room_path(&room_id, "joined_members"),
    ] {
        let answer = get(&guest, path).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
    }
    let filter = post(
        &guest,
        &format!("/_matrix/client/v3/user/{}/filter", guest.user_id),
        json!({"room": {"timeline": {"limit": 5}}}),
    )
    .await;
    assert_eq!(filter.status, 200, "{filter:?}");
    let keys = post(
        &guest,
        "/_matrix/client/v3/keys/query",
        json!({"device_keys": {alice.user_id.clone(): []}}),
    )
    .await;
    assert_eq!(keys.status, 200, "{keys:?}");
    let name = put(
        &guest,
        &format!("/_matrix/client/v3/profile/{}/displayname", guest.user_id),
        json!({"displayname": "Visitor"}),
    )
    .await;
    assert_eq!(name.status, 200, "{name:?}");
    // And what only accounts may do.
    let avatar = put(
        &guest,
        &format!("/_matrix/client/v3/profile/{}/avatar_url", guest.user_id),
        json!({"avatar_url": "mxc://example.org/abc"}),
    )
    .await;
    assert_eq!(avatar.errcode(), "M_GUEST_ACCESS_FORBIDDEN");
    for (method, path, body) in [
        (
            Method::PUT,
            format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.x",
                guest.user_id
            ),
            json!({}),
        ),
        (
            Method::GET,
            "/_matrix/client/v3/pushrules/".to_owned(),
            json!(null),
        ),
        (
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync".to_owned(),
            json!({}),
        ),
        (
            Method::POST,
            "/_matrix/client/v3/keys/device_signing/upload".to_owned(),
            json!({}),
        ),
        (
            Method::POST,
            "/_matrix/client/v3/logout/all".to_owned(),
            json!({}),
        ),
    ] {
        let answer = ganglion_integration_tests::client::request(
            &http,
            method.clone(),
            &format!("{base_url}{path}"),
            Some(&guest.access_token),
            (!body.is_null()).then(|| body.to_string().into_bytes()),
        )
        .await;
        assert_eq!(
            (answer.status, answer.errcode()),
            (403, "M_GUEST_ACCESS_FORBIDDEN"),
            "{method} {path}: {answer:?}"
        );
    }
    assert_eq!(
        moderate(&guest, &room_id, "invite", &alice.user_id)
            .await
            .errcode(),
        "M_GUEST_ACCESS_FORBIDDEN"
    );
    assert!(
        readable_bodies(&guest, &room_id)
            .await
            .contains(&"hello from a guest".to_owned())
    );
    assert_eq!(
        get(&guest, &room_path(&room_id, "members")).await.status,
        200
    );
    // Guest access withdrawn: the guests in the room leave it (the spec's
    // MUST), and cannot come back.
    let withdraw = put(
        &alice,
        &room_path(&room_id, "state/m.room.guest_access/"),
        json!({"guest_access": "forbidden"}),
    )
    .await;
    assert_eq!(withdraw.status, 200);
    assert_eq!(membership(&alice, &room_id, &guest.user_id).await, "leave");
    assert_eq!(
        guest.join(&room_id).await.errcode(),
        "M_GUEST_ACCESS_FORBIDDEN"
    );

    // A guest becomes a full account by registering with their token:
    // the same user ID, a password, and everything accounts may do.
    let register = format!("{base_url}/_matrix/client/v3/register");
    let body = json!({"username": guest.user_id.trim_start_matches('@').split(':').next(),
                      "password": "pw-upgraded-guest", "guest_access_token": guest.access_token});
    let challenge = ganglion_integration_tests::client::request(
        &http,
        Method::POST,
        &register,
        None,
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(challenge.status, 401, "{challenge:?}");
    let mut body = body;
    body["auth"] = json!({"type": "m.login.dummy", "session": challenge.body["session"]});
    let upgraded = ganglion_integration_tests::client::request(
        &http,
        Method::POST,
        &register,
        None,
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(upgraded.status, 200, "{upgraded:?}");
    assert_eq!(upgraded.body["user_id"], guest.user_id.as_str());
    let member = Client {
        access_token: upgraded.body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        ..guest.clone()
    };
    // Not a guest: `is_guest` false, or left out as the spec allows.
    assert_ne!(
        get(&member, "/_matrix/client/v3/account/whoami").await.body["is_guest"],
        true
    );
    assert_eq!(
        post(&member, "/_matrix/client/v3/createRoom", json!({}))
            .await
            .status,
        200
    );
    // A full account's token is not a guest's.
    let again = ganglion_integration_tests::client::request(
        &http,
        Method::POST,
        &register,
        None,
        Some(
            json!({"password": "pw-x-guest", "guest_access_token": member.access_token,
                   "auth": {"type": "m.login.dummy"}})
            .to_string()
            .into_bytes(),
        ),
    )
    .await;
    assert_eq!(again.status, 403, "{again:?}");
    // A token that is nobody's, or no string at all.
    for token in [
        json!("syt_not_a_token"),
        json!(12),
        json!("x".repeat(5_000)),
    ] {
        let refused = ganglion_integration_tests::client::request(
            &http,
            Method::POST,
            &register,
            None,
            Some(
                json!({"password": "pw-y-guest", "guest_access_token": token,
                       "auth": {"type": "m.login.dummy"}})
                .to_string()
                .into_bytes(),
            ),
        )
        .await;
        assert!(matches!(refused.status, 400 | 401), "{token}: {refused:?}");
    }
}
