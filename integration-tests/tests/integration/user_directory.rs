//! The user directory (`POST /user_directory/search`): users who share a
//! room with the searcher or are in public rooms, by display name or user
//! ID, following profile changes, joins, leaves and rooms made public.

use ganglion_integration_tests::client::{Client, Reply, encode};
use reqwest::Method;
use serde_json::{Value, json};

async fn search(client: &Client, body: Value) -> Reply {
    client
        .call(
            Method::POST,
            "/_matrix/client/v3/user_directory/search",
            Some(body),
        )
        .await
}

/// The user IDs a search finds, in order.
async fn found(client: &Client, term: &str) -> Vec<String> {
    let reply = search(client, json!({ "search_term": term })).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["user_id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (a view may lag behind a write in the polylith) until a search
/// finds exactly `expected`.
async fn until_found(client: &Client, term: &str, expected: &[&str], why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now = found(client, term).await;
        if now == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{term}: {now:?}, not {expected:?}: {why}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn set_name(client: &Client, name: &str) {
    let reply = client
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                encode(&client.user_id)
            ),
            Some(json!({ "displayname": name })),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

pub(crate) async fn user_directory(base_url: &str) {
    let alice = Client::register(base_url, "ud_alice", "pw-ud-alice").await;
    let bob = Client::register(base_url, "ud_bob", "pw-ud-bob").await;
    let carol = Client::register(base_url, "ud_carol", "pw-ud-carol").await;
    let dave = Client::register(base_url, "ud_dave", "pw-ud-dave").await;
    // Alice and Bob share a private room; Carol is in a public one; Dave
    // only in a private room of his own.
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    let invite = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&private)),
            Some(json!({"user_id": bob.user_id})),
        )
        .await;
    assert_eq!(invite.status, 200, "{invite:?}");
    assert_eq!(bob.join(&private).await.status, 200);
    let public = carol.create_room(json!({"preset": "public_chat"})).await;
    let daves = dave.create_room(json!({"preset": "private_chat"})).await;
    set_name(&bob, "Bob Builder").await;
    set_name(&carol, "Carol Singer").await;
    set_name(&dave, "Dave Hidden").await;

    until_found(&alice, "bob build", &[bob.user_id.as_str()], "").await;
    until_found(
        &alice,
        "BUILD",
        &[bob.user_id.as_str()],
        "any word, any case",
    )
    .await;
    until_found(&alice, "ud_bob", &[bob.user_id.as_str()], "by user ID").await;
    until_found(&alice, "carol sing", &[carol.user_id.as_str()], "").await;
    until_found(&alice, "ud_dave", &[], "shares nothing, in nothing public").await;
    until_found(&alice, "uilder", &[], "words are matched from their start").await;
    let reply = search(&alice, json!({"search_term": "ud_bob"})).await;
    assert_eq!(reply.body["results"][0]["display_name"], "Bob Builder");
    assert_eq!(reply.body["limited"], false);

    // Those who share a room come first.
    let bobby = Client::register(base_url, "ud_bobby", "pw-ud-bobby").await;
    assert_eq!(bobby.join(&public).await.status, 200);
    until_found(
        &alice,
        "ud_bob",
        &[bob.user_id.as_str(), bobby.user_id.as_str()],
        "",
    )
    .await;
    // Limits.
    let limited = search(&alice, json!({"search_term": "ud_bob", "limit": 1})).await;
    assert_eq!(limited.body["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(limited.body["limited"], true);

    // A new name is found by it, the old one no longer.
    set_name(&bob, "Robert").await;
    until_found(&alice, "robert", &[bob.user_id.as_str()], "").await;
    until_found(&alice, "builder", &[], "").await;
    // Carol leaves her public room: gone from the directory.
    let left = carol
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", encode(&public)),
            Some(json!({})),
        )
        .await;
    assert_eq!(left.status, 200, "{left:?}");
    until_found(&alice, "ud_carol", &[], "").await;
    // Dave makes his room public: found.
    let opened = dave
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.join_rules",
                encode(&daves)
            ),
            Some(json!({"join_rule": "public"})),
        )
        .await;
    assert_eq!(opened.status, 200, "{opened:?}");
    until_found(&alice, "ud_dave", &[dave.user_id.as_str()], "").await;

    // Bad requests.
    for (body, errcode) in [
        (json!({}), "M_BAD_JSON"),
        (json!({"search_term": 5}), "M_BAD_JSON"),
        (json!({"search_term": "x".repeat(300)}), "M_INVALID_PARAM"),
    ] {
        let reply = search(&alice, body.clone()).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, errcode),
            "{body}: {reply:?}"
        );
    }
    until_found(&alice, "  %_ ", &[], "wildcards are text").await;
    let anonymous = ganglion_integration_tests::client::request(
        &alice.http,
        Method::POST,
        &format!("{base_url}/_matrix/client/v3/user_directory/search"),
        None,
        Some(b"{\"search_term\":\"bob\"}".to_vec()),
    )
    .await;
    assert_eq!(anonymous.status, 401);
}
