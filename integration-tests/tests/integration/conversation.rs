//! The first conversation, as two users see it; run against any deployment.

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, message_bodies};
use serde_json::{Value, json};

/// Two users, one room, messages both ways; returns (alice, bob, room_id).
pub(crate) async fn first_conversation(base_url: &str, suffix: &str) -> (Client, Client, String) {
    let alice = Client::register(base_url, &format!("alice{suffix}"), "wonderland").await;
    let bob = Client::register(base_url, &format!("bob{suffix}"), "builder").await;
    let room_id = alice
        .create_room(json!({"preset": "public_chat", "name": "Tea party", "topic": "hats"}))
        .await;
    let joined = bob.join(&room_id).await;
    assert_eq!(joined.status, 200, "bob joins: {joined:?}");

    // Bob's initial sync shows the room with its state.
    let initial = bob.sync(None, 0, 20).await;
    let room = &initial["rooms"]["join"][&room_id];
    assert!(room.is_object(), "bob sees the room: {initial}");
    let state_types: Vec<&str> = room["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(room["timeline"]["events"].as_array().into_iter().flatten())
        .filter_map(|e| e["type"].as_str())
        .collect();
    for expected in [
        "m.room.create",
        "m.room.name",
        "m.room.topic",
        "m.room.join_rules",
    ] {
        assert!(
            state_types.contains(&expected),
            "{expected} in {state_types:?}"
        );
    }
    let mut bob_since = initial["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut alice_since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    for round in 0..3 {
        // Bob long-polls; Alice's message wakes him well before the timeout.
        let waiting = {
            let bob = bob.clone();
            let since = bob_since.clone();
            tokio::spawn(async move {
                // Other news (alice coming online) may wake him first.
                let started = Instant::now();
                let mut body = bob.sync(Some(&since), 20_000, 10).await;
                while body["rooms"]["join"]
                    .as_object()
                    .is_none_or(|j| j.is_empty())
                    && started.elapsed() < Duration::from_secs(15)
                {
                    let since = body["next_batch"].as_str().unwrap_or_default().to_owned();
                    body = bob.sync(Some(&since), 20_000, 10).await;
                }
                (body, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = format!("alice says {round}");
        let sent = alice.send_text(&room_id, &format!("a{round}"), &text).await;
        assert_eq!(sent.status, 200, "send: {sent:?}");
        let (body, waited) = waiting.await.expect("sync task");
        assert!(
            waited < Duration::from_secs(15),
            "long-poll woke after {waited:?}"
        );
        let events = &body["rooms"]["join"][&room_id]["timeline"]["events"];
        assert_eq!(
            message_bodies(events),
            vec![text.clone()],
            "bob sees it: {body}"
        );
        bob_since = body["next_batch"].as_str().unwrap_or_default().to_owned();

        let reply = format!("bob says {round}");
        let sent = bob.send_text(&room_id, &format!("b{round}"), &reply).await;
        assert_eq!(sent.status, 200);
        // Read-your-writes: the sender's next sync has it, with its transaction ID.
        let body = alice.sync(Some(&alice_since), 10_000, 10).await;
        let events = &body["rooms"]["join"][&room_id]["timeline"]["events"];
        assert_eq!(
            message_bodies(events),
            vec![text.clone(), reply.clone()],
            "alice: {body}"
        );
        let own: Vec<&Value> = events
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["sender"] == alice.user_id.as_str())
            .collect();
        assert_eq!(own[0]["unsigned"]["transaction_id"], format!("a{round}"));
        alice_since = body["next_batch"].as_str().unwrap_or_default().to_owned();
        // Bob consumes his own reply so the next round starts clean.
        let body = bob.sync(Some(&bob_since), 10_000, 10).await;
        bob_since = body["next_batch"].as_str().unwrap_or_default().to_owned();
    }

    // Sending again with a used transaction ID returns the same event.
    let first = alice.send_text(&room_id, "a0", "alice says 0").await;
    let again = alice.send_text(&room_id, "a0", "alice says 0").await;
    assert_eq!(first.body["event_id"], again.body["event_id"]);

    (alice, bob, room_id)
}

/// Walks `prev_batch` back to the room's creation and returns the message
/// bodies oldest first, checking the walk ends at `m.room.create`.
pub(crate) async fn history_via_prev_batch(client: &Client, room_id: &str) -> Vec<String> {
    let body = client.sync(None, 0, 2).await;
    let timeline = &body["rooms"]["join"][room_id]["timeline"];
    assert_eq!(
        timeline["limited"], true,
        "a small limit gives a limited timeline"
    );
    let mut events: Vec<Value> = timeline["events"].as_array().cloned().unwrap_or_default();
    let mut from = timeline["prev_batch"].as_str().map(str::to_owned);
    let mut pages = 0;
    while let Some(token) = from {
        let page = client.messages(room_id, Some(&token), "b", 3).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        for event in chunk {
            events.insert(0, event);
        }
        from = page["end"].as_str().map(str::to_owned);
        pages += 1;
        assert!(pages < 100, "pagination ends");
    }
    assert_eq!(
        events.first().map(|e| e["type"].clone()),
        Some(json!("m.room.create"))
    );
    message_bodies(&Value::Array(events))
}

/// Every message, in order, from /messages forwards from the start.
pub(crate) async fn history_forwards(client: &Client, room_id: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let page = client.messages(room_id, from.as_deref(), "f", 5).await;
        bodies.extend(message_bodies(&page["chunk"]));
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return bodies,
        }
    }
}
