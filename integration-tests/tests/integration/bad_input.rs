//! Every bad input gets the spec's error and changes nothing.

use ganglion_integration_tests::client::{Client, request};
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn bad_input_gets_the_spec_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let alice = Client::register(base, "alice", "pw").await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
    let before = alice.sync(None, 0, 50).await;
    let http = reqwest::Client::new();
    let client = |p: &str| format!("{base}/_matrix/client/v3{p}");
    let send = format!(
        "/rooms/{}/send/m.room.message/",
        ganglion_integration_tests::client::encode(&room_id)
    );

    // Malformed JSON → 400 M_NOT_JSON.
    let r = request(
        &http,
        Method::POST,
        &client("/login"),
        None,
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_NOT_JSON"));
    let r = request(
        &http,
        Method::PUT,
        &client(&format!("{send}t1")),
        Some(&alice.access_token),
        Some(b"[1,".to_vec()),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_NOT_JSON"));
    // Wrong shape → 400 M_BAD_JSON.
    let r = request(
        &http,
        Method::POST,
        &client("/login"),
        None,
        Some(br#"{"type": 5}"#.to_vec()),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_BAD_JSON"));
    let r = request(
        &http,
        Method::PUT,
        &client(&format!("{send}t2")),
        Some(&alice.access_token),
        Some(b"[1, 2]".to_vec()),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_BAD_JSON"));
    let r = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"preset": 7})),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_BAD_JSON"));
    // Unknown endpoint → 404 M_UNRECOGNIZED; known path, wrong method → 405.
    let r = request(&http, Method::GET, &client("/no/such/thing"), None, None).await;
    assert_eq!((r.status, r.errcode()), (404, "M_UNRECOGNIZED"));
    let r = request(&http, Method::DELETE, &client("/createRoom"), None, None).await;
    assert_eq!((r.status, r.errcode()), (405, "M_UNRECOGNIZED"));
    // Missing or bad token → 401.
    let r = request(&http, Method::GET, &client("/account/whoami"), None, None).await;
    assert_eq!((r.status, r.errcode()), (401, "M_MISSING_TOKEN"));
    let r = request(
        &http,
        Method::GET,
        &client("/account/whoami"),
        Some("nope"),
        None,
    )
    .await;
    assert_eq!((r.status, r.errcode()), (401, "M_UNKNOWN_TOKEN"));
    let r = request(&http, Method::GET, &client("/sync"), Some("nope"), None).await;
    assert_eq!((r.status, r.errcode()), (401, "M_UNKNOWN_TOKEN"));
    // Body over the configured limit → 413.
    let huge = format!(r#"{{"body": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let r = request(
        &http,
        Method::POST,
        &client("/createRoom"),
        Some(&alice.access_token),
        Some(huge.into_bytes()),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (413, "M_TOO_LARGE"));
    // An event over 65 536 bytes → 413.
    let big = json!({"msgtype": "m.text", "body": "y".repeat(70_000)}).to_string();
    let r = request(
        &http,
        Method::PUT,
        &client(&format!("{send}t3")),
        Some(&alice.access_token),
        Some(big.into_bytes()),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (413, "M_TOO_LARGE"));
    // Content just under the limit but a whole event over it → 413 from the roomserver.
    let edge = json!({"msgtype": "m.text", "body": "z".repeat(65_400)}).to_string();
    let r = request(
        &http,
        Method::PUT,
        &client(&format!("{send}t4")),
        Some(&alice.access_token),
        Some(edge.into_bytes()),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (413, "M_TOO_LARGE"));
    // Bad tokens and parameters.
    let r = alice
        .call(Method::GET, "/_matrix/client/v3/sync?since=garbage", None)
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"));
    let r = alice
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=x",
                ganglion_integration_tests::client::encode(&room_id)
            ),
            None,
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"));
    let r = alice
        .call(
            Method::PUT,
            "/_matrix/client/v3/rooms/not-a-room/send/m.room.message/t5",
            Some(json!({"body": "x"})),
        )
        .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_PARAM"));
    // Not allowed by the auth rules → 403.
    let bob = Client::register(base, "bob", "pw").await;
    let r = bob.send_text(&room_id, "t6", "let me in").await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    let r = bob.join(&room_id).await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));
    // Registration errors.
    let r = request(
        &http,
        Method::POST,
        &client("/register"),
        None,
        Some(
            json!({"username": "Bad Name!", "password": "x"})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_INVALID_USERNAME"));
    let r = request(
        &http,
        Method::POST,
        &client("/register"),
        None,
        Some(
            json!({"username": "alice", "password": "x", "auth": {"type": "m.login.dummy"}})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!((r.status, r.errcode()), (400, "M_USER_IN_USE"));
    let r = request(&http, Method::POST, &client("/login"), None, Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"}).to_string().into_bytes())).await;
    assert_eq!((r.status, r.errcode()), (403, "M_FORBIDDEN"));

    // None of it appended anything to the log or changed what alice sees.
    let after = alice.sync(None, 0, 50).await;
    assert_eq!(before["next_batch"], after["next_batch"]);
    let ids = |body: &serde_json::Value| {
        body["rooms"]["join"][&room_id]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&before), ids(&after));
}

/// Rate limits by family: a client address behind a trusted proxy is the
/// one its `X-Forwarded-For` names (one client cannot lock everyone out);
/// failed logins count per account from any address; messages and space
/// hierarchy pages per user.
#[tokio::test]
async fn rate_limits_apply_per_address_account_and_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.retain(|(k, _)| k != "GANGLION_RATE_LIMITS__ENABLED");
    for (family, per_second, burst) in [
        ("LOGIN_PER_ADDRESS", "0.01", "3"),
        ("FAILED_LOGINS_PER_ACCOUNT", "0.01", "4"),
        ("MESSAGES_PER_USER", "0.01", "5"),
        ("HIERARCHY_PER_USER", "0.01", "3"),
        ("REGISTRATION_PER_ADDRESS", "100", "100"),
    ] {
        env.push((
            format!("GANGLION_RATE_LIMITS__{family}__PER_SECOND"),
            per_second.to_owned(),
        ));
        env.push((
            format!("GANGLION_RATE_LIMITS__{family}__BURST"),
            burst.to_owned(),
        ));
    }
    let server = Monolith::start_with(dir.path(), env).await;
    let alice = Client::register(&server.base_url, "alice", "password-alice").await;
    let bob = Client::register(&server.base_url, "bob", "password-bob").await;
    let http = reqwest::Client::new();
    let url = format!("{}/_matrix/client/v3/login", server.base_url);
    let login = |from: &'static str, user: &'static str, password: &'static str| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let response = http
                .post(&url)
                .header("x-forwarded-for", from)
                .json(&json!({"type": "m.login.password", "user": user, "password": password}))
                .send()
                .await
                .expect("login");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    };

    // One address exhausts its logins; another is not held back by it.
    let mut limited = None;
    for _ in 0..4 {
        let (status, body) = login("198.51.100.1", "nobody", "x").await;
        if status == 429 {
            limited = Some(body);
            break;
        }
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    let limited = limited.expect("limited within 4 attempts");
    assert_eq!(limited["errcode"], "M_LIMIT_EXCEEDED");
    assert!(limited["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    let (status, body) = login("198.51.100.2", "alice", "password-alice").await;
    assert_eq!(status, 200, "another client logs in: {body}");

    // Wrong passwords for bob from many addresses: his account stops
    // taking attempts, the right password included, from anywhere.
    let addresses = [
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.3",
        "203.0.113.4",
        "203.0.113.5",
    ];
    let mut failures = 0;
    for from in addresses {
        let (status, _) = login(from, "bob", "wrong").await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 403);
        failures += 1;
    }
    assert_eq!(failures, 4, "four failures allowed");
    let (status, body) = login("203.0.113.9", "bob", "password-bob").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED"))
    );
    // Alice is not held back by bob's failures.
    let (status, _) = login("203.0.113.9", "alice", "password-alice").await;
    assert_eq!(status, 200);

    // Messages per user: bob is limited, alice is not.
    let room_id = bob.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(alice.join(&room_id).await.status, 200);
    let mut sent = 0;
    let limited = loop {
        let reply = bob.send_text(&room_id, &format!("b{sent}"), "hi").await;
        if reply.status != 200 {
            break reply;
        }
        sent += 1;
        assert!(sent <= 5, "bob is limited within his burst");
    };
    assert_eq!(
        (limited.status, limited.errcode()),
        (429, "M_LIMIT_EXCEEDED")
    );
    // A retried transaction is answered from the first attempt, limited or not.
    assert_eq!(bob.send_text(&room_id, "b0", "hi").await.status, 200);
    assert_eq!(alice.send_text(&room_id, "a0", "hello").await.status, 200);

    // Space hierarchy pages per user: bob is limited after three, alice is not.
    let path = format!(
        "/_matrix/client/v1/rooms/{}/hierarchy",
        ganglion_integration_tests::client::encode(&room_id)
    );
    for _ in 0..3 {
        let reply = bob.call(Method::GET, &path, None).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let reply = bob.call(Method::GET, &path, None).await;
    assert_eq!((reply.status, reply.errcode()), (429, "M_LIMIT_EXCEEDED"));
    assert!(
        reply.body["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
    let reply = alice.call(Method::GET, &path, None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// Types, state keys and content full of characters JSON must escape
/// (quotes, backslashes, control characters), line and paragraph
/// separators and characters outside the Basic Multilingual Plane: every
/// event accepted is read back exactly through `/sync`, `/messages`,
/// `/context` and `/event`. Once, such an event was answered 200 and then
/// dropped by the syncapi. Run against the monolith and the polylith.
pub(crate) async fn awkward_characters_round_trip(base: &str) {
    use ganglion_integration_tests::client::encode;
    let alice = Client::register(base, "awkward", "password-awkward").await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
    let since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let awkward = [
        "quote\"d",
        "back\\slash\\\\",
        "ctl\u{1}\u{8}\u{b}\u{c}\u{1f}\u{7f}",
        "tab\tnew\nline\rreturn",
        "astral 😀𝄞\u{10ffff}",
        "seps\u{2028}\u{2029}",
        "sl/ash ?#&%25 +",
        "\\u0000 written out",
    ];
    let mut sent: Vec<(String, serde_json::Value)> = Vec::new();
    for (i, text) in awkward.iter().enumerate() {
        let event_type = format!("org.example.{text}");
        let content = json!({"body": text, *text: [text, {*text: text}]});
        let reply = alice
            .call(
                Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/{}/t{i}",
                    encode(&room_id),
                    encode(&event_type)
                ),
                Some(content.clone()),
            )
            .await;
        assert_eq!(reply.status, 200, "send {text:?}: {reply:?}");
        let event_id = reply.body["event_id"]
            .as_str()
            .expect("event_id")
            .to_owned();
        sent.push((event_id, json!({"type": event_type, "content": content})));
        let state_content = json!({"v": text});
        let reply = alice
            .call(
                Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/{}/{}",
                    encode(&room_id),
                    encode(&event_type),
                    encode(text)
                ),
                Some(state_content.clone()),
            )
            .await;
        assert_eq!(reply.status, 200, "state {text:?}: {reply:?}");
        let event_id = reply.body["event_id"]
            .as_str()
            .expect("event_id")
            .to_owned();
        sent.push((
            event_id,
            json!({"type": event_type, "state_key": text, "content": state_content}),
        ));
    }
    let matches = |event: &serde_json::Value, expected: &serde_json::Value| {
        event["type"] == expected["type"]
            && event["content"] == expected["content"]
            && (expected.get("state_key").is_none() || event["state_key"] == expected["state_key"])
    };

    // /sync: every event in the timeline, as sent.
    let synced = alice.sync(Some(&since), 0, 100).await;
    let timeline = synced["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (event_id, expected) in &sent {
        let event = timeline
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .unwrap_or_else(|| panic!("{expected} in /sync: {synced}"));
        assert!(matches(event, expected), "/sync {event} vs {expected}");
    }
    // The state events are the room's state too.
    let state = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", encode(&room_id)),
            None,
        )
        .await;
    for (_, expected) in sent.iter().filter(|(_, e)| e.get("state_key").is_some()) {
        assert!(
            state
                .body
                .as_array()
                .is_some_and(|all| all.iter().any(|e| matches(e, expected))),
            "{expected} in /state"
        );
    }
    // /messages, backwards from now.
    let history = alice.messages(&room_id, None, "b", 100).await;
    let chunk = history["chunk"].as_array().cloned().unwrap_or_default();
    for (event_id, expected) in &sent {
        let event = chunk
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .unwrap_or_else(|| panic!("{expected} in /messages"));
        assert!(matches(event, expected), "/messages {event} vs {expected}");
    }
    // /event and /context of each.
    for (event_id, expected) in &sent {
        let one = alice
            .call(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    encode(&room_id),
                    encode(event_id)
                ),
                None,
            )
            .await;
        assert_eq!(one.status, 200, "/event {expected}: {one:?}");
        assert!(
            matches(&one.body, expected),
            "/event {} vs {expected}",
            one.body
        );
        let context = alice
            .call(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/context/{}?limit=2",
                    encode(&room_id),
                    encode(event_id)
                ),
                None,
            )
            .await;
        assert_eq!(context.status, 200, "/context {expected}: {context:?}");
        assert!(
            matches(&context.body["event"], expected),
            "/context {} vs {expected}",
            context.body["event"]
        );
    }

    // What no view could hold is refused, not accepted and lost.
    let long = "k".repeat(256);
    let refused = [
        (
            format!("/state/m.example/{}", encode(&long)),
            json!({}),
            (413, "M_TOO_LARGE"),
        ),
        (
            format!("/state/{}/k", encode(&long)),
            json!({}),
            (413, "M_TOO_LARGE"),
        ),
        (
            format!("/send/{}/big", encode(&long)),
            json!({}),
            (413, "M_TOO_LARGE"),
        ),
    ];
    for (path, body, expected) in refused {
        let reply = alice
            .call(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{}{path}", encode(&room_id)),
                Some(body),
            )
            .await;
        assert_eq!(
            (reply.status, reply.errcode()),
            expected,
            "{path}: {reply:?}"
        );
    }
    let nul = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/nul",
                encode(&room_id)
            ),
            Some(json!({"body": "a\u{0}b"})),
        )
        .await;
    assert_eq!(nul.status, 400, "U+0000 refused: {nul:?}");
    let created = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(
                json!({"initial_state": [{"type": "m.example", "state_key": long, "content": {}}]}),
            ),
        )
        .await;
    assert_eq!(
        (created.status, created.errcode()),
        (413, "M_TOO_LARGE"),
        "{created:?}"
    );
    let after = alice.sync(Some(&since), 0, 100).await;
    let count = after["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    assert_eq!(count, sent.len(), "nothing refused was stored");
}

#[tokio::test]
async fn awkward_characters_round_trip_in_the_monolith() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    awkward_characters_round_trip(&server.base_url).await;
}

/// Identifiers outside the spec's grammar or over 255 bytes are refused at
/// the edge with the spec's error, before anything is stored or sent to
/// another server; a full user ID logs in when the server name has a port;
/// an unsupported registration stage is answered with the flows again.
#[tokio::test]
async fn malformed_identifiers_are_refused_at_the_edge() {
    use ganglion_integration_tests::client::encode;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, server_name) = Monolith::federating(dir.path()).await;
    assert!(server_name.contains(':'), "a server name with a port");
    let base = &server.base_url;
    let alice = Client::register(base, "alice", "password-alice").await;
    let room_id = alice.create_room(json!({})).await;
    let room = encode(&room_id);
    let long = "x".repeat(256);
    let refused = [
        (
            Method::POST,
            "/_matrix/client/v3/join/!".to_owned(),
            json!({}),
        ),
        (
            Method::POST,
            "/_matrix/client/v3/join/%21%3Aexample.org".to_owned(),
            json!({}),
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/join/{}", encode("#room:exa mple.org")),
            json!({}),
        ),
        (
            Method::POST,
            format!(
                "/_matrix/client/v3/join/{}?via=exa%20mple.org",
                encode("!r:example.org")
            ),
            json!({}),
        ),
        (
            Method::POST,
            format!(
                "/_matrix/client/v3/join/{}?server_name=a.org:99999",
                encode("!r:example.org")
            ),
            json!({}),
        ),
        (
            Method::POST,
            "/_matrix/client/v3/rooms/!/leave".to_owned(),
            json!({}),
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/sendToDevice/m.test/{}", encode(&long)),
            json!({"messages": {}}),
        ),
        (
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.test/t1".to_owned(),
            json!({"messages": {alice.user_id.clone(): {long.clone(): {}}}}),
        ),
        (
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.test/t2".to_owned(),
            json!({"messages": {"@:x": {"D": {}}}}),
        ),
        (
            Method::PUT,
            format!(
                "/_matrix/client/v3/user/{}/account_data/{}",
                encode(&alice.user_id),
                encode(&long)
            ),
            json!({}),
        ),
        (
            Method::PUT,
            format!(
                "/_matrix/client/v3/user/{}/rooms/{room}/tags/{}",
                encode(&alice.user_id),
                encode(&long)
            ),
            json!({}),
        ),
        (
            Method::PUT,
            format!(
                "/_matrix/client/v3/rooms/{room}/send/m.room.message/{}",
                encode(&long)
            ),
            json!({"body": "x"}),
        ),
        (
            Method::PUT,
            format!(
                "/_matrix/client/v3/rooms/!/typing/{}",
                encode(&alice.user_id)
            ),
            json!({"typing": true}),
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/not-an-event"),
            json!({}),
        ),
    ];
    for (method, path, body) in refused {
        let reply = alice.call(method, &path, Some(body)).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, "M_INVALID_PARAM"),
            "{path}: {reply:?}"
        );
    }
    let http = reqwest::Client::new();
    let login_url = format!("{base}/_matrix/client/v3/login");
    let login = |body: serde_json::Value| {
        request(
            &http,
            Method::POST,
            &login_url,
            None,
            Some(body.to_string().into_bytes()),
        )
    };
    let long_device = login(json!({"type": "m.login.password", "user": "alice",
        "password": "password-alice", "device_id": long}))
    .await;
    assert_eq!(
        (long_device.status, long_device.errcode()),
        (400, "M_INVALID_PARAM")
    );
    // The full user ID, server name and port included.
    let full = login(json!({"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice.user_id},
        "password": "password-alice"}))
    .await;
    assert_eq!(full.status, 200, "{full:?}");
    assert_eq!(full.body["user_id"], alice.user_id.as_str());

    // An unsupported stage: 401 with the flows, the session and why (in a
    // session this server gave out: one it never did is 400 M_UNKNOWN).
    let register = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/_matrix/client/v3/register");
        async move {
            request(
                &http,
                Method::POST,
                &url,
                None,
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let asked = register(json!({"username": "bob", "password": "password-bob"})).await;
    assert_eq!(asked.status, 401, "{asked:?}");
    let session = asked.body["session"].clone();
    let unsupported = register(json!({"username": "bob", "password": "password-bob",
                   "auth": {"type": "m.login.magic", "session": session}}))
    .await;
    assert_eq!(unsupported.status, 401, "{unsupported:?}");
    assert_eq!(unsupported.body["flows"][0]["stages"][0], "m.login.dummy");
    assert_eq!(unsupported.body["session"], session);
    assert_eq!(unsupported.errcode(), "M_UNRECOGNIZED");
    let made_up = register(json!({"username": "bob", "password": "password-bob",
                   "auth": {"type": "m.login.dummy", "session": "s1"}}))
    .await;
    assert_eq!(
        (made_up.status, made_up.errcode()),
        (400, "M_UNKNOWN"),
        "{made_up:?}"
    );
    let taken = request(
        &http,
        Method::GET,
        &format!("{base}/_matrix/client/v3/register/available?username=bob"),
        None,
        None,
    )
    .await;
    assert_eq!(taken.body["available"], true, "nothing was registered");
}

/// Retries of one transaction sent at the same moment make one event:
/// each is answered with its event ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_a_transaction_send_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let alice = Client::register(&server.base_url, "alice", "password-alice").await;
    let room_id = alice.create_room(json!({})).await;
    let since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for round in 0..5 {
        let txn = format!("same-{round}");
        let retries: Vec<_> = (0..8)
            .map(|_| {
                let alice = alice.clone();
                let room_id = room_id.clone();
                let txn = txn.clone();
                tokio::spawn(async move { alice.send_text(&room_id, &txn, "once").await })
            })
            .collect();
        let mut event_ids = std::collections::HashSet::new();
        for retry in retries {
            let reply = retry.await.expect("task");
            assert_eq!(reply.status, 200, "{reply:?}");
            event_ids.insert(
                reply.body["event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        assert_eq!(event_ids.len(), 1, "round {round}: {event_ids:?}");
    }
    let synced = alice.sync(Some(&since), 0, 100).await;
    let sent = ganglion_integration_tests::client::message_bodies(
        &synced["rooms"]["join"][&room_id]["timeline"]["events"],
    );
    assert_eq!(sent.len(), 5, "one event per transaction: {sent:?}");
}

/// `/context` gives the room's state at the last event the user may see,
/// never at one after it: a user who left does not learn the room's new
/// name from the context of an event they saw.
#[tokio::test]
async fn context_state_stops_at_what_the_user_may_see() {
    use ganglion_integration_tests::client::encode;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let alice = Client::register(&server.base_url, "alice", "password-alice").await;
    let bob = Client::register(&server.base_url, "bob", "password-bob").await;
    let room_id = alice
        .create_room(json!({"preset": "public_chat", "name": "Before"}))
        .await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let seen = bob.send_text(&room_id, "b1", "I was here").await;
    let seen_id = seen.body["event_id"].as_str().expect("event_id").to_owned();
    assert_eq!(bob.leave(&room_id).await.status, 200);
    let renamed = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                encode(&room_id)
            ),
            Some(json!({"name": "Secret"})),
        )
        .await;
    assert_eq!(renamed.status, 200);
    let context = bob
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=10",
                encode(&room_id),
                encode(&seen_id)
            ),
            None,
        )
        .await;
    assert_eq!(context.status, 200, "{context:?}");
    let names: Vec<&Value> = context.body["state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.name")
        .map(|e| &e["content"]["name"])
        .collect();
    assert_eq!(names, [&json!("Before")], "{}", context.body);
    assert!(
        !context.body.to_string().contains("Secret"),
        "{}",
        context.body
    );
}
