//! History across servers: a user who joins another server's room pages
//! back with `/messages` past their join, and our server backfills what
//! came before from the servers in the room, in order, each event once,
//! shown under the history visibility it was sent under.

use ganglion_integration_tests::client::{Client, Reply, encode, message_bodies};
use serde_json::{Value, json};

/// `client` joins a room through `server`.
async fn join_through(client: &Client, room_id: &str, server: &str) -> Reply {
    client
        .call(
            reqwest::Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={server}",
                encode(room_id)
            ),
            Some(json!({})),
        )
        .await
}

/// Every event `client` sees paging back through the room from now,
/// `limit` at a time, newest first; and the token the last page ended at.
pub(crate) async fn page_back(
    client: &Client,
    room_id: &str,
    limit: u32,
) -> (Vec<Value>, Option<String>) {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    let mut last_end = None;
    for _ in 0..100 {
        let page = client.messages(room_id, from.as_deref(), "b", limit).await;
        events.extend(page["chunk"].as_array().cloned().unwrap_or_default());
        match page["end"].as_str() {
            Some(end) => {
                last_end = Some(end.to_owned());
                from = Some(end.to_owned());
            }
            None => return (events, last_end),
        }
    }
    panic!("paging back never ended: {} events", events.len());
}

/// Asserts the history `alice` paged back through: the messages newest
/// first, each event once, ending with the room's creation.
pub(crate) fn assert_history(events: &[Value], expected: &[String], logs: &str) {
    let bodies = message_bodies(&Value::from(events.to_vec()));
    let newest_first: Vec<String> = expected.iter().rev().cloned().collect();
    assert_eq!(bodies, newest_first, "{logs}");
    let mut ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "an event came twice\n{logs}");
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some(json!("m.room.create")),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_user_pages_back_through_a_synapse_rooms_history() {
    let (synapse, ours, _our_name, _dirs) = crate::federation_queries::with_synapse().await;
    let logs = || crate::federation_queries::logs_with_synapse(&synapse, &ours);
    let alice = Client::register(&ours.base_url, "alice", "pw-alice-hist").await;
    let bob = synapse.register("bob", "pw-bob-hist").await;
    let room_id = bob
        .create_room(json!({ "preset": "public_chat", "name": "old room" }))
        .await;
    let mut sent = Vec::new();
    for i in 0..45 {
        let body = format!("before alice {i}");
        let reply = bob.send_text(&room_id, &format!("t{i}"), &body).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        sent.push(body);
    }
    let join = join_through(&alice, &room_id, &synapse.server_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());

    let (events, _) = page_back(&alice, &room_id, 20).await;
    assert_history(&events, &sent, &logs());
    // Once held, history pages forward too, from where it starts.
    let (_, oldest) = page_back(&alice, &room_id, 40).await;
    let forward = alice.messages(&room_id, oldest.as_deref(), "f", 30).await;
    let bodies = message_bodies(&forward["chunk"]);
    assert!(!bodies.is_empty(), "{forward}");
    assert!(
        sent.windows(bodies.len()).any(|w| w == bodies.as_slice()),
        "forward pages run oldest first: {bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ganglions_backfill_under_each_events_visibility() {
    let pair = crate::federation_queries::GanglionPair::start().await;
    let (a, a_name, b) = (&pair.a, &pair.a_name, &pair.b);
    let logs = || pair.logs();
    let alice = Client::register(&a.base_url, "alice", "pw-alice-hist").await;
    let bob = Client::register(&b.base_url, "bob", "pw-bob-hist").await;

    // Shared history: all of it, paged back through in small pages.
    let shared = alice
        .create_room(json!({ "preset": "public_chat", "name": "shared" }))
        .await;
    let mut sent = Vec::new();
    for i in 0..25 {
        let body = format!("shared {i}");
        alice.send_text(&shared, &format!("s{i}"), &body).await;
        sent.push(body);
    }
    let join = join_through(&bob, &shared, a_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    let (events, _) = page_back(&bob, &shared, 7).await;
    assert_history(&events, &sent, &logs());
    // Paging again reads what is held: the same history.
    let (again, _) = page_back(&bob, &shared, 100).await;
    assert_eq!(
        again
            .iter()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>(),
        events
            .iter()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>()
    );

    // History only members at the time may read: backfilled, not shown.
    let private = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" }
            }],
        }))
        .await;
    alice.send_text(&private, "p0", "before bob").await;
    let join = join_through(&bob, &private, a_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    alice.send_text(&private, "p1", "after bob").await;
    crate::federation_rooms::until_message(&bob, &private, "after bob", logs).await;
    let (events, _) = page_back(&bob, &private, 10).await;
    let bodies = message_bodies(&Value::from(events.clone()));
    assert_eq!(bodies, vec!["after bob".to_owned()], "{}", logs());
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()),
        "{events:?}"
    );
}
