//! The ephemeral and per-user streams through `/sync`: typing, receipts,
//! read markers, account data and tags, to-device messages, presence, and
//! long-polls that wake only for their own user's news.

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, encode};
use reqwest::Method;
use serde_json::{Value, json};

/// `/sync` with no filter, from `since`.
pub(crate) async fn sync(client: &Client, since: Option<&str>, timeout_ms: u64) -> Value {
    client.sync_all(since, timeout_ms).await
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().unwrap_or_default().to_owned()
}

/// The room's ephemeral event of a type in a sync response.
fn ephemeral<'a>(body: &'a Value, room_id: &str, event_type: &str) -> Option<&'a Value> {
    body["rooms"]["join"][room_id]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == event_type)
}

fn typing_users(body: &Value, room_id: &str) -> Option<Vec<String>> {
    let event = ephemeral(body, room_id, "m.typing")?;
    Some(
        event["content"]["user_ids"]
            .as_array()?
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect(),
    )
}

fn account_data<'a>(events: &'a Value, data_type: &str) -> Option<&'a Value> {
    events
        .as_array()?
        .iter()
        .find(|e| e["type"] == data_type)
        .map(|e| &e["content"])
}

async fn put(
    client: &Client,
    path: &str,
    body: Value,
) -> ganglion_integration_tests::client::Reply {
    client.call(Method::PUT, path, Some(body)).await
}

async fn post(
    client: &Client,
    path: &str,
    body: Value,
) -> ganglion_integration_tests::client::Reply {
    client.call(Method::POST, path, Some(body)).await
}

fn event_id(reply: &ganglion_integration_tests::client::Reply) -> String {
    reply.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub(crate) async fn typing_receipts_and_markers(base_url: &str) {
    let alice = Client::register(base_url, "e_alice", "pw-alice-9").await;
    let bob = Client::register(base_url, "e_bob", "pw-bob-9").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let room = encode(&room_id);
    let first = event_id(&alice.send_text(&room_id, "t1", "one").await);
    let second = event_id(&alice.send_text(&room_id, "t2", "two").await);
    let since = next_batch(&sync(&bob, None, 0).await);

    // Typing: bob's long-poll wakes when alice starts.
    let waiting = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move { sync(&bob, Some(&since), 10_000).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let typing_path = format!(
        "/_matrix/client/v3/rooms/{room}/typing/{}",
        encode(&alice.user_id)
    );
    let reply = put(
        &alice,
        &typing_path,
        json!({"typing": true, "timeout": 30000}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = waiting.await.expect("long-poll");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by typing"
    );
    assert_eq!(
        typing_users(&body, &room_id),
        Some(vec![alice.user_id.clone()])
    );
    let since = next_batch(&body);
    // Stopping is news too: an empty list.
    let reply = put(&alice, &typing_path, json!({"typing": false})).await;
    assert_eq!(reply.status, 200);
    let body = sync(&bob, Some(&since), 5_000).await;
    assert_eq!(typing_users(&body, &room_id), Some(vec![]));
    let since = next_batch(&body);
    // A notice lapses by itself after its timeout.
    let reply = put(
        &alice,
        &typing_path,
        json!({"typing": true, "timeout": 500}),
    )
    .await;
    assert_eq!(reply.status, 200);
    let body = sync(&bob, Some(&since), 5_000).await;
    assert_eq!(
        typing_users(&body, &room_id),
        Some(vec![alice.user_id.clone()])
    );
    let body = sync(&bob, Some(&next_batch(&body)), 5_000).await;
    assert_eq!(typing_users(&body, &room_id), Some(vec![]), "lapsed");
    let since = next_batch(&body);
    // Someone else's typing, or a room one is not in: refused.
    let reply = put(&bob, &typing_path, json!({"typing": true, "timeout": 1000})).await;
    assert_eq!((reply.status, reply.errcode()), (403, "M_FORBIDDEN"));
    let reply = put(&bob, &typing_path, json!({"typing": "yes"})).await;
    assert_eq!((reply.status, reply.errcode()), (400, "M_BAD_JSON"));

    // Receipts: public ones reach the room, private ones only their owner.
    let receipt = |kind: &str, event: &str| {
        format!(
            "/_matrix/client/v3/rooms/{room}/receipt/{kind}/{}",
            encode(event)
        )
    };
    assert_eq!(
        post(&bob, &receipt("m.read", &second), json!({}))
            .await
            .status,
        200
    );
    assert_eq!(
        post(&bob, &receipt("m.read.private", &first), json!({}))
            .await
            .status,
        200
    );
    assert_eq!(
        post(
            &bob,
            &receipt("m.read", &second),
            json!({"thread_id": "main"})
        )
        .await
        .status,
        200
    );
    let seen_by_alice = sync(&alice, None, 0).await;
    let receipts = &ephemeral(&seen_by_alice, &room_id, "m.receipt").expect("receipts")["content"];
    assert!(
        receipts[&second]["m.read"][&bob.user_id]["ts"].is_u64(),
        "{receipts}"
    );
    assert!(
        receipts[&first]["m.read.private"].is_null(),
        "private: {receipts}"
    );
    let seen_by_bob = sync(&bob, Some(&since), 0).await;
    let receipts = &ephemeral(&seen_by_bob, &room_id, "m.receipt").expect("receipts")["content"];
    assert!(
        receipts[&first]["m.read.private"][&bob.user_id].is_object(),
        "{receipts}"
    );
    // A receipt never moves back: m.read for the older event is dropped.
    assert_eq!(
        post(&bob, &receipt("m.read", &first), json!({}))
            .await
            .status,
        200
    );
    let receipts = sync(&alice, None, 0).await;
    let receipts = &ephemeral(&receipts, &room_id, "m.receipt").expect("receipts")["content"];
    assert!(
        receipts[&first]["m.read"][&bob.user_id].is_null(),
        "{receipts}"
    );
    assert!(
        receipts[&second]["m.read"][&bob.user_id].is_object(),
        "{receipts}"
    );
    for (kind, event, body, status, code) in [
        ("m.nope", second.as_str(), json!({}), 400, "M_INVALID_PARAM"),
        (
            "m.read",
            "$missing:localhost",
            json!({}),
            404,
            "M_NOT_FOUND",
        ),
        ("m.read", "not-an-id", json!({}), 400, "M_INVALID_PARAM"),
        (
            "m.read",
            second.as_str(),
            json!({"thread_id": "x"}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "m.fully_read",
            second.as_str(),
            json!({"thread_id": "main"}),
            400,
            "M_INVALID_PARAM",
        ),
    ] {
        let reply = post(&bob, &receipt(kind, event), body).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (status, code),
            "{kind} {event}"
        );
    }

    // Read markers: the fully-read marker is room account data.
    let reply = post(
        &bob,
        &format!("/_matrix/client/v3/rooms/{room}/read_markers"),
        json!({"m.fully_read": first, "m.read": second}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = sync(&bob, Some(&since), 0).await;
    let room_data = &body["rooms"]["join"][&room_id]["account_data"]["events"];
    assert_eq!(
        account_data(room_data, "m.fully_read"),
        Some(&json!({"event_id": first}))
    );
    let reply = put(
        &bob,
        &format!(
            "/_matrix/client/v3/user/{}/rooms/{room}/account_data/m.fully_read",
            encode(&bob.user_id)
        ),
        json!({"event_id": first}),
    )
    .await;
    assert_eq!((reply.status, reply.errcode()), (405, "M_BAD_JSON"));
}

pub(crate) async fn account_data_and_tags(base_url: &str) {
    let alice = Client::register(base_url, "ad_alice", "pw-alice-9").await;
    let room_id = alice.create_room(json!({})).await;
    let room = encode(&room_id);
    let user = encode(&alice.user_id);
    let since = next_batch(&sync(&alice, None, 0).await);

    let global = format!("/_matrix/client/v3/user/{user}/account_data/m.direct");
    let reply = put(&alice, &global, json!({"@x:localhost": [room_id]})).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = alice.call(Method::GET, &global, None).await;
    assert_eq!(reply.body, json!({"@x:localhost": [room_id]}));
    let per_room =
        format!("/_matrix/client/v3/user/{user}/rooms/{room}/account_data/org.example.note");
    assert_eq!(put(&alice, &per_room, json!({"n": 1})).await.status, 200);
    assert_eq!(
        alice.call(Method::GET, &per_room, None).await.body,
        json!({"n": 1})
    );
    let tag = |name: &str| format!("/_matrix/client/v3/user/{user}/rooms/{room}/tags/{name}");
    assert_eq!(
        put(&alice, &tag("m.favourite"), json!({"order": 0.25}))
            .await
            .status,
        200
    );
    assert_eq!(put(&alice, &tag("u.work"), json!({})).await.status, 200);
    assert_eq!(
        alice
            .call(Method::DELETE, &tag("u.work"), None)
            .await
            .status,
        200
    );
    let reply = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/user/{user}/rooms/{room}/tags"),
            None,
        )
        .await;
    assert_eq!(
        reply.body,
        json!({"tags": {"m.favourite": {"order": 0.25}}})
    );

    let body = sync(&alice, Some(&since), 0).await;
    assert_eq!(
        account_data(&body["account_data"]["events"], "m.direct"),
        Some(&json!({"@x:localhost": [room_id]}))
    );
    let room_data = &body["rooms"]["join"][&room_id]["account_data"]["events"];
    assert_eq!(
        account_data(room_data, "org.example.note"),
        Some(&json!({"n": 1}))
    );
    assert_eq!(
        account_data(room_data, "m.tag"),
        Some(&json!({"tags": {"m.favourite": {"order": 0.25}}}))
    );
    // An initial sync has it all; an incremental one only what changed.
    let initial = sync(&alice, None, 0).await;
    assert!(account_data(&initial["account_data"]["events"], "m.direct").is_some());
    let quiet = sync(&alice, Some(&next_batch(&body)), 0).await;
    assert_eq!(quiet["account_data"]["events"], json!([]));

    let bob = Client::register(base_url, "ad_bob", "pw-bob-9").await;
    for (client, method, path, body, status, code) in [
        (
            &bob,
            Method::PUT,
            global.clone(),
            Some(json!({})),
            403,
            "M_FORBIDDEN",
        ),
        (&bob, Method::GET, global.clone(), None, 403, "M_FORBIDDEN"),
        (
            &alice,
            Method::PUT,
            global.clone(),
            Some(json!([1])),
            400,
            "M_BAD_JSON",
        ),
        (
            &alice,
            Method::PUT,
            tag("m.lowpriority"),
            Some(json!({"order": "high"})),
            400,
            "M_BAD_JSON",
        ),
        (
            &alice,
            Method::GET,
            format!("/_matrix/client/v3/user/{user}/account_data/never.set"),
            None,
            404,
            "M_NOT_FOUND",
        ),
        (
            &alice,
            Method::PUT,
            format!("/_matrix/client/v3/user/{user}/rooms/not-a-room/account_data/x"),
            Some(json!({})),
            400,
            "M_INVALID_PARAM",
        ),
    ] {
        let reply = client.call(method, &path, body).await;
        assert_eq!((reply.status, reply.errcode()), (status, code), "{path}");
    }
}

/// To-device messages: delivered to the named device (or every device),
/// again until acknowledged, and never after.
pub(crate) async fn to_device_once(base_url: &str) -> (Client, Client, String) {
    let alice = Client::register(base_url, "td_alice", "pw-alice-9").await;
    let bob = Client::register(base_url, "td_bob", "pw-bob-9").await;
    let since = next_batch(&sync(&bob, None, 0).await);
    let send = |txn: &str, device: &str, n: u32| {
        let alice = alice.clone();
        let bob_id = bob.user_id.clone();
        let path = format!("/_matrix/client/v3/sendToDevice/m.test/{txn}");
        let device = device.to_owned();
        async move {
            alice
                .call(
                    Method::PUT,
                    &path,
                    Some(json!({"messages": {bob_id: {device: {"n": n}}}})),
                )
                .await
        }
    };
    assert_eq!(send("1", &bob.device_id, 1).await.status, 200);
    assert_eq!(send("2", "*", 2).await.status, 200);
    // A retried transaction is not delivered twice.
    assert_eq!(send("2", "*", 2).await.status, 200);
    assert_eq!(send("3", "OTHERDEVICE", 3).await.status, 200);
    let numbers = |body: &Value| -> Vec<u64> {
        body["to_device"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                assert_eq!(e["type"], "m.test");
                e["content"]["n"].as_u64().unwrap_or_default()
            })
            .collect()
    };
    let body = sync(&bob, Some(&since), 0).await;
    assert_eq!(numbers(&body), vec![1, 2]);
    assert_eq!(
        body["to_device"]["events"][0]["sender"],
        json!(alice.user_id)
    );
    // Not acknowledged (same since): delivered again.
    assert_eq!(numbers(&sync(&bob, Some(&since), 0).await), vec![1, 2]);
    // Acknowledged: gone.
    let acked = next_batch(&body);
    let body = sync(&bob, Some(&acked), 0).await;
    assert_eq!(numbers(&body), Vec::<u64>::new());
    assert_eq!(
        numbers(&sync(&bob, Some(&since), 0).await),
        Vec::<u64>::new(),
        "deleted"
    );
    assert_eq!(send("4", &bob.device_id, 4).await.status, 200);
    let reply = alice
        .call(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.test/5",
            Some(json!({"messages": {"not a user": {"D": {}}}})),
        )
        .await;
    assert_eq!((reply.status, reply.errcode()), (400, "M_INVALID_PARAM"));
    let reply = alice
        .call(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.test/6",
            Some(json!({"messages": {"@x:localhost": {"D": 5}}})),
        )
        .await;
    assert_eq!((reply.status, reply.errcode()), (400, "M_BAD_JSON"));
    let next = next_batch(&body);
    (alice, bob, next)
}

/// The last to-device message of [`to_device_once`], once, after a restart.
pub(crate) async fn to_device_after_restart(bob: &Client, since: &str) {
    let body = sync(bob, Some(since), 0).await;
    let events = body["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["content"]["n"], 4);
    let body = sync(bob, Some(&next_batch(&body)), 0).await;
    assert_eq!(body["to_device"]["events"], json!([]));
}

pub(crate) async fn presence_and_quiet_long_polls(base_url: &str) {
    let alice = Client::register(base_url, "p_alice", "pw-alice-9").await;
    let bob = Client::register(base_url, "p_bob", "pw-bob-9").await;
    let carol = Client::register(base_url, "p_carol", "pw-carol-9").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let status = |user: &Client| {
        format!(
            "/_matrix/client/v3/presence/{}/status",
            encode(&user.user_id)
        )
    };

    // Syncing brings a user online; bob sees it, carol (no shared room) may not ask.
    let since = next_batch(&sync(&bob, None, 0).await);
    sync(&alice, None, 0).await;
    let reply = bob.call(Method::GET, &status(&alice), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["presence"], "online");
    let reply = carol.call(Method::GET, &status(&alice), None).await;
    assert_eq!((reply.status, reply.errcode()), (403, "M_FORBIDDEN"));
    let reply = put(
        &alice,
        &status(&alice),
        json!({"presence": "unavailable", "status_msg": "lunch"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = sync(&bob, Some(&since), 5_000).await;
    let presence: Vec<&Value> = body["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["sender"] == json!(alice.user_id))
        .collect();
    let last = presence.last().expect("alice's presence");
    assert_eq!(last["content"]["presence"], "unavailable");
    assert_eq!(last["content"]["status_msg"], "lunch");
    // A presence set by hand survives syncing; set_presence=offline does not come online.
    sync(&alice, None, 0).await;
    assert_eq!(
        bob.call(Method::GET, &status(&alice), None).await.body["presence"],
        "unavailable"
    );
    for (body, code) in [
        (json!({"presence": "asleep"}), "M_INVALID_PARAM"),
        (json!({"status_msg": "x"}), "M_BAD_JSON"),
    ] {
        let reply = put(&alice, &status(&alice), body).await;
        assert_eq!((reply.status, reply.errcode()), (400, code));
    }
    let reply = put(&bob, &status(&alice), json!({"presence": "online"})).await;
    assert_eq!((reply.status, reply.errcode()), (403, "M_FORBIDDEN"));
    let reply = carol
        .call(
            Method::GET,
            "/_matrix/client/v3/sync?set_presence=dancing",
            None,
        )
        .await;
    assert_eq!((reply.status, reply.errcode()), (400, "M_INVALID_PARAM"));
    sync_with_presence(&carol, "offline").await;
    let reply = carol.call(Method::GET, &status(&carol), None).await;
    assert_eq!(reply.body["presence"], "offline");

    // Quiet long-polls: carol's news does not wake bob; bob's own does.
    let since = next_batch(&sync(&bob, None, 0).await);
    let waiting = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let body = sync(&bob, Some(&since), 2_500).await;
            (started.elapsed(), body)
        })
    };
    let other = carol.create_room(json!({})).await;
    for i in 0..3 {
        carol
            .send_text(&other, &format!("q{i}"), "not for bob")
            .await;
    }
    let (waited, body) = waiting.await.expect("long-poll");
    assert!(
        waited >= Duration::from_millis(2_400),
        "woke early: {waited:?} {body}"
    );
    assert_eq!(body["rooms"]["join"], json!({}));
    // With nothing new, `full_state` still answers at once with the
    // state of every joined room; a zero timeout answers at once too.
    for (query, rooms) in [("timeout=10000&full_state=true", 1), ("timeout=0", 0)] {
        let started = Instant::now();
        let reply = bob
            .call(
                Method::GET,
                &format!("/_matrix/client/v3/sync?since={since}&{query}"),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{query}");
        let joined = reply.body["rooms"]["join"]
            .as_object()
            .map_or(0, |j| j.len());
        assert_eq!(joined, rooms, "{query}: {}", reply.body);
        if rooms == 1 {
            let state = &reply.body["rooms"]["join"][&room_id]["state"]["events"];
            assert!(
                state
                    .as_array()
                    .is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.create")),
                "{}",
                reply.body
            );
        }
    }
    let reply = bob
        .call(Method::GET, "/_matrix/client/v3/sync?since=garbage", None)
        .await;
    assert_eq!((reply.status, reply.errcode()), (400, "M_INVALID_PARAM"));
}

async fn sync_with_presence(client: &Client, presence: &str) {
    let reply = client
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/sync?timeout=0&set_presence={presence}"),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// With short inactivity timeouts: a user who stops syncing becomes
/// unavailable, then offline, and others see each change.
pub(crate) async fn presence_by_inactivity(base_url: &str) {
    let alice = Client::register(base_url, "pi_alice", "pw-alice-9").await;
    let bob = Client::register(base_url, "pi_bob", "pw-bob-9").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    sync(&alice, None, 0).await;
    let path = format!(
        "/_matrix/client/v3/presence/{}/status",
        encode(&alice.user_id)
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let presence = bob.call(Method::GET, &path, None).await.body["presence"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if seen.last() != Some(&presence) {
            seen.push(presence.clone());
        }
        if presence == "offline" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, vec!["online", "unavailable", "offline"]);
    // Syncing again brings alice back.
    sync(&alice, None, 0).await;
    assert_eq!(
        bob.call(Method::GET, &path, None).await.body["presence"],
        "online"
    );
}

/// Notification and highlight counts from the default push rules, cleared
/// by receipts, per thread when the filter asks.
pub(crate) async fn notification_counts(base_url: &str) {
    let alice = Client::register(base_url, "n_alice", "pw-alice-9").await;
    let bob = Client::register(base_url, "n_bob", "pw-bob-9").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let room = encode(&room_id);
    let first = event_id(&alice.send_text(&room_id, "n1", "hello").await);
    // An intentional mention highlights.
    let second = event_id(
        &put(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/n2"),
            json!({"msgtype": "m.text", "body": "are you there n_bob?",
                   "m.mentions": {"user_ids": [bob.user_id]}}),
        )
        .await,
    );
    let _third = event_id(&alice.send_text(&room_id, "n3", "anyone").await);
    let reply = put(
        &alice,
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/n4"),
        json!({"msgtype": "m.text", "body": "in a thread",
               "m.relates_to": {"rel_type": "m.thread", "event_id": first}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let unread = |body: &Value| body["rooms"]["join"][&room_id]["unread_notifications"].clone();
    let body = sync(&bob, None, 0).await;
    assert_eq!(
        unread(&body),
        json!({"notification_count": 4, "highlight_count": 1})
    );
    // Alice's own messages never count for her.
    assert_eq!(
        unread(&sync(&alice, None, 0).await),
        json!({"notification_count": 0, "highlight_count": 0})
    );
    // Per thread, when asked.
    let filter =
        encode(&json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string());
    let threaded = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/sync?filter={filter}"),
            None,
        )
        .await
        .body;
    let joined = &threaded["rooms"]["join"][&room_id];
    assert_eq!(
        joined["unread_notifications"],
        json!({"notification_count": 3, "highlight_count": 1})
    );
    assert_eq!(
        joined["unread_thread_notifications"][&first],
        json!({"notification_count": 1, "highlight_count": 0})
    );
    // A receipt in the main timeline reads up to its event there.
    let reply = post(
        &bob,
        &format!(
            "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
            encode(&second)
        ),
        json!({"thread_id": "main"}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        unread(&sync(&bob, None, 0).await),
        json!({"notification_count": 2, "highlight_count": 0})
    );
    // An unthreaded private receipt for the latest event reads everything.
    let latest = event_id(&alice.send_text(&room_id, "n5", "last").await);
    let reply = post(
        &bob,
        &format!(
            "/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{}",
            encode(&latest)
        ),
        json!({}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        unread(&sync(&bob, None, 0).await),
        json!({"notification_count": 0, "highlight_count": 0})
    );
}

/// The push rules a client reads are the server-default ruleset the
/// notification counts follow.
pub(crate) async fn push_rules(base_url: &str) {
    let alice = Client::register(base_url, "pr_alice", "pw-alice-pr").await;
    let all = alice
        .call(Method::GET, "/_matrix/client/v3/pushrules/", None)
        .await;
    assert_eq!(all.status, 200, "{all:?}");
    let global = &all.body["global"];
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(global[kind].is_array(), "{kind}: {global}");
    }
    assert!(
        global["override"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["rule_id"] == ".m.rule.master")),
        "{global}"
    );
    let same = alice
        .call(Method::GET, "/_matrix/client/v3/pushrules/global/", None)
        .await;
    assert_eq!(same.body, *global);
    let rule = alice
        .call(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled",
            None,
        )
        .await;
    assert_eq!(rule.body, json!({"enabled": false}));
    let actions = alice
        .call(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/underride/.m.rule.message/actions",
            None,
        )
        .await;
    assert_eq!(actions.body["actions"], json!(["notify"]), "{actions:?}");
    let missing = alice
        .call(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/override/no.such.rule",
            None,
        )
        .await;
    assert_eq!((missing.status, missing.errcode()), (404, "M_NOT_FOUND"));
    let bad_kind = alice
        .call(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/sideways/.m.rule.master",
            None,
        )
        .await;
    assert_eq!(
        (bad_kind.status, bad_kind.errcode()),
        (400, "M_INVALID_PARAM")
    );
    let no_token = ganglion_integration_tests::client::request(
        &alice.http,
        Method::GET,
        &format!("{base_url}/_matrix/client/v3/pushrules/"),
        None,
        None,
    )
    .await;
    assert_eq!(no_token.status, 401);
}
