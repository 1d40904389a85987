//! Each listener's own limits: a header-read timeout, a connection cap, a
//! cap on one user's open `/sync` requests, and a federation body limit
//! with room for a full transaction.

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::Client;
use ganglion_integration_tests::fake_server::FakeServer;
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads from `stream` until the server closes it (or `within` passes).
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buffer = [0_u8; 1024];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            _ => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_keeps_its_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_name, federating) = ganglion_integration_tests::process::federating_env();
    let mut env = Monolith::default_env(dir.path());
    env.retain(|(k, _)| k != "GANGLION_FEDERATION__LISTEN");
    env.extend(federating);
    env.extend([
        (
            "GANGLION_CLIENT__MAX_CONNECTIONS".to_owned(),
            "4".to_owned(),
        ),
        (
            "GANGLION_CLIENT__HEADER_READ_TIMEOUT_MS".to_owned(),
            "1000".to_owned(),
        ),
        (
            "GANGLION_CLIENT__MAX_SYNCS_PER_USER".to_owned(),
            "2".to_owned(),
        ),
    ]);
    let server = Monolith::start_with(dir.path(), env).await;
    let address = server.base_url.trim_start_matches("http://").to_owned();
    let alice = Client::register(&server.base_url, "alice", "password-alice").await;

    // A client that never finishes its headers is cut off.
    let mut slow = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    slow.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    assert!(
        closed_by_server(&mut slow, Duration::from_secs(10)).await,
        "a connection stuck in its headers is closed"
    );

    // Four idle connections fill the listener: a fifth client waits...
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let versions = format!("{}/_matrix/client/versions", server.base_url);
    assert!(
        quick.get(&versions).send().await.is_err(),
        "no fifth connection is served while four are open"
    );
    // ...until the idle ones time out, and then it is served.
    for stream in &mut idle {
        assert!(closed_by_server(stream, Duration::from_secs(10)).await);
    }
    let served = reqwest::get(&versions).await.expect("served");
    assert_eq!(served.status(), 200);

    // One user holds at most two /sync requests open. (Each request from
    // a client of its own, so none waits on another's connection; the
    // server closes kept-alive connections idle for a second here.)
    let alone = |alice: &Client| Client {
        http: reqwest::Client::new(),
        ..alice.clone()
    };
    let since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Each polls on for as long as it runs (news such as presence may
    // answer one early).
    let long_poll = |alice: Client, mut since: String| {
        tokio::spawn(async move {
            loop {
                let reply = alice
                    .call(
                        Method::GET,
                        &format!("/_matrix/client/v3/sync?timeout=20000&since={since}"),
                        None,
                    )
                    .await;
                if let Some(next) = reply.body["next_batch"].as_str() {
                    since = next.to_owned();
                }
            }
        })
    };
    let first = long_poll(alone(&alice), since.clone());
    let second = long_poll(alone(&alice), since.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        let reply = alone(&alice)
            .call(
                Method::GET,
                &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
                None,
            )
            .await;
        if reply.status == 429 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(third.status, 429, "{third:?}");
    assert_eq!(third.errcode(), "M_LIMIT_EXCEEDED");
    assert!(third.body["retry_after_ms"].as_u64().is_some());
    first.abort();
    second.abort();

    // Federation: a transaction bigger than a client body is taken...
    let fake_dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeServer::start(fake_dir.path()).await;
    let base = format!(
        "https://127.0.0.1:{}",
        server_name
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or_default()
    );
    let pad = "p".repeat(50_000);
    let edus: Vec<serde_json::Value> = (0..40)
        .map(|_| json!({"edu_type": "org.example.padding", "content": {"pad": pad}}))
        .collect();
    let now = ganglion_integration_tests::fake_server::now_ms();
    let (status, answer) = fake
        .request(
            &base,
            &server_name,
            Method::PUT,
            "/_matrix/federation/v1/send/big",
            Some(json!({"origin": fake.server_name, "origin_server_ts": now, "pdus": [], "edus": edus})),
        )
        .await;
    assert_eq!(status, 200, "a 2 MB transaction: {answer}");
    // ...and one over the federation limit is not.
    let huge: Vec<serde_json::Value> = (0..100)
        .map(|_| json!({"edu_type": "org.example.padding", "content": {"pad": "p".repeat(90_000)}}))
        .collect();
    let (status, answer) = fake
        .request(
            &base,
            &server_name,
            Method::PUT,
            "/_matrix/federation/v1/send/huge",
            Some(json!({"origin": fake.server_name, "origin_server_ts": now, "pdus": [], "edus": huge})),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["errcode"], "M_TOO_LARGE");
}
