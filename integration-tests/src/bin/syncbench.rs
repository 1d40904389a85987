//! Sync benchmark against a monolith. Prints:
//! - initial `/sync` for a user in `rooms` rooms (p50/p99 over runs);
//! - incremental `/sync` with nothing new, before and after the rooms'
//!   history grew tenfold (its cost should not follow history length);
//! - simplified sliding sync: the first window of 20 rooms, and a no-op;
//! - send→sync wake-up latency (p50/p99) with `idle` idle long-polling
//!   connections held open by other users.
//!
//! `syncbench [rooms] [idle]` (defaults 1000 and 1000;
//! `TEST_GANGLION_BIN` may point at a release build of `ganglion`).

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::process::{Monolith, cpu_seconds, rss_kib};
use serde_json::{Value, json};

/// How many initial syncs are timed.
const INITIAL_SYNCS: usize = 10;

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: p50 {:.1} ms, p99 {:.1} ms, n={}",
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.99).as_secs_f64() * 1000.0,
        samples.len()
    );
}

async fn sync_raw(client: &Client, since: Option<&str>, timeout_ms: u64) -> Value {
    client.sync_all(since, timeout_ms).await
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().unwrap_or_default().to_owned()
}

async fn timed_syncs(client: &Client, since: Option<&str>, runs: usize) -> Vec<Duration> {
    let mut samples = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        sync_raw(client, since, 0).await;
        samples.push(started.elapsed());
    }
    samples
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rooms: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let idle: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let server = Monolith::start(dir.path()).await;
    let base = server.base_url.clone();

    let alice = Client::register(&base, "bench_alice", "pw").await;
    let bob = Client::register(&base, "bench_bob", "pw").await;
    let started = Instant::now();
    let mut room_ids = Vec::with_capacity(rooms);
    for i in 0..rooms {
        let room_id = alice
            .create_room(json!({"preset": "public_chat", "name": format!("bench {i}")}))
            .await;
        alice.send_text(&room_id, "first", "hello").await;
        room_ids.push(room_id);
    }
    println!(
        "setup: {rooms} rooms with a message each in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    sync_raw(&alice, None, 0).await;
    let pid = server.process.pid().expect("the monolith runs");
    let cpu_before = cpu_seconds(pid).unwrap_or_default();
    summary(
        &format!("initial sync, {rooms} rooms"),
        timed_syncs(&alice, None, INITIAL_SYNCS).await,
    );
    // The server's CPU time is steadier than wall time on a shared machine.
    println!(
        "  server CPU per initial sync: {:.1} ms",
        (cpu_seconds(pid).unwrap_or_default() - cpu_before) * 1000.0 / INITIAL_SYNCS as f64
    );
    let since = next_batch(&sync_raw(&alice, None, 0).await);
    summary(
        "incremental sync, nothing new",
        timed_syncs(&alice, Some(&since), 50).await,
    );
    // Simplified sliding sync: the first window of 20 rooms, then a no-op.
    let sliding = |pos: Option<String>| {
        let alice = alice.clone();
        async move {
            let path = match pos {
                Some(pos) => format!("{SLIDING}?timeout=0&pos={}", encode(&pos)),
                None => SLIDING.to_owned(),
            };
            let body = json!({"lists": {"all": {
                "ranges": [[0, 19]], "timeline_limit": 1,
                "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
            }}});
            let started = Instant::now();
            let reply = alice.call(reqwest::Method::POST, &path, Some(body)).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            (
                started.elapsed(),
                reply.body["pos"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let mut first = Vec::new();
    let mut pos = String::new();
    for _ in 0..10 {
        let (took, at) = sliding(None).await;
        first.push(took);
        pos = at;
    }
    summary(
        &format!("sliding sync, first window of 20 of {rooms} rooms"),
        first,
    );
    let mut quiet = Vec::new();
    for _ in 0..50 {
        let (took, at) = sliding(Some(pos.clone())).await;
        quiet.push(took);
        pos = at;
    }
    summary("sliding sync, nothing new", quiet);

    // Ten times the history in the first rooms; the no-op sync should not care.
    let grow = rooms.min(50);
    for (i, room_id) in room_ids.iter().take(grow).enumerate() {
        for m in 0..20 {
            alice
                .send_text(room_id, &format!("g{i}-{m}"), "more history")
                .await;
        }
    }
    let since = next_batch(&sync_raw(&alice, None, 0).await);
    summary(
        &format!("incremental sync, nothing new, after +{} events", grow * 20),
        timed_syncs(&alice, Some(&since), 50).await,
    );

    // Wake-up latency with idle long-polls held open by other users, each
    // holding as many as the server lets one user hold.
    let per_user = ganglion_base::Config::default()
        .client
        .max_syncs_per_user
        .max(1);
    let idle_users = idle.div_ceil(per_user).max(1);
    let mut idlers = Vec::new();
    for i in 0..idle_users {
        idlers.push(Client::register(&base, &format!("idle{i}"), "pw").await);
    }
    let mut held = Vec::new();
    for n in 0..idle {
        let client = idlers[n % idle_users].clone();
        held.push(tokio::spawn(async move {
            let mut since = next_batch(&sync_raw(&client, None, 0).await);
            loop {
                since = next_batch(&sync_raw(&client, Some(&since), 30_000).await);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let mut since = next_batch(&sync_raw(&bob, None, 0).await);
    let mut samples = Vec::new();
    for i in 0..100 {
        let poll = {
            let bob = bob.clone();
            let since = since.clone();
            tokio::spawn(async move {
                let body = sync_raw(&bob, Some(&since), 30_000).await;
                (Instant::now(), body)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = Instant::now();
        alice.send_text(&room_id, &format!("w{i}"), "wake").await;
        let (woke, body) = poll.await?;
        samples.push(woke.saturating_duration_since(sent));
        since = next_batch(&body);
    }
    summary(
        &format!("send→sync wake-up with {idle} idle long-polls"),
        samples,
    );
    if let Some(pid) = server.process.pid() {
        println!("resident memory: {} MiB", rss_kib(pid).unwrap_or(0) / 1024);
    }
    for task in held {
        task.abort();
    }
    Ok(())
}
