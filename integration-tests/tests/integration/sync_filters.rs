//! `/sync` and `/messages` filters: types, senders, rooms, URLs, limits,
//! event fields, lazy-loaded members and left rooms.

use ganglion_integration_tests::client::{Client, encode, message_bodies};
use reqwest::Method;
use serde_json::{Value, json};

async fn sync_with(client: &Client, filter: Value) -> Value {
    let path = format!(
        "/_matrix/client/v3/sync?timeout=0&filter={}",
        encode(&filter.to_string())
    );
    let reply = client.call(Method::GET, &path, None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

fn timeline<'a>(body: &'a Value, room_id: &str) -> &'a Value {
    &body["rooms"]["join"][room_id]["timeline"]["events"]
}

fn state_keys(events: &Value, event_type: &str) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == event_type)
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect()
}

pub(crate) async fn filters_shape_sync_and_messages(base_url: &str) {
    let alice = Client::register(base_url, "f_alice", "pw-alice-7").await;
    let bob = Client::register(base_url, "f_bob", "pw-bob-7").await;
    let carol = Client::register(base_url, "f_carol", "pw-carol-7").await;
    let room_id = alice
        .create_room(json!({"preset": "public_chat", "name": "Filtered"}))
        .await;
    let other = alice.create_room(json!({"preset": "public_chat"})).await;
    for client in [&bob, &carol] {
        assert_eq!(client.join(&room_id).await.status, 200);
    }
    assert_eq!(bob.join(&other).await.status, 200);
    for i in 0..4 {
        assert_eq!(
            alice
                .send_text(&room_id, &format!("a{i}"), &format!("alice {i}"))
                .await
                .status,
            200
        );
        assert_eq!(
            bob.send_text(&room_id, &format!("b{i}"), &format!("bob {i}"))
                .await
                .status,
            200
        );
    }
    let image = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/img",
                encode(&room_id)
            ),
            Some(json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/cat"})),
        )
        .await;
    assert_eq!(image.status, 200);

    // Types and senders, with a limit: alice's messages only, the last 3.
    let body = sync_with(
        &alice,
        json!({"room": {"timeline": {"limit": 3, "types": ["m.room.message"], "not_senders": [bob.user_id]}}}),
    )
    .await;
    assert_eq!(
        message_bodies(timeline(&body, &room_id)),
        vec!["alice 2", "alice 3", "cat.png"]
    );
    assert_eq!(body["rooms"]["join"][&room_id]["timeline"]["limited"], true);
    // Only events with a URL.
    let body = sync_with(
        &alice,
        json!({"room": {"timeline": {"contains_url": true}}}),
    )
    .await;
    assert_eq!(message_bodies(timeline(&body, &room_id)), vec!["cat.png"]);
    // Rooms.
    let body = sync_with(&bob, json!({"room": {"not_rooms": [room_id]}})).await;
    assert!(body["rooms"]["join"].get(&room_id).is_none());
    assert!(body["rooms"]["join"].get(&other).is_some());
    let body = sync_with(&bob, json!({"room": {"rooms": [room_id]}})).await;
    assert!(body["rooms"]["join"].get(&other).is_none());
    // Event fields.
    let body = sync_with(
        &alice,
        json!({"event_fields": ["type", "content.body"], "room": {"timeline": {"limit": 1}}}),
    )
    .await;
    assert_eq!(
        timeline(&body, &room_id)[0],
        json!({"type": "m.room.message", "content": {"body": "cat.png"}})
    );
    // Lazy-loaded members: only those who speak in the timeline (and the user).
    let lazy = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}});
    let body = sync_with(&carol, lazy).await;
    let members = state_keys(
        &body["rooms"]["join"][&room_id]["state"]["events"],
        "m.room.member",
    );
    assert!(members.contains(&alice.user_id), "{members:?}");
    assert!(members.contains(&carol.user_id), "{members:?}");
    assert!(
        !members.contains(&bob.user_id),
        "bob did not send the last event: {members:?}"
    );
    let full = sync_with(&carol, json!({"room": {"timeline": {"limit": 1}}})).await;
    let members = state_keys(
        &full["rooms"]["join"][&room_id]["state"]["events"],
        "m.room.member",
    );
    assert!(
        members.contains(&bob.user_id),
        "without lazy-loading every member: {members:?}"
    );
    // The room summary: counts, and no heroes, as the room has a name.
    let summary = &full["rooms"]["join"][&room_id]["summary"];
    assert_eq!(summary["m.joined_member_count"], 3, "{summary}");
    assert_eq!(summary["m.invited_member_count"], 0);
    assert!(summary.get("m.heroes").is_none(), "{summary}");
    // A stored filter works like an inline one.
    let stored = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/user/{}/filter", encode(&bob.user_id)),
            Some(json!({"room": {"timeline": {"senders": [alice.user_id]}}})),
        )
        .await;
    let id = stored.body["filter_id"]
        .as_str()
        .expect("filter id")
        .to_owned();
    let reply = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/sync?timeout=0&filter={id}"),
            None,
        )
        .await;
    let bodies = message_bodies(timeline(&reply.body, &room_id));
    assert!(
        !bodies.is_empty() && bodies.iter().all(|b| !b.starts_with("bob")),
        "{bodies:?}"
    );

    // Left rooms appear on an initial sync only with include_leave.
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", encode(&other)),
            Some(json!({}))
        )
        .await
        .status,
        200
    );
    let body = sync_with(&bob, json!({})).await;
    assert!(body["rooms"]["leave"].get(&other).is_none());
    let body = sync_with(&bob, json!({"room": {"include_leave": true}})).await;
    assert!(body["rooms"]["leave"].get(&other).is_some(), "{body}");

    // /messages: a RoomEventFilter and lazy-loaded members in `state`.
    let filter = json!({"senders": [bob.user_id], "lazy_load_members": true});
    let page = carol
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=30&filter={}",
                encode(&room_id),
                encode(&filter.to_string())
            ),
            None,
        )
        .await;
    assert_eq!(page.status, 200, "{page:?}");
    let bodies = message_bodies(&page.body["chunk"]);
    assert_eq!(bodies, vec!["bob 3", "bob 2", "bob 1", "bob 0"]);
    assert_eq!(
        state_keys(&page.body["state"], "m.room.member"),
        vec![bob.user_id.clone()]
    );

    // Bad filters: not JSON, the wrong shape, too large.
    for bad in [
        "{not json",
        r#"{"room": {"timeline": {"limit": -1}}}"#,
        r#"{"room": {"timeline": {"types": "m.room.message"}}}"#,
    ] {
        let reply = alice
            .call(
                Method::GET,
                &format!("/_matrix/client/v3/sync?timeout=0&filter={}", encode(bad)),
                None,
            )
            .await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, "M_INVALID_PARAM"),
            "{bad}"
        );
    }
    let huge = json!({"room": {"timeline": {"types": vec!["x"; 30_000]}}});
    let reply = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/user/{}/filter", encode(&alice.user_id)),
            Some(huge),
        )
        .await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (400, "M_INVALID_PARAM"),
        "an oversized filter"
    );
    let reply = alice
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&filter={}",
                encode(&room_id),
                encode("[1]")
            ),
            None,
        )
        .await;
    assert_eq!(reply.errcode(), "M_INVALID_PARAM");
}
