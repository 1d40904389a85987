//! Figures the roomserver issue asks for, printed by
//! `cargo bench -p ganglion-roomserver` (`benches/roomserver.rs`): state
//! storage per snapshot in a 10 000-member room, state resolution over 1 000
//! and 10 000 conflicted events, and events persisted per second in one room
//! and across 100 rooms. The roomserver runs for real: SQLite, the embedded
//! log, its input consumer. Not part of the service's API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ganglion_api::proto::roomserver as pb;
use ganglion_api::roomserver::RoomserverApi;
use ganglion_base::Config;
use ganglion_base::internal_auth::InternalSecret;
use ruma::canonical_json::CanonicalJsonObject;
use ruma::signatures::Ed25519KeyPair;
use tokio::sync::watch;

use crate::events::{self, Pdu, RoomView, Signer, StateMap, Template};
use crate::resolution::{self, EventsById};

const SERVER: &str = "bench.example";

fn template(
    kind: &str,
    key: Option<&str>,
    sender: &str,
    content: serde_json::Value,
) -> pb::EventTemplate {
    pb::EventTemplate {
        event_type: kind.into(),
        state_key: key.map(str::to_owned),
        sender: sender.into(),
        content_json: serde_json::to_vec(&content).unwrap_or_default(),
        redacts: None,
    }
}

fn user(i: usize) -> String {
    format!("@user{i}:{SERVER}")
}

/// Runs every benchmark and prints its figures.
pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    println!("roomserver benchmarks (release build recommended)");
    resolution_figures(500)?;
    resolution_figures(5_000)?;
    let dir = tempfile_dir()?;
    let service = start(&dir).await?;
    big_room_figures(&service).await?;
    throughput_figures(&service).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ganglion-rs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn start(
    dir: &std::path::Path,
) -> Result<Arc<crate::RoomserverService>, Box<dyn std::error::Error>> {
    let config = Config {
        server_name: SERVER.into(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let log = Arc::new(ganglion_log::EmbeddedLog::open(dir.join("log"))?);
    let key = Arc::new(ganglion_base::keys::load_or_generate_signing_key(&config)?);
    let (_stop, shutdown) = watch::channel(false);
    std::mem::forget(_stop);
    let started = crate::start(
        &config,
        log,
        key,
        "local".into(),
        InternalSecret::ephemeral(),
        shutdown,
    )
    .await?;
    Ok(started.api)
}

async fn create_public_room(
    service: &crate::RoomserverService,
    creator: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let created = service
        .create_room(pb::CreateRoomRequest {
            room_version: "10".into(),
            creator: creator.into(),
            create_content_json: b"{}".to_vec(),
            initial_state: vec![
                template(
                    "m.room.member",
                    Some(creator),
                    creator,
                    serde_json::json!({"membership": "join"}),
                ),
                template(
                    "m.room.power_levels",
                    Some(""),
                    creator,
                    serde_json::json!({"users": {creator: 100}}),
                ),
                template(
                    "m.room.join_rules",
                    Some(""),
                    creator,
                    serde_json::json!({"join_rule": "public"}),
                ),
            ],
            alias: None,
        })
        .await?;
    Ok(created.room_id)
}

async fn big_room_figures(
    service: &crate::RoomserverService,
) -> Result<(), Box<dyn std::error::Error>> {
    let creator = user(0);
    let room_id = create_public_room(service, &creator).await?;
    let started = Instant::now();
    for chunk in (1..=10_000).collect::<Vec<_>>().chunks(100) {
        let templates = chunk
            .iter()
            .map(|i| {
                let member = user(*i);
                template(
                    "m.room.member",
                    Some(&member),
                    &member,
                    serde_json::json!({"membership": "join"}),
                )
            })
            .collect();
        service
            .input(pb::InputRequest {
                room_id: room_id.clone(),
                templates,
                device_id: String::new(),
                transaction_id: String::new(),
            })
            .await?;
    }
    let joined = started.elapsed();
    let (blocks_before, block_bytes_before, snapshots_before, snapshot_bytes_before) =
        service.storage.state_storage_size().await?;
    let member = user(77);
    service
        .input(pb::InputRequest {
            room_id: room_id.clone(),
            templates: vec![template(
                "m.room.member",
                Some(&member),
                &member,
                serde_json::json!({"membership": "join", "displayname": "renamed"}),
            )],
            device_id: String::new(),
            transaction_id: String::new(),
        })
        .await?;
    let (blocks_after, block_bytes_after, snapshots_after, snapshot_bytes_after) =
        service.storage.state_storage_size().await?;
    let messages_before = service.storage.state_storage_size().await?;
    service
        .input(pb::InputRequest {
            room_id: room_id.clone(),
            templates: vec![template(
                "m.room.message",
                None,
                &member,
                serde_json::json!({"body": "hi"}),
            )],
            device_id: String::new(),
            transaction_id: String::new(),
        })
        .await?;
    let messages_after = service.storage.state_storage_size().await?;
    println!(
        "10 000-member room: 10 000 joins persisted in {:.1} s ({:.0} joins/s)",
        joined.as_secs_f64(),
        10_000.0 / joined.as_secs_f64()
    );
    println!(
        "  whole state history: {blocks_before} block rows ({:.1} MB), {snapshots_before} snapshot rows ({:.1} MB)",
        block_bytes_before as f64 / 1e6,
        snapshot_bytes_before as f64 / 1e6
    );
    println!(
        "  one more state event: {} block row(s), {} bytes; {} snapshot row(s), {} bytes",
        blocks_after - blocks_before,
        block_bytes_after - block_bytes_before,
        snapshots_after - snapshots_before,
        snapshot_bytes_after - snapshot_bytes_before
    );
    println!(
        "  one message: {} state rows, {} bytes",
        (messages_after.0 - messages_before.0) + (messages_after.2 - messages_before.2),
        (messages_after.1 - messages_before.1) + (messages_after.3 - messages_before.3)
    );
    Ok(())
}

async fn throughput_figures(
    service: &Arc<crate::RoomserverService>,
) -> Result<(), Box<dyn std::error::Error>> {
    let creator = user(0);
    let one_room = create_public_room(service, &creator).await?;
    let messages = 2_000;
    let started = Instant::now();
    run_senders(service, vec![one_room; 8], messages / 8).await?;
    let elapsed = started.elapsed();
    println!(
        "one room, 8 concurrent senders: {messages} events in {:.2} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
    let mut rooms = Vec::new();
    for _ in 0..100 {
        rooms.push(create_public_room(service, &creator).await?);
    }
    let per_room = 40;
    let started = Instant::now();
    run_senders(service, rooms, per_room).await?;
    let elapsed = started.elapsed();
    let total = 100 * per_room;
    println!(
        "100 rooms, one sender each: {total} events in {:.2} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

async fn run_senders(
    service: &Arc<crate::RoomserverService>,
    rooms: Vec<String>,
    per_sender: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tasks = tokio::task::JoinSet::new();
    let creator = user(0);
    for room_id in rooms {
        let service = service.clone();
        let creator = creator.clone();
        tasks.spawn(async move {
            for i in 0..per_sender {
                service
                    .input(pb::InputRequest {
                        room_id: room_id.clone(),
                        templates: vec![template(
                            "m.room.message",
                            None,
                            &creator,
                            serde_json::json!({"msgtype": "m.text", "body": format!("message {i}")}),
                        )],
                        device_id: String::new(),
                        transaction_id: String::new(),
                    })
                    .await?;
            }
            Ok::<_, ganglion_api::ApiError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// Two forks of a room with `users` members: on one every member changes
/// their display name, on the other every member changes it differently;
/// 2 × `users` conflicted state events.
fn resolution_figures(users: usize) -> Result<(), Box<dyn std::error::Error>> {
    for version in ["10", "12"] {
        let der = Ed25519KeyPair::generate();
        let key = Ed25519KeyPair::from_der(&der, "bench".into())?;
        let signer = Signer {
            server_name: SERVER,
            key: &key,
        };
        let creator = user(0);
        let (room_id, create) = events::build_create_event(
            version,
            &creator,
            CanonicalJsonObject::new(),
            &format!("!r:{SERVER}"),
            &signer,
        )?;
        let (_, rules) = events::rules_for(version)?;
        let mut all = EventsById::new();
        let create = Arc::new(create);
        all.insert(create.event_id.clone(), create.clone());
        let mut state = StateMap::new();
        state.insert(("m.room.create".into(), String::new()), create.clone());
        let mut last = create;
        let mut append = |state: &mut StateMap,
                          last: &Arc<Pdu>,
                          kind: &str,
                          key: &str,
                          sender: &str,
                          content: serde_json::Value|
         -> Result<Arc<Pdu>, Box<dyn std::error::Error>> {
            let pdu = Arc::new(events::build_event(
                &RoomView {
                    room_id: room_id.as_str(),
                    rules: &rules,
                    state,
                    forward_extremities: std::slice::from_ref(last),
                },
                Template {
                    event_type: kind,
                    state_key: Some(key),
                    sender,
                    content: serde_json::from_value(content)?,
                    redacts: None,
                },
                &signer,
            )?);
            state.insert((kind.into(), key.into()), pdu.clone());
            all.insert(pdu.event_id.clone(), pdu.clone());
            Ok(pdu)
        };
        last = append(
            &mut state,
            &last,
            "m.room.member",
            &creator,
            &creator,
            serde_json::json!({"membership": "join"}),
        )?;
        last = append(
            &mut state,
            &last,
            "m.room.join_rules",
            "",
            &creator,
            serde_json::json!({"join_rule": "public"}),
        )?;
        for i in 1..=users {
            let member = user(i);
            last = append(
                &mut state,
                &last,
                "m.room.member",
                &member,
                &member,
                serde_json::json!({"membership": "join"}),
            )?;
        }
        let base = last.clone();
        let mut forks = Vec::new();
        for name in ["a", "b"] {
            let mut fork = state.clone();
            let mut head = base.clone();
            for i in 1..=users {
                let member = user(i);
                head = append(
                    &mut fork,
                    &head,
                    "m.room.member",
                    &member,
                    &member,
                    serde_json::json!({"membership": "join", "displayname": format!("{name}{i}")}),
                )?;
            }
            forks.push(fork);
        }
        let refs: Vec<&StateMap> = forks.iter().collect();
        let started = Instant::now();
        let resolved = resolution::resolve(&rules, &refs, &all)?;
        let elapsed: Duration = started.elapsed();
        println!(
            "state resolution, room v{version}: {} conflicted state events over a {}-entry state: {:.1} ms",
            users * 2,
            resolved.len(),
            elapsed.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
