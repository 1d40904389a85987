//! federationapi: the federation and key APIs (`/_matrix/federation/*`,
//! `/_matrix/key/*`), served over TLS, and outbound federation queries.
//!
//! - Serves: our signing key (`/_matrix/key/v2/server`), other servers'
//!   keys as a notary (`/_matrix/key/v2/query`), `/version`, and, to
//!   requests signed by their origin (`auth.rs`), `/query/directory` and
//!   `/user/keys/query` and `/user/keys/claim` (`routes/`). Also the
//!   [`FederationApi`](ganglion_api::federation::FederationApi), through
//!   which clientapi asks remote servers about aliases and keys (`api.rs`).
//! - Outbound: server discovery (`discovery.rs`) with an IP deny list,
//!   requests signed with `X-Matrix` (`client.rs`), and remote servers'
//!   keys fetched directly or through notaries (`key_ring.rs`); joins
//!   (`joins.rs`), gaps filled (`gaps.rs`) and history backfilled for the
//!   syncapi (`backfill.rs`).
//! - Produces: `edu.typing`, `edu.receipt`, `edu.presence` and
//!   `federation.device_list_updates`, from other servers' transactions
//!   (`edus.rs`).
//! - Owns: its database (remote servers' keys and key responses).
#![forbid(unsafe_code)]

mod acl;
mod api;
mod auth;
mod backfill;
mod edus;
mod gaps;
mod inbound;
mod invites;
mod joins;
mod key_ring;
mod pdus;
mod routes;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use ganglion_api::keys::KeysHandle;
use ganglion_api::roomserver::RoomserverHandle;
use ganglion_api::topics::Topics;
use ganglion_api::users::UsersHandle;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::keys::SigningKey;
use ganglion_base::{Config, Database, DatabaseError};

use ganglion_outbound::{FederationClient, KeySigner};
use key_ring::{KeyRing, OwnKey};
use storage::Storage;

/// The federationapi service; implements `FederationApi` and serves the
/// federation routes.
pub struct FederationService {
    server_name: String,
    key: Arc<SigningKey>,
    /// Signs with `key` (also for other services: `sign_request`).
    signer: Arc<KeySigner>,
    client: Arc<FederationClient>,
    key_ring: KeyRing,
    storage: Storage,
    roomserver: RoomserverHandle,
    keys: KeysHandle,
    users: UsersHandle,
    max_body_bytes: usize,
    /// Where EDUs from other servers are published (`edu.*`).
    log: Arc<dyn ganglion_log::Log>,
    topics: Topics,
    /// Inbound transactions one at a time per origin.
    inbound: inbound::Origins,
}

/// The services the federationapi asks on behalf of remote servers.
pub struct Peers {
    pub roomserver: RoomserverHandle,
    pub keys: KeysHandle,
    /// For the devices a to-device message to `*` reaches.
    pub users: UsersHandle,
}

/// A started federationapi.
pub struct Started {
    pub api: Arc<FederationService>,
    /// The federation and key routes, ready to mount.
    pub routes: Router,
    pub health: Health,
}

/// Why the federationapi could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Outbound(#[from] ganglion_outbound::BuildError),
    #[error("log")]
    Log(#[from] ganglion_log::LogError),
}

/// The path patterns of this service's HTTP routes: the gateway forwards
/// exactly these to it.
pub fn route_paths() -> Vec<String> {
    routes::table().into_paths()
}

/// Opens the database and builds the outbound client, signing as `key`.
pub async fn start(
    config: &Config,
    key: Arc<SigningKey>,
    peers: Peers,
    log: Arc<dyn ganglion_log::Log>,
) -> Result<Started, StartError> {
    let db = Database::open_for_service(config, "federationapi", storage::MIGRATIONS).await?;
    let topics = Topics::new(&config.log.topic_prefix);
    for topic in [
        &topics.edu_typing,
        &topics.edu_receipt,
        &topics.edu_presence,
        &topics.federation_device_list_updates,
        &topics.edu_to_device,
    ] {
        log.ensure_topic(topic, config.log.partitions).await?;
    }
    let storage = Storage { db: db.clone() };
    let server_name = ruma::OwnedServerName::try_from(config.server_name.as_str())
        .map_err(|_| ganglion_outbound::BuildError::ServerName(config.server_name.clone()))?;
    let signer = Arc::new(KeySigner {
        server_name,
        key: key.clone(),
    });
    let client = Arc::new(FederationClient::new(config, signer.clone())?);
    let key_ring = KeyRing::new(
        storage.clone(),
        client.clone(),
        config.federation.trusted_key_servers.clone(),
        OwnKey {
            server_name: config.server_name.clone(),
            key_id: format!("ed25519:{}", key.version),
            public_key: key.public_key_base64.clone(),
        },
        config.caches.server_keys,
    );
    let pruned = storage.clone();
    let keep = config.retention.transaction_ids();
    ganglion_base::pruning::spawn(
        "federation_transaction_ids",
        ganglion_base::pruning::EVERY,
        move || {
            let storage = pruned.clone();
            async move {
                storage
                    .prune_transactions(ganglion_base::clock::ago_ms(keep))
                    .await
            }
        },
    );
    let service = Arc::new(FederationService {
        server_name: config.server_name.clone(),
        key,
        signer,
        client,
        key_ring,
        storage,
        roomserver: peers.roomserver,
        keys: peers.keys,
        users: peers.users,
        max_body_bytes: config.federation.max_body_bytes,
        log,
        topics,
        inbound: inbound::Origins::new(),
    });
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "federationapi",
        db,
    }));
    Ok(Started {
        routes: routes::router(service.clone()),
        api: service,
        health,
    })
}
