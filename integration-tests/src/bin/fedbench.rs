//! Federation benchmark against a monolith, with the fake remote server
//! (real TLS and signatures) as the other side. Prints:
//! - the time for our user to join a remote room whose state has N members
//!   (make_join, send_join, checking every signature of the state and auth
//!   chain, storing it, and the room in `/sync`), for each N given;
//! - the outbound delivery rate to one destination: messages our user
//!   sends, until the remote server has received them all.
//!
//! `fedbench [members…] [--messages M]` (defaults 1000 10000, M = 500;
//! `TEST_GANGLION_BIN` may point at a release build of `ganglion`).

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::fake_server::FakeServer;
use ganglion_integration_tests::process::{Monolith, rss_kib};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes: Vec<usize> = Vec::new();
    let mut messages = 500_usize;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--messages" {
            messages = iter.next().and_then(|m| m.parse().ok()).unwrap_or(messages);
        } else if let Ok(n) = arg.parse() {
            sizes.push(n);
        }
    }
    if sizes.is_empty() {
        sizes = vec![1_000, 10_000];
    }
    let fake_dir = tempfile::tempdir()?;
    let fake = FakeServer::start(fake_dir.path()).await;
    let dir = tempfile::tempdir()?;
    let (ours, _name) = Monolith::federating(dir.path()).await;
    let alice = Client::register(&ours.base_url, "bench_alice", "pw").await;

    for members in sizes {
        let started = Instant::now();
        let room_id = fake.host_room(members);
        let built = started.elapsed();
        let started = Instant::now();
        let join = alice
            .call(
                reqwest::Method::POST,
                &format!(
                    "/_matrix/client/v3/join/{}?server_name={}",
                    encode(&room_id),
                    encode(&fake.server_name)
                ),
                Some(json!({})),
            )
            .await;
        let took = started.elapsed();
        anyhow::ensure!(join.status == 200, "join failed: {join:?}");
        for line in
            ours.process.log_tail().lines().filter(|l| {
                l.contains("joined a remote room") || l.contains("checked a batch of PDUs")
            })
        {
            println!("  {line}");
        }
        let members_seen = alice
            .call(
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/joined_members",
                    encode(&room_id)
                ),
                None,
            )
            .await;
        let count = members_seen.body["joined"]
            .as_object()
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "join a remote room of {members} members: {:.0} ms (its state built and signed by the remote in {:.0} ms; {count} members joined as we see it)",
            took.as_secs_f64() * 1000.0,
            built.as_secs_f64() * 1000.0,
        );
    }

    // Outbound: our messages to the one other server in a room.
    let room_id = fake.host_room(0);
    let join = alice
        .call(
            reqwest::Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                encode(&room_id),
                encode(&fake.server_name)
            ),
            Some(json!({})),
        )
        .await;
    anyhow::ensure!(join.status == 200, "join failed: {join:?}");
    let delivered = |fake: &FakeServer| {
        fake.count_received(|pdu| {
            pdu["type"] == "m.room.message"
                && pdu["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("out "))
        })
    };
    let started = Instant::now();
    for i in 0..messages {
        alice
            .send_text(&room_id, &format!("o{i}"), &format!("out {i}"))
            .await;
    }
    let sent = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered(&fake) < messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = started.elapsed();
    let transactions = fake.received().len();
    println!(
        "outbound to one destination: {messages} messages sent in {:.2} s, all delivered after {:.2} s ({:.0} events/s, {transactions} transactions)",
        sent.as_secs_f64(),
        all.as_secs_f64(),
        delivered(&fake) as f64 / all.as_secs_f64(),
    );
    let rss = rss_kib(ours.process.pid().unwrap_or_default()).unwrap_or_default();
    println!("monolith resident memory after the run: {} MiB", rss / 1024);
    Ok(())
}
