//! mediaapi: the media repository.
//!
//! - Serves: uploads (`POST /_matrix/media/v3/upload`, `POST
//!   /_matrix/media/v1/create` and the upload to a created ID, `PUT
//!   /_matrix/media/v3/upload/{serverName}/{mediaId}`), authenticated
//!   downloads (`/_matrix/client/v1/media/download/…`), the media
//!   `config`, thumbnails (made in `thumbnail.rs`: the configured sizes at
//!   upload, off the async runtime, kept in the store), and the deprecated
//!   unauthenticated downloads and thumbnails for media from before the
//!   configured freeze (`routes/`). Bodies stream: an upload
//!   goes to the store as it arrives, a download leaves it the same way.
//! - Owns: its database (what each MXC URI holds: blob, type, name,
//!   uploader; IDs waiting for an upload, `storage/`) and its blob store
//!   (`store/`: a directory, or an S3-compatible bucket), both shared by
//!   its replicas, which keep nothing of their own.
//! - Other servers' media: fetched over the federation media API when a
//!   local user asks for it, and kept (`remote.rs`); this server's media
//!   served to other servers the same way (`routes/federation.rs`, both
//!   framed by `multipart.rs`). Signatures are made and checked by the
//!   federationapi, which holds the key.
//! - URL previews (`preview/`): pages fetched through the outbound guard,
//!   their OpenGraph properties and image kept for a day.
//! - Operators quarantine and delete media by MXC URI or uploader
//!   (`operator.rs`, the `ganglion media` commands).
//! - Rules about content (which types are shown inline, file names,
//!   the headers of every media answer) live in `content.rs`.
//!
//! Every path it serves starts with one of [`PATH_PREFIXES`], which is how
//! the monolith's listener and the gateway hand requests to it.
#![forbid(unsafe_code)]

mod content;
mod multipart;
mod one_at_a_time;
pub mod operator;
mod preview;
mod remote;
mod routes;
mod storage;
mod store;
mod thumbnail;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ganglion_api::federation::FederationHandle;
use ganglion_api::users::UsersHandle;
use ganglion_base::config::MediaConfig;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database, DatabaseError};

use storage::Storage;
use store::BlobStore;

/// The path prefixes of everything the mediaapi serves.
pub const PATH_PREFIXES: &[&str] = &[
    "/_matrix/media/",
    "/_matrix/client/v1/media/",
    "/_matrix/federation/v1/media/",
];

/// Whether `path` is the mediaapi's.
pub fn serves(path: &str) -> bool {
    PATH_PREFIXES.iter().any(|prefix| path.starts_with(prefix))
}

/// The media service.
pub struct MediaApi {
    storage: Storage,
    store: Arc<dyn BlobStore>,
    users: UsersHandle,
    /// Checks other servers' signatures and signs for this service.
    federation: FederationHandle,
    /// Other servers' media, fetched (`remote.rs`).
    remote: remote::Remote,
    /// URL previews (`preview/`).
    previews: preview::Previews,
    /// Reaches URLs other than servers' federation APIs (a `Location` a
    /// federation answer gives, a page to preview) through the deny list.
    guarded: ganglion_outbound::GuardedClient,
    /// Uploads and `/create`s per user (`rate_limits.media_uploads_per_user`).
    uploads_limit: ganglion_base::rate_limit::RateLimiter,
    /// Previews made per user (`rate_limits.url_previews_per_user`).
    previews_limit: ganglion_base::rate_limit::RateLimiter,
    /// Itself, for work that outlives a request (thumbnails made after
    /// the answer).
    this: std::sync::Weak<MediaApi>,
    server_name: String,
    config: MediaConfig,
    /// The thumbnails made at upload and kept.
    thumbnail_sizes: Vec<thumbnail::Size>,
    /// Turns to make thumbnails (`media.thumbnail_workers`).
    thumbnailing: tokio::sync::Semaphore,
    /// Bumped whenever this process gives a created ID its bytes, so
    /// downloads waiting for it here answer at once (other replicas'
    /// uploads are seen by polling the database).
    filled: tokio::sync::watch::Sender<u64>,
}

impl ganglion_api::users::Authenticates for MediaApi {
    fn users(&self) -> &UsersHandle {
        &self.users
    }
}

/// A started mediaapi.
pub struct Started {
    pub api: Arc<MediaApi>,
    /// Its routes, ready to serve with
    /// [`ganglion_base::http::streaming_router`] (bodies are not read ahead).
    pub routes: Router,
    pub health: Health,
}

/// Why the mediaapi could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("the media store: {0}")]
    Store(String),
    #[error(transparent)]
    Outbound(#[from] ganglion_outbound::BuildError),
}

/// The path patterns of this service's HTTP routes: the gateway forwards
/// exactly these to it.
pub fn route_paths() -> Vec<String> {
    routes::table().into_paths()
}

/// The configured thumbnail sizes (checked when the configuration loads).
fn thumbnail_sizes(config: &MediaConfig) -> Vec<thumbnail::Size> {
    config
        .thumbnail_sizes
        .iter()
        .filter_map(|size| MediaConfig::parse_thumbnail_size(size))
        .map(|(width, height, crop)| thumbnail::Size {
            width,
            height,
            method: if crop {
                thumbnail::Method::Crop
            } else {
                thumbnail::Method::Scale
            },
        })
        .collect()
}

#[cfg(test)]
fn default_thumbnail_sizes() -> Vec<thumbnail::Size> {
    thumbnail_sizes(&MediaConfig::default())
}

/// How often created IDs whose upload never came are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Opens the database and the blob store.
pub async fn start(
    config: &Config,
    users: UsersHandle,
    federation: FederationHandle,
) -> Result<Started, StartError> {
    let db = Database::open_for_service(config, "mediaapi", storage::MIGRATIONS).await?;
    let store = store::open(config).map_err(|e| StartError::Store(e.to_string()))?;
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "mediaapi",
        db: db.clone(),
    }));
    let remote = remote::Remote::new(config, federation.clone())?;
    let previews = preview::Previews::new(config);
    let guarded = ganglion_outbound::GuardedClient::new(config)?;
    let api = Arc::new_cyclic(|this| MediaApi {
        storage: Storage { db },
        store,
        users,
        federation,
        remote,
        previews,
        guarded,
        uploads_limit: ganglion_base::rate_limit::RateLimiter::new(
            &config.rate_limits.media_uploads_per_user,
            config.rate_limits.enabled,
            config.caches.rate_limited_clients,
        ),
        previews_limit: ganglion_base::rate_limit::RateLimiter::new(
            &config.rate_limits.url_previews_per_user,
            config.rate_limits.enabled,
            config.caches.rate_limited_clients,
        ),
        this: this.clone(),
        server_name: config.server_name.clone(),
        config: config.media.clone(),
        thumbnail_sizes: thumbnail_sizes(&config.media),
        thumbnailing: tokio::sync::Semaphore::new(config.media.thumbnail_workers),
        filled: tokio::sync::watch::Sender::new(0),
    });
    let sweeper = api.clone();
    ganglion_base::pruning::spawn("expired_media_ids", SWEEP_EVERY, move || {
        let api = sweeper.clone();
        async move {
            api.storage
                .sweep_expired(ganglion_base::clock::now_ms())
                .await
        }
    });
    Ok(Started {
        routes: routes::router(api.clone()),
        api,
        health,
    })
}
