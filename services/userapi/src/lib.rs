//! userapi: accounts, devices, access tokens and account data.
//!
//! - Serves: the [`UsersApi`](ganglion_api::users::UsersApi) (login, token
//!   lookup, registration, logout, devices, account data and tags, push
//!   rules and pushers), in-process or over gRPC.
//! - Consumes: `roomserver.output`, in one group whose replicas split the
//!   rooms, to push notifications to push gateways (`push/`).
//! - Produces: `userapi.account_data` (`account_data.rs`); `userapi.profile` later.
//! - Owns: its database (accounts, devices, account data, pushers and
//!   their queue, the push view of rooms).
#![forbid(unsafe_code)]

mod account_data;
mod api;
mod internal_events;
mod last_seen;
mod passwords;
mod push;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ganglion_api::topics::Topics;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database, DatabaseError};
use ganglion_log::Log;

use storage::Storage;

/// The userapi service; implements `UsersApi`.
pub struct UserApi {
    storage: Storage,
    passwords: passwords::Passwords,
    server_name: String,
    /// Where account data is published; operator commands that only
    /// create accounts run without one.
    log: Option<Arc<dyn Log>>,
    topics: Topics,
    /// Serialises publishing account data (see `account_data.rs`).
    publishing: tokio::sync::Mutex<()>,
    /// Serialises changes made from the current content (tags, push
    /// rules; see `account_data.rs`).
    modifying: tokio::sync::Mutex<()>,
    /// Devices' sightings not written yet (`last_seen.rs`).
    last_seen: Arc<last_seen::LastSeen>,
    /// Proxies whose `X-Forwarded-For` names the client.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a refreshable access token lasts.
    access_token_lifetime_ms: i64,
}

/// A started userapi.
pub struct Started {
    pub api: Arc<UserApi>,
    pub health: Health,
}

/// Why the userapi could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("log")]
    Log(#[from] ganglion_log::LogError),
    #[error("starting the password hasher")]
    Io(#[from] std::io::Error),
    #[error("publishing account data left from before: {0}")]
    Publish(ganglion_api::ApiError),
    #[error("the push gateway client: {0}")]
    Push(String),
}

/// Opens the database (migrating it), publishes account data a crash left
/// unpublished, and returns the service. Without a log (operator
/// commands), account data cannot be written.
pub async fn start(config: &Config, log: Option<Arc<dyn Log>>) -> Result<Started, StartError> {
    internal_events::export();
    let db = Database::open_for_service(config, "userapi", storage::MIGRATIONS).await?;
    let topics = Topics::new(&config.log.topic_prefix);
    if let Some(log) = &log {
        log.ensure_topic(&topics.userapi_account_data, config.log.partitions)
            .await?;
    }
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "userapi",
        db: db.clone(),
    }));
    let api = Arc::new(UserApi {
        storage: Storage { db },
        passwords: passwords::Passwords::start(
            config.client.password_hashing_threads,
            config.client.password_hashing_queue,
        )?,
        server_name: config.server_name.clone(),
        log,
        topics,
        publishing: tokio::sync::Mutex::new(()),
        modifying: tokio::sync::Mutex::new(()),
        last_seen: Arc::default(),
        trusted_proxies: config.rate_limits.trusted_proxy_ranges(),
        access_token_lifetime_ms: i64::try_from(config.client.refreshable_access_token_lifetime_ms)
            .unwrap_or(i64::MAX),
    });
    last_seen::LastSeen::spawn_flusher(api.last_seen.clone(), api.storage.clone());
    let published = if api.log.is_some() {
        api.publish_pending().await.map_err(StartError::Publish)?
    } else {
        0
    };
    if published > 0 {
        tracing::info!(published, "published account data left from before");
    }
    Ok(Started { api, health })
}

impl Started {
    /// Joins the push group on `roomserver.output` and sends what it
    /// queues to push gateways, until `shutdown` turns true. Not for
    /// operator commands.
    pub async fn run_push(
        &mut self,
        config: &Config,
        log: Arc<dyn Log>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), StartError> {
        for topic in [
            &self.api.topics.roomserver_output,
            &self.api.topics.edu_receipt,
        ] {
            log.ensure_topic(topic, config.log.partitions).await?;
        }
        let client = ganglion_outbound::GuardedClient::new(config)
            .map_err(|e| StartError::Push(e.to_string()))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        let listen = config
            .service("userapi")
            .listen
            .map(|l| l.to_string())
            .unwrap_or_else(|| "monolith".to_owned());
        let push = &config.push;
        let millis = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
        let delivery = push::delivery::Delivery::new(
            self.api.storage.clone(),
            client,
            push::delivery::Settings {
                owner: format!("{host}/{listen}/{}", config.data_dir.display()),
                lease_ms: millis(push.lease_ms),
                request_timeout: std::time::Duration::from_millis(push.request_timeout_ms),
                max_notification_age_ms: millis(push.max_notification_age_ms),
                max_backoff_ms: millis(push.max_backoff_ms),
            },
        );
        tokio::spawn(delivery.clone().run(shutdown.clone()));
        let consumer = ganglion_api::consume::spawn(
            log,
            &format!("{}userapi-push", config.log.topic_prefix),
            &[
                self.api.topics.roomserver_output.as_str(),
                self.api.topics.edu_receipt.as_str(),
            ],
            Arc::new(push::PushConsumer {
                api: self.api.clone(),
                delivery,
                max_event_age_ms: millis(push.max_event_age_ms),
            }),
            shutdown,
        )
        .await?;
        self.health.add(consumer);
        Ok(())
    }
}
