//! Scale-out benchmarks of the polylith. Prints:
//! - `scalebench catchup [records] [rooms]` (defaults 1 000 000 and 100):
//!   a log of `records` room events (real rooms and members made through
//!   the API, then messages appended to `roomserver.output` directly, as
//!   the roomserver would), then a new syncapi replica on an empty
//!   database: records/s while it catches up, and the time until it is
//!   ready (serves users), after the rate at which a bare reader reads the
//!   same records from the broker. With `embedded` last: the monolith's log
//!   instead, and `ganglion rebuild syncapi` into a new SQLite database
//!   timed (the monolith stopped, as a rebuild on the embedded log needs).
//! - `scalebench gateway [seconds]` (default 10): the latency the gateway
//!   adds (p50/p99 of one `GET /account/whoami` at a time, through the
//!   gateway minus straight to a clientapi), and requests/s through the
//!   gateway with one and then two clientapi replicas (64 clients asking
//!   at once).
//! - `scalebench roomserver [seconds] [rooms]` (defaults 20 and 100): one
//!   sender per room sending as fast as it is answered; events/s with one
//!   roomserver replica, then with two (and how many input records each
//!   replica handled), and the sends' latency (p99) and longest pause while
//!   the second replica is added and when it is killed (`kill -9`).
//!
//! `TEST_GANGLION_BIN` may point at a release build of `ganglion`; the
//! polylith needs tansu and PostgreSQL, as the test command provides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ganglion_integration_tests::client::Client;
use ganglion_integration_tests::process::{Listeners, POLYLITH_SERVICES, Polylith};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("catchup") => {
            let records = args
                .get(2)
                .and_then(|a| a.parse().ok())
                .unwrap_or(1_000_000);
            let rooms = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
            match args.get(4).map(String::as_str) {
                None | Some("kafka") => catchup(records, rooms).await,
                Some("embedded") => catchup_embedded(records, rooms).await,
                Some(other) => anyhow::bail!("catchup on {other}: kafka or embedded"),
            }
        }
        Some("gateway") => {
            let seconds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
            gateway(Duration::from_secs(seconds)).await
        }
        Some("roomserver") => {
            let seconds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
            let rooms = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
            roomserver(Duration::from_secs(seconds), rooms).await
        }
        _ => anyhow::bail!(
            "scalebench catchup [records] [rooms] [kafka|embedded] | gateway [seconds] | roomserver [seconds] [rooms]"
        ),
    }
}

async fn database_urls(name: &str) -> Vec<(&'static str, String)> {
    let mut urls = Vec::new();
    for service in POLYLITH_SERVICES {
        urls.push((
            service,
            ganglion_base::testing::scratch_postgres(&format!("scalebench_{name}_{service}")).await,
        ));
    }
    urls
}

fn setting<'a>(server: &'a Polylith, name: &str) -> Option<&'a str> {
    server
        .env()
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Two users and the rooms they share, made through the API.
struct Rooms {
    alice: Client,
    bob: Client,
    room_ids: Vec<String>,
}

async fn make_rooms(base_url: &str, count: usize) -> anyhow::Result<Rooms> {
    let alice = Client::register(base_url, "alice", "pw-alice-bench").await;
    let bob = Client::register(base_url, "bob", "pw-bob-bench").await;
    let mut room_ids = Vec::with_capacity(count);
    for _ in 0..count {
        let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
        anyhow::ensure!(bob.join(&room_id).await.status == 200, "join");
        room_ids.push(room_id);
    }
    Ok(Rooms {
        alice,
        bob,
        room_ids,
    })
}

/// Appends messages of the two users to `topic` (`in_flight` at a time)
/// until it holds `records`; prints what it did and returns the count.
async fn append_messages(
    log: &dyn ganglion_log::Log,
    topic: &str,
    rooms: &Rooms,
    records: usize,
    in_flight: usize,
) -> anyhow::Result<u64> {
    let before: u64 = log.end_offsets(topic).await?.iter().sum();
    let generating = Instant::now();
    let appended = futures::stream::iter(0..records.saturating_sub(before as usize))
        .map(|n| {
            let room_id = rooms.room_ids[n % rooms.room_ids.len()].as_str();
            let sender = if n % 2 == 0 { &rooms.alice } else { &rooms.bob };
            let record = message_record(room_id, &sender.user_id, n);
            async move { log.produce(topic, record).await }
        })
        .buffered(in_flight)
        .filter(|produced| std::future::ready(produced.is_ok()))
        .count()
        .await;
    let total = before + appended as u64;
    println!(
        "log: {total} records in {topic} ({before} from the API, {appended} appended at {:.0}/s) over {} rooms",
        appended as f64 / generating.elapsed().as_secs_f64(),
        rooms.room_ids.len()
    );
    Ok(total)
}

/// The records of `topic` the process at `operator` has consumed (its
/// `ganglion_consumer_records_total`; 0 while it does not answer).
async fn consumed_records(http: &reqwest::Client, operator: &str, topic: &str) -> f64 {
    metric_sum(http, operator, "ganglion_consumer_records_total", topic).await
}

/// The sum of `metric`'s samples for `topic` at the process at `operator`.
async fn metric_sum(http: &reqwest::Client, operator: &str, metric: &str, topic: &str) -> f64 {
    let Ok(answer) = http.get(format!("http://{operator}/metrics")).send().await else {
        return 0.0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with(metric) && line.contains(&format!("topic=\"{topic}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the process at `operator` has consumed `total` records of
/// `topic`.
async fn consumed_all(http: &reqwest::Client, operator: &str, topic: &str, total: u64) {
    while consumed_records(http, operator, topic).await < total as f64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the whole topic with a bare reader (nothing applied) and prints
/// the rate: what the broker alone allows a catching-up view.
async fn read_alone(log: &dyn ganglion_log::Log, topic: &str, total: u64) -> anyhow::Result<()> {
    let partitions = log.end_offsets(topic).await?.len();
    let mut reader = log.reader(&[(topic, vec![0; partitions])]).await?;
    let started = Instant::now();
    let mut read = 0_u64;
    while read < total {
        tokio::time::timeout(Duration::from_secs(30), reader.next()).await??;
        read += 1;
        while reader.try_next().await?.is_some() {
            read += 1;
        }
    }
    println!(
        "the log alone: a bare reader read {read} records in {:.1} s ({:.0} records/s)",
        started.elapsed().as_secs_f64(),
        read as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn catchup(records: usize, rooms: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Polylith::start(dir.path(), &database_urls("catchup").await).await;
    let rooms = make_rooms(&server.base_url, rooms).await?;
    let brokers = setting(&server, "GANGLION_LOG__KAFKA_BROKERS")
        .ok_or_else(|| anyhow::anyhow!("no brokers"))?
        .to_owned();
    let prefix = setting(&server, "GANGLION_LOG__TOPIC_PREFIX").unwrap_or_default();
    let topic = ganglion_api::topics::Topics::new(prefix).roomserver_output;
    let log = ganglion_log::KafkaLog::new(ganglion_log::KafkaConfig::new(brokers))?;
    // The live consumers of the topic stop first, so the new replica's rate
    // is its own, not a share of the machine's two cores.
    let http = reqwest::Client::new();
    let sender = server.listeners("federationsender").operator;
    let sender_had = consumed_records(&http, &sender, &topic).await;
    for service in ["syncapi", "federationsender"] {
        server.stop_gracefully(service).await;
    }
    let total = append_messages(&log, &topic, &rooms, records, 2_000).await?;
    read_alone(&log, &topic, total).await?;

    let fresh = ganglion_base::testing::scratch_postgres("scalebench_catchup_syncapi2").await;
    let started = Instant::now();
    let name = server
        .add_replica_with(
            "syncapi",
            vec![("GANGLION_SERVICES__SYNCAPI__DATABASE_URL".to_owned(), fresh)],
        )
        .await;
    let healthy = started.elapsed();
    let ready = format!("http://{}/readyz", server.replica_listeners(&name).operator);
    loop {
        if http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|answer| answer.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let serving = started.elapsed();
    // Readiness counts from the log's end offsets, which tansu reports low
    // after large batches: the records the replica consumed decide.
    consumed_all(
        &http,
        &server.replica_listeners(&name).operator,
        &topic,
        total,
    )
    .await;
    let consumed = started.elapsed();
    let operator = server.replica_listeners(&name).operator;
    let batches = metric_sum(&http, &operator, "ganglion_consumer_batches_total", &topic).await;
    println!("new syncapi replica on an empty database:");
    println!(
        "  up (healthy)               {:>8.1} s",
        healthy.as_secs_f64()
    );
    println!(
        "  ready (serves users)       {:>8.1} s",
        serving.as_secs_f64()
    );
    println!(
        "  every record consumed      {:>8.1} s",
        consumed.as_secs_f64()
    );
    println!(
        "  catch-up rate              {:>8.0} records/s",
        total as f64 / consumed.as_secs_f64()
    );
    println!(
        "  mean batch                 {:>8.0} records ({batches} batches)",
        total as f64 / batches.max(1.0)
    );
    // The federationsender comes back to the records appended while it was
    // away (its joined hosts and queues, from its group's offsets).
    let behind = total - sender_had as u64;
    let started = Instant::now();
    server.start_again("federationsender").await;
    consumed_all(&http, &sender, &topic, behind).await;
    let took = started.elapsed();
    let batches = metric_sum(&http, &sender, "ganglion_consumer_batches_total", &topic).await;
    println!(
        "the federationsender, back after {behind} records: {:.1} s, {:.0} records/s, mean batch {:.0} records",
        took.as_secs_f64(),
        behind as f64 / took.as_secs_f64(),
        behind as f64 / batches.max(1.0)
    );
    Ok(())
}

async fn catchup_embedded(records: usize, rooms: usize) -> anyhow::Result<()> {
    use ganglion_integration_tests::process::Monolith;
    let dir = tempfile::tempdir()?;
    let mut server = Monolith::start(dir.path()).await;
    let rooms = make_rooms(&server.base_url, rooms).await?;
    // The log is the monolith's alone while it runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill9();
    let env = server.env.clone();
    let topic = ganglion_api::topics::Topics::new("").roomserver_output;
    {
        let log = ganglion_log::EmbeddedLog::open(dir.path().join("data").join("log"))?;
        append_messages(&log, &topic, &rooms, records, 256).await?;
    }
    // A fresh SQLite file, or the PostgreSQL database `SCALEBENCH_INTO` names.
    let into = std::env::var("SCALEBENCH_INTO")
        .unwrap_or_else(|_| format!("sqlite:{}", dir.path().join("rebuilt.db").display()));
    let started = Instant::now();
    let binary = std::fs::canonicalize(ganglion_integration_tests::process::ganglion_binary())?;
    let rebuild = tokio::process::Command::new(binary)
        .args(["rebuild", "syncapi", "--into", &into])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir.path())
        .output()
        .await?;
    let said = String::from_utf8_lossy(&rebuild.stderr).to_string();
    anyhow::ensure!(rebuild.status.success(), "rebuild failed: {said}");
    println!(
        "ganglion rebuild syncapi on the embedded log, into SQLite: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    println!("  {}", said.lines().last().unwrap_or_default());
    Ok(())
}

/// A message as the roomserver announces it (the views do not check
/// hashes or signatures: the roomserver did).
fn message_record(room_id: &str, sender: &str, n: usize) -> ganglion_log::OutgoingRecord {
    use ganglion_api::proto::topics as topic_pb;
    let event_id = format!("$bench{n}");
    let pdu = json!({
        "room_id": room_id,
        "sender": sender,
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": format!("message {n}")},
        "origin_server_ts": 1_800_000_000_000u64 + n as u64,
        "depth": 100 + n,
        "prev_events": [format!("$bench{}", n.saturating_sub(1))],
        "auth_events": [],
        "hashes": {"sha256": "x"},
        "signatures": {},
    });
    let output = topic_pb::RoomserverOutput {
        version: 1,
        kind: Some(topic_pb::roomserver_output::Kind::NewRoomEvent(
            topic_pb::NewRoomEvent {
                event_json: pdu.to_string().into_bytes(),
                room_version: "10".into(),
                depth: 100 + n as i64,
                event_id: event_id.clone(),
                forward_extremities: vec![event_id],
                ..Default::default()
            },
        )),
    };
    ganglion_log::OutgoingRecord {
        key: room_id.as_bytes().to_vec(),
        headers: Vec::new(),
        payload: ganglion_api::topics::encode(&output),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn gateway(seconds: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = Listeners::fresh();
    let second = Listeners::fresh();
    let mut env = first.env("clientapi");
    env.push((
        "GANGLION_SERVICES__CLIENTAPI__REPLICAS".to_owned(),
        format!(
            "[{}, {}]",
            first.replica_entry("clientapi-1"),
            second.replica_entry("clientapi-2")
        ),
    ));
    let mut server = Polylith::start_with(dir.path(), &database_urls("gateway").await, env).await;
    let user = Client::register(&server.base_url, "walker", "pw-walker-bench").await;
    let path = "/_matrix/client/v3/account/whoami";
    let direct = format!("http://{}{path}", first.http);
    let through = format!("{}{path}", server.base_url);
    let http = reqwest::Client::new();
    let token = user.access_token.clone();
    let one = move |url: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let started = Instant::now();
            let answer = http.get(&url).bearer_auth(&token).send().await;
            let ok = match answer {
                Ok(answer) => answer.status().is_success() && answer.bytes().await.is_ok(),
                Err(_) => false,
            };
            (ok, started.elapsed())
        }
    };
    // Warm both paths (connections, the gateway's token cache).
    for _ in 0..200 {
        one(direct.clone()).await;
        one(through.clone()).await;
    }
    let (mut straight, mut gatewayed) = (Vec::new(), Vec::new());
    for _ in 0..2_000 {
        let (ok, took) = one(direct.clone()).await;
        anyhow::ensure!(ok, "straight to the clientapi");
        straight.push(took);
        let (ok, took) = one(through.clone()).await;
        anyhow::ensure!(ok, "through the gateway");
        gatewayed.push(took);
    }
    straight.sort();
    gatewayed.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("GET {path}, one at a time (n=2000):");
    println!(
        "  straight to a clientapi    p50 {:>6.3} ms  p99 {:>6.3} ms",
        ms(percentile(&straight, 0.5)),
        ms(percentile(&straight, 0.99))
    );
    println!(
        "  through the gateway        p50 {:>6.3} ms  p99 {:>6.3} ms",
        ms(percentile(&gatewayed, 0.5)),
        ms(percentile(&gatewayed, 0.99))
    );
    println!(
        "  the gateway adds           p50 {:>6.3} ms",
        ms(percentile(&gatewayed, 0.5)) - ms(percentile(&straight, 0.5))
    );

    let rate = async |label: &str| -> anyhow::Result<()> {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..64 {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            let ask = one.clone();
            let url = through.clone();
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (ok, _) = ask(url.clone()).await;
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let started = Instant::now();
        tokio::time::sleep(seconds).await;
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await?;
        }
        println!(
            "  {label:<26} {:>8.0} requests/s ({} failed)",
            done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
            failed.load(Ordering::Relaxed)
        );
        Ok(())
    };
    println!("GET {path} through the gateway, 64 clients at once:");
    rate("one clientapi replica").await?;
    server.add_replica_at("clientapi", second, Vec::new()).await;
    server.wait_ready(Duration::from_secs(60)).await;
    // The gateway's probes see the new replica within half a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rate("two clientapi replicas").await?;
    Ok(())
}

/// Sends answered, as (when it was sent, how long it took to answer).
type Acks = Arc<std::sync::Mutex<Vec<(Instant, Duration)>>>;

async fn roomserver(window: Duration, rooms: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = Listeners::fresh();
    let second = Listeners::fresh();
    let mut env = first.env("roomserver");
    env.push((
        "GANGLION_SERVICES__ROOMSERVER__REPLICAS".to_owned(),
        format!(
            "[{}, {}]",
            first.replica_entry("roomserver-1"),
            second.replica_entry("roomserver-2")
        ),
    ));
    let mut server =
        Polylith::start_with(dir.path(), &database_urls("roomserver").await, env).await;
    let mut senders = Vec::with_capacity(rooms);
    for i in 0..rooms {
        let client = Client::register(&server.base_url, &format!("s{i}"), "pw-sender-bench").await;
        let room_id = client.create_room(json!({"preset": "private_chat"})).await;
        senders.push((client, room_id));
    }
    let acks: Acks = Arc::default();
    let failed: Arc<std::sync::Mutex<Vec<(Instant, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, (client, room_id)) in senders.into_iter().enumerate() {
        let (acks, failed, stop) = (acks.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // As a client does: the same transaction again until it is
                // answered 200; its latency runs from the first try.
                let sent = Instant::now();
                loop {
                    let reply = client
                        .send_text(&room_id, &format!("t{i}-{n}"), &format!("m{n}"))
                        .await;
                    if reply.status == 200 {
                        acks.lock().expect("acks").push((sent, sent.elapsed()));
                        break;
                    }
                    failed.lock().expect("failed").push((
                        Instant::now(),
                        format!(
                            "{} {} {}",
                            reply.status, reply.body["errcode"], reply.body["error"]
                        ),
                    ));
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                n += 1;
            }
        }));
    }
    let rate = |from: Instant, to: Instant| {
        let acks = acks.lock().expect("acks");
        let count = acks
            .iter()
            .filter(|(sent, took)| *sent + *took >= from && *sent + *took < to)
            .count();
        count as f64 / (to - from).as_secs_f64()
    };
    let http = reqwest::Client::new();
    let input_records = async |operator: &str| -> f64 {
        consumed_records(&http, operator, "roomserver.input").await
    };

    // Warm up, then one replica.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let one_from = Instant::now();
    tokio::time::sleep(window).await;
    let one = rate(one_from, Instant::now());

    let added = Instant::now();
    let name = server
        .add_replica_at("roomserver", second.clone(), Vec::new())
        .await;
    server.wait_ready(Duration::from_secs(60)).await;
    let after_add = added.elapsed();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let two_from = Instant::now();
    let before = (
        input_records(&first.operator).await,
        input_records(&second.operator).await,
    );
    tokio::time::sleep(window).await;
    let after = (
        input_records(&first.operator).await,
        input_records(&second.operator).await,
    );
    let two = rate(two_from, Instant::now());

    let killed = Instant::now();
    server.kill9(&name);
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }

    let around = |from: Instant, span: Duration| {
        let acks = acks.lock().expect("acks");
        let mut latencies: Vec<Duration> = acks
            .iter()
            .filter(|(sent, _)| *sent >= from && *sent < from + span)
            .map(|(_, took)| *took)
            .collect();
        latencies.sort();
        let mut answered: Vec<Instant> = acks
            .iter()
            .map(|(sent, took)| *sent + *took)
            .filter(|at| *at >= from && *at < from + span)
            .collect();
        answered.push(from);
        answered.push(from + span);
        answered.sort();
        let gap = answered
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        (
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            gap,
        )
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{rooms} rooms, one sender each, sending as fast as answered:");
    println!("  one roomserver replica     {one:>8.0} events/s");
    println!("  two roomserver replicas    {two:>8.0} events/s");
    let (first_share, second_share) = (after.0 - before.0, after.1 - before.1);
    let all = (first_share + second_share).max(1.0);
    println!(
        "  input records handled      replica 1 {:.0}%, replica 2 {:.0}% ({} records in the window)",
        first_share / all * 100.0,
        second_share / all * 100.0,
        all
    );
    let (p50, p99, gap) = around(added, after_add + Duration::from_secs(8));
    println!(
        "  while adding replica 2     send p50 {:>6.1} ms, p99 {:>7.1} ms, longest pause {:>6.0} ms",
        ms(p50),
        ms(p99),
        ms(gap)
    );
    let (p50, p99, gap) = around(killed, Duration::from_secs(20));
    println!(
        "  kill -9 of replica 2       send p50 {:>6.1} ms, p99 {:>7.1} ms, longest pause {:>6.0} ms",
        ms(p50),
        ms(p99),
        ms(gap)
    );
    let mut errors = std::collections::BTreeMap::<(&str, String), usize>::new();
    for (at, error) in failed.lock().expect("failed").iter() {
        let phase = if *at < added {
            "one replica"
        } else if *at < two_from {
            "adding replica 2"
        } else if *at < killed {
            "two replicas"
        } else {
            "after kill -9"
        };
        *errors.entry((phase, error.clone())).or_default() += 1;
    }
    println!("  tries answered with an error, then retried as a client does:");
    for ((phase, error), count) in &errors {
        println!("    {phase}: {count} x {error}");
    }
    Ok(())
}
