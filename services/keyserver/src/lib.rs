//! keyserver: end-to-end encryption keys of local devices.
//!
//! - Serves: the [`KeysApi`](ganglion_api::keys::KeysApi): upload, query
//!   and claim of device identity keys, one-time keys and fallback keys;
//!   cross-signing keys and signatures (`cross_signing.rs`);
//!   each device's one-time key counts (for `/sync`), and the removal of
//!   logged-out devices' keys, in-process or over gRPC. clientapi serves
//!   `/keys/upload`, `/keys/query` and `/keys/claim` with it; the syncapi
//!   reads the counts.
//! - Consumes: `federation.device_list_updates` (`consumers/`): other
//!   servers' users' device changes, passed on to `keyserver.key_changes`.
//! - Produces: `keyserver.key_changes` (`key_changes.rs`): every change of a
//!   device's identity keys or a user's cross-signing keys, which feeds
//!   `device_lists`, `/keys/changes` and other servers' device lists.
//! - Owns: its database (device keys, one-time keys, fallback keys, the
//!   cross-signing keys and signatures, the outbox of key changes).
#![forbid(unsafe_code)]

mod api;
mod backups;
mod consumers;
mod cross_signing;
mod key_changes;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ganglion_api::topics::Topics;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database, DatabaseError};
use ganglion_log::Log;

use storage::Storage;

/// The keyserver service; implements `KeysApi`.
pub struct KeyServer {
    storage: Storage,
    server_name: String,
    log: Arc<dyn Log>,
    topics: Topics,
    /// Serialises publishing key changes (see `key_changes.rs`).
    publishing: tokio::sync::Mutex<()>,
}

/// A started keyserver.
pub struct Started {
    pub api: Arc<KeyServer>,
    pub health: Health,
}

/// Why the keyserver could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("log")]
    Log(#[from] ganglion_log::LogError),
    #[error("publishing key changes left from before: {0}")]
    Publish(ganglion_api::ApiError),
}

/// Opens (and migrates) the keyserver's database and publishes the key
/// changes a crash left unpublished.
pub async fn start(
    config: &Config,
    log: Arc<dyn Log>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Started, StartError> {
    let db = Database::open_for_service(config, "keyserver", storage::MIGRATIONS).await?;
    let topics = Topics::new(&config.log.topic_prefix);
    for topic in [
        &topics.keyserver_key_changes,
        &topics.federation_device_list_updates,
    ] {
        log.ensure_topic(topic, config.log.partitions).await?;
    }
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "keyserver",
        db: db.clone(),
    }));
    let api = Arc::new(KeyServer {
        storage: Storage { db },
        server_name: config.server_name.clone(),
        log: log.clone(),
        topics: topics.clone(),
        publishing: tokio::sync::Mutex::new(()),
    });
    let published = api.publish_pending().await.map_err(StartError::Publish)?;
    if published > 0 {
        tracing::info!(published, "published key changes left from before");
    }
    let updates = ganglion_api::consume::spawn(
        log,
        &format!("{}keyserver", config.log.topic_prefix),
        &[topics.federation_device_list_updates.as_str()],
        Arc::new(consumers::device_list_updates::DeviceListUpdates { keys: api.clone() }),
        shutdown,
    )
    .await?;
    health.add(updates);
    Ok(Started { api, health })
}
