//! Federation benchmark against a monolith, with the fake remote server
//! (real TLS and signatures) as the other side. Prints:
//! - the time for our user to join a remote room whose state has N members
//!   (make_join, send_join, checking every signature of the state and auth
//!   chain, storing it, and the room in `/sync`), for each N given;
//! - the outbound delivery rate to one destination: messages our user
//!   sends, until the remote server has received them all.
//!
//! `fedbench [members…] [--messages M] [--synapse]` (defaults 1000 10000,
//! M = 500; `TEST_GANGLION_BIN` may point at a release build of
//! `ganglion`). With `--synapse` the remote room is a real Synapse's (the
//! venv `scripts/test.sh` installs): its user creates it, the fake
//! server's users join it (sent to Synapse 50 to a transaction), then ours
//! joins through Synapse. `--repeat R` joins the Synapse room R times, each
//! time from a new monolith; `--compare PATH` does each join a second time
//! from a monolith of the binary at PATH (one slow fill, two builds).

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::fake_server::FakeServer;
use ganglion_integration_tests::process::{Monolith, federating_env, rss_kib};
use ganglion_integration_tests::synapse::Synapse;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes: Vec<usize> = Vec::new();
    let mut messages = 500_usize;
    let mut synapse_remote = false;
    let mut repeat = 1_usize;
    let mut compare: Option<String> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--synapse" {
            synapse_remote = true;
        } else if arg == "--repeat" {
            repeat = iter.next().and_then(|m| m.parse().ok()).unwrap_or(repeat);
        } else if arg == "--compare" {
            compare = iter.next().cloned();
        } else if arg == "--messages" {
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

    if synapse_remote {
        let synapse_dir = tempfile::tempdir()?;
        let synapse = Synapse::start(synapse_dir.path()).await;
        let bob = synapse.register("bench_bob", "pw-bench-bob").await;
        let synapse_federation = synapse.base_url.replace("localhost", "127.0.0.1");
        for members in sizes {
            let room_id = bob
                .create_room(
                    json!({ "preset": "public_chat", "name": format!("{members} members") }),
                )
                .await;
            let started = Instant::now();
            fake.fill_room(
                (&synapse_federation, &synapse.server_name),
                &room_id,
                members,
            )
            .await;
            // Synapse takes a transaction's PDUs in the background: wait
            // until it counts them all.
            let deadline = Instant::now() + Duration::from_secs(60 + members as u64 / 10);
            loop {
                let joined = bob
                    .call(
                        reqwest::Method::GET,
                        &format!(
                            "/_matrix/client/v3/rooms/{}/joined_members",
                            encode(&room_id)
                        ),
                        None,
                    )
                    .await;
                let count = joined.body["joined"].as_object().map_or(0, |m| m.len());
                if count > members {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "Synapse counts {count} members\n{}",
                    synapse.logs()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let built = started.elapsed();
            println!(
                "Synapse took the {members} joins in {:.1} s",
                built.as_secs_f64()
            );
            let took = join_and_report(&ours, &alice, &room_id, &synapse.server_name).await?;
            println!(
                "join a Synapse room of {members} members: {:.0} ms",
                took.as_secs_f64() * 1000.0,
            );
            let binaries: Vec<Option<&String>> = std::iter::once(None)
                .chain(compare.iter().map(Some))
                .collect();
            for round in 0..repeat {
                for binary in &binaries {
                    if round == 0 && binary.is_none() {
                        continue;
                    }
                    let dir = tempfile::tempdir()?;
                    let (server_name, federating) = federating_env();
                    let mut env = Monolith::default_env(dir.path());
                    env.retain(|(k, _)| k != "GANGLION_FEDERATION__LISTEN");
                    env.extend(federating);
                    if let Some(binary) = binary {
                        env.push(("TEST_GANGLION_BIN".into(), (*binary).clone()));
                    }
                    let other = Monolith::start_with(dir.path(), env).await;
                    let user = Client::register(&other.base_url, "bench_alice", "pw").await;
                    let took =
                        join_and_report(&other, &user, &room_id, &synapse.server_name).await?;
                    println!(
                        "join a Synapse room of {members} members from {server_name} ({}): {:.0} ms",
                        binary.map_or("this build", |b| b.as_str()),
                        took.as_secs_f64() * 1000.0,
                    );
                }
            }
        }
        return Ok(());
    }

    for members in sizes {
        let started = Instant::now();
        let room_id = fake.host_room(members);
        let built = started.elapsed();
        let took = join_and_report(&ours, &alice, &room_id, &fake.server_name).await?;
        println!(
            "join a remote room of {members} members: {:.0} ms (its state built and signed by the remote in {:.0} ms)",
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

/// Our user joins `room_id` through `server`: how long the join took; the
/// monolith's account of it and the members we then see are printed.
async fn join_and_report(
    ours: &Monolith,
    alice: &Client,
    room_id: &str,
    server: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let join = alice
        .call(
            reqwest::Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                encode(room_id),
                encode(server)
            ),
            Some(json!({})),
        )
        .await;
    let took = started.elapsed();
    anyhow::ensure!(join.status == 200, "join failed: {join:?}");
    for line in ours.process.log_tail().lines().filter(|l| {
        (l.contains("joined a remote room") || l.contains("checked a batch of PDUs"))
            && l.contains(room_id)
    }) {
        println!("  {line}");
    }
    let members_seen = alice
        .call(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/joined_members",
                encode(room_id)
            ),
            None,
        )
        .await;
    let count = members_seen.body["joined"]
        .as_object()
        .map(|m| m.len())
        .unwrap_or(0);
    println!("  {count} members joined as we see it");
    Ok(took)
}
