//! The polylith: every service in its own process, gRPC between them, Kafka
//! (tansu) as the log, PostgreSQL per service, clients through the gateway.

use ganglion_integration_tests::client::message_bodies;
use ganglion_integration_tests::process::{POLYLITH_SERVICES, Polylith};

use crate::conversation::{first_conversation, history_forwards, history_via_prev_batch};

/// A polylith named `localhost:<federation port>` that federates over
/// loopback with self-signed certificates (Synapse, the fake servers), with
/// `extra` environment: (the polylith, its server name).
async fn federating(
    dir: &std::path::Path,
    name: &str,
    extra: Vec<(String, String)>,
) -> (Polylith, String) {
    let (our_name, mut env) = ganglion_integration_tests::process::federating_env();
    env.extend(extra);
    (
        Polylith::start_with(dir, &database_urls(name).await, env).await,
        our_name,
    )
}

/// A scratch PostgreSQL database for each service of the polylith `name`.
pub(crate) async fn database_urls(name: &str) -> Vec<(&'static str, String)> {
    database_urls_on(&ganglion_base::testing::postgres_server(), name).await
}

/// As [`database_urls`], on PostgreSQL server `server`.
pub(crate) async fn database_urls_on(server: &str, name: &str) -> Vec<(&'static str, String)> {
    let mut urls = Vec::new();
    for service in POLYLITH_SERVICES {
        urls.push((
            service,
            ganglion_base::testing::scratch_postgres_on(server, &format!("poly_{name}_{service}"))
                .await,
        ));
    }
    urls
}

pub(crate) async fn start(dir: &std::path::Path, name: &str) -> Polylith {
    Polylith::start(dir, &database_urls(name).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_conversation_and_syncapi_kill9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), "conv").await;
    let (alice, bob, room_id) = first_conversation(&server.base_url, "").await;
    let mut expected: Vec<String> = (0..3)
        .flat_map(|r| [format!("alice says {r}"), format!("bob says {r}")])
        .collect();
    assert_eq!(history_via_prev_batch(&bob, &room_id).await, expected);

    // Kill the syncapi mid-conversation; everything acknowledged survives once.
    for i in 0..10 {
        let text = format!("before kill {i}");
        assert_eq!(
            alice
                .send_text(&room_id, &format!("k{i}"), &text)
                .await
                .status,
            200
        );
        expected.push(text);
    }
    server.kill9_and_restart("syncapi").await;
    let text = "after kill".to_owned();
    let reply = bob.send_text(&room_id, "after", &text).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", server.logs());
    expected.push(text);
    let body = alice.sync(None, 0, 100).await;
    let timeline = &body["rooms"]["join"][&room_id]["timeline"]["events"];
    assert_eq!(message_bodies(timeline), expected, "{}", server.logs());
    assert_eq!(history_forwards(&bob, &room_id).await, expected);
    // The read side through the gateway: /event, /context, /relations.
    crate::room_apis::history_visibility_on_every_read_path(&server.base_url).await;
    crate::room_apis::relations_threads_and_bundles(&server.base_url).await;
}

/// Sends until the server answers 200, retrying with the same transaction
/// ID as a client does; a retry must never double the message.
async fn send_until_ok(
    client: &ganglion_integration_tests::client::Client,
    room_id: &str,
    txn: &str,
    text: &str,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let reply = client.send_text(room_id, txn, text).await;
        if reply.status == 200 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{text} never accepted: {reply:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The mediaapi as two stateless replicas sharing one database and one
/// blob store behind the gateway: uploads (streamed through the gateway)
/// and downloads spread over both, and a download waiting on one replica
/// gets the bytes uploaded through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_media_through_two_replicas() {
    use ganglion_integration_tests::process::Listeners;
    let dir = tempfile::tempdir().expect("tempdir");
    let listeners = [Listeners::fresh(), Listeners::fresh()];
    let mut env = listeners[0].env("mediaapi");
    env.push((
        "GANGLION_SERVICES__MEDIAAPI__REPLICAS".to_owned(),
        format!(
            "[{}, {}]",
            listeners[0].replica_entry("mediaapi-1"),
            listeners[1].replica_entry("mediaapi-2")
        ),
    ));
    env.extend(crate::media::limits_env());
    // Federation with a fake server on loopback (its TLS self-signed).
    env.extend([
        (
            "GANGLION_SERVER_NAME".to_owned(),
            "polylith.test".to_owned(),
        ),
        (
            "GANGLION_FEDERATION__VERIFY_CERTIFICATES".to_owned(),
            "false".to_owned(),
        ),
        (
            "GANGLION_FEDERATION__IP_RANGE_ALLOWLIST".to_owned(),
            r#"["127.0.0.1/32", "::1/128"]"#.to_owned(),
        ),
    ]);
    let mut server = Polylith::start_with(dir.path(), &database_urls("media").await, env).await;
    server
        .add_replica_at("mediaapi", listeners[1].clone(), Vec::new())
        .await;
    crate::scaling::until_ready_replicas(&server, "mediaapi", 2).await;
    crate::media::uploads_downloads_and_their_limits(&server.base_url, "").await;
    crate::media::thumbnails_of_every_format(&server.base_url, "").await;
    crate::federation_media::media_crosses_the_gateway(&server.base_url, "polylith.test", || {
        server.logs()
    })
    .await;
    for replica in &listeners {
        let served = metric_total(
            &replica.operator,
            "ganglion_http_requests_total{method=\"GET\",service=\"mediaapi\"",
        )
        .await;
        assert!(
            served > 0,
            "each replica served downloads\n{}",
            server.logs()
        );
    }
}

/// The userapi as two replicas sharing one database: pushers set through
/// either, and the push consumer group split between them; every push
/// goes out once, with retries and rejections as in the monolith.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_pushes_from_two_userapis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = vec![(
        "GANGLION_FEDERATION__IP_RANGE_ALLOWLIST".to_owned(),
        r#"["127.0.0.1/32"]"#.to_owned(),
    )];
    let mut server = Polylith::start_with(dir.path(), &database_urls("push").await, env).await;
    let second = server.add_replica("userapi").await;
    let accepted = crate::push::pushers_and_delivery(&server.base_url).await;
    // Each taken notification was sent by one replica or the other.
    let mut sent = 0;
    for operator in [
        server.listeners("userapi").operator,
        server.replica_listeners(&second).operator,
    ] {
        sent += metric_total(&operator, "ganglion_userapi_pushes_sent_total").await;
    }
    assert_eq!(sent as usize, accepted, "{}", server.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_two_roomservers_share_rooms_and_survive_kill9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), "rs2").await;
    let second = server.add_replica("roomserver").await;
    let alice = ganglion_integration_tests::client::Client::register(
        &server.base_url,
        "alice",
        "wonderland",
    )
    .await;
    // Enough rooms that both replicas own some of their partitions.
    let mut rooms = Vec::new();
    for i in 0..8 {
        rooms.push(
            alice
                .create_room(
                    serde_json::json!({"preset": "public_chat", "name": format!("room {i}")}),
                )
                .await,
        );
    }
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); rooms.len()];
    for round in 0..3 {
        for (i, room_id) in rooms.iter().enumerate() {
            let text = format!("r{i} m{round}");
            send_until_ok(&alice, room_id, &format!("a{i}-{round}"), &text).await;
            expected[i].push(text);
        }
    }
    let first_accepted = metric_total(
        &server.listeners("roomserver").operator,
        "ganglion_roomserver_events_total{outcome=\"accepted\"}",
    )
    .await;
    let second_accepted = metric_total(
        &server.replica_listeners(&second).operator,
        "ganglion_roomserver_events_total{outcome=\"accepted\"}",
    )
    .await;
    assert!(
        first_accepted > 0 && second_accepted > 0,
        "both replicas write: {first_accepted} and {second_accepted}\n{}",
        server.logs()
    );

    // The room APIs, with two writers sharing the rooms.
    crate::room_apis::memberships_and_their_refusals(&server.base_url).await;

    // The second replica dies; its rooms move to the first. Messages sent
    // meanwhile wait (or are retried) and land once each.
    server.kill9(&second);
    for round in 3..6 {
        for (i, room_id) in rooms.iter().enumerate() {
            let text = format!("r{i} m{round}");
            send_until_ok(&alice, room_id, &format!("a{i}-{round}"), &text).await;
            expected[i].push(text);
        }
    }
    crate::room_apis::aliases_directory_redactions_reports_upgrades(&server.base_url).await;
    for (i, room_id) in rooms.iter().enumerate() {
        assert_eq!(
            history_forwards(&alice, room_id).await,
            expected[i],
            "room {i}\n{}",
            server.logs()
        );
    }
}

/// The ephemeral streams over Kafka, and sync tokens handed between two
/// syncapi processes, each with its own database built from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_ephemeral_streams_and_tokens_across_syncapis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), "eph").await;
    crate::ephemeral::typing_receipts_and_markers(&server.base_url).await;
    // Simplified sliding sync through the gateway, its extensions fed over Kafka.
    crate::sliding_sync::extensions(&server.base_url).await;
    // Push rules: changed in the userapi over gRPC, seen through Kafka.
    crate::push::push_rules_api(&server.base_url).await;
    crate::push::notifications_list(&server.base_url).await;
    crate::user_directory::user_directory(&server.base_url).await;
    // Spaces: the clientapi walks, the roomserver summarises over gRPC.
    crate::spaces::space_hierarchy(&server.base_url).await;
    // Keys: clientapi and syncapi reach the keyserver over gRPC.
    crate::e2ee_keys::upload_query_claim(&server.base_url).await;
    crate::e2ee_keys::device_lists(&server.base_url).await;
    crate::e2ee_keys::cross_signing(&server.base_url).await;
    // Dehydrated devices: userapi, keyserver and syncapi over gRPC.
    crate::dehydrated_devices::dehydrated_devices(&server.base_url).await;
    crate::key_backup::key_backups(&server.base_url).await;
    let (alice, bob, since) = crate::ephemeral::to_device_once(&server.base_url).await;
    let room_id = alice
        .create_room(serde_json::json!({"preset": "public_chat"}))
        .await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let since = crate::ephemeral::sync(&bob, Some(&since), 0).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // A second syncapi, empty, on its own database: it catches up from the
    // log, then serves the token the first one issued.
    let url = ganglion_base::testing::scratch_postgres("poly_eph_syncapi2").await;
    let second = server
        .add_replica_with(
            "syncapi",
            vec![("GANGLION_SERVICES__SYNCAPI__DATABASE_URL".to_owned(), url)],
        )
        .await;
    assert_eq!(
        alice.send_text(&room_id, "h1", "handed over").await.status,
        200
    );
    let on_second = ganglion_integration_tests::client::Client {
        base_url: format!("http://{}", server.replica_listeners(&second).http),
        ..bob.clone()
    };
    // A long-poll may first wake for other news (presence the second
    // replica is still catching up on): sync on until the room shows.
    let body = sync_until_room(&on_second, &since, &room_id).await;
    let timeline = &body["rooms"]["join"][&room_id]["timeline"]["events"];
    assert_eq!(
        message_bodies(timeline),
        vec!["handed over"],
        "{body}\n{}",
        server.logs()
    );
    assert_eq!(
        body["to_device"]["events"],
        serde_json::json!([]),
        "acknowledged before"
    );
    // And back: the second one's token on the first (through the gateway).
    assert_eq!(
        alice.send_text(&room_id, "h2", "and back").await.status,
        200
    );
    let body = sync_until_room(
        &bob,
        body["next_batch"].as_str().unwrap_or_default(),
        &room_id,
    )
    .await;
    let timeline = &body["rooms"]["join"][&room_id]["timeline"]["events"];
    assert_eq!(message_bodies(timeline), vec!["and back"], "{body}");
}

/// Long-polls from `since` until a response carries the room (at most five
/// responses); that response.
async fn sync_until_room(
    client: &ganglion_integration_tests::client::Client,
    since: &str,
    room_id: &str,
) -> serde_json::Value {
    let mut since = since.to_owned();
    for _ in 0..5 {
        let body = crate::ephemeral::sync(client, Some(&since), 10_000).await;
        if body["rooms"]["join"].get(room_id).is_some() {
            return body;
        }
        since = body["next_batch"].as_str().unwrap_or_default().to_owned();
    }
    panic!("{room_id} never came");
}

/// Federation with our side as a polylith: a Synapse user joins our room
/// (make_join/send_join served by the federationapi process over TLS, the
/// roomserver process taking the join over Kafka), and messages flow both
/// ways (the federationsender process delivering ours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_federates_with_synapse() {
    use ganglion_integration_tests::client::{Client, encode};
    use ganglion_integration_tests::synapse::Synapse;
    use serde_json::json;

    let synapse_dir = tempfile::tempdir().expect("tempdir");
    let synapse = Synapse::start(synapse_dir.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, our_name) = federating(dir.path(), "fed", Vec::new()).await;
    let logs = || format!("{}\n{}", synapse.logs(), server.logs());

    let alice = Client::register(&server.base_url, "alice", "pw-alice-poly").await;
    let bob = synapse.register("bob", "pw-bob-poly").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = bob.join_via(&room_id, &our_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    alice.send_text(&room_id, "p1", "from the polylith").await;
    crate::federation_rooms::until_message(&bob, &room_id, "from the polylith", logs).await;
    bob.send_text(&room_id, "s1", "from synapse").await;
    crate::federation_rooms::until_message(&alice, &room_id, "from synapse", logs).await;

    // And ours joins theirs: the room's state arrives as outliers, on
    // PostgreSQL, many rows to a statement.
    let theirs = bob
        .create_room(json!({ "preset": "public_chat", "name": "synapse side" }))
        .await;
    let mut before = Vec::new();
    for i in 0..3 {
        let body = format!("before the polylith {i}");
        bob.send_text(&theirs, &format!("b{i}"), &body).await;
        before.push(body);
    }
    let join = alice.join_via(&theirs, &synapse.server_name).await;
    assert_eq!(join.status, 200, "{join:?}\n{}", logs());
    let name = alice
        .call(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                encode(&theirs)
            ),
            None,
        )
        .await;
    assert_eq!(name.body["name"], "synapse side", "{name:?}\n{}", logs());
    // What came before the join is backfilled when paged back to (the
    // syncapi process asks the federationapi process over gRPC).
    let (history, _) = crate::federation_history::page_back(&alice, &theirs, 5).await;
    crate::federation_history::assert_history(&history, &before, &logs());
    bob.send_text(&theirs, "s2", "in synapse's room").await;
    crate::federation_rooms::until_message(&alice, &theirs, "in synapse's room", logs).await;
    alice
        .send_text(&theirs, "p2", "polylith in synapse's room")
        .await;
    crate::federation_rooms::until_message(&bob, &theirs, "polylith in synapse's room", logs).await;
}

/// Two federationsender replicas share the destinations: eight remote
/// servers (fakes in this process, real TLS and signatures) join a room;
/// every message reaches each of them once, in order; both replicas
/// deliver; one is SIGKILLed mid-conversation and the other takes its
/// destinations over once their leases lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_two_federationsenders_share_destinations_and_survive_kill9() {
    use ganglion_integration_tests::client::Client;
    use ganglion_integration_tests::fake_server::FakeServer;
    use serde_json::json;

    let dir = tempfile::tempdir().expect("tempdir");
    // A stopped replica's destinations move after about 4 s.
    let lease = vec![(
        "GANGLION_FEDERATION__SENDER_LEASE_MS".to_owned(),
        "4000".to_owned(),
    )];
    let (mut server, our_name) = federating(dir.path(), "fs2", lease).await;
    let federation_port = our_name
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default();
    let second = server.add_replica("federationsender").await;
    let base = format!("https://127.0.0.1:{federation_port}");

    let alice = Client::register(&server.base_url, "alice", "pw-alice-fs2").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut fakes = Vec::new();
    for i in 0..8 {
        let fake_dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeServer::start(fake_dir.path()).await;
        let user = format!("@remote{i}:{}", fake.server_name);
        fake.join_room((&base, &our_name), &room_id, &user).await;
        fakes.push((fake_dir, fake));
    }
    // Each fake's messages, deduplicated by transaction ID as a server
    // does, in the order received.
    let bodies = |fake: &FakeServer| -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        fake.received()
            .into_iter()
            .filter(|(txn, _)| seen.insert(txn.clone()))
            .flat_map(|(_, body)| body["pdus"].as_array().cloned().unwrap_or_default())
            .filter(|pdu| pdu["type"] == "m.room.message")
            .filter_map(|pdu| pdu["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    let all_delivered = async |server: &Polylith, expected: &[String], what: &str| {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if fakes.iter().all(|(_, fake)| bodies(fake) == expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {:?}\n{}",
                fakes.iter().map(|(_, f)| bodies(f)).collect::<Vec<_>>(),
                server.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    // Messages until both replicas have delivered some (the consumer
    // group gives the second its partitions once it has rebalanced, which
    // under load may take a few seconds), at least ten.
    let mut expected = Vec::new();
    let sent_by = async |listeners: String| {
        metric_total(
            &listeners,
            "ganglion_federationsender_transactions_sent_total",
        )
        .await
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut i = 0;
    loop {
        let text = format!("to all {i}");
        send_until_ok(&alice, &room_id, &format!("f{i}"), &text).await;
        expected.push(text);
        i += 1;
        if i < 10 {
            continue;
        }
        all_delivered(&server, &expected, "before the kill").await;
        let first_sent = sent_by(server.listeners("federationsender").operator).await;
        let second_sent = sent_by(server.replica_listeners(&second).operator).await;
        if first_sent > 0 && second_sent > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both replicas deliver: {first_sent} and {second_sent}\n{}",
            server.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // The second replica dies; the first delivers its destinations too,
    // each message once, in order.
    server.kill9(&second);
    for i in i..i + 10 {
        let text = format!("to all {i}");
        send_until_ok(&alice, &room_id, &format!("f{i}"), &text).await;
        expected.push(text);
    }
    all_delivered(&server, &expected, "after the kill").await;
}

/// The polylith's edges (issue: the gateway once forwarded
/// `/_matrix/federation/%2e%2e/%2e%2e/<gRPC method>` into the
/// federationapi's internal API): the gateway forwards only the paths the
/// services export, no HTTP listener serves gRPC, and internal gRPC answers
/// only callers holding the shared secret, which rotates without a restart
/// or a refused call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_edges_are_closed_and_internal_calls_authenticated() {
    use ganglion_api::proto::userapi::GetProfileRequest;
    use ganglion_api::users::{UsersApi, UsersClient};
    use ganglion_base::internal_auth::InternalSecret;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), "edges").await;
    let alice = ganglion_integration_tests::client::Client::register(
        &server.base_url,
        "alice",
        "password-alice",
    )
    .await;
    let room_id = alice.create_room(serde_json::json!({})).await;
    let http = reqwest::Client::new();

    // Through the gateway: traversal and unexported paths never leave it.
    let invite = "ganglion.federationapi.Federation/Invite";
    for path in [
        format!("/_matrix/federation/%2e%2e/%2e%2e/{invite}"),
        format!("/_matrix/federation/../../{invite}"),
        format!("/_matrix/client/v3/%2E%2E/%2E%2E/{invite}"),
        format!("/_matrix/federation/v1/.%2e/.%2e/{invite}"),
        format!("/{invite}"),
        "/_matrix/client/v3/rooms//send/m.room.message/t".to_owned(),
        "/_matrix/federation/v1/not-a-route".to_owned(),
    ] {
        let response = http
            .post(format!("{}{path}", server.base_url))
            .header("content-type", "application/grpc")
            .body(vec![0_u8; 5])
            .send()
            .await
            .expect("gateway answers");
        assert_eq!(response.status(), 404, "{path}");
        let body: serde_json::Value = response.json().await.expect("a Matrix error");
        assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{path}");
    }
    // The federationapi's and clientapi's HTTP listeners serve no gRPC.
    for service in ["federationapi", "clientapi", "syncapi"] {
        let listeners = server.listeners(service);
        let response = http
            .post(format!("http://{}/{invite}", listeners.http))
            .header("content-type", "application/grpc")
            .body(vec![0_u8; 5])
            .send()
            .await
            .expect("http listener answers");
        assert_eq!(response.status(), 404, "{service}'s HTTP listener");
    }

    // Internal gRPC: refused without the secret, and counted.
    let userapi = server.listeners("userapi");
    let grpc = format!("http://{}", userapi.grpc);
    let secret_file = dir.path().join("data").join("internal.secret");
    let original = std::fs::read_to_string(&secret_file).expect("the generated secret");
    let original = original.trim().to_owned();
    let ask = |secret: &str| {
        let client = UsersClient::new(&grpc, InternalSecret::fixed(vec![secret.to_owned()]))
            .expect("client");
        let user_id = alice.user_id.clone();
        async move { client.get_profile(GetProfileRequest { user_id }).await }
    };
    let refused_before =
        metric_total(&userapi.operator, "ganglion_internal_calls_refused_total").await;
    let error = ask("a-guess-of-the-secret-0000")
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("internal secret"), "{error}");
    assert_eq!(
        metric_total(&userapi.operator, "ganglion_internal_calls_refused_total").await,
        refused_before + 1
    );
    ask(&original).await.expect("the secret opens the door");

    // Rotation: the new secret is accepted beside the old, then sent, then
    // the old one retired; the services keep talking throughout.
    let new = "rotated-secret-0123456789abcdef";
    let steps = [
        format!("{original}\n{new}\n"),
        format!("{new}\n{original}\n"),
        format!("{new}\n"),
    ];
    for (i, contents) in steps.iter().enumerate() {
        std::fs::write(&secret_file, contents).expect("rotate");
        // As an operator does: every process takes a step before the next.
        tokio::time::sleep(ganglion_base::internal_auth::RELOAD_INTERVAL * 2).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ask(new).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "step {i} taken up");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for attempt in 0..3 {
            let reply = alice
                .send_text(&room_id, &format!("r{i}-{attempt}"), "still talking")
                .await;
            assert_eq!(reply.status, 200, "step {i}: {}", server.logs());
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ask(&original).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old secret retired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Every accepted event is representable by every view here too.
    crate::bad_input::awkward_characters_round_trip(&server.base_url).await;
}

/// The sum of a metric's series whose lines start with `prefix`, from a
/// process's operator listener.
pub(crate) async fn metric_total(operator: &str, prefix: &str) -> u64 {
    metric_sum(operator, |line| line.starts_with(prefix))
        .await
        .expect("metrics")
}

/// The sum of the metric lines of a process that `wanted` holds for;
/// `None` when the process does not answer.
pub(crate) async fn metric_sum(operator: &str, wanted: impl Fn(&str) -> bool) -> Option<u64> {
    let text = reqwest::get(format!("http://{operator}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .unwrap_or_default();
    Some(
        text.lines()
            .filter(|l| wanted(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum(),
    )
}

/// Runs `ganglion rebuild <view> --into <into>` with the polylith's
/// settings; checks it caught up and prints its last line.
async fn rebuild(server: &Polylith, dir: &std::path::Path, view: &str, into: &str) {
    let rebuild =
        tokio::process::Command::new(ganglion_integration_tests::process::ganglion_binary())
            .args(["rebuild", view, "--into", into])
            .envs(server.env().iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(dir)
            .output();
    let rebuild = tokio::time::timeout(std::time::Duration::from_secs(120), rebuild)
        .await
        .expect("the rebuild ends")
        .expect("the rebuild runs");
    let said = String::from_utf8_lossy(&rebuild.stderr).to_string();
    assert!(rebuild.status.success(), "{said}");
    assert!(said.contains("caught up"), "{said}");
    eprintln!("{}", said.lines().last().unwrap_or_default());
}

/// `ganglion rebuild syncapi --into <database>`: a syncapi database built
/// afresh from the log answers `/sync`, `/messages`, `/context` and
/// `/relations` exactly like the live one, for several users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polylith_rebuilds_the_syncapi_from_the_log() {
    use ganglion_integration_tests::client::{Client, encode};
    use reqwest::Method;
    use serde_json::{Value, json};

    let dir = tempfile::tempdir().expect("tempdir");
    let urls = database_urls("rebuild").await;
    let mut server = Polylith::start(dir.path(), &urls).await;
    let (alice, bob, room_id) = first_conversation(&server.base_url, "").await;
    let carol = Client::register(&server.base_url, "carol", "pw-carol-rb").await;
    assert_eq!(carol.join(&room_id).await.status, 200);
    let root = alice.send_text(&room_id, "root", "a thread root").await;
    let root_id = root.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (i, client) in [&bob, &carol, &bob].into_iter().enumerate() {
        let reply = client
            .call(
                Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}",
                    encode(&room_id)
                ),
                Some(
                    json!({"msgtype": "m.text", "body": format!("in thread {i}"),
                    "m.relates_to": {"rel_type": "m.thread", "event_id": root_id}}),
                ),
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let other = bob.create_room(json!({"name": "bob's own"})).await;
    bob.send_text(&other, "o1", "alone").await;

    let url = ganglion_base::testing::scratch_postgres("poly_rebuild_syncapi2").await;
    rebuild(&server, dir.path(), "syncapi", &url).await;

    // The rebuilt database behind a syncapi of its own, asked directly.
    let second = server
        .add_replica_with(
            "syncapi",
            vec![("GANGLION_SERVICES__SYNCAPI__DATABASE_URL".to_owned(), url)],
        )
        .await;
    let original = format!("http://{}", server.listeners("syncapi").http);
    let rebuilt = format!("http://{}", server.replica_listeners(&second).http);
    // What may differ between two asks: ages, and presence's clock.
    fn steady(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for volatile in ["age", "last_active_ago", "currently_active", "presence"] {
                    map.remove(volatile);
                }
                map.values_mut().for_each(steady);
            }
            Value::Array(items) => items.iter_mut().for_each(steady),
            _ => {}
        }
    }
    let ask = async |base: &str, client: &Client, path: &str| {
        let mut reply = ganglion_integration_tests::client::request(
            &reqwest::Client::new(),
            Method::GET,
            &format!("{base}{path}"),
            Some(&client.access_token),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        steady(&mut reply.body);
        reply.body
    };
    let message_id = {
        let page = alice.messages(&room_id, None, "b", 5).await;
        page["chunk"][2]["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    for client in [&alice, &bob, &carol] {
        for path in [
            "/_matrix/client/v3/sync?timeout=0".to_owned(),
            format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                encode(&room_id)
            ),
            format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=50",
                encode(&room_id)
            ),
            format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
                encode(&room_id),
                encode(&message_id)
            ),
            format!(
                "/_matrix/client/v1/rooms/{}/relations/{}",
                encode(&room_id),
                encode(&root_id)
            ),
        ] {
            let (live, fresh) = (
                ask(&original, client, &path).await,
                ask(&rebuilt, client, &path).await,
            );
            assert_eq!(live, fresh, "{} {path}", client.user_id);
        }
    }

    // The federationsender's joined hosts, rebuilt likewise, equal the
    // live ones; a federationsender switched to them is ready.
    let into = ganglion_base::testing::scratch_postgres("poly_rebuild_fs2").await;
    rebuild(&server, dir.path(), "federationsender", &into).await;
    let live_db = urls
        .iter()
        .find(|(service, _)| *service == "federationsender")
        .map(|(_, url)| url.clone())
        .expect("its database");
    let joined = async |url: &str| -> Vec<(String, String, String)> {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.expect("connect");
        sqlx::query_as(
            "SELECT room_id, user_id, server_name FROM joined_hosts ORDER BY room_id, user_id",
        )
        .fetch_all(&pool)
        .await
        .expect("joined hosts")
    };
    let live = joined(&live_db).await;
    assert!(live.len() >= 4, "{live:?}");
    assert_eq!(joined(&into).await, live);
    server
        .add_replica_with(
            "federationsender",
            vec![(
                "GANGLION_SERVICES__FEDERATIONSENDER__DATABASE_URL".to_owned(),
                into,
            )],
        )
        .await;
    server.wait_ready(std::time::Duration::from_secs(60)).await;
}

/// The Grafana dashboards (`deploy/grafana/*.json`) and the alert rules
/// (`deploy/prometheus/alerts.yml`) ask only for metrics a running polylith
/// exports: after a conversation and an event queued for a server that
/// does not exist, every `ganglion_*` series they name is on some
/// process's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_exported_metrics() {
    use ganglion_integration_tests::client::encode;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut queries = String::new();
    for entry in std::fs::read_dir(root.join("deploy/grafana")).expect("deploy/grafana") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let board: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
                    .expect("a dashboard is JSON");
            for panel in board["panels"].as_array().expect("panels") {
                for target in panel["targets"].as_array().expect("targets") {
                    queries.push_str(target["expr"].as_str().expect("expr"));
                    queries.push('\n');
                }
            }
        }
    }
    queries.push_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("alerts"),
    );
    let mut wanted: Vec<String> = queries
        .match_indices("ganglion_")
        .map(|(at, _)| {
            queries[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        })
        .collect();
    wanted.sort();
    wanted.dedup();
    assert!(wanted.len() >= 15, "{wanted:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), "dashboards").await;
    let (alice, bob, room_id) = first_conversation(&server.base_url, "").await;
    bob.sync(None, 0, 10).await;
    // Banning a user of a server that does not exist queues the ban for
    // that server: a destination with a queue.
    let banned = alice
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/ban", encode(&room_id)),
            Some(serde_json::json!({"user_id": "@nobody:unreachable.invalid"})),
        )
        .await;
    assert_eq!(banned.status, 200, "{banned:?}");
    let mut urls: Vec<String> = POLYLITH_SERVICES
        .iter()
        .map(|service| format!("http://{}/metrics", server.listeners(service).operator))
        .collect();
    urls.push(format!("{}/metrics", server.gateway_operator_url()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut exported = std::collections::HashSet::new();
        for url in &urls {
            let text = reqwest::get(url)
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let name: String = line
                    .chars()
                    .take_while(|c| *c != '{' && *c != ' ')
                    .collect();
                exported.insert(name);
            }
        }
        let missing: Vec<&String> = wanted.iter().filter(|w| !exported.contains(*w)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queried but not exported: {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
