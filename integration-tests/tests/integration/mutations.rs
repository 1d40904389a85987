//! A request-mutation runner: every route of every listener (from the
//! route tables the services export, as `ganglion routes` prints them),
//! called with requests a hostile client would send — odd methods, bodies
//! of the wrong shape, too deep, too large or not UTF-8, traversal and
//! oversized paths, other users' tokens and none. No answer may be a 5xx,
//! the server must keep serving, and requests without a valid token must
//! change nothing. Bounded in time (`TEST_MUTATION_SECONDS`, 45 s by
//! default; longer runs by setting it).

use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::fake_server::FakeServer;
use ganglion_integration_tests::process::Monolith;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The route patterns the binary exports: (service, pattern).
fn routes(env: &[(String, String)]) -> Vec<(String, String)> {
    let output = std::process::Command::new(ganglion_integration_tests::process::ganglion_binary())
        .arg("routes")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("ganglion routes");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(service, path)| (service.to_owned(), path.to_owned()))
        .collect()
}

/// A pattern with its parameters filled in with real or plausible values.
fn fill(pattern: &str, values: &[(&str, String)], rng: &mut impl Rng) -> String {
    pattern
        .split('/')
        .map(|segment| {
            let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                return segment.to_owned();
            };
            match values.iter().find(|(key, _)| *key == name) {
                Some((_, value)) if rng.gen_bool(0.8) => encode(value),
                _ => ["x", "%00", "%2F", "%FF%FE", "!:", "@", "$", "%23a%3Ab"]
                    .choose(rng)
                    .copied()
                    .unwrap_or("x")
                    .to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Bodies a hostile client sends.
fn bodies() -> Vec<Option<Vec<u8>>> {
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(3_000), "}".repeat(3_000));
    vec![
        None,
        Some(b"{}".to_vec()),
        Some(b"[]".to_vec()),
        Some(b"null".to_vec()),
        Some(b"\"text\"".to_vec()),
        Some(b"1e400".to_vec()),
        Some(b"{not json".to_vec()),
        Some(deep.into_bytes()),
        Some(deep_object.into_bytes()),
        Some(b"{\"body\": \"\xff\xfe\", \"msgtype\": \"m.text\"}".to_vec()),
        Some(json!({"body": "x".repeat(200_000)}).to_string().into_bytes()),
        Some(vec![b'x'; 2 * 1024 * 1024]),
        Some(
            json!({
                "type": 7, "user_id": ["a"], "room_id": {}, "timeout": "soon",
                "limit": -1, "membership": 3, "content": "none", "messages": [1],
                "device_id": null, "password": 12, "auth": "x", "initial_state": {},
                "filter": {"room": {"timeline": {"limit": "many"}}}, "invite": "bob",
                "one_time_keys": [], "device_keys": 5, "presence": [], "typing": "yes"
            })
            .to_string()
            .into_bytes(),
        ),
        Some(
            json!({"displayname": "a\u{0}b", "body": "\u{0}", "msgtype": "m.text",
                   "avatar_url": "mxc://x/\u{0}", "reason": "\u{0}", "tag": {"\u{0}": 1}})
            .to_string()
            .into_bytes(),
        ),
        Some(
            json!({"limit": 9_007_199_254_740_993_u64, "timeout": 1e300, "depth": -9_007_199_254_740_993_i64})
                .to_string()
                .into_bytes(),
        ),
    ]
}

/// Suffixes that twist a path.
const PATH_TWISTS: [&str; 7] = [
    "",
    "/..",
    "/%2e%2e/%2e%2e/x",
    "//",
    "?limit=-1&from=%FF&dir=sideways&filter=%7B",
    "?access_token=garbage&since=s99999999999999999999",
    "?timeout=99999999999999999999&filter=%5B",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_survives_mutated_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    mutate_every_route(
        &server.base_url,
        &server.operator_url,
        &server.env,
        budget(45),
    )
    .await;
}

/// The same through the polylith's gateway: gRPC between the services,
/// PostgreSQL behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_survives_mutated_requests_in_the_polylith() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = crate::polylith::start(dir.path(), "mutations").await;
    let operator = server.gateway_operator_url();
    mutate_every_route(&server.base_url, &operator, server.env(), budget(20)).await;
}

/// The federation listener, walked as a remote server would: requests
/// unsigned, forged, signed for another server, and signed properly by a
/// server that is in the room. No 5xx, and nothing a request without a
/// valid signature sent changes the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_federation_route_survives_mutated_requests() {
    let fake_dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeServer::start(fake_dir.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, our_name) = Monolith::federating(dir.path()).await;
    let port = our_name
        .rsplit_once(':')
        .map(|(_, p)| p)
        .unwrap_or_default();
    let federation = format!("https://127.0.0.1:{port}");
    let alice = Client::register(&ours.base_url, "alice", "password-alice").await;
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    let mallory = format!("@mallory:{}", fake.server_name);
    fake.join_room((&federation, &our_name), &room_id, &mallory)
        .await;
    let sent = alice.send_text(&room_id, "m1", "hello").await;
    let event_id = sent.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let values = [
        ("room_id", room_id.clone()),
        ("event_id", event_id.clone()),
        ("user_id", mallory.clone()),
        ("txn_id", "t-mutation".to_owned()),
        ("server_name", our_name.clone()),
        ("key_id", "ed25519:a_x".to_owned()),
    ];
    let routes: Vec<String> = routes(&ours.env)
        .into_iter()
        .filter(|(service, _)| service == "federationapi")
        .map(|(_, path)| path)
        .collect();
    assert!(routes.len() > 20, "the table: {routes:?}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let bodies = bodies();
    let snapshot = || room_as_seen_by(&alice, &room_id);
    // The header a request gets: (kind, value); kinds 0 to 2 carry no
    // valid signature.
    let header = |kind: u8, request: &Mutated| -> Option<String> {
        let content: Option<serde_json::Value> = request
            .body
            .as_deref()
            .and_then(|body| serde_json::from_slice(body).ok())
            .filter(|value: &serde_json::Value| {
                serde_json::from_value::<ruma::CanonicalJsonValue>(value.clone()).is_ok()
            });
        match kind {
            0 => None,
            1 => Some("X-Matrix origin=\"evil.test\",key=\"ed25519:x\",sig=\"AAAA\"".to_owned()),
            2 => Some(fake.authorization(
                "elsewhere.test",
                request.method,
                &request.path,
                content.as_ref(),
            )),
            _ => {
                Some(fake.authorization(&our_name, request.method, &request.path, content.as_ref()))
            }
        }
    };

    let budget = budget(20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let started = Instant::now();
    let mut requests = 0;
    let mut failures: Vec<String> = Vec::new();
    let before = snapshot().await;
    // Phase 1 (a third of the time): no valid signature, and the room must
    // look the same after; phase 2: any header, signed ones too.
    for (deadline, kinds) in [(budget / 3, 3), (budget, 6)] {
        'phase: loop {
            let mut order: Vec<&String> = routes.iter().collect();
            order.shuffle(&mut rng);
            for pattern in order {
                if started.elapsed() > deadline {
                    break 'phase;
                }
                let request = mutated(pattern, &values, &bodies, &mut rng);
                let authorization = header(rng.gen_range(0..kinds), &request);
                failures.extend(
                    call(
                        &http,
                        &federation,
                        request.method,
                        &request.path,
                        authorization.as_deref(),
                        request.body,
                    )
                    .await,
                );
                requests += 1;
            }
        }
        if kinds == 3 {
            assert_eq!(
                before,
                snapshot().await,
                "requests without a valid signature changed the room"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        ours.process.log_tail()
    );
    let health = reqwest::get(format!("{}/healthz", ours.operator_url))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(
        alice
            .send_text(&room_id, "after", "still here")
            .await
            .status,
        200
    );
    let (status, _) = fake
        .request(
            &federation,
            &our_name,
            reqwest::Method::GET,
            &format!("/_matrix/federation/v1/event/{}", encode(&event_id)),
            None,
        )
        .await;
    assert_eq!(status, 200, "the member server is still served");
    eprintln!(
        "federation mutation runner: {requests} requests over {} routes",
        routes.len()
    );
}

/// What `client` sees of a room: its state, the client's joined rooms and
/// the history (less each event's growing age): to show that refused
/// requests changed nothing.
async fn room_as_seen_by(client: &Client, room_id: &str) -> (Value, Value, Value) {
    let state = client
        .call(
            reqwest::Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", encode(room_id)),
            None,
        )
        .await;
    let joined = client
        .call(
            reqwest::Method::GET,
            "/_matrix/client/v3/joined_rooms",
            None,
        )
        .await;
    let mut history = client.messages(room_id, None, "b", 100).await["chunk"].clone();
    for event in history.as_array_mut().into_iter().flatten() {
        if let Some(event) = event.as_object_mut() {
            event.remove("unsigned");
        }
    }
    (state.body, joined.body, history)
}

/// `TEST_MUTATION_SECONDS`, else `default` seconds.
fn budget(default: u64) -> Duration {
    Duration::from_secs(
        std::env::var("TEST_MUTATION_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

async fn mutate_every_route(
    base: &str,
    operator_url: &str,
    env: &[(String, String)],
    budget: Duration,
) {
    let base = base.to_owned();
    let alice = Client::register(&base, "alice", "password-alice").await;
    let bob = Client::register(&base, "bob", "password-bob").await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
    let sent = alice.send_text(&room_id, "m1", "hello").await;
    let event_id = sent.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let values = [
        ("room_id", room_id.clone()),
        ("room_id_or_alias", room_id.clone()),
        ("event_id", event_id.clone()),
        ("user_id", alice.user_id.clone()),
        ("event_type", "m.room.message".to_owned()),
        ("state_key", String::new()),
        ("alias", "#alias:localhost".to_owned()),
        ("txn_id", "t-mutation".to_owned()),
        ("receipt_type", "m.read".to_owned()),
        ("data_type", "m.direct".to_owned()),
        ("server_name", "localhost".to_owned()),
    ];
    let routes: Vec<(String, String)> = routes(env)
        .into_iter()
        .filter(|(service, _)| service != "federationapi")
        .collect();
    assert!(routes.len() > 50, "the tables: {routes:?}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let bodies = bodies();
    let tokens: [Option<&str>; 4] = [
        Some(alice.access_token.as_str()),
        Some(bob.access_token.as_str()),
        None,
        Some("syt_garbage_token"),
    ];

    // What a user sees of the room, to show refused requests change nothing.
    let snapshot = || room_as_seen_by(&alice, &room_id);

    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let started = Instant::now();
    let mut requests = 0;
    let mut failures: Vec<String> = Vec::new();
    // Phase 1 (a third of the time): requests without a valid token; the
    // room must look the same after.
    let before = snapshot().await;
    let phase_one = budget / 3;
    'unauthenticated: loop {
        for (_, pattern) in &routes {
            if started.elapsed() > phase_one {
                break 'unauthenticated;
            }
            let token = [None, Some("syt_garbage_token")][rng.gen_range(0..2)];
            let request = mutated(pattern, &values, &bodies, &mut rng);
            failures.extend(request.send(&http, &base, token).await);
            requests += 1;
        }
    }
    let after = snapshot().await;
    // Registration and login need no token: they may add accounts, not
    // change the room.
    assert_eq!(
        before, after,
        "requests without a valid token changed the room"
    );

    // Phase 2: anything, with any token.
    'any: loop {
        let mut order: Vec<&(String, String)> = routes.iter().collect();
        order.shuffle(&mut rng);
        for (_, pattern) in order {
            if started.elapsed() > budget {
                break 'any;
            }
            let token = tokens.choose(&mut rng).copied().flatten();
            let request = mutated(pattern, &values, &bodies, &mut rng);
            failures.extend(request.send(&http, &base, token).await);
            requests += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Still serving: healthy, and a user still talks.
    let health = reqwest::get(format!("{operator_url}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    // (Alice's token may have been logged out by the runner.)
    let carol = Client::register(&base, "carol", "password-carol").await;
    let room = carol.create_room(json!({})).await;
    assert_eq!(
        carol.send_text(&room, "after", "still here").await.status,
        200
    );
    eprintln!(
        "mutation runner: {requests} requests over {} routes",
        routes.len()
    );
}

/// A mutated request: a method, a path (from a pattern, maybe twisted) and
/// a body, chosen at random.
struct Mutated {
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
}

const METHODS: [&str; 7] = ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "BREW"];

fn mutated(
    pattern: &str,
    values: &[(&str, String)],
    bodies: &[Option<Vec<u8>>],
    rng: &mut impl Rng,
) -> Mutated {
    let method = METHODS.choose(rng).copied().unwrap_or("GET");
    let body = bodies.choose(rng).cloned().flatten();
    let twist = PATH_TWISTS.choose(rng).copied().unwrap_or("");
    Mutated {
        method,
        path: format!("{}{twist}", fill(pattern, values, rng)),
        body,
    }
}

impl Mutated {
    async fn send(self, http: &reqwest::Client, base: &str, token: Option<&str>) -> Option<String> {
        let authorization = token.map(|token| format!("Bearer {token}"));
        call(
            http,
            base,
            self.method,
            &self.path,
            authorization.as_deref(),
            self.body,
        )
        .await
    }
}

/// One request; a description if it was answered with a 5xx or not at all
/// (tried twice when the connection fails, or the gateway answers 502: a
/// pooled connection closed under a request fails it once).
async fn call(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> Option<String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
    let size = body.as_ref().map_or(0, Vec::len);
    let mut last_error = None;
    for _ in 0..2 {
        let mut request = http.request(method.clone(), format!("{base}{path}"));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        if let Some(body) = &body {
            request = request
                .header("content-type", "application/json")
                .body(body.clone());
        }
        match request.send().await {
            Ok(response) if response.status().is_server_error() => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                // The gateway's own kept-alive connection to a service may
                // have just been closed under it (it sends idempotent
                // requests again itself, not POSTs): once more, then it
                // counts.
                if status == reqwest::StatusCode::BAD_GATEWAY && last_error.is_none() {
                    last_error = Some(format!("{status} {text}"));
                    continue;
                }
                return Some(format!(
                    "{method} {path} ({size} B body): {status} {}",
                    text.chars().take(200).collect::<String>()
                ));
            }
            Ok(_) => return None,
            // A body over the limit may be cut off while it is still being
            // sent (the answer, a 413, comes first): not a failure.
            Err(_) if size > 1024 * 1024 => return None,
            Err(error) => last_error = Some(error.to_string()),
        }
    }
    last_error.map(|error| format!("{method} {path} ({size} B body): {error}"))
}
