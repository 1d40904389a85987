//! syncapi: the read side of rooms.
//!
//! - Serves: `/sync`, `/rooms/{roomId}/messages`, filters (`routes/`), and
//!   the [`SyncApi`](ganglion_api::sync::SyncApi) that lets writers wait
//!   until a write is visible (`api.rs`).
//! - Consumes: `roomserver.output` (`consumers/roomserver_output.rs`), every
//!   partition from the positions stored in its own database (no consumer
//!   group: positions commit with the data): each replica is a view
//!   built from the log and can be dropped and rebuilt from it.
//! - Owns: its copy of timelines and current state, consumed positions, filters.
//!
//! Sync tokens are log positions (`sync_token.rs`), valid on any replica.
#![forbid(unsafe_code)]

mod api;
mod consumers;
mod filter;
mod internal_events;
mod routes;
mod storage;
mod summary;
mod sync_token;
mod visibility;

use std::sync::Arc;

use axum::Router;
use ganglion_api::topics::Topics;
use ganglion_api::users::UsersHandle;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database};
use ganglion_log::Log;
use tokio::sync::watch;

use storage::Storage;

/// The syncapi service; implements `SyncApi` and serves the sync routes.
pub struct SyncService {
    storage: Storage,
    users: UsersHandle,
    partitions: usize,
    /// The next offset to consume per partition; bumped after each commit,
    /// which wakes long-polling `/sync` requests and position waiters.
    positions: watch::Sender<Vec<u64>>,
}

/// A started syncapi.
pub struct Started {
    pub api: Arc<SyncService>,
    /// `/sync`, `/messages` and filter routes, ready to mount.
    pub routes: Router,
    pub health: Health,
}

/// Why the syncapi could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] ganglion_base::DatabaseError),
    /// Its positions could not be read.
    #[error("reading consumed positions")]
    Storage(String),
    /// The log could not be reached.
    #[error("log")]
    Log(#[from] ganglion_log::LogError),
}

/// Opens the database and starts consuming `roomserver.output` as replica `replica_id`.
pub async fn start(
    config: &Config,
    log: Arc<dyn Log>,
    users: UsersHandle,
    replica_id: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<Started, StartError> {
    let db = Database::open_for_service(config, "syncapi", storage::MIGRATIONS).await?;
    let storage = Storage { db: db.clone() };
    let topics = Topics::new(&config.log.topic_prefix);
    log.ensure_topic(&topics.roomserver_output, config.log.partitions)
        .await?;
    let partitions = config.log.partitions as usize;
    let mut positions = vec![0_u64; partitions];
    for (partition, next) in storage
        .positions()
        .await
        .map_err(|e| StartError::Storage(format!("{e:?}")))?
    {
        if let Some(slot) = positions.get_mut(partition as usize) {
            *slot = next;
        }
    }
    let starts = [(topics.roomserver_output.as_str(), positions.clone())];
    let service = Arc::new(SyncService {
        storage,
        users,
        partitions,
        positions: watch::Sender::new(positions),
    });
    // The view's positions are stored with its data, in one transaction per
    // record, so it resumes exactly where it stopped: no consumer group.
    let consumer = ganglion_api::consume::spawn_reader(
        log,
        &format!("{}syncapi-{replica_id}", config.log.topic_prefix),
        &starts,
        Arc::new(consumers::roomserver_output::OutputConsumer {
            service: service.clone(),
        }),
        shutdown,
    )
    .await?;
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "syncapi",
        db,
    }));
    health.add(consumer);
    Ok(Started {
        routes: routes::router(service.clone()),
        api: service,
        health,
    })
}
