//! Load generator: starts a monolith, a polylith or a real Synapse, has N
//! clients send into each of R rooms while a listener long-polls `/sync`,
//! and prints accepted events/s, send→sync delivery latency (p50/p99),
//! CPU time per accepted message, start-up time and resident memory
//! (summed over the polylith's processes).
//!
//! `loadgen [monolith|polylith|synapse|versus] [clients] [messages_per_client] [rooms]`
//!
//! `loadgen create [clients] [rooms_per_client] [monolith|synapse]` instead
//! has each client create rooms one after another, sending three messages
//! into each, and prints rooms/s and the latency of `createRoom`.
//!
//! `loadgen capacity [clients] [messages_per_client] [rooms]` shows what the
//! load generator itself drives: the same senders against a server in this
//! process that answers every send at once.
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
use ganglion_integration_tests::process::{
    Monolith, POLYLITH_SERVICES, Polylith, anonymous_rss_kib, cpu_seconds, rss_kib,
};
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
    let rooms: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    if mode == "capacity" {
        return capacity(clients, per_client, rooms).await;
    }
    if mode == "create" {
        let target = args.get(4).map_or("monolith", String::as_str);
        return create_rooms(target, clients, per_client).await;
    }
    if mode == "versus" {
        let synapse = run("synapse", clients, per_client, rooms).await?;
        let ganglion = run("monolith", clients, per_client, rooms).await?;
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
        println!(
            "  CPU per accepted message   {:>8.1} x less ({:.3} against {:.3} ms)",
            synapse.cpu_ms_per_message / ganglion.cpu_ms_per_message,
            ganglion.cpu_ms_per_message,
            synapse.cpu_ms_per_message
        );
        return Ok(());
    }
    run(&mode, clients, per_client, rooms).await?;
    Ok(())
}

/// Every sender sends `per_client` messages into every room, one after
/// another per (sender, room) and all pairs at once. Returns when each
/// accepted message was sent, and how long sending took.
async fn drive(
    senders: &[Client],
    room_ids: &[String],
    per_client: usize,
) -> anyhow::Result<(HashMap<String, Instant>, Duration)> {
    let load_started = Instant::now();
    let mut tasks = Vec::new();
    for (r, room) in room_ids.iter().enumerate() {
        for (i, client) in senders.iter().enumerate() {
            let room = room.clone();
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut sent = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let text = format!("m{r}-{i}-{n}");
                    let at = Instant::now();
                    let reply = client.send_text(&room, &format!("t{r}-{n}"), &text).await;
                    if reply.status == 200 {
                        sent.push((text, at));
                    }
                }
                sent
            }));
        }
    }
    let mut sent_at = HashMap::new();
    for task in tasks {
        for (text, at) in task.await? {
            sent_at.insert(text, at);
        }
    }
    Ok((sent_at, load_started.elapsed()))
}

/// What the load generator itself can drive: the same senders against a
/// server that answers every send at once, in this process, on a runtime
/// of its own (it shares the machine's cores with the senders, as a real
/// server under test does).
async fn capacity(clients: usize, per_client: usize, rooms: usize) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}",
                axum::routing::put(|| async { axum::Json(json!({"event_id": "$answered"})) }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serves");
        });
    });
    let senders: Vec<Client> = (0..clients)
        .map(|i| Client {
            base_url: format!("http://{address}"),
            http: reqwest::Client::new(),
            user_id: format!("@sender{i}:capacity"),
            access_token: format!("token{i}"),
            device_id: format!("DEVICE{i}"),
        })
        .collect();
    let room_ids: Vec<String> = (0..rooms).map(|r| format!("!room{r}:capacity")).collect();
    let cpu_before = cpu_seconds(std::process::id()).unwrap_or_default();
    let (sent, elapsed) = drive(&senders, &room_ids, per_client).await?;
    let cpu = cpu_seconds(std::process::id()).unwrap_or_default() - cpu_before;
    println!(
        "capacity: {clients} clients x {per_client} messages into each of {rooms} rooms, against a server that answers at once"
    );
    println!(
        "  sends answered             {:>8.0} /s ({} in {:.2} s; {:.1} CPU-s, load generator and null server together)",
        sent.len() as f64 / elapsed.as_secs_f64(),
        sent.len(),
        elapsed.as_secs_f64(),
        cpu
    );
    drop(server);
    Ok(())
}

/// Room creation: each client creates `per_client` rooms one after another
/// (a private chat, as a direct message starts) and sends three messages
/// into each.
async fn create_rooms(target: &str, clients: usize, per_client: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = match target {
        "monolith" => Deployment::Monolith(Monolith::start(dir.path()).await),
        "synapse" => Deployment::Synapse(Synapse::start(&dir.path().join("synapse")).await),
        other => anyhow::bail!("unknown target {other}: monolith or synapse"),
    };
    let mut creators = Vec::with_capacity(clients);
    for i in 0..clients {
        creators.push(server.register(&format!("creator{i}")).await);
    }
    let cpu_before = server.cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for creator in creators {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for n in 0..per_client {
                let at = Instant::now();
                let room_id = creator
                    .create_room(json!({"preset": "private_chat", "name": format!("room {n}")}))
                    .await;
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                for m in 0..3 {
                    let reply = creator
                        .send_text(&room_id, &format!("c{n}-{m}"), &format!("message {m}"))
                        .await;
                    assert_eq!(reply.status, 200, "send: {reply:?}");
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_seconds = server.cpu_seconds() - cpu_before;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| percentile(&latencies, p);
    let rooms = latencies.len();
    println!("{target}: {clients} clients x {per_client} rooms, three messages each");
    println!(
        "  rooms created              {:>8.1} rooms/s ({rooms} in {elapsed:.2} s)",
        rooms as f64 / elapsed
    );
    println!("  createRoom latency p50     {:>8.2} ms", pct(0.50));
    println!("  createRoom latency p99     {:>8.2} ms", pct(0.99));
    println!(
        "  CPU per room (and its 3 messages) {:>8.2} ms",
        cpu_seconds * 1000.0 / rooms.max(1) as f64
    );
    Ok(())
}

/// The `p` quantile (0 to 1) of sorted samples; NaN without any.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// What one run measured.
struct Figures {
    throughput: f64,
    p50_ms: f64,
    cpu_ms_per_message: f64,
}

async fn run(
    mode: &str,
    clients: usize,
    per_client: usize,
    rooms: usize,
) -> anyhow::Result<Figures> {
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
    let idle_anonymous = server.anonymous_rss_kib();

    let owner = server.register("owner").await;
    let mut room_ids = Vec::with_capacity(rooms);
    for _ in 0..rooms {
        room_ids.push(owner.create_room(json!({"preset": "public_chat"})).await);
    }
    let mut senders = Vec::new();
    for i in 0..clients {
        let client = server.register(&format!("sender{i}")).await;
        for room_id in &room_ids {
            anyhow::ensure!(client.join(room_id).await.status == 200, "join failed");
        }
        senders.push(client);
    }
    let registered_rss = server.rss_kib();
    let listener = owner.clone();
    let mut since = listener.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let total = clients * per_client * rooms;
    let watcher = tokio::spawn(async move {
        let mut seen: HashMap<String, Instant> = HashMap::new();
        while seen.len() < total {
            let body = listener.sync(Some(&since), 30_000, 1000).await;
            let now = Instant::now();
            for room in body["rooms"]["join"].as_object().into_iter().flatten() {
                for event in room.1["timeline"]["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(text) = event["content"]["body"].as_str() {
                        seen.entry(text.to_owned()).or_insert(now);
                    }
                }
            }
            since = body["next_batch"].as_str().unwrap_or_default().to_owned();
        }
        seen
    });

    let cpu_before = server.cpu_seconds();
    let parts_before = server.cpu_by_part();
    let (sent_at, send_elapsed) = drive(&senders, &room_ids, per_client).await?;
    let seen = tokio::time::timeout(Duration::from_secs(120), watcher).await??;
    // Everything the server did for the messages: accepting, storing and
    // delivering them to the listener.
    let cpu_seconds = server.cpu_seconds() - cpu_before;
    let parts_after = server.cpu_by_part();
    let busy_rss = server.rss_kib();
    let mut latencies: Vec<f64> = sent_at
        .iter()
        .filter_map(|(text, at)| {
            seen.get(text)
                .map(|s| s.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| percentile(&latencies, p);
    let cpu_ms_per_message = cpu_seconds * 1000.0 / sent_at.len().max(1) as f64;
    if rooms == 1 {
        println!("{mode}: {clients} clients x {per_client} messages into one room");
    } else {
        println!("{mode}: {clients} clients x {per_client} messages into each of {rooms} rooms");
    }
    println!(
        "  start-up to healthy        {:>8.1} ms",
        startup.as_secs_f64() * 1000.0
    );
    println!(
        "  idle RSS                   {:>8.1} MB (anonymous {:.1} MB)",
        idle_rss as f64 / 1024.0,
        idle_anonymous as f64 / 1024.0
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
    println!(
        "  CPU per accepted message   {:>8.3} ms ({:.2} s for the load, all processes)",
        cpu_ms_per_message, cpu_seconds
    );
    // Where the polylith's CPU went, the broker and PostgreSQL included.
    for (name, after) in &parts_after {
        let before = parts_before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, b)| *b);
        println!(
            "    CPU per message, {name:<17} {:>7.3} ms",
            (after - before) * 1000.0 / sent_at.len().max(1) as f64
        );
    }
    // The server's own view: mean time per stage, from /metrics.
    let mut metrics = String::new();
    for url in server.metrics_urls() {
        metrics.push_str(&reqwest::get(url).await?.text().await?);
    }
    if metrics.is_empty() {
        return Ok(Figures {
            throughput: sent_at.len() as f64 / send_elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            cpu_ms_per_message,
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
        cpu_ms_per_message,
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

    fn pids(&self) -> Vec<u32> {
        match self {
            Deployment::Monolith(m) => m.process.pid().into_iter().collect(),
            Deployment::Polylith(p) => p.processes.iter().filter_map(|p| p.pid()).collect(),
            Deployment::Synapse(s) => s.pid().into_iter().collect(),
        }
    }

    /// Resident memory of every process of the deployment, in KiB.
    fn rss_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(rss_kib).sum()
    }

    /// The anonymous part of that memory (heap and stacks), in KiB.
    fn anonymous_rss_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(anonymous_rss_kib).sum()
    }

    /// CPU time (user and system, every thread) the deployment's processes
    /// have used so far.
    fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().filter_map(cpu_seconds).sum()
    }

    /// For the polylith, CPU seconds used so far by each of its processes,
    /// by the test broker and by PostgreSQL's processes (all of them: the
    /// figures are read before and after a load); nothing otherwise.
    fn cpu_by_part(&self) -> Vec<(String, f64)> {
        let Deployment::Polylith(p) = self else {
            return Vec::new();
        };
        let mut parts: Vec<(String, f64)> = Vec::new();
        for process in &p.processes {
            let cpu = process.pid().and_then(cpu_seconds).unwrap_or_default();
            match parts.iter_mut().find(|(name, _)| *name == process.name) {
                Some((_, sum)) => *sum += cpu,
                None => parts.push((process.name.clone(), cpu)),
            }
        }
        parts.push((
            "tansu".into(),
            cpu_seconds(p.broker_pid()).unwrap_or_default(),
        ));
        let postgres: f64 = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "postgres")
            })
            .filter_map(cpu_seconds)
            .sum();
        parts.push(("postgresql".into(), postgres));
        parts
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
