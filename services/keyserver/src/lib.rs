//! keyserver: end-to-end encryption keys of local devices.
//!
//! - Serves: the [`KeysApi`](ganglion_api::keys::KeysApi): upload, query
//!   and claim of device identity keys, one-time keys and fallback keys,
//!   and each device's one-time key counts (for `/sync`), in-process or
//!   over gRPC. clientapi serves `/keys/upload`, `/keys/query` and
//!   `/keys/claim` with it; the syncapi reads the counts.
//! - Consumes: nothing yet (`federation.device_list_updates` with federation).
//! - Produces: nothing yet (`keyserver.key_changes`, which feeds
//!   `device_lists`, comes next).
//! - Owns: its database (device keys, one-time keys, fallback keys).
#![forbid(unsafe_code)]

mod api;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database, DatabaseError};

use storage::Storage;

/// The keyserver service; implements `KeysApi`.
pub struct KeyServer {
    storage: Storage,
}

/// A started keyserver.
pub struct Started {
    pub api: Arc<KeyServer>,
    pub health: Health,
}

/// Opens (and migrates) the keyserver's database.
pub async fn start(config: &Config) -> Result<Started, DatabaseError> {
    let db = Database::open_for_service(config, "keyserver", storage::MIGRATIONS).await?;
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "keyserver",
        db: db.clone(),
    }));
    Ok(Started {
        api: Arc::new(KeyServer {
            storage: Storage { db },
        }),
        health,
    })
}
