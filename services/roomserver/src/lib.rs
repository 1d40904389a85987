//! roomserver: the authority on rooms.
//!
//! - Serves: the [`RoomserverApi`](ganglion_api::roomserver::RoomserverApi)
//!   (`api.rs`): writes are appended to `roomserver.input` keyed by room and
//!   answered once processed; queries read the database.
//! - Consumes: `roomserver.input` as one consumer group (`consumers/input.rs`):
//!   a room maps to one partition, so its events are processed by one replica
//!   at a time, in order, without locks.
//! - Produces: `roomserver.output`, every accepted event with its state change,
//!   via an outbox written in the same transaction as the events.
//! - Owns: rooms, events (with the state before and after each, stored as
//!   shared snapshots), current state, forward extremities, aliases,
//!   redactions.
//!
//! Pure logic: events are built, signed and authorised in `events.rs`; forks
//! are resolved in `resolution.rs`; states are cut into shared blocks in
//! `state_blocks.rs`. Local events are appended in `local_events.rs`, PDUs
//! from elsewhere go through the checks on receipt in `received_events.rs`;
//! both work on a room's in-memory head (`head.rs`) and emit `outputs.rs`.
#![forbid(unsafe_code)]

mod api;
#[doc(hidden)]
pub mod benchmarks;
mod consumers;
mod directory;
mod events;
mod head;
mod internal_events;
mod local_events;
mod outputs;
mod received_events;
mod resolution;
mod server_visibility;
mod state_blocks;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use ganglion_api::roomserver::RoomserverClient;
use ganglion_api::topics::Topics;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::internal_auth::InternalSecret;
use ganglion_base::keys::SigningKey;
use ganglion_base::{Config, Database};
use ganglion_log::Log;
use tokio::sync::watch;

use storage::Storage;

/// The roomserver service; implements `RoomserverApi`.
pub struct RoomserverService {
    storage: Storage,
    log: Arc<dyn Log>,
    topics: Topics,
    server_name: String,
    signing_key: Arc<SigningKey>,
    /// How other replicas reach this one to deliver outcomes ("local" in a monolith).
    reply_to: String,
    /// Callers waiting for the outcome of an input this replica accepted,
    /// by request ID: several when a client's retries of one transaction
    /// arrive together (each is answered with the first's outcome).
    pending: Mutex<HashMap<String, Vec<api::Waiter>>>,
    /// gRPC clients of other replicas, by address.
    peers: Mutex<HashMap<String, RoomserverClient>>,
    /// What this replica presents when it calls another.
    internal_secret: InternalSecret,
    /// Serialises outbox publishing so output order follows commit order.
    publish_lock: tokio::sync::Mutex<()>,
    /// Set when the outbox may hold outputs not yet in the log.
    outbox_dirty: AtomicBool,
    /// Outbox entries known to be in the log, cleared by the next write.
    published: Mutex<Vec<i64>>,
    /// The heads of rooms this replica wrote recently, by room NID (`head.rs`).
    heads: Mutex<HashMap<i64, head::Head>>,
}

/// A started roomserver.
pub struct Started {
    pub api: Arc<RoomserverService>,
    pub health: Health,
}

/// Why the roomserver could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] ganglion_base::DatabaseError),
    /// The log could not be reached.
    #[error("log")]
    Log(#[from] ganglion_log::LogError),
}

/// Opens the database, publishes any output left in the outbox by a crash,
/// and joins the `roomserver.input` consumer group.
pub async fn start(
    config: &Config,
    log: Arc<dyn Log>,
    signing_key: Arc<SigningKey>,
    reply_to: String,
    internal_secret: InternalSecret,
    shutdown: watch::Receiver<bool>,
) -> Result<Started, StartError> {
    let db = Database::open_for_service(config, "roomserver", storage::MIGRATIONS).await?;
    let topics = Topics::new(&config.log.topic_prefix);
    for topic in topics.all() {
        log.ensure_topic(topic, config.log.partitions).await?;
    }
    let service = Arc::new(RoomserverService {
        storage: Storage::new(db.clone(), config.caches.interned_names),
        log: log.clone(),
        topics: topics.clone(),
        server_name: config.server_name.clone(),
        signing_key,
        reply_to,
        pending: Mutex::new(HashMap::new()),
        peers: Mutex::new(HashMap::new()),
        internal_secret,
        publish_lock: tokio::sync::Mutex::new(()),
        outbox_dirty: AtomicBool::new(true),
        published: Mutex::new(Vec::new()),
        heads: Mutex::new(HashMap::new()),
    });
    if let Err(error) = service.storage.fill_memberships().await {
        tracing::warn!(%error, "could not fill in memberships of older rows");
    }
    let storage = service.storage.clone();
    let keep = config.retention.processed_inputs();
    ganglion_base::pruning::spawn(
        "processed_inputs",
        ganglion_base::pruning::EVERY,
        move || {
            let storage = storage.clone();
            async move {
                storage
                    .prune_processed_inputs(ganglion_base::clock::ago_ms(keep))
                    .await
            }
        },
    );
    // Outputs a crash left unpublished go out now; if that fails, the flag
    // stays set and the next input retries before anything newer.
    match service.publish_outbox().await {
        Ok(_) => service
            .outbox_dirty
            .store(false, std::sync::atomic::Ordering::Release),
        Err(error) => tracing::warn!(%error, "could not publish the outbox at start-up"),
    }
    let consumer = ganglion_api::consume::spawn(
        log,
        &format!("{}roomserver", config.log.topic_prefix),
        &[&topics.roomserver_input],
        Arc::new(consumers::input::InputConsumer {
            service: service.clone(),
        }),
        shutdown,
    )
    .await?;
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "roomserver",
        db,
    }));
    health.add(consumer);
    Ok(Started {
        api: service,
        health,
    })
}
