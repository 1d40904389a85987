//! The "finding things" benchmark, against Ganglion's monolith:
//! - `POST /search` latency over 100 000 messages (ranked, and most recent
//!   first), each message eight words of a 5 000-word vocabulary;
//! - `POST /user_directory/search` latency over 10 000 users in public
//!   rooms (guests, so that registering them costs no password hashing);
//! - push delivery rate to one push gateway: 20 users with pushers in a
//!   room, 500 messages, until the gateway has taken all 10 000 pushes.
//!
//! `TEST_GANGLION_BIN=target/release/ganglion target/release/findbench
//! [messages] [users]` (build both with `cargo build --release -p ganglion
//! -p ganglion-integration-tests`).

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, encode, request};
use ganglion_integration_tests::process::Monolith;
use ganglion_integration_tests::push_gateway::PushGateway;
use reqwest::Method;
use serde_json::json;

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(index).copied().unwrap_or_default()
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: p50 {:.1} ms, p95 {:.1} ms, n={}",
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.95).as_secs_f64() * 1000.0,
        samples.len()
    );
}

/// A word of the vocabulary, picked by a simple generator.
fn word(seed: &mut u64) -> String {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    format!("w{}", (*seed >> 33) % 5_000)
}

async fn guest(base: &str) -> Client {
    let reply = request(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{base}/_matrix/client/v3/register?kind=guest"),
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    Client {
        base_url: base.to_owned(),
        http: reqwest::Client::new(),
        user_id: reply.body["user_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        access_token: reply.body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        device_id: reply.body["device_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let users: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.extend([
        (
            "GANGLION_CLIENT__GUEST_ACCESS_ENABLED".to_owned(),
            "true".to_owned(),
        ),
        (
            "GANGLION_FEDERATION__IP_RANGE_ALLOWLIST".to_owned(),
            r#"["127.0.0.1/32"]"#.to_owned(),
        ),
    ]);
    let server = Monolith::start_with(dir.path(), env).await;
    let base = server.base_url.clone();

    // Search: the messages in ten rooms, sent ten at a time.
    let alice = Client::register(&base, "bench_alice", "pw-bench-alice").await;
    let mut rooms = Vec::new();
    for _ in 0..10 {
        rooms.push(alice.create_room(json!({"preset": "public_chat"})).await);
    }
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let batch: Vec<_> = (sent..(sent + 10).min(messages))
            .map(|n| {
                let alice = alice.clone();
                let room = rooms[n % rooms.len()].clone();
                async move {
                    let mut seed = n as u64;
                    let body: Vec<String> = (0..8).map(|_| word(&mut seed)).collect();
                    let reply = alice
                        .send_text(&room, &format!("t{n}"), &body.join(" "))
                        .await;
                    assert_eq!(reply.status, 200, "{reply:?}");
                }
            })
            .collect();
        sent += batch.len();
        futures::future::join_all(batch).await;
    }
    println!(
        "sent {messages} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (label, order) in [
        ("search, ranked", "rank"),
        ("search, most recent first", "recent"),
    ] {
        let mut samples = Vec::new();
        let mut seed = 7_u64;
        for _ in 0..50 {
            let term = word(&mut seed);
            let started = Instant::now();
            let reply = alice
                .call(
                    Method::POST,
                    "/_matrix/client/v3/search",
                    Some(json!({"search_categories": {"room_events": {
                        "search_term": term, "order_by": order,
                    }}})),
                )
                .await;
            samples.push(started.elapsed());
            assert_eq!(reply.status, 200, "{reply:?}");
        }
        summary(&format!("{label}, over {messages} messages"), samples);
    }

    // The user directory: guests with names in ten public rooms.
    let mut directory_rooms = Vec::new();
    for _ in 0..10 {
        directory_rooms.push(
            alice
                .create_room(json!({"preset": "public_chat", "initial_state": [
                    {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}
                ]}))
                .await,
        );
    }
    let started = Instant::now();
    let mut made = 0;
    while made < users {
        let batch: Vec<_> = (made..(made + 10).min(users))
            .map(|n| {
                let base = base.clone();
                let room = directory_rooms[n % directory_rooms.len()].clone();
                async move {
                    let user = guest(&base).await;
                    let joined = user.join(&room).await;
                    assert_eq!(joined.status, 200, "{joined:?}");
                    let mut seed = n as u64 + 1_000_000;
                    let name = format!("{} {}", word(&mut seed), word(&mut seed));
                    let named = user
                        .call(
                            Method::PUT,
                            &format!(
                                "/_matrix/client/v3/profile/{}/displayname",
                                encode(&user.user_id)
                            ),
                            Some(json!({"displayname": name})),
                        )
                        .await;
                    assert_eq!(named.status, 200, "{named:?}");
                }
            })
            .collect();
        made += batch.len();
        futures::future::join_all(batch).await;
    }
    println!(
        "made {users} named users in public rooms in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut samples = Vec::new();
    let mut seed = 11_u64;
    for _ in 0..50 {
        let term = word(&mut seed);
        let started = Instant::now();
        let reply = alice
            .call(
                Method::POST,
                "/_matrix/client/v3/user_directory/search",
                Some(json!({"search_term": term, "limit": 10})),
            )
            .await;
        samples.push(started.elapsed());
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    summary(
        &format!("user directory search, over {users} users"),
        samples,
    );

    // Pushes: 20 users with pushers, 500 messages.
    let gateway = PushGateway::start().await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let pushed_users = 20;
    for n in 0..pushed_users {
        let user = Client::register(&base, &format!("bench_push{n}"), "pw-bench-push").await;
        assert_eq!(user.join(&room).await.status, 200);
        let set = user
            .call(
                Method::POST,
                "/_matrix/client/v3/pushers/set",
                Some(json!({
                    "kind": "http", "app_id": "org.example.bench", "pushkey": format!("key{n}"),
                    "app_display_name": "Bench", "device_display_name": "Bench", "lang": "en",
                    "data": {"url": gateway.url, "format": "event_id_only"},
                })),
            )
            .await;
        assert_eq!(set.status, 200, "{set:?}");
    }
    let pushed_messages = 500;
    let expected = pushed_users * pushed_messages;
    let started = Instant::now();
    for m in 0..pushed_messages {
        let reply = alice.send_text(&room, &format!("p{m}"), "push me").await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let sent_in = started.elapsed();
    while gateway.accepted().len() < expected {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {expected} pushes arrived",
            gateway.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    println!(
        "push delivery: {expected} pushes ({pushed_users} users x {pushed_messages} messages) in {:.2} s: {:.0} pushes/s (messages sent in {:.2} s)",
        took.as_secs_f64(),
        expected as f64 / took.as_secs_f64(),
        sent_in.as_secs_f64()
    );
}
