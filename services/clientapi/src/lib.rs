//! clientapi: the client-server API's write side (`/_matrix/client/*`).
//!
//! - Serves: discovery, registration and login, room creation, joins,
//!   leaves, sending messages and state (`routes/`).
//! - Calls: userapi (accounts, tokens), roomserver (every room write),
//!   syncapi (waits until a write is visible before answering), keyserver
//!   (`/keys/*`, `routes/keys.rs`), federationapi (remote aliases and keys).
//! - Produces: `edu.typing`, `edu.receipt` and `edu.to_device`
//!   (`routes/ephemeral.rs`, `routes/to_device.rs`); account data goes
//!   through the userapi, which publishes it.
//! - Owns: transaction IDs for idempotent sends (`storage.rs`).
#![forbid(unsafe_code)]

mod internal_events;
mod rate_limit;
mod routes;
mod storage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ganglion_api::federation::FederationHandle;
use ganglion_api::keys::KeysHandle;
use ganglion_api::roomserver::RoomserverHandle;
use ganglion_api::sync::SyncHandle;
use ganglion_api::topics::Topics;
use ganglion_api::users::UsersHandle;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database, DatabaseError};
use ganglion_log::Log;

/// What the clientapi's handlers share.
pub(crate) struct ClientApi {
    server_name: String,
    /// `client.public_base_url`, for `/.well-known/matrix/client`.
    public_base_url: Option<String>,
    /// `federation.well_known_server`, for `/.well-known/matrix/server`.
    well_known_server: Option<String>,
    registration_enabled: bool,
    /// Registration takes `m.login.registration_token`, not `m.login.dummy`.
    registration_requires_token: bool,
    guest_access_enabled: bool,
    /// `POST /login/get_token` and `m.login.token` are offered, with
    /// tokens lasting `login_token_lifetime_ms`.
    login_via_existing_session: bool,
    login_token_lifetime_ms: i64,
    read_your_writes_timeout: Duration,
    users: UsersHandle,
    roomserver: RoomserverHandle,
    sync: SyncHandle,
    keys: KeysHandle,
    federation: FederationHandle,
    log: Arc<dyn Log>,
    topics: Topics,
    typing_timers: routes::TypingTimers,
    storage: storage::Storage,
    rate_limits: rate_limit::RateLimits,
    /// Proxies whose `X-Forwarded-For` names the client.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Other servers' answers about their spaces (`routes/spaces.rs`).
    remote_spaces: routes::RemoteSpaces,
    /// This replica's recent sends by transaction request ID, with the
    /// event each made (see `routes::send`).
    sent: routes::RecentSends,
}

/// A started clientapi.
pub struct Started {
    /// The client API routes, ready to mount.
    pub routes: Router,
    pub health: Health,
}

/// Why the clientapi could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("log")]
    Log(#[from] ganglion_log::LogError),
}

/// The other services the clientapi calls, and the log it writes to.
pub struct Peers {
    pub users: UsersHandle,
    pub roomserver: RoomserverHandle,
    pub sync: SyncHandle,
    pub keys: KeysHandle,
    /// Questions for remote servers (aliases, keys).
    pub federation: FederationHandle,
    pub log: Arc<dyn Log>,
}

/// The path patterns of this service's HTTP routes: the gateway forwards
/// exactly these to it.
pub fn route_paths() -> Vec<String> {
    routes::table().into_paths()
}

/// Opens the transaction database and builds the routes.
pub async fn start(config: &Config, peers: Peers) -> Result<Started, StartError> {
    let Peers {
        users,
        roomserver,
        sync,
        keys,
        federation,
        log,
    } = peers;
    // Transaction IDs only spare a retry its second send: not flushed one
    // by one.
    let db = Database::open_without_flush(config, "clientapi", storage::MIGRATIONS).await?;
    let topics = Topics::new(&config.log.topic_prefix);
    for topic in [
        &topics.edu_typing,
        &topics.edu_receipt,
        &topics.edu_to_device,
    ] {
        log.ensure_topic(topic, config.log.partitions).await?;
    }
    let api = Arc::new(ClientApi {
        server_name: config.server_name.clone(),
        public_base_url: config.client.public_base_url.clone(),
        well_known_server: config.federation.well_known_server.clone(),
        registration_enabled: config.client.registration_enabled,
        registration_requires_token: config.client.registration_requires_token,
        guest_access_enabled: config.client.guest_access_enabled,
        login_via_existing_session: config.client.login_via_existing_session,
        login_token_lifetime_ms: i64::try_from(config.client.login_token_lifetime_ms)
            .unwrap_or(i64::MAX),
        read_your_writes_timeout: Duration::from_millis(config.client.read_your_writes_timeout_ms),
        users,
        roomserver,
        sync,
        keys,
        federation,
        log,
        topics,
        typing_timers: routes::TypingTimers::default(),
        storage: storage::Storage { db: db.clone() },
        rate_limits: rate_limit::RateLimits::new(
            &config.rate_limits,
            config.caches.rate_limited_clients,
        ),
        trusted_proxies: config.rate_limits.trusted_proxy_ranges(),
        remote_spaces: routes::remote_spaces(),
        sent: Default::default(),
    });
    let storage = api.storage.clone();
    ganglion_base::pruning::spawn("uia_sessions", ganglion_base::pruning::EVERY, move || {
        let storage = storage.clone();
        async move {
            storage
                .prune_uia_sessions(ganglion_base::clock::ago_ms(routes::uia::SESSION_LIFETIME))
                .await
        }
    });
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "clientapi",
        db,
    }));
    Ok(Started {
        routes: routes::router(api),
        health,
    })
}
