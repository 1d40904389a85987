//! Rooms across servers with a real Synapse: a Synapse user joins our room
//! (make_join/send_join), and messages then flow both ways (our
//! federationsender's transactions to Synapse, Synapse's to us).

use std::time::Duration;

use ganglion_integration_tests::client::{Client, encode, message_bodies};
use reqwest::Method;
use serde_json::{Value, json};

/// Long-polls `client`'s `/sync` until `room_id`'s timeline has shown a
/// message with `body` (a poll may wake for other news first).
pub(crate) async fn until_message(
    client: &Client,
    room_id: &str,
    body: &str,
    logs: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut since: Option<String> = None;
    loop {
        let sync = client.sync(since.as_deref(), 5_000, 50).await;
        let events = &sync["rooms"]["join"][room_id]["timeline"]["events"];
        if message_bodies(events).iter().any(|b| b == body) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never saw {body:?} in {room_id}\n{}",
            client.user_id,
            logs()
        );
        since = sync["next_batch"].as_str().map(str::to_owned);
    }
}

/// Long-polls `client`'s `/sync` until `wanted` holds for a response.
pub(crate) async fn until_sync(
    client: &Client,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
    logs: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut since: Option<String> = None;
    loop {
        let sync = client.sync(since.as_deref(), 5_000, 50).await;
        if wanted(&sync) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never saw {what}\n{}",
            client.user_id,
            logs()
        );
        since = sync["next_batch"].as_str().map(str::to_owned);
    }
}

/// Polls `client`'s view of `user_id`'s membership of `room_id` until it
/// is `membership`.
pub(crate) async fn until_membership(
    client: &Client,
    room_id: &str,
    user_id: &str,
    membership: &str,
    logs: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = client
            .call(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    encode(room_id),
                    encode(user_id)
                ),
                None,
            )
            .await;
        if state.body["membership"] == membership {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{state:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room's ephemeral event of a type in a sync response.
fn ephemeral<'a>(sync: &'a Value, room_id: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room_id]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

/// Whether `user_id` is joined to `room_id` as `client` sees it.
async fn members(client: &Client, room_id: &str) -> Vec<String> {
    let reply = client
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/joined_members",
                encode(room_id)
            ),
            None,
        )
        .await;
    reply.body["joined"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_joins_our_room_and_messages_flow_both_ways() {
    let (synapse, ours, our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-rooms").await;
    let bob = synapse.register("bob", "pw-bob-rooms").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "name": "across" }))
        .await;
    alice.send_text(&room_id, "t1", "before bob").await;

    // Bob joins through our server.
    let join = bob.join_via(&room_id, &our_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    assert_eq!(join.body["room_id"], room_id.as_str());
    // Both servers now count both members.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ours_see = members(&alice, &room_id).await;
        let theirs_see = members(&bob, &room_id).await;
        if ours_see.contains(&bob.user_id) && theirs_see.contains(&alice.user_id) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "members: ours {ours_see:?}, theirs {theirs_see:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Synapse took the room's name from the state we sent with the join.
    let name = bob
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                encode(&room_id)
            ),
            None,
        )
        .await;
    assert_eq!(name.body["name"], "across", "{name:?}");

    // Ours → theirs, through the federationsender.
    alice.send_text(&room_id, "t2", "hello synapse").await;
    until_message(&bob, &room_id, "hello synapse", logs).await;
    // Theirs → ours, through /send.
    let sent = bob.send_text(&room_id, "b1", "hello ganglion").await;
    assert_eq!(sent.status, 200, "{sent:?}");
    until_message(&alice, &room_id, "hello ganglion", logs).await;
    // A few more each way keep their order.
    for i in 0..5 {
        alice
            .send_text(&room_id, &format!("a{i}"), &format!("from alice {i}"))
            .await;
    }
    until_message(&bob, &room_id, "from alice 4", logs).await;
    let history = bob.messages(&room_id, None, "b", 20).await;
    let bodies: Vec<String> = message_bodies(&history["chunk"])
        .into_iter()
        .filter(|b| b.starts_with("from alice"))
        .rev()
        .collect();
    assert_eq!(
        bodies,
        (0..5)
            .map(|i| format!("from alice {i}"))
            .collect::<Vec<_>>(),
        "{history}"
    );

    // Typing both ways (EDUs in the transactions).
    let typing = |client: &Client| {
        let client = client.clone();
        let room_id = room_id.clone();
        async move {
            let reply = client
                .call(
                    Method::PUT,
                    &format!(
                        "/_matrix/client/v3/rooms/{}/typing/{}",
                        encode(&room_id),
                        encode(&client.user_id)
                    ),
                    Some(json!({ "typing": true, "timeout": 30000 })),
                )
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    };
    typing(&bob).await;
    until_sync(
        &alice,
        "bob typing",
        |s| {
            ephemeral(s, &room_id, "m.typing")
                .is_some_and(|e| e["content"]["user_ids"] == json!([bob.user_id]))
        },
        logs,
    )
    .await;
    typing(&alice).await;
    until_sync(
        &bob,
        "alice typing",
        |s| {
            ephemeral(s, &room_id, "m.typing").is_some_and(|e| {
                e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|u| u.contains(&json!(alice.user_id)))
            })
        },
        logs,
    )
    .await;

    // Read receipts both ways.
    let receipt = |client: &Client, event_id: String| {
        let client = client.clone();
        let room_id = room_id.clone();
        async move {
            let reply = client
                .call(
                    Method::POST,
                    &format!(
                        "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                        encode(&room_id),
                        encode(&event_id)
                    ),
                    Some(json!({})),
                )
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    };
    let bobs_event = sent.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    receipt(&alice, bobs_event.clone()).await;
    until_sync(
        &bob,
        "alice's receipt",
        |s| {
            ephemeral(s, &room_id, "m.receipt")
                .is_some_and(|e| e["content"][&bobs_event]["m.read"][&alice.user_id].is_object())
        },
        logs,
    )
    .await;
    let alices = alice.send_text(&room_id, "a9", "read me").await;
    let alices_event = alices.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    until_message(&bob, &room_id, "read me", logs).await;
    receipt(&bob, alices_event.clone()).await;
    until_sync(
        &alice,
        "bob's receipt",
        |s| {
            ephemeral(s, &room_id, "m.receipt")
                .is_some_and(|e| e["content"][&alices_event]["m.read"][&bob.user_id].is_object())
        },
        logs,
    )
    .await;

    // To-device messages both ways (m.direct_to_device EDUs): to one named
    // device, and to all of a user's devices with `*`.
    let to_device = |client: &Client, txn: &str, messages: Value| {
        let client = client.clone();
        let txn = txn.to_owned();
        async move {
            let reply = client
                .call(
                    Method::PUT,
                    &format!("/_matrix/client/v3/sendToDevice/org.example.ping/{txn}"),
                    Some(json!({ "messages": messages })),
                )
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    };
    let saw_ping = |sender: String, n: i64| {
        move |s: &Value| {
            s["to_device"]["events"].as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "org.example.ping"
                        && e["sender"] == sender.as_str()
                        && e["content"]["n"] == n
                })
            })
        }
    };
    to_device(
        &alice,
        "td1",
        json!({ bob.user_id.clone(): { bob.device_id.clone(): { "n": 1 } } }),
    )
    .await;
    until_sync(
        &bob,
        "alice's to-device message",
        saw_ping(alice.user_id.clone(), 1),
        logs,
    )
    .await;
    to_device(
        &bob,
        "td2",
        json!({ alice.user_id.clone(): { "*": { "n": 2 } } }),
    )
    .await;
    until_sync(
        &alice,
        "bob's to-device message",
        saw_ping(bob.user_id.clone(), 2),
        logs,
    )
    .await;
    to_device(
        &bob,
        "td3",
        json!({ alice.user_id.clone(): { alice.device_id.clone(): { "n": 3 } } }),
    )
    .await;
    until_sync(
        &alice,
        "bob's second to-device message",
        saw_ping(bob.user_id.clone(), 3),
        logs,
    )
    .await;

    // Bob pages back past his join: Synapse backfills from us.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let history = bob.messages(&room_id, None, "b", 50).await;
        if message_bodies(&history["chunk"]).contains(&"before bob".to_owned()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never saw the history before his join: {history}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bob leaves: our side sees it.
    let leave = bob.leave(&room_id).await;
    assert_eq!(leave.status, 200, "{leave:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while members(&alice, &room_id).await.contains(&bob.user_id) {
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ours);
}

/// The room's state events of one type in a sync response's joined room
/// (from its `state` or its timeline).
fn state_event(sync: &Value, room_id: &str, event_type: &str) -> Option<Value> {
    let room = &sync["rooms"]["join"][room_id];
    room["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(room["timeline"]["events"].as_array().into_iter().flatten())
        .find(|e| e["type"] == event_type)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_user_joins_a_synapse_room_by_alias_and_messages_flow_both_ways() {
    let (synapse, ours, _our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-out").await;
    let bob = synapse.register("bob", "pw-bob-out").await;
    // Synapse's default room version is 12 (room IDs without a server).
    let room_id = bob
        .create_room(json!({
            "preset": "public_chat", "name": "theirs", "room_alias_name": "theirs",
            "topic": "a Synapse room",
        }))
        .await;
    bob.send_text(&room_id, "b0", "before alice").await;
    let alias = format!("#theirs:{}", synapse.server_name);

    let join = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode(&alias)),
            Some(json!({ "reason": "hello" })),
        )
        .await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    assert_eq!(join.body["room_id"], room_id.as_str());

    // Our initial sync has the room with the state the join brought along.
    let sync = alice.sync(None, 0, 10).await;
    assert!(
        sync["rooms"]["join"][&room_id].is_object(),
        "the room is joined: {sync}"
    );
    assert_eq!(
        state_event(&sync, &room_id, "m.room.name").map(|e| e["content"]["name"].clone()),
        Some(json!("theirs")),
        "{sync}"
    );
    assert_eq!(
        state_event(&sync, &room_id, "m.room.topic").map(|e| e["content"]["topic"].clone()),
        Some(json!("a Synapse room")),
        "{sync}"
    );
    let own_join = &sync["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .and_then(|events| {
            events
                .iter()
                .find(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str())
                .cloned()
        });
    assert_eq!(
        own_join.as_ref().map(|e| e["content"]["reason"].clone()),
        Some(json!("hello")),
        "{sync}"
    );
    // Synapse counts alice in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !members(&bob, &room_id).await.contains(&alice.user_id) {
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(members(&alice, &room_id).await.contains(&bob.user_id));

    // Messages both ways.
    let sent = bob.send_text(&room_id, "b1", "welcome alice").await;
    assert_eq!(sent.status, 200, "{sent:?}");
    until_message(&alice, &room_id, "welcome alice", logs).await;
    let sent = alice.send_text(&room_id, "a1", "thanks bob").await;
    assert_eq!(sent.status, 200, "{sent:?}");
    until_message(&bob, &room_id, "thanks bob", logs).await;

    // An alias nobody has, and a room nobody can be asked about.
    let missing = alice
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}",
                encode(&format!("#nothing:{}", synapse.server_name))
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (missing.status, missing.errcode()),
        (404, "M_NOT_FOUND"),
        "{missing:?}"
    );
    let nowhere = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode("!unknownroomid")),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (nowhere.status, nowhere.errcode()),
        (404, "M_NOT_FOUND"),
        "{nowhere:?}"
    );

    // Alice leaves their room: Synapse sees it.
    let leave = alice.leave(&room_id).await;
    assert_eq!(leave.status, 200, "{leave:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while members(&bob, &room_id).await.contains(&alice.user_id) {
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // While she is out the room goes on; she joins again (through
    // Synapse: our copy of the room is stale) and talks both ways.
    bob.send_text(&room_id, "s9", "while alice was away").await;
    let renamed = bob
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                encode(&room_id)
            ),
            Some(json!({ "name": "renamed while away" })),
        )
        .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    let rejoin = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode(&room_id)),
            Some(json!({})),
        )
        .await;
    assert_eq!(rejoin.status, 200, "{rejoin:?}\n{}", logs());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !members(&bob, &room_id).await.contains(&alice.user_id) {
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The room's state as it is now, not as we last held it.
    let name = alice
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                encode(&room_id)
            ),
            None,
        )
        .await;
    assert_eq!(
        name.body["name"],
        "renamed while away",
        "{name:?}\n{}",
        logs()
    );
    alice.send_text(&room_id, "a9", "back in").await;
    until_message(&bob, &room_id, "back in", logs).await;
    bob.send_text(&room_id, "s10", "welcome back").await;
    until_message(&alice, &room_id, "welcome back", logs).await;
    drop(ours);
}

/// Our server goes down (SIGKILL) while the Synapse user goes on talking;
/// once it is back and talks again, Synapse catches up with us, and the
/// gap its latest event leaves is filled (`get_missing_events`).
///
/// Synapse is told not to retry a failed transaction (by default it retries
/// after about 4, 16 and 60 seconds, so whether the gap or a retried
/// transaction brings the missed messages, and when, would depend on how long
/// the restart took). Its failure to send the first message marks us down;
/// the next two wait in its queue until our next transaction reaches it,
/// which tells it we are back. The first message is not sent again: the
/// second leaves a gap we fill from Synapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_we_catch_up_with_what_synapse_sent_meanwhile() {
    let (synapse, mut ours, our_name, _dirs) =
        crate::federation_queries::with_synapse_configured(json!({
            "federation": {"max_long_retries": 0},
            // No presence updates to us: one in flight when we die would
            // fail first and put us in Synapse's backoff, which holds
            // back the event the test waits for Synapse to give up on.
            "presence": {"enabled": false},
            "use_presence": false
        }))
        .await;

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-back").await;
    let bob = synapse.register("bob", "pw-bob-back").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = bob.join_via(&room_id, &our_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", synapse.logs());
    bob.send_text(&room_id, "b0", "while up").await;
    until_message(&alice, &room_id, "while up", || synapse.logs()).await;

    ours.kill9();
    for i in 1..=3 {
        let sent = bob
            .send_text(&room_id, &format!("b{i}"), &format!("while down {i}"))
            .await;
        assert_eq!(sent.status, 200, "{sent:?}");
        if i == 1 {
            // Synapse has tried and failed before we come back: a
            // transaction of ours reaching it first would change nothing.
            // Either it gave up on this event, or a transaction it had in
            // flight when we died failed first, and it holds this event
            // back until we are heard from again (its backoff ends when
            // our first request reaches it).
            let event_id = sent.body["event_id"].as_str().unwrap_or_default();
            assert!(
                synapse
                    .until_logged(
                        &[
                            &format!("Failed to send event {event_id}"),
                            &format!("TX [{our_name}] Failed to send transaction"),
                        ],
                        Duration::from_secs(30)
                    )
                    .await,
                "Synapse never gave up sending {event_id}\n{}",
                synapse.logs()
            );
        }
    }
    ours.restart().await;
    alice.send_text(&room_id, "a1", "back again").await;
    until_message(&bob, &room_id, "back again", || synapse.logs()).await;
    for i in 1..=3 {
        until_message(&alice, &room_id, &format!("while down {i}"), || {
            format!(
                "{}\n--- ours ---\n{}",
                synapse.logs(),
                ours.process.log_tail()
            )
        })
        .await;
    }
    // In order, once each.
    let history = alice.messages(&room_id, None, "b", 50).await;
    let bodies: Vec<String> = message_bodies(&history["chunk"])
        .into_iter()
        .filter(|b| b.starts_with("while"))
        .rev()
        .collect();
    assert_eq!(
        bodies,
        ["while up", "while down 1", "while down 2", "while down 3"],
        "{history}"
    );
}

/// Our user invites a Synapse user: Synapse countersigns the invite
/// (`/v2/invite`) and its user sees it; rejecting it goes through
/// make_leave/send_leave (Synapse is not in the room); invited again, its
/// user joins through us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_rejects_then_accepts_our_invite() {
    let (synapse, ours, _our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-inv").await;
    let bob = synapse.register("bob", "pw-bob-inv").await;
    let room_id = alice
        .create_room(json!({ "preset": "private_chat", "name": "invitation" }))
        .await;
    let invite = || {
        let alice = alice.clone();
        let room_id = room_id.clone();
        let bob_id = bob.user_id.clone();
        async move {
            let reply = alice
                .call(
                    Method::POST,
                    &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room_id)),
                    Some(json!({ "user_id": bob_id, "reason": "come along" })),
                )
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    };
    let bobs_membership = || {
        let alice = alice.clone();
        let room_id = room_id.clone();
        let bob_id = bob.user_id.clone();
        async move {
            alice
                .call(
                    Method::GET,
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                        encode(&room_id),
                        encode(&bob_id)
                    ),
                    None,
                )
                .await
                .body["membership"]
                .clone()
        }
    };
    let invited = |s: &Value| {
        s["rooms"]["invite"][&room_id]["invite_state"]["events"]
            .as_array()
            .is_some_and(|events| {
                events
                    .iter()
                    .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "invitation")
            })
    };
    invite().await;
    assert_eq!(bobs_membership().await, "invite");
    until_sync(&bob, "the invite", invited, logs).await;

    // Bob rejects: his server asks ours to build the leave.
    let reject = bob.leave(&room_id).await;
    assert_eq!(reject.status, 200, "{reject:?}\n{}", logs());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bobs_membership().await != "leave" {
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Invited again, he joins.
    invite().await;
    until_sync(&bob, "the second invite", invited, logs).await;
    let join = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/join", encode(&room_id)),
            Some(json!({})),
        )
        .await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    alice.send_text(&room_id, "i1", "welcome in").await;
    until_message(&bob, &room_id, "welcome in", logs).await;
    drop(ours);
}

/// A Synapse user invites ours to a (version 12) room we are not in: our
/// user sees the invite with the room's name, rejects it (make_leave and
/// send_leave through the inviter's server), and, invited again, joins
/// through the inviter's server, though the room ID names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_user_rejects_then_accepts_a_synapse_invite() {
    let (synapse, ours, _our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-acc").await;
    let bob = synapse.register("bob", "pw-bob-acc").await;
    let room_id = bob
        .create_room(json!({ "preset": "private_chat", "name": "by invitation" }))
        .await;
    let invite = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room_id)),
            Some(json!({ "user_id": alice.user_id })),
        )
        .await;
    assert_eq!(invite.status, 200, "{invite:?}\n{}", logs());
    until_sync(
        &alice,
        "the invite",
        |s| {
            s["rooms"]["invite"][&room_id]["invite_state"]["events"]
                .as_array()
                .is_some_and(|events| {
                    events.iter().any(|e| {
                        e["type"] == "m.room.name" && e["content"]["name"] == "by invitation"
                    }) && events.iter().any(|e| {
                        e["type"] == "m.room.member"
                            && e["state_key"] == alice.user_id.as_str()
                            && e["content"]["membership"] == "invite"
                    })
                })
        },
        logs,
    )
    .await;
    // Alice rejects: the leave goes through bob's server, and the room
    // leaves her invites.
    let reject = alice.leave(&room_id).await;
    assert_eq!(reject.status, 200, "{reject:?}\n{}", logs());
    let sync = alice.sync(None, 0, 10).await;
    assert!(sync["rooms"]["invite"].get(&room_id).is_none(), "{sync}");
    until_membership(&bob, &room_id, &alice.user_id, "leave", logs).await;
    // Invited again, she joins.
    let again = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room_id)),
            Some(json!({ "user_id": alice.user_id })),
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    until_sync(
        &alice,
        "the second invite",
        |s| s["rooms"]["invite"][&room_id].is_object(),
        logs,
    )
    .await;
    let join = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode(&room_id)),
            Some(json!({})),
        )
        .await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    bob.send_text(&room_id, "b1", "glad you came").await;
    until_message(&alice, &room_id, "glad you came", logs).await;
    drop(ours);
}

/// A Synapse user knocks on our knockable room (make_knock, send_knock):
/// our side sees the knock; invited, they join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_knocks_on_our_room() {
    let (synapse, ours, our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-knock").await;
    let bob = synapse.register("bob", "pw-bob-knock").await;
    let room_id = alice
        .create_room(json!({
            "preset": "private_chat", "name": "knock first",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }))
        .await;
    let knock = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/knock/{}?server_name={}",
                encode(&room_id),
                encode(&our_name)
            ),
            Some(json!({ "reason": "let me in" })),
        )
        .await;
    assert_eq!(knock.status, 200, "{knock:?}\n{}", logs());
    let state = alice
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                encode(&room_id),
                encode(&bob.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(state.body["membership"], "knock", "{state:?}");
    assert_eq!(state.body["reason"], "let me in", "{state:?}");
    let invite = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room_id)),
            Some(json!({ "user_id": bob.user_id })),
        )
        .await;
    assert_eq!(invite.status, 200, "{invite:?}\n{}", logs());
    until_sync(
        &bob,
        "the invite",
        |s| s["rooms"]["invite"][&room_id].is_object(),
        logs,
    )
    .await;
    let join = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/join", encode(&room_id)),
            Some(json!({})),
        )
        .await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    alice.send_text(&room_id, "k1", "come in").await;
    until_message(&bob, &room_id, "come in", logs).await;
    drop(ours);
}

/// Our user finds a Synapse room in Synapse's public directory (client
/// `/publicRooms?server=`, federation `/publicRooms`), knocks on it
/// (make_knock, send_knock through Synapse), sees the knock with the
/// room's stripped state, is invited and joins. Then she creates a direct
/// chat inviting the Synapse user at creation (`invite` in createRoom),
/// which his server countersigns; he joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_user_finds_knocks_on_and_joins_a_synapse_room() {
    let (synapse, ours, _our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-theirknock").await;
    let bob = synapse.register("bob", "pw-bob-theirknock").await;
    let room_id = bob
        .create_room(json!({
            "visibility": "public", "name": "knock over there", "topic": "ring first",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }))
        .await;

    // Synapse's directory, through ours.
    let listed = alice
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/publicRooms?server={}&limit=10",
                encode(&synapse.server_name)
            ),
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{listed:?}\n{}", logs());
    let entry = listed.body["chunk"]
        .as_array()
        .and_then(|chunk| chunk.iter().find(|r| r["room_id"] == room_id.as_str()))
        .unwrap_or_else(|| panic!("not listed: {listed:?}"));
    assert_eq!(entry["name"], "knock over there");
    assert_eq!(entry["join_rule"], "knock");
    let searched = alice
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/publicRooms?server={}",
                encode(&synapse.server_name)
            ),
            Some(json!({ "filter": { "generic_search_term": "no such room anywhere" } })),
        )
        .await;
    assert_eq!(searched.status, 200, "{searched:?}");
    assert_eq!(searched.body["chunk"], json!([]), "{searched:?}");

    // Asking another server's directory is for our users only.
    let anonymous = ganglion_integration_tests::client::request(
        &reqwest::Client::new(),
        Method::GET,
        &format!(
            "{}/_matrix/client/v3/publicRooms?server={}",
            ours.base_url,
            encode(&synapse.server_name)
        ),
        None,
        None,
    )
    .await;
    assert_eq!(
        (anonymous.status, anonymous.errcode()),
        (401, "M_MISSING_TOKEN"),
        "{anonymous:?}"
    );

    // Alice knocks; the room is not here, so through Synapse.
    let knock = alice
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/knock/{}?via={}",
                encode(&room_id),
                encode(&synapse.server_name)
            ),
            Some(json!({ "reason": "may I?" })),
        )
        .await;
    assert_eq!(knock.status, 200, "{knock:?}\n{}", logs());
    assert_eq!(knock.body["room_id"], room_id.as_str());
    // Read-your-writes: her next sync shows the knock with the room's state.
    let sync = alice.sync(None, 0, 10).await;
    let knock_state = &sync["rooms"]["knock"][&room_id]["knock_state"]["events"];
    let events = knock_state
        .as_array()
        .unwrap_or_else(|| panic!("no knock: {sync}"));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "knock over there"),
        "{knock_state}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == alice.user_id.as_str()
            && e["content"]["membership"] == "knock"),
        "{knock_state}"
    );
    let alices_membership = bob
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                encode(&room_id),
                encode(&alice.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(
        alices_membership.body["membership"], "knock",
        "{alices_membership:?}"
    );
    assert_eq!(alices_membership.body["reason"], "may I?");

    // She thinks better of it: the knock is rescinded through Synapse.
    let rescind = alice.leave(&room_id).await;
    assert_eq!(rescind.status, 200, "{rescind:?}\n{}", logs());
    let sync = alice.sync(None, 0, 10).await;
    assert!(sync["rooms"]["knock"].get(&room_id).is_none(), "{sync}");
    until_membership(&bob, &room_id, &alice.user_id, "leave", logs).await;
    // And knocks again.
    let knock = alice
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/knock/{}?via={}",
                encode(&room_id),
                encode(&synapse.server_name)
            ),
            Some(json!({ "reason": "may I, after all?" })),
        )
        .await;
    assert_eq!(knock.status, 200, "{knock:?}\n{}", logs());

    // Bob lets her in.
    let invite = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room_id)),
            Some(json!({ "user_id": alice.user_id })),
        )
        .await;
    assert_eq!(invite.status, 200, "{invite:?}\n{}", logs());
    until_sync(
        &alice,
        "the invite after the knock",
        |s| {
            s["rooms"]["invite"][&room_id].is_object()
                && s["rooms"]["knock"].get(&room_id).is_none()
        },
        logs,
    )
    .await;
    let join = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode(&room_id)),
            Some(json!({})),
        )
        .await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    bob.send_text(&room_id, "k1", "you rang").await;
    until_message(&alice, &room_id, "you rang", logs).await;

    // A direct chat with bob invited at creation.
    let dm = alice
        .create_room(
            json!({ "preset": "trusted_private_chat", "is_direct": true, "invite": [bob.user_id] }),
        )
        .await;
    until_sync(
        &bob,
        "the invite of createRoom",
        |s| {
            s["rooms"]["invite"][&dm]["invite_state"]["events"]
                .as_array()
                .is_some_and(|events| {
                    events.iter().any(|e| {
                        e["type"] == "m.room.member"
                            && e["state_key"] == bob.user_id.as_str()
                            && e["content"]["is_direct"] == true
                    })
                })
        },
        logs,
    )
    .await;
    let join = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/join", encode(&dm)),
            Some(json!({})),
        )
        .await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    alice.send_text(&dm, "d1", "just us").await;
    until_message(&bob, &dm, "just us", logs).await;
    drop(ours);
}

/// Ganglion with Ganglion: two monoliths, a user of each; one joins the
/// other's room by alias, then messages, typing and a leave cross both
/// ways; an invite from the second is accepted on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ganglions_federate() {
    let pair = crate::federation_queries::GanglionPair::start().await;
    let (a, a_name, b) = (&pair.a, &pair.a_name, &pair.b);
    let logs = || pair.logs();

    let alice = Client::register(&a.base_url, "alice", "pw-alice-gg").await;
    let bob = Client::register(&b.base_url, "bob", "pw-bob-gg").await;
    let room_id = alice
        .create_room(
            json!({ "preset": "public_chat", "name": "ganglions", "room_alias_name": "gg" }),
        )
        .await;
    alice.send_text(&room_id, "a0", "hello from a").await;
    let join = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}",
                encode(&format!("#gg:{a_name}"))
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    assert_eq!(join.body["room_id"], room_id.as_str());
    bob.send_text(&room_id, "b1", "hello from b").await;
    until_message(&alice, &room_id, "hello from b", logs).await;
    alice.send_text(&room_id, "a1", "welcome, b").await;
    until_message(&bob, &room_id, "welcome, b", logs).await;
    let typing = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                encode(&room_id),
                encode(&alice.user_id)
            ),
            Some(json!({ "typing": true, "timeout": 30000 })),
        )
        .await;
    assert_eq!(typing.status, 200, "{typing:?}");
    until_sync(
        &bob,
        "alice typing",
        |s| {
            ephemeral(s, &room_id, "m.typing")
                .is_some_and(|e| e["content"]["user_ids"] == json!([alice.user_id]))
        },
        logs,
    )
    .await;

    // Bob's own room, and an invite alice accepts.
    let bobs_room = bob
        .create_room(json!({ "preset": "private_chat", "name": "bob's" }))
        .await;
    let invite = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&bobs_room)),
            Some(json!({ "user_id": alice.user_id })),
        )
        .await;
    assert_eq!(invite.status, 200, "{invite:?}\n{}", logs());
    until_sync(
        &alice,
        "bob's invite",
        |s| s["rooms"]["invite"][&bobs_room].is_object(),
        logs,
    )
    .await;
    let accept = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode(&bobs_room)),
            Some(json!({})),
        )
        .await;
    assert_eq!(accept.status, 200, "{accept:?}\n{}", logs());
    bob.send_text(&bobs_room, "b2", "in bob's room").await;
    until_message(&alice, &bobs_room, "in bob's room", logs).await;

    // Bob leaves alice's room: her side sees it.
    let leave = bob.leave(&room_id).await;
    assert_eq!(leave.status, 200, "{leave:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while members(&alice, &room_id).await.contains(&bob.user_id) {
        assert!(tokio::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Synapse is stopped for a while: our federationsender backs off, and
/// once Synapse is back delivers everything sent meanwhile, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_synapse_is_down_our_queue_waits_then_delivers_in_order() {
    let (mut synapse, ours, our_name, _dirs) = crate::federation_queries::with_synapse().await;

    let alice = Client::register(&ours.base_url, "alice", "pw-alice-down").await;
    let bob = synapse.register("bob", "pw-bob-down").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = bob.join_via(&room_id, &our_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", synapse.logs());
    alice.send_text(&room_id, "u0", "while up").await;
    until_message(&bob, &room_id, "while up", || synapse.logs()).await;

    synapse.stop();
    for i in 1..=5 {
        let sent = alice
            .send_text(&room_id, &format!("d{i}"), &format!("while down {i}"))
            .await;
        assert_eq!(sent.status, 200, "{sent:?}");
    }
    synapse.restart().await;
    let logs = || {
        format!(
            "{}\n--- ours ---\n{}",
            synapse.logs(),
            ours.process.log_tail()
        )
    };
    until_message(&bob, &room_id, "while down 5", logs).await;
    let history = bob.messages(&room_id, None, "b", 50).await;
    let bodies: Vec<String> = message_bodies(&history["chunk"])
        .into_iter()
        .filter(|b| b.starts_with("while"))
        .rev()
        .collect();
    let expected: Vec<String> = std::iter::once("while up".to_owned())
        .chain((1..=5).map(|i| format!("while down {i}")))
        .collect();
    assert_eq!(bodies, expected, "{history}");
}
