//! Full-text search (`POST /search`) as the spec's "Server Side Search"
//! section says: the rooms the user is in, as they may see them; ranked or
//! most recent first; filters; pages; context; state; groupings.

use ganglion_integration_tests::client::{Client, Reply, encode};
use reqwest::Method;
use serde_json::{Value, json};

async fn search(client: &Client, room_events: Value) -> Reply {
    client
        .call(
            Method::POST,
            "/_matrix/client/v3/search",
            Some(json!({ "search_categories": { "room_events": room_events } })),
        )
        .await
}

/// The bodies of a search's results, in order.
fn bodies(reply: &Reply) -> Vec<String> {
    reply.body["search_categories"]["room_events"]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["result"]["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn found(client: &Client, room_events: Value) -> Vec<String> {
    let reply = search(client, room_events).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    bodies(&reply)
}

fn event_id(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub(crate) async fn full_text_search(base_url: &str) {
    let alice = Client::register(base_url, "fts_alice", "pw-fts-alice").await;
    let bob = Client::register(base_url, "fts_bob", "pw-fts-bob").await;
    let carol = Client::register(base_url, "fts_carol", "pw-fts-carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room).await.status, 200);
    let named = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                encode(&alice.user_id)
            ),
            Some(json!({"displayname": "Alice Fts"})),
        )
        .await;
    assert_eq!(named.status, 200);
    let fox = event_id(&alice.send_text(&room, "s1", "the quick brown fox").await);
    event_id(&bob.send_text(&room, "s2", "lazy dogs sleep").await);
    event_id(&alice.send_text(&room, "s3", "quick quick quick").await);
    let foxes = event_id(&bob.send_text(&room, "s4", "Foxes are clever").await);
    let secret = alice
        .create_room(
            json!({"preset": "private_chat", "name": "Secret plans", "topic": "quick escape"}),
        )
        .await;
    event_id(&alice.send_text(&secret, "s5", "quick and private").await);

    // Ranked: the most quick first; only the rooms each is in.
    let quick = search(&bob, json!({"search_term": "quick"})).await;
    assert_eq!(
        bodies(&quick),
        ["quick quick quick", "the quick brown fox"],
        "{quick:?}"
    );
    let events = &quick.body["search_categories"]["room_events"];
    assert_eq!(events["count"], 2);
    assert_eq!(events["highlights"], json!(["quick"]));
    assert!(
        events["results"][0]["rank"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{events}"
    );
    assert!(events.get("next_batch").is_none());
    assert!(
        found(&carol, json!({"search_term": "quick"}))
            .await
            .is_empty(),
        "Carol is in none"
    );
    assert_eq!(
        found(&alice, json!({"search_term": "quick"})).await.len(),
        3,
        "Alice's private room too"
    );
    // Most recent first; words as prefixes; every word.
    assert_eq!(
        found(&bob, json!({"search_term": "quick", "order_by": "recent"})).await,
        ["quick quick quick", "the quick brown fox"]
    );
    let mut foxy = found(&bob, json!({"search_term": "fox"})).await;
    foxy.sort();
    assert_eq!(foxy, ["Foxes are clever", "the quick brown fox"]);
    assert_eq!(
        found(&bob, json!({"search_term": "quick fox"})).await,
        ["the quick brown fox"]
    );
    // Filters.
    assert_eq!(
        found(
            &bob,
            json!({"search_term": "fox", "filter": {"senders": [bob.user_id]}})
        )
        .await,
        ["Foxes are clever"]
    );
    assert!(
        found(
            &alice,
            json!({"search_term": "quick", "filter": {"not_rooms": [room, secret]}})
        )
        .await
        .is_empty()
    );
    // Names and topics, when asked for.
    let names = search(
        &alice,
        json!({"search_term": "plans", "keys": ["content.name"]}),
    )
    .await;
    assert_eq!(
        names.body["search_categories"]["room_events"]["results"][0]["result"]["content"]["name"],
        "Secret plans",
        "{names:?}"
    );
    let topics = search(
        &alice,
        json!({"search_term": "escape", "keys": ["content.topic"]}),
    )
    .await;
    assert_eq!(
        topics.body["search_categories"]["room_events"]["count"], 1,
        "{topics:?}"
    );

    // Pages.
    let first = search(
        &bob,
        json!({"search_term": "quick", "filter": {"limit": 1}}),
    )
    .await;
    assert_eq!(bodies(&first), ["quick quick quick"]);
    let next = first.body["search_categories"]["room_events"]["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let second = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/search?next_batch={}", encode(&next)),
            Some(json!({"search_categories": {"room_events": {"search_term": "quick", "filter": {"limit": 1}}}})),
        )
        .await;
    assert_eq!(bodies(&second), ["the quick brown fox"]);
    assert!(
        second.body["search_categories"]["room_events"]
            .get("next_batch")
            .is_none()
    );

    // Context, profiles, state and groupings.
    let rich = search(
        &bob,
        json!({
            "search_term": "brown",
            "event_context": {"before_limit": 2, "after_limit": 2, "include_profile": true},
            "include_state": true,
            "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
        }),
    )
    .await;
    let events = &rich.body["search_categories"]["room_events"];
    let context = &events["results"][0]["context"];
    let after: Vec<&str> = context["events_after"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(after, ["lazy dogs sleep", "quick quick quick"], "{context}");
    assert!(context["start"].is_string() && context["end"].is_string());
    assert_eq!(
        context["profile_info"][&alice.user_id]["displayname"], "Alice Fts",
        "{context}"
    );
    assert!(
        events["state"][&room]
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.create"))
    );
    assert_eq!(events["groups"]["room_id"][&room]["results"], json!([fox]));
    assert_eq!(events["groups"]["room_id"][&room]["order"], 1);
    assert_eq!(
        events["groups"]["sender"][&alice.user_id]["results"],
        json!([fox])
    );

    // What the user may not see is not found: history from before they
    // joined a room of `joined` visibility, an ignored user's, a redacted one.
    let hidden = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
        ]}))
        .await;
    event_id(&alice.send_text(&hidden, "s6", "before carol came").await);
    assert_eq!(carol.join(&hidden).await.status, 200);
    event_id(&alice.send_text(&hidden, "s7", "after carol came").await);
    assert_eq!(
        found(&carol, json!({"search_term": "carol came"})).await,
        ["after carol came"]
    );
    let redacted = bob
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                encode(&room),
                encode(&foxes)
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(redacted.status, 200, "{redacted:?}");
    assert_eq!(
        found(&bob, json!({"search_term": "fox"})).await,
        ["the quick brown fox"]
    );

    // Bad requests.
    for (body, errcode) in [
        (json!({}), "M_BAD_JSON"),
        (
            json!({"search_term": "x", "keys": ["content.secret"]}),
            "M_INVALID_PARAM",
        ),
        (
            json!({"search_term": "x", "order_by": "best"}),
            "M_INVALID_PARAM",
        ),
        (
            json!({"search_term": "x", "filter": {"limit": "ten"}}),
            "M_BAD_JSON",
        ),
    ] {
        let reply = search(&bob, body.clone()).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, errcode),
            "{body}: {reply:?}"
        );
    }
    let bad_batch = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/search?next_batch=nope",
            Some(json!({"search_categories": {"room_events": {"search_term": "x"}}})),
        )
        .await;
    assert_eq!(
        (bad_batch.status, bad_batch.errcode()),
        (400, "M_INVALID_PARAM")
    );
    let none = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/search",
            Some(json!({"search_categories": {}})),
        )
        .await;
    assert_eq!(
        (none.status, &none.body),
        (200, &json!({"search_categories": {}}))
    );
    assert!(
        found(&bob, json!({"search_term": " *&| "}))
            .await
            .is_empty(),
        "query syntax is text"
    );
    let anonymous = ganglion_integration_tests::client::request(
        &bob.http,
        Method::POST,
        &format!("{base_url}/_matrix/client/v3/search"),
        None,
        Some(b"{\"search_categories\":{}}".to_vec()),
    )
    .await;
    assert_eq!(anonymous.status, 401);
}
