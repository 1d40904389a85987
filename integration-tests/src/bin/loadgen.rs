//! Load generator: starts a monolith, a polylith or a real Synapse, has N
//! clients send into one room while a listener long-polls `/sync`, and
//! prints accepted events/s, send→sync delivery latency (p50/p99), start-up
//! time and resident memory (summed over the polylith's processes).
//!
//! `loadgen [monolith|polylith|synapse|versus] [clients] [messages_per_client]`
//!
//! `versus` runs the same scenario against Synapse and then the monolith,
//! one after the other on the same machine, and prints both and the ratio.
//! Synapse (the test suite's: SQLite, rate limits lifted, TLS on loopback)
//! comes from the venv `scripts/test.sh` installs. `TEST_GANGLION_BIN` may
//! point at a release build of `ganglion`; the polylith needs tansu and
//! PostgreSQL, as the test command provides.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ganglion_integration_tests::client::Client;
use ganglion_integration_tests::process::{Monolith, POLYLITH_SERVICES, Polylith, rss_kib};
use ganglion_integration_tests::synapse::Synapse;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "monolith".to_owned());
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(8);
    let per_client: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    if mode == "versus" {
        let synapse = run("synapse", clients, per_client).await?;
        let ganglion = run("monolith", clients, per_client).await?;
        println!("Ganglion's monolith against Synapse, the same scenario on this machine:");
        println!(
            "  throughput                 {:>8.1} x Synapse's ({:.0} against {:.0} events/s)",
            ganglion.throughput / synapse.throughput,
            ganglion.throughput,
            synapse.throughput
        );
        println!(
            "  send->sync latency p50     {:>8.1} x lower ({:.2} against {:.2} ms)",
            synapse.p50_ms / ganglion.p50_ms,
            ganglion.p50_ms,
            synapse.p50_ms
        );
        return Ok(());
    }
    run(&mode, clients, per_client).await?;
    Ok(())
}

/// What one run measured.
struct Figures {
    throughput: f64,
    p50_ms: f64,
}

async fn run(mode: &str, clients: usize, per_client: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let server = match mode {
        "monolith" => Deployment::Monolith(Monolith::start(dir.path()).await),
        "polylith" => {
            let mut urls = Vec::new();
            for service in POLYLITH_SERVICES {
                urls.push((
                    service,
                    ganglion_base::testing::scratch_postgres(&format!("loadgen_{service}")).await,
                ));
            }
            Deployment::Polylith(Polylith::start(dir.path(), &urls).await)
        }
        "synapse" => Deployment::Synapse(Synapse::start(&dir.path().join("synapse")).await),
        other => anyhow::bail!("unknown mode {other}: monolith, polylith, synapse or versus"),
    };
    let startup = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = server.rss_kib();

    let owner = server.register("owner").await;
    let room_id = owner.create_room(json!({"preset": "public_chat"})).await;
    let mut senders = Vec::new();
    for i in 0..clients {
        let client = server.register(&format!("sender{i}")).await;
        anyhow::ensure!(client.join(&room_id).await.status == 200, "join failed");
        senders.push(client);
    }
    let registered_rss = server.rss_kib();
    let listener = owner.clone();
    let mut since = listener.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let total = clients * per_client;
    let room = room_id.clone();
    let watcher = tokio::spawn(async move {
        let mut seen: HashMap<String, Instant> = HashMap::new();
        while seen.len() < total {
            let body = listener.sync(Some(&since), 30_000, 1000).await;
            let now = Instant::now();
            for event in body["rooms"]["join"][&room]["timeline"]["events"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(text) = event["content"]["body"].as_str() {
                    seen.entry(text.to_owned()).or_insert(now);
                }
            }
            since = body["next_batch"].as_str().unwrap_or_default().to_owned();
        }
        seen
    });

    let load_started = Instant::now();
    let mut tasks = Vec::new();
    for (i, client) in senders.into_iter().enumerate() {
        let room = room_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::with_capacity(per_client);
            for n in 0..per_client {
                let text = format!("m{i}-{n}");
                let at = Instant::now();
                let reply = client.send_text(&room, &format!("t{n}"), &text).await;
                if reply.status == 200 {
                    sent.push((text, at));
                }
            }
            sent
        }));
    }
    let mut sent_at = HashMap::new();
    for task in tasks {
        for (text, at) in task.await? {
            sent_at.insert(text, at);
        }
    }
    let send_elapsed = load_started.elapsed();
    let seen = tokio::time::timeout(Duration::from_secs(120), watcher).await??;
    let busy_rss = server.rss_kib();
    let mut latencies: Vec<f64> = sent_at
        .iter()
        .filter_map(|(text, at)| {
            seen.get(text)
                .map(|s| s.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!("{mode}: {clients} clients x {per_client} messages into one room");
    println!(
        "  start-up to healthy        {:>8.1} ms",
        startup.as_secs_f64() * 1000.0
    );
    println!(
        "  idle RSS                   {:>8.1} MB",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  RSS after registrations    {:>8.1} MB",
        registered_rss as f64 / 1024.0
    );
    println!(
        "  RSS after load             {:>8.1} MB",
        busy_rss as f64 / 1024.0
    );
    println!("  accepted                   {:>8} events", sent_at.len());
    println!(
        "  throughput                 {:>8.0} events/s",
        sent_at.len() as f64 / send_elapsed.as_secs_f64()
    );
    println!("  send->sync latency p50     {:>8.2} ms", pct(0.50));
    println!("  send->sync latency p99     {:>8.2} ms", pct(0.99));
    // The server's own view: mean time per stage, from /metrics.
    let mut metrics = String::new();
    for url in server.metrics_urls() {
        metrics.push_str(&reqwest::get(url).await?.text().await?);
    }
    if metrics.is_empty() {
        return Ok(Figures {
            throughput: sent_at.len() as f64 / send_elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
        });
    }
    let mean = |name: &str, filter: &str| -> Option<f64> {
        let find = |suffix: &str| {
            metrics
                .lines()
                .filter(|l| l.starts_with(&format!("{name}_{suffix}")) && l.contains(filter))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let count = find("count");
        (count > 0.0).then(|| find("sum") / count * 1000.0)
    };
    for (label, name, filter) in [
        (
            "server: PUT /send",
            "ganglion_http_request_duration_seconds",
            "method=\"PUT\"",
        ),
        (
            "server: GET /sync",
            "ganglion_http_request_duration_seconds",
            "method=\"GET\"",
        ),
        (
            "roomserver input record",
            "ganglion_roomserver_input_duration_seconds",
            "new_events",
        ),
        (
            "read-your-writes wait",
            "ganglion_clientapi_read_your_writes_wait_seconds",
            "",
        ),
    ] {
        if let Some(ms) = mean(name, filter) {
            println!("  mean {label:<22} {ms:>7.3} ms");
        }
    }
    Ok(Figures {
        throughput: sent_at.len() as f64 / send_elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
    })
}

enum Deployment {
    Monolith(Monolith),
    Polylith(Polylith),
    Synapse(Synapse),
}

impl Deployment {
    async fn register(&self, localpart: &str) -> Client {
        match self {
            Deployment::Monolith(m) => Client::register(&m.base_url, localpart, "pw").await,
            Deployment::Polylith(p) => Client::register(&p.base_url, localpart, "pw").await,
            Deployment::Synapse(s) => s.register(localpart, "pw").await,
        }
    }

    /// Resident memory of every process of the deployment, in KiB.
    fn rss_kib(&self) -> u64 {
        let pids: Vec<u32> = match self {
            Deployment::Monolith(m) => m.process.pid().into_iter().collect(),
            Deployment::Polylith(p) => p.processes.iter().filter_map(|p| p.pid()).collect(),
            Deployment::Synapse(s) => s.pid().into_iter().collect(),
        };
        pids.into_iter().filter_map(rss_kib).sum()
    }

    fn metrics_urls(&self) -> Vec<String> {
        match self {
            Deployment::Monolith(m) => vec![format!("{}/metrics", m.operator_url)],
            Deployment::Polylith(p) => POLYLITH_SERVICES
                .iter()
                .map(|service| format!("http://{}/metrics", p.listeners(service).operator))
                .collect(),
            // Synapse's metrics listener is not configured.
            Deployment::Synapse(_) => Vec::new(),
        }
    }
}
