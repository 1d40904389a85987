//! Simplified sliding sync (MSC4186) over HTTP: list windows ordered by
//! recency, rooms sent whole once and then only with news, subscriptions,
//! long-polls, leaves, the extensions, and the refusals.

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, Reply, encode};
use reqwest::Method;
use serde_json::{Value, json};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn sliding(client: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Reply {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", encode(pos)));
    }
    client.call(Method::POST, &path, Some(body.clone())).await
}

/// A request that must succeed; its body.
async fn ok(client: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let reply = sliding(client, pos, timeout_ms, body).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

fn pos(body: &Value) -> String {
    body["pos"].as_str().expect("pos").to_owned()
}

fn rooms(body: &Value) -> Vec<String> {
    let mut rooms: Vec<String> = body["rooms"]
        .as_object()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    rooms.sort();
    rooms
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

pub(crate) async fn lists_windows_and_subscriptions(base_url: &str) {
    let alice = Client::register(base_url, "ss_alice", "pw-alice-ss").await;
    let bob = Client::register(base_url, "ss_bob", "pw-bob-ss").await;
    // Five rooms, each with a message, r4 the latest.
    let mut room_ids = Vec::new();
    for i in 0..5 {
        let room_id = alice
            .create_room(json!({"name": format!("r{i}"), "preset": "private_chat"}))
            .await;
        alice
            .send_text(&room_id, &format!("t{i}"), &format!("hello r{i}"))
            .await;
        room_ids.push(room_id);
    }
    // Then bob invites alice: the invite is the most recent of all.
    let invite_room = bob.create_room(json!({"name": "from bob"})).await;
    let reply = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&invite_room)),
            Some(json!({"user_id": alice.user_id})),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    let request = json!({
        "lists": {
            "all": {
                "ranges": [[0, 2]],
                "timeline_limit": 2,
                "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
            },
            "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": true } },
        }
    });
    let first = ok(&alice, None, 0, &request).await;
    assert_eq!(first["lists"]["all"]["count"], 6, "{first}");
    assert_eq!(first["lists"]["invites"]["count"], 1);
    // The window holds the three most recent: the invite, r4, r3.
    assert_eq!(
        rooms(&first),
        sorted(vec![
            invite_room.clone(),
            room_ids[4].clone(),
            room_ids[3].clone()
        ])
    );
    let invite = &first["rooms"][&invite_room];
    assert_eq!(invite["initial"], true);
    assert_eq!(invite["name"], "from bob");
    assert!(
        invite["invite_state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.create")),
        "{invite}"
    );
    let r4 = &first["rooms"][&room_ids[4]];
    assert_eq!(r4["initial"], true);
    assert_eq!(r4["name"], "r4");
    assert_eq!(r4["joined_count"], 1);
    assert_eq!(r4["timeline"].as_array().map(Vec::len), Some(2), "{r4}");
    assert_eq!(r4["limited"], true);
    assert_eq!(bodies(r4), ["hello r4"]);
    assert!(r4["prev_batch"].is_string());
    let state = r4["required_state"].as_array().expect("required_state");
    assert!(state.iter().any(|e| e["type"] == "m.room.name"));
    assert!(
        state
            .iter()
            .all(|e| e["type"] != "m.room.member" || e["state_key"] == alice.user_id),
        "lazy members: only the timeline's senders"
    );
    assert!(!state.iter().any(|e| e["type"] == "m.room.power_levels"));
    let stamp = |body: &Value, room: &str| body["rooms"][room]["bump_stamp"].as_u64();
    assert!(stamp(&first, &invite_room) > stamp(&first, &room_ids[4]));
    assert!(stamp(&first, &room_ids[4]) > stamp(&first, &room_ids[3]));
    let pos1 = pos(&first);

    // Nothing new: no rooms. A retried pos answers the same again.
    let quiet = ok(&alice, Some(&pos1), 0, &request).await;
    assert!(rooms(&quiet).is_empty(), "{quiet}");
    let again = ok(&alice, Some(&pos1), 0, &request).await;
    assert!(rooms(&again).is_empty());
    let pos2 = pos(&again);

    // A long-poll wakes when a room outside the window gets a message: r1
    // moves to the top and is sent whole (it is new to the connection).
    let waiting = {
        let (alice, pos2, request) = (alice.clone(), pos2.clone(), request.clone());
        tokio::spawn(async move { ok(&alice, Some(&pos2), 10_000, &request).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    alice.send_text(&room_ids[1], "n1", "news in r1").await;
    let woken = waiting.await.expect("long-poll");
    assert!(started.elapsed() < Duration::from_secs(5), "woken");
    assert_eq!(rooms(&woken), [room_ids[1].clone()], "{woken}");
    let r1 = &woken["rooms"][&room_ids[1]];
    assert_eq!(r1["initial"], true);
    assert_eq!(r1["name"], "r1");
    assert_eq!(bodies(r1), ["hello r1", "news in r1"]);
    let pos3 = pos(&woken);

    // A room already sent: only what is new, not initial.
    alice.send_text(&room_ids[1], "n2", "more in r1").await;
    let news = ok(&alice, Some(&pos3), 5_000, &request).await;
    let r1 = &news["rooms"][&room_ids[1]];
    assert!(r1.get("initial").is_none_or(|i| i == false), "{r1}");
    assert_eq!(bodies(r1), ["more in r1"]);
    assert_ne!(r1["limited"], true, "{r1}");
    assert_eq!(r1["num_live"], 1);
    assert!(r1.get("name").is_none(), "the name did not change");
    let pos4 = pos(&news);
    // The connection moved on: the older pos is forgotten.
    let reply = sliding(&alice, Some(&pos1), 0, &request).await;
    assert_eq!((reply.status, reply.errcode()), (400, "M_UNKNOWN_POS"));

    // A subscription brings in a room outside every window; lists are
    // sticky when a request leaves them out.
    let subscribe = json!({
        "room_subscriptions": { room_ids[0].clone(): { "timeline_limit": 1, "required_state": [["*", "*"]] } }
    });
    let subscribed = ok(&alice, Some(&pos4), 0, &subscribe).await;
    assert_eq!(subscribed["lists"]["all"]["count"], 6, "sticky lists");
    let r0 = &subscribed["rooms"][&room_ids[0]];
    assert_eq!(r0["initial"], true, "{subscribed}");
    assert_eq!(bodies(r0), ["hello r0"]);
    assert!(
        r0["required_state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.power_levels")),
        "every state event"
    );
    let pos5 = pos(&subscribed);

    // Leaving a room the connection was sent: it comes once more, with the
    // leave, and the list shrinks.
    let reply = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", encode(&room_ids[1])),
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let left = ok(&alice, Some(&pos5), 5_000, &request).await;
    assert_eq!(left["lists"]["all"]["count"], 5, "{left}");
    let r1 = &left["rooms"][&room_ids[1]];
    assert!(
        r1["timeline"].as_array().is_some_and(|t| t
            .iter()
            .any(|e| { e["type"] == "m.room.member" && e["content"]["membership"] == "leave" })),
        "{left}"
    );
}

pub(crate) async fn extensions(base_url: &str) {
    let alice = Client::register(base_url, "sx_alice", "pw-alice-sx").await;
    let bob = Client::register(base_url, "sx_bob", "pw-bob-sx").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let room = encode(&room_id);
    let last = alice.send_text(&room_id, "x1", "hi").await.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Before the connection starts: account data and a tag.
    let reply = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.pref",
                encode(&alice.user_id)
            ),
            Some(json!({"theme": "dark"})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let reply = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{room}/tags/m.favourite",
                encode(&alice.user_id)
            ),
            Some(json!({"order": 0.5})),
        )
        .await;
    assert_eq!(reply.status, 200);

    let request = json!({
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
        "extensions": {
            "to_device": { "enabled": true },
            "e2ee": { "enabled": true },
            "account_data": { "enabled": true },
            "receipts": { "enabled": true },
            "typing": { "enabled": true },
        }
    });
    let first = ok(&alice, None, 0, &request).await;
    let ext = &first["extensions"];
    assert!(
        ext["account_data"]["global"].as_array().is_some_and(|g| g
            .iter()
            .any(|e| e["type"] == "org.example.pref" && e["content"]["theme"] == "dark")),
        "{first}"
    );
    assert_eq!(
        ext["account_data"]["rooms"][&room_id][0]["content"]["tags"]["m.favourite"]["order"], 0.5,
        "{first}"
    );
    let next_batch = ext["to_device"]["next_batch"]
        .as_str()
        .expect("to_device next_batch")
        .to_owned();
    let pos1 = pos(&first);

    // To-device: delivered once, until the client acknowledges it with `since`.
    let reply = bob
        .call(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/org.example.ping/sx1",
            Some(json!({"messages": {alice.user_id.clone(): {alice.device_id.clone(): {"n": 1}}}})),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let with_since = |since: &str| {
        let mut r = request.clone();
        r["extensions"]["to_device"]["since"] = json!(since);
        r
    };
    let got = ok(&alice, Some(&pos1), 5_000, &with_since(&next_batch)).await;
    let messages = got["extensions"]["to_device"]["events"].clone();
    assert_eq!(messages[0]["type"], "org.example.ping", "{got}");
    assert_eq!(messages[0]["sender"], bob.user_id);
    let next_batch = got["extensions"]["to_device"]["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pos2 = pos(&got);
    let quiet = ok(&alice, Some(&pos2), 0, &with_since(&next_batch)).await;
    assert!(
        quiet["extensions"]["to_device"]["events"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{quiet}"
    );
    let pos3 = pos(&quiet);

    // Typing and receipts in a room of the window.
    let reply = bob
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{room}/typing/{}",
                encode(&bob.user_id)
            ),
            Some(json!({"typing": true, "timeout": 30000})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let typing = ok(&alice, Some(&pos3), 5_000, &with_since(&next_batch)).await;
    assert_eq!(
        typing["extensions"]["typing"]["rooms"][&room_id]["content"]["user_ids"],
        json!([bob.user_id]),
        "{typing}"
    );
    let pos4 = pos(&typing);
    let reply = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
                encode(&last)
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let mut receipt = Value::Null;
    let mut at = pos4;
    for _ in 0..3 {
        let body = ok(&alice, Some(&at), 5_000, &with_since(&next_batch)).await;
        at = pos(&body);
        receipt = body["extensions"]["receipts"]["rooms"][&room_id].clone();
        if !receipt.is_null() {
            break;
        }
    }
    assert!(
        receipt["content"][&last]["m.read"][&bob.user_id]["ts"].is_u64(),
        "{receipt}"
    );
}

pub(crate) async fn refusals(base_url: &str) {
    let alice = Client::register(base_url, "sr_alice", "pw-alice-sr").await;
    let list = json!({ "lists": { "a": { "ranges": [[0, 1]], "timeline_limit": 1 } } });
    for bad_pos in ["garbage", "99999-s0", "1-not-a-token"] {
        let reply = sliding(&alice, Some(bad_pos), 0, &list).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, "M_UNKNOWN_POS"),
            "{bad_pos}: {reply:?}"
        );
    }
    let many: serde_json::Map<String, Value> = (0..101)
        .map(|i| {
            (
                format!("l{i}"),
                json!({ "ranges": [[0, 1]], "timeline_limit": 1 }),
            )
        })
        .collect();
    let bad = [
        json!({ "lists": many }),
        json!({ "lists": { "a": { "ranges": [[5, 1]], "timeline_limit": 1 } } }),
        json!({ "lists": { "x".repeat(65): { "ranges": [[0, 1]], "timeline_limit": 1 } } }),
        json!({ "conn_id": "c".repeat(65) }),
    ];
    for body in bad {
        let reply = sliding(&alice, None, 0, &body).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, "M_INVALID_PARAM"),
            "{reply:?}"
        );
    }
    for body in [
        json!({ "lists": 5 }),
        json!({ "lists": { "a": { "ranges": "all" } } }),
    ] {
        let reply = sliding(&alice, None, 0, &body).await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert!(reply.errcode().starts_with("M_"), "{reply:?}");
    }
    let reply = request_raw(&alice, b"{not json").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    // Without a token: 401.
    let reply = ganglion_integration_tests::client::request(
        &alice.http,
        Method::POST,
        &format!("{}{PATH}", alice.base_url),
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!((reply.status, reply.errcode()), (401, "M_MISSING_TOKEN"));
    // Separate connections (conn_id) keep separate positions.
    let a = ok(&alice, None, 0, &json!({ "conn_id": "one" })).await;
    let reply = sliding(&alice, Some(&pos(&a)), 0, &json!({ "conn_id": "two" })).await;
    assert_eq!((reply.status, reply.errcode()), (400, "M_UNKNOWN_POS"));
    ok(&alice, Some(&pos(&a)), 0, &json!({ "conn_id": "one" })).await;
    // A bad to-device `since` on a new connection is refused before the
    // connection's kept state is touched: its pos still answers.
    let reply = sliding(
        &alice,
        None,
        0,
        &json!({ "conn_id": "one", "extensions": { "to_device": { "enabled": true, "since": "x" } } }),
    )
    .await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (400, "M_INVALID_PARAM"),
        "{reply:?}"
    );
    ok(&alice, Some(&pos(&a)), 0, &json!({ "conn_id": "one" })).await;
}

async fn request_raw(client: &Client, body: &[u8]) -> Reply {
    ganglion_integration_tests::client::request(
        &client.http,
        Method::POST,
        &format!("{}{PATH}", client.base_url),
        Some(&client.access_token),
        Some(body.to_vec()),
    )
    .await
}
