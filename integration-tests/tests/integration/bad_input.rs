//! Every bad input gets the spec's error and changes nothing.

use ganglion_integration_tests::client::{Client, request};
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::json;

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

#[tokio::test]
async fn login_and_register_are_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = ganglion_integration_tests::process::free_port();
    let env = vec![
        (
            "GANGLION_DATA_DIR".to_owned(),
            dir.path().join("data").display().to_string(),
        ),
        (
            "GANGLION_CLIENT__LISTEN".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
        (
            "GANGLION_FEDERATION__LISTEN".to_owned(),
            format!(
                "127.0.0.1:{}",
                ganglion_integration_tests::process::free_port()
            ),
        ),
        (
            "GANGLION_CLIENT__RATE_LIMIT_PER_SECOND".to_owned(),
            "0.1".to_owned(),
        ),
        (
            "GANGLION_CLIENT__RATE_LIMIT_BURST".to_owned(),
            "3".to_owned(),
        ),
    ];
    let server = Monolith::start_with(dir.path(), env).await;
    let http = reqwest::Client::new();
    let url = format!("{}/_matrix/client/v3/login", server.base_url);
    let body = json!({"type": "m.login.password", "user": "nobody", "password": "x"}).to_string();
    let mut limited = None;
    for _ in 0..6 {
        let r = request(
            &http,
            Method::POST,
            &url,
            None,
            Some(body.clone().into_bytes()),
        )
        .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.errcode(), "M_FORBIDDEN");
    }
    let limited = limited.expect("rate limited within 6 attempts");
    assert_eq!(limited.errcode(), "M_LIMIT_EXCEEDED");
    assert!(
        limited.body["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
}
