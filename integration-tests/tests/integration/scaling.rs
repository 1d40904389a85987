//! The polylith scaled out and operated: several replicas of each service,
//! users handed between syncapi replicas, processes replaced one at a time
//! under load (rolling restarts), and faults.

use ganglion_integration_tests::client::{Client, message_bodies};
use ganglion_integration_tests::process::{Listeners, POLYLITH_SERVICES, Polylith};
use serde_json::{Value, json};

use crate::polylith::{database_urls, database_urls_on, metric_sum, metric_total};

/// The tests here run a score of processes each: one at a time, so that
/// two of them do not share the machine's cores (they still run beside the
/// other tests).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Which syncapi replica served one request: the one whose served-request
/// count moved while `request` ran (requests here run one at a time).
async fn served_by<F: std::future::Future<Output = T>, T>(
    operators: &[String],
    request: F,
) -> (Option<usize>, T) {
    // A replica that is gone serves nothing: `None`.
    async fn served(operator: &str) -> Option<u64> {
        metric_sum(operator, |line| {
            line.starts_with("ganglion_http_requests_total{")
                && line.contains("service=\"syncapi\"")
        })
        .await
    }
    let mut before = Vec::new();
    for operator in operators {
        before.push(served(operator).await.unwrap_or(0));
    }
    let answer = request.await;
    let mut moved = None;
    for (i, operator) in operators.iter().enumerate() {
        let now = served(operator).await.unwrap_or(before[i]);
        if now > before[i] {
            assert!(moved.is_none(), "two replicas served one request");
            moved = Some(i);
        }
    }
    (moved, answer)
}

/// Waits until the gateway sees `count` replicas of `service` ready.
pub(crate) async fn until_ready_replicas(server: &Polylith, service: &str, count: u64) {
    let operator = server.gateway_operator_url();
    let operator = operator.trim_start_matches("http://");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ready = metric_total(
            operator,
            &format!("ganglion_replicas_ready{{service=\"{service}\"}}"),
        )
        .await;
        if ready == count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway sees {ready} {service} replicas ready, not {count}\n{}",
            server.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Two syncapi replicas, each with its own database, share the users: the
/// gateway sends each user to the replica rendezvous hashing names (the
/// same in every process), and always the same one. When a replica is
/// killed, its users move to the other and their next `/sync` with the old
/// token is answered in full, while the other replica's users stay put; a
/// sliding-sync connection that moved answers `M_UNKNOWN_POS` and starts
/// again cleanly. When the replica comes back and has caught up, exactly
/// its users move back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_syncapi_replicas_share_users_and_hand_them_over() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["syncapi-1", "syncapi-2"];
    let listeners = [Listeners::fresh(), Listeners::fresh()];
    let mut env = listeners[0].env("syncapi");
    env.push((
        "GANGLION_SERVICES__SYNCAPI__REPLICAS".to_owned(),
        format!(
            "[{}, {}]",
            listeners[0].replica_entry(names[0]),
            listeners[1].replica_entry(names[1])
        ),
    ));
    let mut server = Polylith::start_with(dir.path(), &database_urls("replicas").await, env).await;
    let second_db = ganglion_base::testing::scratch_postgres("poly_replicas_syncapi2").await;
    let second_env = vec![(
        "GANGLION_SERVICES__SYNCAPI__DATABASE_URL".to_owned(),
        second_db,
    )];
    let second = server
        .add_replica_at("syncapi", listeners[1].clone(), second_env.clone())
        .await;
    until_ready_replicas(&server, "syncapi", 2).await;
    let operators: Vec<String> = listeners.iter().map(|l| l.operator.clone()).collect();

    // Users until each replica has three, placed as every process places them.
    let owner = |user_id: &str| {
        let weights: Vec<u64> = names
            .iter()
            .map(|n| ganglion_api::replicas::rendezvous(n, user_id))
            .collect();
        usize::from(weights[1] > weights[0])
    };
    let mut users: Vec<(Client, usize)> = Vec::new();
    let mut counts = [0, 0];
    for i in 0.. {
        if counts.iter().all(|c| *c >= 3) {
            break;
        }
        let client = Client::register(&server.base_url, &format!("rep{i}"), "pw-rep-123").await;
        let home = owner(&client.user_id);
        if counts[home] < 3 {
            counts[home] += 1;
            users.push((client, home));
        }
    }
    let room_id = users[0]
        .0
        .create_room(serde_json::json!({"preset": "public_chat"}))
        .await;
    let mut since = Vec::new();
    for (client, home) in &users {
        if client.user_id != users[0].0.user_id {
            assert_eq!(client.join(&room_id).await.status, 200);
        }
        for _ in 0..2 {
            let (served, body) = served_by(&operators, client.sync(None, 0, 5)).await;
            assert_eq!(served, Some(*home), "{} on its replica", client.user_id);
            assert!(body["rooms"]["join"][&room_id].is_object(), "{body}");
            if since.len() < users.len() {
                since.push(body["next_batch"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    // A sliding-sync connection of a user of the second replica.
    let (moved_user, _) = users
        .iter()
        .find(|(_, home)| *home == 1)
        .expect("a user of #2");
    let sliding_path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let list = serde_json::json!({"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}}});
    let first = moved_user
        .call(reqwest::Method::POST, sliding_path, Some(list.clone()))
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    let pos = first.body["pos"].as_str().expect("pos").to_owned();

    // The second replica dies.
    server.kill9(&second);
    let sender = users
        .iter()
        .find(|(_, home)| *home == 0)
        .expect("a user of #1");
    assert_eq!(
        sender
            .0
            .send_text(&room_id, "gone", "while #2 is gone")
            .await
            .status,
        200
    );
    for ((client, home), since) in users.iter().zip(&since) {
        let (served, body) = served_by(&operators, client.sync(Some(since), 10_000, 5)).await;
        assert_eq!(
            served,
            Some(0),
            "{} is served by the replica left",
            client.user_id
        );
        let timeline = &body["rooms"]["join"][&room_id]["timeline"]["events"];
        assert!(
            message_bodies(timeline).contains(&"while #2 is gone".to_owned()),
            "{} (home {home}) misses the message: {body}",
            client.user_id
        );
    }
    // Read-your-writes for a moved user: its own message is in its next sync.
    let before_send = moved_user.sync(None, 0, 1).await;
    assert_eq!(
        moved_user
            .send_text(&room_id, "mine", "sent by a moved user")
            .await
            .status,
        200
    );
    let body = moved_user
        .sync(before_send["next_batch"].as_str(), 0, 5)
        .await;
    assert_eq!(
        message_bodies(&body["rooms"]["join"][&room_id]["timeline"]["events"]),
        vec!["sent by a moved user"],
        "{body}"
    );
    // The moved sliding-sync connection starts again.
    let again = moved_user
        .call(
            reqwest::Method::POST,
            &format!(
                "{sliding_path}?pos={}",
                ganglion_integration_tests::client::encode(&pos)
            ),
            Some(list.clone()),
        )
        .await;
    assert_eq!(
        (again.status, again.errcode()),
        (400, "M_UNKNOWN_POS"),
        "{again:?}"
    );
    let fresh = moved_user
        .call(reqwest::Method::POST, sliding_path, Some(list.clone()))
        .await;
    assert_eq!(fresh.status, 200, "{fresh:?}");
    assert!(fresh.body["rooms"][&room_id].is_object(), "{fresh:?}");

    // It comes back on its database, catches up, and takes its users back.
    server
        .add_replica_at("syncapi", listeners[1].clone(), second_env)
        .await;
    until_ready_replicas(&server, "syncapi", 2).await;
    for (client, home) in &users {
        let (served, _) = served_by(&operators, client.sync(None, 0, 1)).await;
        assert_eq!(served, Some(*home), "{} is home again", client.user_id);
    }
}

/// A polylith with two replicas of every service, the second syncapi on a
/// database of its own, and two gateways (as behind a load balancer).
/// Every caller reaches both replicas of what it calls. Also the
/// roomserver's database, to check rooms in it.
async fn scaled(dir: &std::path::Path, name: &str) -> (Polylith, Vec<String>, String) {
    scaled_on(
        dir,
        name,
        &ganglion_base::testing::postgres_server(),
        ganglion_log::testing::Tansu::start().await,
    )
    .await
}

/// As [`scaled`], every database on PostgreSQL server `postgres`, the log
/// on `broker`.
async fn scaled_on(
    dir: &std::path::Path,
    name: &str,
    postgres: &str,
    broker: ganglion_log::testing::Tansu,
) -> (Polylith, Vec<String>, String) {
    let first: Vec<Listeners> = POLYLITH_SERVICES
        .iter()
        .map(|_| Listeners::fresh())
        .collect();
    let second: Vec<Listeners> = POLYLITH_SERVICES
        .iter()
        .map(|_| Listeners::fresh())
        .collect();
    let mut env = Vec::new();
    if broker.is_durable() {
        // A durable tansu reads every fetch from S3 (moto): at the usual
        // 2 ms wait, the consumers' polling alone keeps both cores busy
        // and readiness probes time out.
        env.push((
            "GANGLION_LOG__KAFKA_FETCH_WAIT_MAX_MS".to_owned(),
            "50".to_owned(),
        ));
    }
    for (i, service) in POLYLITH_SERVICES.iter().enumerate() {
        env.extend(first[i].env(service));
        env.push((
            format!("GANGLION_SERVICES__{}__REPLICAS", service.to_uppercase()),
            format!(
                "[{}, {}]",
                first[i].replica_entry(&format!("{service}-1")),
                second[i].replica_entry(&format!("{service}-2"))
            ),
        ));
    }
    let urls = database_urls_on(postgres, name).await;
    let roomserver_db = urls
        .iter()
        .find(|(service, _)| *service == "roomserver")
        .map(|(_, url)| url.clone())
        .expect("a roomserver database");
    let mut server = Polylith::start_on_broker(dir, &urls, env, broker).await;
    for (i, service) in POLYLITH_SERVICES.iter().enumerate() {
        server
            .add_replica_at(
                service,
                second[i].clone(),
                own_settings(service, name, postgres).await,
            )
            .await;
    }
    let other_gateway = server.add_gateway().await;
    server.wait_ready(std::time::Duration::from_secs(90)).await;
    let gateways = vec![server.base_url.clone(), other_gateway];
    (server, gateways, roomserver_db)
}

/// What a further replica of `service` needs of its own.
async fn own_settings(service: &str, name: &str, postgres: &str) -> Vec<(String, String)> {
    match service {
        "syncapi" => vec![(
            "GANGLION_SERVICES__SYNCAPI__DATABASE_URL".to_owned(),
            ganglion_base::testing::scratch_postgres_on(postgres, &format!("poly_{name}_syncapi2"))
                .await,
        )],
        // Its own port for servers that come in over TLS.
        "federationapi" => vec![(
            "GANGLION_FEDERATION__LISTEN".to_owned(),
            format!(
                "127.0.0.1:{}",
                ganglion_integration_tests::process::free_port()
            ),
        )],
        _ => Vec::new(),
    }
}

/// A client as real ones behave behind a load balancer: a request that gets
/// no answer, or 502/503/504, is sent again after a pause, through the next
/// gateway; one answered 429 again after the `retry_after_ms` it was given.
/// Every such retry is counted.
#[derive(Clone)]
struct Retrying {
    client: Client,
    gateways: Vec<String>,
    turn: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    retries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Retrying {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        use std::sync::atomic::Ordering;
        let first = self.turn.fetch_add(1, Ordering::Relaxed);
        for attempt in 0..300 {
            let base = &self.gateways[(first + attempt) % self.gateways.len()];
            let mut request = self
                .client
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&self.client.access_token)
                .timeout(std::time::Duration::from_secs(60));
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(answer) if answer.status().as_u16() == 429 => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let body: Value = answer.json().await.unwrap_or(Value::Null);
                    let wait = body["retry_after_ms"].as_u64().unwrap_or(500).min(5_000);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                Ok(answer) if ![502, 503, 504].contains(&answer.status().as_u16()) => {
                    let status = answer.status();
                    let body: Value = answer.json().await.unwrap_or(Value::Null);
                    assert!(status.is_success(), "{method} {path}: {status} {body}");
                    return body;
                }
                _ => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        panic!("{method} {path}: no answer after 300 tries");
    }
}

/// Three members sending into one room and two syncing, each as a real
/// client would (retrying), until [`Load::finish`].
struct Load {
    people: Vec<Retrying>,
    room_id: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set once every sender has had its last answer: only then do the
    /// readers start counting quiet syncs, so a send acknowledged late is
    /// still awaited.
    sent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    retries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// When each acknowledged send was answered.
    acks: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    senders: Vec<tokio::task::JoinHandle<Vec<(String, String)>>>,
    readers: Vec<tokio::task::JoinHandle<(Vec<String>, usize)>>,
}

impl Load {
    async fn start(gateways: &[String], tag: &str) -> Load {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let retries = Arc::new(AtomicUsize::new(0));
        let mut people = Vec::new();
        for i in 0..5 {
            let client = Client::register(
                &gateways[i % gateways.len()],
                &format!("{tag}{i}"),
                "pw-load-123",
            )
            .await;
            people.push(Retrying {
                client,
                gateways: gateways.to_vec(),
                turn: Arc::new(AtomicUsize::new(i)),
                retries: retries.clone(),
            });
        }
        let room_id = people[0]
            .client
            .create_room(json!({"preset": "public_chat"}))
            .await;
        for person in &people[1..] {
            assert_eq!(person.client.join(&room_id).await.status, 200);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let filter = ganglion_integration_tests::client::encode(
            &json!({"room": {"timeline": {"limit": 1000}}}).to_string(),
        );
        let mut senders = Vec::new();
        for (s, person) in people[..3].iter().enumerate() {
            let (person, stop, room_id, acks) =
                (person.clone(), stop.clone(), room_id.clone(), acks.clone());
            senders.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!("s{s}-{n}");
                    let answer = person
                        .call(
                            reqwest::Method::PUT,
                            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{n}"),
                            Some(&json!({"msgtype": "m.text", "body": body})),
                        )
                        .await;
                    let event_id = answer["event_id"].as_str().expect("an event ID").to_owned();
                    acks.lock().expect("acks").push(std::time::Instant::now());
                    acked.push((event_id, body));
                    n += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                acked
            }));
        }
        let mut readers = Vec::new();
        for person in &people[3..] {
            let person = person.clone();
            let initial = person
                .call(
                    reqwest::Method::GET,
                    &format!("/_matrix/client/v3/sync?filter={filter}"),
                    None,
                )
                .await;
            let (sent, room_id, filter) = (sent.clone(), room_id.clone(), filter.clone());
            readers.push(tokio::spawn(async move {
                let mut since = initial["next_batch"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                // The senders may have started already.
                let mut seen: Vec<String> =
                    initial["rooms"]["join"][&room_id]["timeline"]["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|event| event["type"] == "m.room.message")
                        .map(|event| event["event_id"].as_str().unwrap_or_default().to_owned())
                        .collect();
                let mut gaps = 0;
                let mut quiet_after_sent = 0;
                loop {
                    let body = person
                        .call(
                            reqwest::Method::GET,
                            &format!(
                                "/_matrix/client/v3/sync?since={}&timeout=1000&filter={filter}",
                                ganglion_integration_tests::client::encode(&since)
                            ),
                            None,
                        )
                        .await;
                    let timeline = &body["rooms"]["join"][&room_id]["timeline"];
                    if timeline["limited"] == json!(true) {
                        gaps += 1;
                    }
                    let events = timeline["events"].as_array().cloned().unwrap_or_default();
                    for event in &events {
                        if event["type"] == "m.room.message" {
                            seen.push(event["event_id"].as_str().unwrap_or_default().to_owned());
                        }
                    }
                    since = body["next_batch"].as_str().unwrap_or_default().to_owned();
                    if sent.load(Ordering::Relaxed) {
                        quiet_after_sent = if events.is_empty() {
                            quiet_after_sent + 1
                        } else {
                            0
                        };
                        if quiet_after_sent >= 3 {
                            return (seen, gaps);
                        }
                    }
                }
            }));
        }
        Load {
            people,
            room_id,
            stop,
            sent,
            retries,
            acks,
            senders,
            readers,
        }
    }

    /// The longest time between two acknowledged sends from `from` on,
    /// over the next `window` (how long sending paused around a fault).
    async fn pause_after(
        &self,
        from: std::time::Instant,
        window: std::time::Duration,
    ) -> std::time::Duration {
        tokio::time::sleep_until((from + window).into()).await;
        self.longest_gap(from, from + window)
    }

    /// The longest time between two acknowledged sends (or `from` or
    /// `until`) from `from` to `until`.
    fn longest_gap(
        &self,
        from: std::time::Instant,
        until: std::time::Instant,
    ) -> std::time::Duration {
        let acks = self.acks.lock().expect("acks").clone();
        let mut times: Vec<std::time::Instant> = acks
            .into_iter()
            .filter(|t| *t >= from && *t <= until)
            .collect();
        times.insert(0, from);
        times.push(until);
        times.sort();
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    /// How many sends were acknowledged from `from` on.
    fn acked_since(&self, from: std::time::Instant) -> usize {
        self.acks
            .lock()
            .expect("acks")
            .iter()
            .filter(|t| **t >= from)
            .count()
    }

    /// Once `what`, stopped at `stopped`, is back (now): waits (a minute at
    /// most) until sends are acknowledged again and [`AFTER_RECOVERY`] more
    /// have been, so the checks cover sends from both sides of the fault;
    /// prints how long it was down, the longest gap between acknowledged
    /// sends and how soon after its return the first send was
    /// acknowledged; then [`Load::finish_in`].
    async fn after_outage(self, what: &str, stopped: std::time::Instant, roomserver_db: &str) {
        const AFTER_RECOVERY: usize = 20;
        let back = std::time::Instant::now();
        let deadline = back + std::time::Duration::from_secs(60);
        while self.acked_since(back) < AFTER_RECOVERY {
            assert!(
                std::time::Instant::now() < deadline,
                "{} sends acknowledged in the minute after {what} was back",
                self.acked_since(back)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let recovery = self
            .acks
            .lock()
            .expect("acks")
            .iter()
            .filter(|t| **t >= back)
            .min()
            .map(|t| *t - back)
            .unwrap_or_default();
        let pause = self.longest_gap(stopped, std::time::Instant::now());
        println!(
            "{what} down for {:.1} s: longest gap between acknowledged sends {:.1} s; the first send after it was back acknowledged in {:.1} s",
            (back - stopped).as_secs_f64(),
            pause.as_secs_f64(),
            recovery.as_secs_f64()
        );
        self.finish_in(roomserver_db, AFTER_RECOVERY).await;
    }

    /// [`Load::finish`], then checks that more than `at_least` messages
    /// were acknowledged and that the room is one chain in the roomserver's
    /// database at `roomserver_db`.
    async fn finish_in(self, roomserver_db: &str, at_least: usize) {
        let room_id = self.room_id.clone();
        let acked = self.finish().await;
        assert!(
            acked.len() > at_least,
            "the load ran throughout: {}",
            acked.len()
        );
        assert_one_chain(roomserver_db, &room_id).await;
    }

    /// Stops the load and checks what every member saw: each acknowledged
    /// message exactly once in every reader's `/sync` stream and in
    /// `/messages`, each sender's in its order. The messages acknowledged.
    async fn finish(self) -> Vec<(String, String)> {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for sender in self.senders {
            acked.extend(sender.await.expect("a sender"));
        }
        self.sent.store(true, Ordering::Relaxed);
        let ids: std::collections::HashSet<&str> =
            acked.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids.len(), acked.len(), "one event per acknowledged send");
        for reader in self.readers {
            let (seen, gaps) = reader.await.expect("a reader");
            assert_eq!(gaps, 0, "a reader's timeline was limited");
            for (event_id, body) in &acked {
                let times = seen.iter().filter(|id| *id == event_id).count();
                assert_eq!(
                    times, 1,
                    "{body} ({event_id}) seen {times} times by a reader"
                );
            }
            assert_eq!(seen.len(), acked.len(), "nothing else, nothing twice");
        }
        // The whole history, page by page back to the room's creation (a
        // fast machine sends more than one page's worth while it rolls).
        let mut bodies = Vec::new();
        let mut from = String::new();
        loop {
            let history = self.people[4]
                .call(
                    reqwest::Method::GET,
                    &format!(
                        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000{from}",
                        self.room_id
                    ),
                    None,
                )
                .await;
            bodies.extend(message_bodies(&history["chunk"]));
            match history["end"].as_str() {
                Some(end) if !history["chunk"].as_array().is_none_or(Vec::is_empty) => {
                    from = format!("&from={}", ganglion_integration_tests::client::encode(end));
                }
                _ => break,
            }
        }
        bodies.reverse();
        for (_, body) in &acked {
            assert_eq!(
                bodies.iter().filter(|b| *b == body).count(),
                1,
                "{body} in /messages"
            );
        }
        for s in 0..3 {
            let numbers: Vec<u64> = bodies
                .iter()
                .filter(|b| b.starts_with(&format!("s{s}-")))
                .filter_map(|b| b.split('-').nth(1)?.parse().ok())
                .collect();
            assert!(
                numbers.windows(2).all(|w| w[0] < w[1]),
                "sender {s} in order: {numbers:?}"
            );
        }
        println!(
            "{} messages acknowledged, {} client retries",
            acked.len(),
            self.retries.load(Ordering::Relaxed)
        );
        acked
    }
}

/// The room as the roomserver stored it is one chain written by one writer
/// at a time: every event after the create names exactly the event stored
/// before it as its one prev event, depths rise by one, and the room has
/// one forward extremity. Two replicas writing the room at once would fork it.
async fn assert_one_chain(roomserver_db: &str, room_id: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(roomserver_db)
        .await
        .expect("roomserver database");
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT e.event_id, e.depth, e.json FROM events e JOIN rooms r ON r.room_nid = e.room_nid
         WHERE r.room_id = $1 AND e.outlier = 0 ORDER BY e.event_nid",
    )
    .bind(room_id)
    .fetch_all(&pool)
    .await
    .expect("the room's events");
    assert!(rows.len() > 10, "{} events", rows.len());
    for pair in rows.windows(2) {
        let (before, depth_before, _) = &pair[0];
        let (event_id, depth, json) = &pair[1];
        let event: Value = serde_json::from_str(json).expect("stored JSON");
        assert_eq!(
            event["prev_events"],
            json!([before]),
            "{event_id} does not follow {before}: a fork"
        );
        assert_eq!(
            *depth,
            depth_before + 1,
            "{event_id}: depth {depth} after {depth_before}"
        );
    }
    // The forward extremities are kept in the room's row, a JSON array.
    let extremities: String =
        sqlx::query_scalar("SELECT extremities FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_one(&pool)
            .await
            .expect("extremities");
    let extremities: Vec<String> = serde_json::from_str(&extremities).expect("a JSON array");
    assert_eq!(extremities, [rows.last().expect("events").0.as_str()]);
    pool.close().await;
}

/// Every process of a polylith with two replicas of each service is
/// replaced one at a time (SIGTERM, drain, start again, ready) while
/// clients send and sync. No request fails (clients retry through the other
/// gateway, as behind a load balancer), every acknowledged message is in
/// every member's `/sync` stream exactly once and in `/messages` exactly
/// once, and the room is one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polylith_rolling_restart_under_load_loses_and_doubles_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, gateways, roomserver_db) = scaled(dir.path(), "rolling").await;
    let load = Load::start(&gateways, "roll").await;
    let started = std::time::Instant::now();
    let mut report = Vec::new();
    for name in server.process_names() {
        let took = server.restart_gracefully(&name).await;
        report.push(format!("{name} {:.1}s", took.as_secs_f64()));
    }
    println!(
        "rolled {} processes in {:.1}s: {}",
        report.len(),
        started.elapsed().as_secs_f64(),
        report.join(", ")
    );
    load.finish_in(&roomserver_db, 50).await;
}

/// One replica of each kind of process is killed with SIGKILL in turn
/// (no drain) while clients send and sync, then started again. Clients
/// retry as real ones do; afterwards every acknowledged message is in every
/// member's stream and `/messages` exactly once and the room is one chain.
/// Prints how long sends paused after each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polylith_kill9_of_each_kind_under_load_loses_and_doubles_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, gateways, roomserver_db) = scaled(dir.path(), "faults").await;
    let load = Load::start(&gateways, "fault").await;
    let mut report = Vec::new();
    for name in POLYLITH_SERVICES
        .iter()
        .map(|s| s.to_string())
        .chain(["gateway#2".to_owned()])
    {
        let killed = std::time::Instant::now();
        server.kill9(&name);
        let pause = load
            .pause_after(killed, std::time::Duration::from_secs(4))
            .await;
        let back = server.start_again(&name).await;
        report.push(format!(
            "{name}: sends paused {:.2}s, back in {:.1}s",
            pause.as_secs_f64(),
            back.as_secs_f64()
        ));
    }
    println!("{}", report.join("; "));
    load.finish_in(&roomserver_db, 50).await;
}

/// Roomserver replicas come and go while one room is hammered: a third
/// joins, the first is killed, the second is replaced gracefully, the first
/// comes back and the third leaves. Partitions move each time; the room is
/// still written by one replica at a time (one chain, depths rising, each
/// acknowledged message once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polylith_roomserver_replicas_come_and_go_under_load() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, gateways, roomserver_db) = scaled(dir.path(), "writers").await;
    let load = Load::start(&gateways, "writer").await;
    // A killed member's partitions move after Kafka's session timeout (6 s).
    let settle = std::time::Duration::from_secs(8);
    let mut report = Vec::new();
    let at = std::time::Instant::now();
    let third = server.add_replica("roomserver").await;
    report.push(format!(
        "added: pause {:.2}s",
        load.pause_after(at, settle).await.as_secs_f64()
    ));
    let at = std::time::Instant::now();
    server.kill9("roomserver");
    report.push(format!(
        "killed: pause {:.2}s",
        load.pause_after(at, settle).await.as_secs_f64()
    ));
    let at = std::time::Instant::now();
    server.restart_gracefully("roomserver#2").await;
    report.push(format!(
        "replaced: pause {:.2}s",
        load.pause_after(at, settle).await.as_secs_f64()
    ));
    server.start_again("roomserver").await;
    let at = std::time::Instant::now();
    server.stop_gracefully(&third).await;
    report.push(format!(
        "removed: pause {:.2}s",
        load.pause_after(at, settle).await.as_secs_f64()
    ));
    println!("roomserver replicas: {}", report.join(", "));
    load.finish_in(&roomserver_db, 0).await;
}

/// Blue/green upgrade of the syncapi view: a second syncapi (green) on a
/// new database is started while clients send and sync through the
/// gateway, catches up from the log and turns ready; then the first (blue)
/// is retired with SIGTERM and every user moves to green. The clients see
/// no error at all (not one retry), and each message reaches every member
/// exactly once across the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polylith_blue_green_syncapi_switch_is_invisible_to_clients() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let [blue, green] = [Listeners::fresh(), Listeners::fresh()];
    let mut env = blue.env("syncapi");
    env.push((
        "GANGLION_SERVICES__SYNCAPI__REPLICAS".to_owned(),
        format!(
            "[{}, {}]",
            blue.replica_entry("syncapi-blue"),
            green.replica_entry("syncapi-green")
        ),
    ));
    let mut server = Polylith::start_with(dir.path(), &database_urls("bluegreen").await, env).await;
    let load = Load::start(std::slice::from_ref(&server.base_url), "bg").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let green_db = ganglion_base::testing::scratch_postgres("poly_bluegreen_green").await;
    let started = std::time::Instant::now();
    let green_name = server
        .add_replica_at(
            "syncapi",
            green.clone(),
            vec![(
                "GANGLION_SERVICES__SYNCAPI__DATABASE_URL".to_owned(),
                green_db,
            )],
        )
        .await;
    until_ready_replicas(&server, "syncapi", 2).await;
    let caught_up = started.elapsed();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // Blue retires; everybody is on green from here on.
    server.stop_gracefully("syncapi").await;
    until_ready_replicas(&server, "syncapi", 1).await;
    let operators = [blue.operator.clone(), green.operator.clone()];
    for person in &load.people {
        let (served, _) = served_by(&operators, person.client.sync(None, 0, 1)).await;
        assert_eq!(served, Some(1), "{} is on green", person.client.user_id);
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let retries = load.retries.clone();
    println!(
        "green ({green_name}) caught up and ready in {:.1}s",
        caught_up.as_secs_f64()
    );
    load.finish().await;
    assert_eq!(
        retries.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a client saw an error during the switch"
    );
}

/// The monolith killed with SIGKILL twice while clients send and sync, and
/// started again each time: nothing acknowledged is lost or doubled (every
/// member's `/sync` stream and `/messages` hold each acknowledged message
/// once, each sender's in order) and the room is one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monolith_kill9_under_load_loses_and_doubles_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ganglion_integration_tests::process::Monolith::start(dir.path()).await;
    let load = Load::start(std::slice::from_ref(&server.base_url), "mono").await;
    let mut report = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let killed = std::time::Instant::now();
        server.kill9_and_restart().await;
        let back = killed.elapsed();
        let pause = load
            .pause_after(killed, std::time::Duration::from_secs(3))
            .await;
        report.push(format!(
            "back in {:.2}s, sends paused {:.2}s",
            back.as_secs_f64(),
            pause.as_secs_f64()
        ));
    }
    println!("monolith kill -9: {}", report.join("; "));
    let roomserver_db = format!(
        "sqlite:{}",
        dir.path().join("data").join("roomserver.db").display()
    );
    load.finish_in(&roomserver_db, 30).await;
}

/// The Kafka broker stops answering for 8 s (frozen, as behind a network
/// partition; its data kept) while clients send and sync through a
/// polylith with two replicas of every service. Sends wait or are retried;
/// afterwards nothing acknowledged is lost or doubled and the room is one
/// chain. Every consumer group's session times out meanwhile (6 s), so
/// each group rebalances once the broker answers again: sends resume after
/// that. Prints the longest gap between acknowledged sends and how soon
/// sends were acknowledged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polylith_broker_outage_under_load_loses_and_doubles_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, gateways, roomserver_db) = scaled(dir.path(), "outage").await;
    let load = Load::start(&gateways, "outage").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let frozen = std::time::Instant::now();
    server.broker().freeze(true);
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    server.broker().freeze(false);
    load.after_outage("the Kafka broker (frozen)", frozen, &roomserver_db)
        .await;
}

/// PostgreSQL (every service's database) stopped for 10 s while clients
/// send and sync through the scaled polylith, then started again: requests
/// in between are answered 503 and retried as real clients do; afterwards
/// nothing acknowledged is lost or doubled and the room is one chain.
/// Prints how long sends paused and how long recovery took after the
/// server was back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polylith_postgres_outage_under_load_loses_and_doubles_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let postgres = ganglion_integration_tests::postgres::OwnPostgres::start();
    let (server, gateways, roomserver_db) = scaled_on(
        dir.path(),
        "pgdown",
        &postgres.server(),
        ganglion_log::testing::Tansu::start().await,
    )
    .await;
    let load = Load::start(&gateways, "pgdown").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let stopped = std::time::Instant::now();
    postgres.stop();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    postgres.start_again();
    load.after_outage("PostgreSQL", stopped, &roomserver_db)
        .await;
    drop(server);
}

/// The Kafka broker stopped (SIGINT, as an operator restarts it) and
/// started again 2 s later with its data (tansu on durable storage) while
/// clients send and sync through the scaled polylith: producers and
/// consumers reconnect on their own; nothing acknowledged is lost or
/// doubled and the room is one chain. Prints the longest gap between
/// acknowledged sends and how long after the restart the first send was
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polylith_broker_restart_under_load_loses_and_doubles_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, gateways, roomserver_db) = scaled_on(
        dir.path(),
        "brokerrestart",
        &ganglion_base::testing::postgres_server(),
        ganglion_log::testing::Tansu::start_durable().await,
    )
    .await;
    let load = Load::start(&gateways, "brokerrestart").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let stopped = std::time::Instant::now();
    server.broker_mut().stop();
    // Under tansu's 6 s group session timeout: tansu 0.6 never hands the
    // partitions of an expired member on (see the log's conformance suite).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    server.broker_mut().restart().await;
    load.after_outage("the Kafka broker", stopped, &roomserver_db)
        .await;
}
