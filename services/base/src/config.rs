//! Configuration: built-in defaults, then a TOML file, then `GANGLION_*`
//! environment variables (`__` separates nesting levels). Every option has
//! its default here and nowhere else; unknown keys are rejected so a typo is
//! an error, not a silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The services Ganglion is made of, in the order they start.
pub const SERVICES: [&str; 8] = [
    "userapi",
    "roomserver",
    "syncapi",
    "keyserver",
    "federationapi",
    "federationsender",
    "mediaapi",
    "clientapi",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The Matrix server name: the part after the colon in user IDs.
    pub server_name: String,
    /// Where the monolith keeps its databases, signing key, TLS certificate
    /// and embedded log. Created on first run.
    pub data_dir: PathBuf,
    /// `fsync`: a write acknowledged to a client is on disk first (the
    /// embedded log flushes appends in groups, SQLite commits with
    /// `synchronous=FULL`), so a power cut loses nothing acknowledged.
    /// `os`: left to the operating system's page cache, faster on slow
    /// disks; a power cut (not a process crash) may lose the last writes.
    pub durability: Durability,
    pub client: ClientConfig,
    pub federation: FederationConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub operator: OperatorConfig,
    pub internal: InternalConfig,
    pub caches: CachesConfig,
    pub rate_limits: RateLimitsConfig,
    pub retention: RetentionConfig,
    pub media: MediaConfig,
    pub push: PushConfig,
    /// One entry per service: its database and, in the polylith, its address.
    pub services: BTreeMap<String, ServiceConfig>,
}

/// The operator listener of the monolith and the gateway: `/healthz`,
/// `/readyz` and `/metrics`, never on the public client or federation port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorConfig {
    pub listen: SocketAddr,
    /// On SIGTERM, how long a process answers `/readyz` with 503 while
    /// still serving, so that callers stop sending before it stops
    /// listening. Unset: 2 000 ms for a polylith process, 0 for the
    /// monolith. On Kubernetes: at least the time endpoints take to update.
    pub drain_delay_ms: Option<u64>,
}

/// The most entries each in-memory cache keyed by outside data holds (a
/// full cache starts over), so no stranger can grow a process without end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CachesConfig {
    /// Other servers whose signing keys the federationapi keeps in memory.
    pub server_keys: usize,
    /// Other servers whose discovered address (well-known, SRV) is kept.
    pub destinations: usize,
    /// Event types and state keys the roomserver keeps interned in memory, each.
    pub interned_names: usize,
    /// Client addresses and accounts the rate limiter tracks, per limit.
    pub rate_limited_clients: usize,
    /// Access tokens whose user the gateway remembers, to route each user
    /// to their syncapi replica.
    pub gateway_tokens: usize,
}

impl Default for CachesConfig {
    fn default() -> Self {
        CachesConfig {
            server_keys: 10_000,
            destinations: 10_000,
            interned_names: 200_000,
            rate_limited_clients: 100_000,
            gateway_tokens: 100_000,
        }
    }
}

/// How long rows kept only to answer retries are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Federation transaction IDs (a remote's retry after this long is
    /// taken again).
    pub transaction_ids_hours: u64,
    /// The roomserver's record of inputs it processed (a record of the
    /// input topic redelivered after this long is processed again); it
    /// also answers a client's retried send with the event its first
    /// attempt made (a retry after this long sends again).
    pub processed_inputs_days: u64,
    /// A destination that has failed this long without a success has its
    /// queue dropped (it is still tried with what is sent from then on).
    pub dead_destination_days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            transaction_ids_hours: 24,
            processed_inputs_days: 7,
            dead_destination_days: 7,
        }
    }
}

impl RetentionConfig {
    pub fn transaction_ids(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.transaction_ids_hours * 3600)
    }

    pub fn processed_inputs(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.processed_inputs_days * 86_400)
    }

    pub fn dead_destination(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.dead_destination_days * 86_400)
    }
}

/// Push notifications to push gateways (the userapi's pushers). Gateway
/// URLs are reached only at addresses `federation.ip_range_denylist` and
/// `federation.ip_range_allowlist` allow, as for every URL users give.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Events that reached the log longer ago than this update who is in
    /// each room but push nothing (so a consumer far behind, or a rebuild
    /// replaying the log, pushes nothing stale).
    pub max_event_age_ms: u64,
    /// How long a push gateway may take to answer.
    pub request_timeout_ms: u64,
    /// A notification not delivered by then (its gateway failing) is given up.
    pub max_notification_age_ms: u64,
    /// The longest wait between attempts at a failing gateway (the wait
    /// starts at a second and doubles).
    pub max_backoff_ms: u64,
    /// How long a userapi replica holds a pusher it sends for; another
    /// takes it over after that if the first stopped.
    pub lease_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_event_age_ms: 15 * 60 * 1000,
            request_timeout_ms: 10_000,
            max_notification_age_ms: 24 * 3600 * 1000,
            max_backoff_ms: 10 * 60 * 1000,
            lease_ms: 30_000,
        }
    }
}

/// The media repository (`/_matrix/media`, `/_matrix/client/v1/media`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Where blobs are kept: `fs` (a directory, `path`) or `s3` (a bucket
    /// of an S3-compatible store, `s3`). Replicas of the mediaapi share it.
    pub store: MediaStoreKind,
    /// The `fs` store's directory. Unset: `<data_dir>/media`.
    pub path: Option<PathBuf>,
    pub s3: S3Config,
    /// Uploads larger than this are refused with 413 `M_TOO_LARGE`
    /// (announced to clients as `m.upload.size`).
    pub max_upload_bytes: u64,
    /// Bytes of media one user may have uploaded in all; an upload past it
    /// is refused with 403 `M_RESOURCE_LIMIT_EXCEEDED`. 0: no quota.
    pub user_quota_bytes: u64,
    /// IDs made with `POST /media/v1/create` and not yet uploaded that one
    /// user may hold; more are refused with 429 `M_LIMIT_EXCEEDED`.
    pub max_pending_uploads: u32,
    /// How long an ID made with `POST /media/v1/create` waits for its
    /// upload before it expires.
    pub pending_upload_expiry_ms: u64,
    /// The longest a download waits for media that is not uploaded yet
    /// (the client's `timeout_ms` is capped at this).
    pub max_download_wait_ms: u64,
    /// Thumbnails made when an image is uploaded and kept, as
    /// `WIDTHxHEIGHT crop|scale`; a request is met by the smallest at
    /// least as large (a larger one is made on the spot, not kept).
    pub thumbnail_sizes: Vec<String>,
    /// Images with more pixels than this are not thumbnailed (413
    /// `M_TOO_LARGE`), checked before they are decoded.
    pub max_thumbnail_pixels: u64,
    /// Thumbnails made at once (each on a thread of its own).
    pub thumbnail_workers: usize,
    /// The unauthenticated (deprecated) `/_matrix/media/v3/download` and
    /// `/thumbnail` serve only media created before this moment (ms since
    /// the epoch), as servers do since authenticated media became the
    /// default; unset: they serve nothing.
    pub unauthenticated_before_ms: Option<u64>,
    /// Whether `/preview_url` fetches pages users link to (off by default,
    /// as in Synapse: the server then reaches any public address users
    /// name). Fetches go through the outbound deny list
    /// (`federation.ip_range_*`), checked after DNS and on each redirect.
    pub url_previews: bool,
    /// The most of a page read for its preview (the rest is not read).
    pub url_preview_max_bytes: u64,
    /// How long fetching a page (or its image) for a preview may take.
    pub url_preview_timeout_ms: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            store: MediaStoreKind::Fs,
            path: None,
            s3: S3Config::default(),
            max_upload_bytes: 50 * 1024 * 1024,
            user_quota_bytes: 0,
            max_pending_uploads: 5,
            pending_upload_expiry_ms: 24 * 3600 * 1000,
            max_download_wait_ms: 60_000,
            thumbnail_sizes: [
                "32x32 crop",
                "96x96 crop",
                "320x240 scale",
                "640x480 scale",
                "800x600 scale",
            ]
            .map(str::to_owned)
            .to_vec(),
            max_thumbnail_pixels: 33_554_432,
            thumbnail_workers: 2,
            unauthenticated_before_ms: None,
            url_previews: false,
            url_preview_max_bytes: 1024 * 1024,
            url_preview_timeout_ms: 10_000,
        }
    }
}

impl MediaConfig {
    /// `WIDTHxHEIGHT crop|scale` as (width, height, crop?), both sides
    /// from 1 to 10 000.
    pub fn parse_thumbnail_size(size: &str) -> Option<(u32, u32, bool)> {
        let (dimensions, method) = size.trim().split_once(' ')?;
        let (width, height) = dimensions.split_once('x')?;
        let (width, height): (u32, u32) = (width.parse().ok()?, height.parse().ok()?);
        let crop = match method.trim() {
            "crop" => true,
            "scale" => false,
            _ => return None,
        };
        ((1..=10_000).contains(&width) && (1..=10_000).contains(&height))
            .then_some((width, height, crop))
    }
}

/// Which blob store the mediaapi uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaStoreKind {
    Fs,
    S3,
}

/// An S3-compatible bucket (AWS, MinIO, Ceph, Garage…).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    /// The service's URL (e.g. `https://s3.eu-west-1.amazonaws.com` or a
    /// MinIO address); unset: AWS by `region`.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    /// A file holding the secret access key (not the key itself, so the
    /// configuration can be shown).
    pub secret_access_key_file: Option<PathBuf>,
    /// Keys are stored under this prefix (e.g. `media/`).
    pub prefix: String,
    /// Whether a plain `http://` endpoint is allowed (a store on the same
    /// host or network).
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key_file: None,
            prefix: String::new(),
            allow_http: false,
        }
    }
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// Rate limits by family, as Synapse's `rc_*` settings. Exceeding one is
/// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Off only for tests and benchmarks.
    pub enabled: bool,
    /// Proxies (CIDR) whose `X-Forwarded-For` names the client: the
    /// polylith's gateways, a load balancer. A request from anywhere else
    /// counts against its connection's address.
    pub trusted_proxies: Vec<String>,
    pub login_per_address: RateLimit,
    pub login_per_account: RateLimit,
    /// Failed logins per account (checked before the password is).
    pub failed_logins_per_account: RateLimit,
    pub registration_per_address: RateLimit,
    pub messages_per_user: RateLimit,
    pub joins_per_user: RateLimit,
    pub invites_per_user: RateLimit,
    pub room_creation_per_user: RateLimit,
    /// Password checks in User-Interactive Auth (changing keys, devices).
    pub password_checks_per_user: RateLimit,
    /// Media uploads and `/create`s (the mediaapi).
    pub media_uploads_per_user: RateLimit,
    /// URL previews made (the mediaapi; kept previews are free).
    pub url_previews_per_user: RateLimit,
    /// Pages of a space hierarchy (each may ask other servers).
    pub hierarchy_per_user: RateLimit,
}

impl RateLimitsConfig {
    /// `trusted_proxies` as ranges (checked when the configuration loads).
    pub fn trusted_proxy_ranges(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|proxy| proxy.parse().ok())
            .collect()
    }

    /// Each family with its name.
    pub fn families(&self) -> [(&'static str, RateLimit); 12] {
        [
            ("login_per_address", self.login_per_address),
            ("login_per_account", self.login_per_account),
            ("failed_logins_per_account", self.failed_logins_per_account),
            ("registration_per_address", self.registration_per_address),
            ("messages_per_user", self.messages_per_user),
            ("joins_per_user", self.joins_per_user),
            ("invites_per_user", self.invites_per_user),
            ("room_creation_per_user", self.room_creation_per_user),
            ("password_checks_per_user", self.password_checks_per_user),
            ("media_uploads_per_user", self.media_uploads_per_user),
            ("url_previews_per_user", self.url_previews_per_user),
            ("hierarchy_per_user", self.hierarchy_per_user),
        ]
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        let limit = |per_second, burst| RateLimit { per_second, burst };
        RateLimitsConfig {
            enabled: true,
            trusted_proxies: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            login_per_address: limit(0.5, 10),
            login_per_account: limit(0.5, 10),
            failed_logins_per_account: limit(0.1, 5),
            registration_per_address: limit(0.2, 5),
            messages_per_user: limit(10.0, 50),
            joins_per_user: limit(0.5, 10),
            invites_per_user: limit(0.3, 10),
            room_creation_per_user: limit(0.2, 10),
            password_checks_per_user: limit(0.2, 5),
            media_uploads_per_user: limit(10.0, 50),
            url_previews_per_user: limit(1.0, 20),
            hierarchy_per_user: limit(5.0, 10),
        }
    }
}

/// How the polylith's services authenticate calls to each other.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InternalConfig {
    /// The shared secret file (one secret per line; the first is sent, any
    /// is accepted; re-read when it changes). Unset:
    /// `<data_dir>/internal.secret`, generated on first start.
    pub secret_file: Option<PathBuf>,
}

/// The client-server API (`/_matrix/client`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Where the monolith (or the polylith's gateway) listens for clients.
    pub listen: SocketAddr,
    /// Request bodies larger than this are refused with 413 `M_TOO_LARGE`.
    pub max_body_bytes: usize,
    /// Open client connections at most (the monolith's or gateway's
    /// listener; and each client-facing service's HTTP listener).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, or to send
    /// another request on an idle connection, before it is closed.
    pub header_read_timeout_ms: u64,
    /// Long-polling `/sync` requests one user may hold open at once; more
    /// are answered 429 `M_LIMIT_EXCEEDED`.
    pub max_syncs_per_user: usize,
    /// Threads hashing passwords (each holds argon2's 19 MiB working set).
    pub password_hashing_threads: usize,
    /// Password checks waiting for a hashing thread at most; more are
    /// answered 429 `M_LIMIT_EXCEEDED` at once.
    pub password_hashing_queue: usize,
    /// Whether `POST /register` creates accounts.
    pub registration_enabled: bool,
    /// Whether registering takes a registration token
    /// (`m.login.registration_token`; made with `ganglion registration-token`).
    pub registration_requires_token: bool,
    /// Registration without a token on a listener that is not loopback:
    /// refused at start-up unless this says it is meant (anyone who can
    /// reach the server could create accounts).
    pub allow_open_registration: bool,
    /// Whether `POST /register?kind=guest` creates guest accounts.
    pub guest_access_enabled: bool,
    /// How long a write waits for the sync service to reflect it before the
    /// client is answered anyway.
    pub read_your_writes_timeout_ms: u64,
    /// A user online who stops syncing for this long becomes unavailable.
    pub presence_unavailable_after_ms: u64,
    /// A user who stops syncing for this long becomes offline.
    pub presence_offline_after_ms: u64,
    /// The URL clients reach this server at, as `/.well-known/matrix/client`
    /// announces it (e.g. `https://matrix.example.org`); when unset, the
    /// request's own `Host` over `http`.
    pub public_base_url: Option<String>,
    /// How long an access token lasts when the client asked for a refresh
    /// token (`refresh_token: true` at login or registration); tokens of
    /// clients that did not ask never expire.
    pub refreshable_access_token_lifetime_ms: u64,
    /// Whether a logged-in device may get a login token for another
    /// (`POST /login/get_token`, `m.login.token`), after entering its
    /// password again; off by default, as in Synapse.
    pub login_via_existing_session: bool,
    /// How long such a login token stays usable.
    pub login_token_lifetime_ms: u64,
}

/// The federation API (`/_matrix/federation`, `/_matrix/key`), served over TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    pub listen: SocketAddr,
    /// Inbound federation request bodies larger than this are refused with
    /// 413 `M_TOO_LARGE`; room for a full transaction (50 PDUs of 64 KiB
    /// and 100 EDUs).
    pub max_body_bytes: usize,
    /// Open connections from other servers at most.
    pub max_connections: usize,
    /// How long another server may take to send a request's headers.
    pub header_read_timeout_ms: u64,
    /// PEM certificate chain; a self-signed one is generated in `data_dir` when unset.
    pub tls_certificate_path: Option<PathBuf>,
    /// PEM private key matching `tls_certificate_path`.
    pub tls_private_key_path: Option<PathBuf>,
    /// Ed25519 signing key; generated in `data_dir` when unset.
    pub signing_key_path: Option<PathBuf>,
    /// Where other servers reach this one (`host[:port]`), as
    /// `/.well-known/matrix/server` delegates to it (e.g.
    /// `matrix.example.org:443` behind an ingress); not served when unset.
    pub well_known_server: Option<String>,
    /// Whether remote servers must present a certificate valid for their
    /// name (turn off only for test networks of self-signed servers).
    pub verify_certificates: bool,
    /// Address ranges (CIDR) outbound federation never connects to: by
    /// default loopback, private, link-local and other non-public ranges.
    pub ip_range_denylist: Vec<String>,
    /// Ranges allowed despite the deny list (e.g. `127.0.0.1/32` in tests).
    pub ip_range_allowlist: Vec<String>,
    /// Notary servers asked for a server's keys when it cannot be reached
    /// directly (e.g. `matrix.org`); none by default.
    pub trusted_key_servers: Vec<String>,
    /// DNS servers (`ip:port`) for SRV lookups; the system's when empty.
    pub dns_nameservers: Vec<String>,
    /// How long one outbound federation request may take.
    pub request_timeout_ms: u64,
    /// How long a federationsender replica keeps a destination without
    /// renewing its lease (it renews before each transaction, so keep this
    /// above `request_timeout_ms`); a stopped replica's destinations move
    /// to another after about this long.
    pub sender_lease_ms: u64,
}

/// The ranges outbound federation refuses unless allow-listed: loopback,
/// private, shared, link-local, multicast, documentation and reserved
/// networks (as Synapse's default blacklist), and the IPv6 ranges that
/// reach IPv4 addresses through a translator or tunnel (NAT64, 6to4,
/// Teredo). IPv4 addresses mapped into IPv6 are judged as IPv4.
pub const DEFAULT_IP_RANGE_DENYLIST: [&str; 26] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "0.0.0.0/8",
    "::1/128",
    "::/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2002::/16",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
];

/// How far an acknowledged write has gone (see [`Config::durability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Flushed to disk before it is acknowledged.
    Fsync,
    /// In the operating system's page cache when acknowledged.
    Os,
}

/// Which log carries the topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// In-process and on local disk (the monolith's default).
    Embedded,
    /// Apache Kafka (the polylith's default).
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub backend: LogBackend,
    /// Kafka bootstrap servers, comma separated.
    pub kafka_brokers: String,
    /// Replication factor for topics Ganglion creates in Kafka.
    pub kafka_replication_factor: i32,
    /// Longest a Kafka fetch waits at the broker. Apache Kafka answers as soon
    /// as records arrive, so this only bounds idle polling; a broker that holds
    /// every fetch for the full wait (tansu, the test broker) adds it per hop.
    pub kafka_fetch_wait_max_ms: u32,
    /// Prefix for every topic and consumer group name, so several
    /// deployments can share one Kafka cluster.
    pub topic_prefix: String,
    /// Partitions of each topic Ganglion creates. Rooms and users are spread
    /// over them; a service can run at most this many useful replicas.
    pub partitions: u32,
    /// Embedded log: directory; defaults to `<data_dir>/log`.
    pub embedded_dir: Option<PathBuf>,
    /// How clients reach the Kafka brokers: `plaintext`, `ssl`,
    /// `sasl_plaintext` or `sasl_ssl`.
    pub kafka_security_protocol: String,
    /// PEM file of the certificate authorities the brokers' certificates
    /// are checked against (`ssl`, `sasl_ssl`); the system's when unset.
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that ask for them.
    pub kafka_ssl_certificate_location: Option<PathBuf>,
    pub kafka_ssl_key_location: Option<PathBuf>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (`sasl_*` protocols).
    pub kafka_sasl_mechanism: String,
    pub kafka_sasl_username: Option<String>,
    /// A file holding the SASL password (never the password itself in the
    /// configuration).
    pub kafka_sasl_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `ganglion_roomserver=debug,info`.
    pub log_filter: String,
    /// OTLP/gRPC endpoint for traces, e.g. `http://127.0.0.1:4317`; unset: no export.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Database connection string: `postgres://...` or `sqlite://...`.
    /// Unset: an SQLite file `<data_dir>/<service>.db`.
    pub database_url: Option<String>,
    /// Largest number of pooled database connections.
    pub database_max_connections: Option<u32>,
    /// Polylith: where this service serves its internal gRPC API (to the
    /// other services only, each call authenticated).
    pub listen: Option<SocketAddr>,
    /// Polylith: how the other services reach this one, e.g. `http://10.0.0.5:7771`.
    /// Unset: `http://<listen>`.
    pub address: Option<String>,
    /// Polylith: where this service serves its public HTTP routes to the
    /// gateway (clientapi, syncapi and federationapi).
    pub http_listen: Option<SocketAddr>,
    /// Polylith: how the gateway reaches `http_listen`. Unset: `http://<http_listen>`.
    pub http_address: Option<String>,
    /// Polylith: where this service serves `/healthz`, `/readyz` and `/metrics`.
    pub operator_listen: Option<SocketAddr>,
    /// Polylith: a name unique to this replica (consumer groups of views use it).
    /// Unset: derived from `listen`.
    pub replica_id: Option<String>,
    /// Polylith: every replica of this service, as the other processes
    /// reach them. Unset: the one at `address`/`http_address`. A replica
    /// listed here takes calls (and, for the syncapi, users) only while its
    /// `/readyz` answers 200, so replicas can be listed before they start.
    pub replicas: Vec<ReplicaConfig>,
}

/// One replica of a service, as the other processes reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaConfig {
    /// A stable name (the pod of a StatefulSet, say); users are assigned to
    /// syncapi replicas by it. Unset: `address`.
    pub name: Option<String>,
    /// Its internal gRPC API, e.g. `http://syncapi-0.syncapi:7772`.
    pub address: String,
    /// Its public HTTP routes (clientapi, syncapi, federationapi), for the gateway.
    pub http_address: Option<String>,
    /// Its operator listener (`/readyz`). Unset: taken as ready until a
    /// call to it fails.
    pub operator_address: Option<String>,
}

impl ReplicaConfig {
    /// What users are assigned by: the same in every process reading the
    /// same list.
    pub fn key(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.address)
    }
}

impl Default for Config {
    fn default() -> Self {
        let services = SERVICES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let port = 7770 + i as u16;
                (
                    name.to_string(),
                    ServiceConfig {
                        database_url: None,
                        database_max_connections: None,
                        listen: Some(SocketAddr::from(([127, 0, 0, 1], port))),
                        address: None,
                        http_listen: Some(SocketAddr::from(([127, 0, 0, 1], port + 100))),
                        http_address: None,
                        operator_listen: Some(SocketAddr::from(([127, 0, 0, 1], port + 200))),
                        replica_id: None,
                        replicas: Vec::new(),
                    },
                )
            })
            .collect();
        Config {
            server_name: "localhost".to_owned(),
            data_dir: PathBuf::from("./ganglion-data"),
            durability: Durability::Fsync,
            client: ClientConfig::default(),
            federation: FederationConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            operator: OperatorConfig::default(),
            internal: InternalConfig::default(),
            caches: CachesConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            retention: RetentionConfig::default(),
            media: MediaConfig::default(),
            push: PushConfig::default(),
            services,
        }
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9008)),
            drain_delay_ms: None,
        }
    }
}

impl LogConfig {
    /// The librdkafka properties of the Kafka security settings (TLS,
    /// SASL), the password read from its file.
    pub fn kafka_properties(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let mut properties = vec![(
            "security.protocol".to_owned(),
            self.kafka_security_protocol.clone(),
        )];
        let path = |key: &str, value: &Option<PathBuf>| {
            value
                .as_ref()
                .map(|p| (key.to_owned(), p.display().to_string()))
        };
        properties.extend(path("ssl.ca.location", &self.kafka_ssl_ca_location));
        properties.extend(path(
            "ssl.certificate.location",
            &self.kafka_ssl_certificate_location,
        ));
        properties.extend(path("ssl.key.location", &self.kafka_ssl_key_location));
        if self.kafka_security_protocol.starts_with("sasl_") {
            let username = self.kafka_sasl_username.clone().ok_or_else(|| {
                ConfigError::Invalid("log.kafka_sasl_username: required for SASL".to_owned())
            })?;
            let file = self.kafka_sasl_password_file.as_ref().ok_or_else(|| {
                ConfigError::Invalid("log.kafka_sasl_password_file: required for SASL".to_owned())
            })?;
            let password = std::fs::read_to_string(file).map_err(|e| {
                ConfigError::Invalid(format!(
                    "log.kafka_sasl_password_file: {}: {e}",
                    file.display()
                ))
            })?;
            properties.extend([
                (
                    "sasl.mechanism".to_owned(),
                    self.kafka_sasl_mechanism.clone(),
                ),
                ("sasl.username".to_owned(), username),
                (
                    "sasl.password".to_owned(),
                    password.trim_end_matches(['\n', '\r']).to_owned(),
                ),
            ]);
        }
        Ok(properties)
    }
}

impl ClientConfig {
    /// The limits of a listener serving clients.
    pub fn listener_limits(&self) -> crate::http::ListenerLimits {
        crate::http::ListenerLimits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
        }
    }
}

impl FederationConfig {
    /// The limits of a listener serving other servers.
    pub fn listener_limits(&self) -> crate::http::ListenerLimits {
        crate::http::ListenerLimits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            max_body_bytes: 1024 * 1024,
            max_connections: 10_000,
            header_read_timeout_ms: 30_000,
            max_syncs_per_user: 16,
            password_hashing_threads: 1,
            password_hashing_queue: 32,
            registration_enabled: true,
            registration_requires_token: false,
            allow_open_registration: false,
            guest_access_enabled: false,
            read_your_writes_timeout_ms: 5_000,
            presence_unavailable_after_ms: 60_000,
            presence_offline_after_ms: 300_000,
            public_base_url: None,
            refreshable_access_token_lifetime_ms: 5 * 60 * 1000,
            login_via_existing_session: false,
            login_token_lifetime_ms: 2 * 60 * 1000,
        }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8448)),
            max_body_bytes: 8 * 1024 * 1024,
            max_connections: 4_096,
            header_read_timeout_ms: 30_000,
            well_known_server: None,
            tls_certificate_path: None,
            tls_private_key_path: None,
            signing_key_path: None,
            verify_certificates: true,
            ip_range_denylist: DEFAULT_IP_RANGE_DENYLIST
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
            ip_range_allowlist: Vec::new(),
            trusted_key_servers: Vec::new(),
            dns_nameservers: Vec::new(),
            request_timeout_ms: 30_000,
            sender_lease_ms: 60_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            backend: LogBackend::Embedded,
            kafka_brokers: "127.0.0.1:9092".to_owned(),
            kafka_replication_factor: 1,
            kafka_fetch_wait_max_ms: 100,
            topic_prefix: String::new(),
            partitions: 4,
            embedded_dir: None,
            kafka_security_protocol: "plaintext".to_owned(),
            kafka_ssl_ca_location: None,
            kafka_ssl_certificate_location: None,
            kafka_ssl_key_location: None,
            kafka_sasl_mechanism: "SCRAM-SHA-512".to_owned(),
            kafka_sasl_username: None,
            kafka_sasl_password_file: None,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Pretty,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
        }
    }
}

/// Why a configuration could not be used. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, the environment or a value is not what the option takes.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// `GANGLION_*` variables that are not options (after the prefix, lower
/// case): `create-account`'s password.
pub const NOT_OPTIONS: [&str; 1] = ["password"];

impl Config {
    /// Defaults, then `file` if given, then `GANGLION_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed("GANGLION_")
                // Not options: read by commands themselves.
                .ignore(&NOT_OPTIONS)
                .split("__"),
        );
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: cross-field rules and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if ruma::ServerName::parse(&self.server_name).is_err() {
            return Err(ConfigError::Invalid(format!(
                "server_name: {:?} is not a valid Matrix server name",
                self.server_name
            )));
        }
        // Other servers treat an invalid delegation as a failed discovery:
        // refuse it here rather than break federation.
        if let Some(server) = &self.federation.well_known_server
            && crate::limits::server_name(server).is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "federation.well_known_server: {server:?} is not a server name (host[:port])"
            )));
        }
        if let Some(url) = &self.client.public_base_url
            && (!(url.starts_with("https://") || url.starts_with("http://"))
                || url.len() <= "https://".len()
                || url.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError::Invalid(format!(
                "client.public_base_url: {url:?} is not an http(s) URL"
            )));
        }
        if !matches!(
            self.log.kafka_security_protocol.as_str(),
            "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
        ) {
            return Err(ConfigError::Invalid(
                "log.kafka_security_protocol: plaintext, ssl, sasl_plaintext or sasl_ssl"
                    .to_owned(),
            ));
        }
        if !matches!(
            self.log.kafka_sasl_mechanism.as_str(),
            "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512"
        ) {
            return Err(ConfigError::Invalid(
                "log.kafka_sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512".to_owned(),
            ));
        }
        if self.log.partitions == 0 || self.log.partitions > 1024 {
            return Err(ConfigError::Invalid(
                "log.partitions: must be between 1 and 1024".to_owned(),
            ));
        }
        if self.client.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "client.max_body_bytes: must be at least 1024".to_owned(),
            ));
        }
        let open_registration =
            self.client.registration_enabled && !self.client.registration_requires_token;
        if open_registration
            && !self.client.listen.ip().is_loopback()
            && !self.client.allow_open_registration
        {
            return Err(ConfigError::Invalid(format!(
                "client.listen is {}, not loopback, and registration is open to anyone who \
                 reaches it: set client.registration_requires_token = true (tokens from \
                 `ganglion registration-token create`), client.registration_enabled = false, \
                 or client.allow_open_registration = true if that is what you want",
                self.client.listen
            )));
        }
        if self.federation.max_body_bytes < 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "federation.max_body_bytes: must be at least 1048576".to_owned(),
            ));
        }
        for (name, limit) in self.rate_limits.families() {
            if limit.per_second.is_nan() || limit.per_second <= 0.0 {
                return Err(ConfigError::Invalid(format!(
                    "rate_limits.{name}.per_second: must be greater than 0"
                )));
            }
        }
        for proxy in &self.rate_limits.trusted_proxies {
            if proxy.parse::<ipnet::IpNet>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "rate_limits.trusted_proxies: {proxy} is not CIDR"
                )));
            }
        }
        if self.media.store == MediaStoreKind::S3 && self.media.s3.bucket.is_empty() {
            return Err(ConfigError::Invalid(
                "media.s3.bucket: required when media.store = \"s3\"".to_owned(),
            ));
        }
        for size in &self.media.thumbnail_sizes {
            if MediaConfig::parse_thumbnail_size(size).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "media.thumbnail_sizes: {size:?} is not WIDTHxHEIGHT crop|scale"
                )));
            }
        }
        if self.media.url_preview_max_bytes == 0 || self.media.url_preview_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "media.url_preview_max_bytes and media.url_preview_timeout_ms: must be at least 1"
                    .to_owned(),
            ));
        }
        if self.media.thumbnail_workers == 0 {
            return Err(ConfigError::Invalid(
                "media.thumbnail_workers: must be at least 1".to_owned(),
            ));
        }
        if self.media.max_upload_bytes == 0 {
            return Err(ConfigError::Invalid(
                "media.max_upload_bytes: must be greater than 0".to_owned(),
            ));
        }
        for name in self.services.keys() {
            if !SERVICES.contains(&name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "services.{name}: unknown service (known: {})",
                    SERVICES.join(", ")
                )));
            }
        }
        for (name, service) in &self.services {
            let mut keys = std::collections::HashSet::new();
            for replica in &service.replicas {
                if !keys.insert(replica.key()) {
                    return Err(ConfigError::Invalid(format!(
                        "services.{name}.replicas: {} is listed twice",
                        replica.key()
                    )));
                }
                for url in [
                    Some(&replica.address),
                    replica.http_address.as_ref(),
                    replica.operator_address.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(ConfigError::Invalid(format!(
                            "services.{name}.replicas: {url} is not an http:// or https:// URL"
                        )));
                    }
                }
            }
            if let Some(url) = &service.database_url
                && !(url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.starts_with("sqlite:"))
            {
                return Err(ConfigError::Invalid(format!(
                    "services.{name}.database_url: must start with postgres:// or sqlite:"
                )));
            }
        }
        Ok(())
    }

    /// The section of `service`; defaults when the file has none.
    pub fn service(&self, service: &str) -> ServiceConfig {
        self.services.get(service).cloned().unwrap_or_default()
    }

    /// How other processes reach `service` over gRPC.
    pub fn service_address(&self, service: &str) -> Option<String> {
        let section = self.service(service);
        section
            .address
            .or_else(|| section.listen.map(|addr| format!("http://{addr}")))
    }

    /// Every replica of `service` as the other processes reach them: the
    /// configured list, or the one replica of `address`/`http_address`.
    pub fn service_replicas(&self, service: &str) -> Vec<ReplicaConfig> {
        let section = self.service(service);
        if !section.replicas.is_empty() {
            return section.replicas;
        }
        let Some(address) = self.service_address(service) else {
            return Vec::new();
        };
        vec![ReplicaConfig {
            name: None,
            address,
            http_address: self.service_http_address(service),
            operator_address: section.operator_listen.map(|addr| format!("http://{addr}")),
        }]
    }

    /// How the gateway reaches `service`'s public HTTP routes.
    pub fn service_http_address(&self, service: &str) -> Option<String> {
        let section = self.service(service);
        section
            .http_address
            .or_else(|| section.http_listen.map(|addr| format!("http://{addr}")))
    }

    /// Where the embedded log keeps its files.
    /// The `fs` media store's directory.
    pub fn media_dir(&self) -> PathBuf {
        self.media
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("media"))
    }

    pub fn embedded_log_dir(&self) -> PathBuf {
        self.log
            .embedded_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("log"))
    }

    /// A topic's full name, with the deployment's prefix.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.log.topic_prefix)
    }

    /// A commented TOML file with every option at its default.
    pub fn example_toml() -> String {
        let defaults = Config::default();
        let body = toml::to_string_pretty(&defaults).unwrap_or_default();
        let mut out = String::from(EXAMPLE_HEADER);
        for line in body.lines() {
            if let Some(doc) = option_doc(line) {
                out.push_str("# ");
                out.push_str(doc);
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        }
        // Options without a default value do not appear in TOML; list them.
        out.push_str(EXAMPLE_OPTIONAL);
        out
    }
}

impl Config {
    /// `docs/configuration.md`: every option with its default, its
    /// environment variable and what it does, from the same defaults and
    /// descriptions as [`Config::example_toml`] (a test keeps the file in
    /// step).
    pub fn reference_markdown() -> String {
        let defaults = Config::default();
        let body = toml::to_string_pretty(&defaults).unwrap_or_default();
        let mut out = String::from(
            "# Configuration\n\n\
             Generated from the configuration structs (`services/base/src/config.rs`);\n\
             `ganglion generate-config` prints the same as a commented TOML file. A test\n\
             fails when this file is out of date: regenerate it with\n\
             `UPDATE_DOCS=1 cargo test -p ganglion-base configuration_reference`.\n\n\
             Options come from built-in defaults, then the TOML file given with\n\
             `--config`, then the environment: `GANGLION_<SECTION>__<KEY>` (`__`\n\
             between nesting levels). Lists and tables in the environment are inline\n\
             TOML, e.g. `GANGLION_SERVICES__SYNCAPI__REPLICAS='[{name=\"syncapi-0\", ...}]'`.\n",
        );
        let mut section: Vec<String> = Vec::new();
        let mut shown_services = false;
        let mut skipping = false;
        for line in body.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.split('.').map(str::to_owned).collect();
                skipping = false;
                if section.first().map(String::as_str) == Some("services") {
                    if shown_services {
                        skipping = true;
                        continue;
                    }
                    shown_services = true;
                    skipping = false;
                    section = vec!["services".to_owned(), "<name>".to_owned()];
                    out.push_str(&format!(
                        "\n## `[services.<name>]`\n\nOne section per service: {}.\n\n",
                        SERVICES.map(|s| format!("`{s}`")).join(", ")
                    ));
                } else {
                    out.push_str(&format!("\n## `[{name}]`\n\n"));
                }
                out.push_str("| option | default | environment | meaning |\n|---|---|---|---|\n");
                continue;
            }
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            if skipping {
                continue;
            }
            if section.is_empty() && !out.contains("## Top level") {
                out.push_str(
                    "\n## Top level\n\n| option | default | environment | meaning |\n|---|---|---|---|\n",
                );
            }
            let mut env = String::from("GANGLION_");
            for part in section.iter().chain(std::iter::once(&key.to_owned())) {
                if env.len() > "GANGLION_".len() {
                    env.push_str("__");
                }
                env.push_str(&part.to_uppercase());
            }
            let shown = if section.first().map(String::as_str) == Some("services")
                && key.ends_with("listen")
            {
                "per service, below".to_owned()
            } else {
                format!("`{}`", value.replace('|', "\\|"))
            };
            out.push_str(&format!(
                "| `{key}` | {shown} | `{env}` | {} |\n",
                option_doc(line).unwrap_or("").replace('|', "\\|")
            ));
        }
        out.push_str(
            "\nEach service's listeners by default:\n\n\
             | service | `listen` (gRPC) | `http_listen` | `operator_listen` |\n|---|---|---|---|\n",
        );
        let address =
            |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        for service in SERVICES {
            let config = defaults.service(service);
            out.push_str(&format!(
                "| {service} | `{}` | `{}` | `{}` |\n",
                address(config.listen),
                address(config.http_listen),
                address(config.operator_listen)
            ));
        }
        out.push_str(
            "\n## Options with no default\n\nThese take effect only when set:\n\n```toml\n",
        );
        out.push_str(
            EXAMPLE_OPTIONAL
                .trim_start_matches("\n# Options with no default (uncomment to set):\n"),
        );
        out.push_str("```\n");
        out
    }
}

const EXAMPLE_HEADER: &str = "\
# Ganglion configuration. Every option is shown at its default.
# Any option can also be set from the environment: GANGLION_<SECTION>__<KEY>,
# e.g. GANGLION_CLIENT__LISTEN=0.0.0.0:8008 or
# GANGLION_SERVICES__ROOMSERVER__DATABASE_URL=postgres://localhost/roomserver

";

const EXAMPLE_OPTIONAL: &str = "
# Options with no default (uncomment to set):
# [client]
# public_base_url = \"https://matrix.example.org\"     # /.well-known/matrix/client; default: http://<Host>
# [federation]
# well_known_server = \"matrix.example.org:443\"      # /.well-known/matrix/server; not served when unset
# tls_certificate_path = \"/etc/ganglion/tls.crt\"   # self-signed in data_dir when unset
# tls_private_key_path = \"/etc/ganglion/tls.key\"
# signing_key_path = \"/etc/ganglion/signing.key\"   # generated in data_dir when unset
# [log]
# embedded_dir = \"/var/lib/ganglion/log\"            # default: <data_dir>/log
# kafka_ssl_ca_location = \"/etc/ganglion/kafka-ca.pem\"   # ssl, sasl_ssl: the brokers' CA
# kafka_ssl_certificate_location = \"/etc/ganglion/kafka-client.pem\"
# kafka_ssl_key_location = \"/etc/ganglion/kafka-client.key\"
# kafka_sasl_username = \"ganglion\"                  # sasl_plaintext, sasl_ssl
# kafka_sasl_password_file = \"/etc/ganglion/kafka-password\"
# [telemetry]
# otlp_endpoint = \"http://127.0.0.1:4317\"            # OTLP/gRPC trace export
# [operator]
# drain_delay_ms = 2000                               # default: 2000 polylith, 0 monolith
# [internal]
# secret_file = \"/etc/ganglion/internal.secret\"     # default: <data_dir>/internal.secret
# [media]
# path = \"/var/lib/ganglion/media\"                 # the fs store; default: <data_dir>/media
# unauthenticated_before_ms = 1725148800000          # legacy /media/v3/download serves older media only
# [media.s3]
# endpoint = \"https://s3.eu-west-1.amazonaws.com\"  # default: AWS by region
# access_key_id = \"AKIA...\"
# secret_access_key_file = \"/etc/ganglion/s3.secret\"
# [services.roomserver]                               # likewise for every service
# database_url = \"postgres://ganglion@localhost/roomserver\"  # default: SQLite in data_dir
# database_max_connections = 10
# address = \"http://roomserver:7771\"                # default: http://<listen>
# http_address = \"http://clientapi:7877\"            # default: http://<http_listen>
# replica_id = \"syncapi-0\"                           # default: derived from listen
# [[services.syncapi.replicas]]                       # every replica, as callers reach them
# name = \"syncapi-0\"                                 # users are placed by this name
# address = \"http://syncapi-0.syncapi:7772\"
# http_address = \"http://syncapi-0.syncapi:7872\"
# operator_address = \"http://syncapi-0.syncapi:7972\" # its /readyz decides if it takes calls
";

fn option_doc(line: &str) -> Option<&'static str> {
    let key = line.split('=').next()?.trim();
    Some(match key {
        "server_name" => "The Matrix server name: the part after the colon in user IDs.",
        "data_dir" => "Databases, signing key, TLS certificate and embedded log live here.",
        "durability" => {
            "fsync (on disk before acknowledged) or os (page cache; faster, a power cut may lose the last writes)."
        }
        "max_body_bytes" => "Request bodies larger than this get 413 M_TOO_LARGE.",
        "max_connections" => "Open connections at most on this listener.",
        "header_read_timeout_ms" => "How long a request's headers may take to arrive.",
        "password_hashing_threads" => "Threads hashing passwords (19 MiB each).",
        "password_hashing_queue" => "Password checks waiting at most; more get 429.",
        "max_syncs_per_user" => "Long-polling /sync requests one user may hold open at once.",
        "transaction_ids_hours" => "Federation transaction IDs are kept this long.",
        "dead_destination_days" => "A destination failing this long has its queue dropped.",
        "processed_inputs_days" => {
            "The roomserver's record of processed inputs (and of clients' sends by transaction ID) is kept this long."
        }
        "server_keys" => "Other servers' signing keys kept in memory.",
        "destinations" => "Other servers' discovered addresses kept in memory.",
        "interned_names" => "Event types and state keys the roomserver keeps in memory, each.",
        "rate_limited_clients" => "Clients and accounts each rate limit tracks.",
        "gateway_tokens" => "Access tokens whose user the gateway remembers (30 s each).",
        "secret_file" => "Internal gRPC secrets, one per line (first sent, any accepted).",
        "registration_enabled" => "Whether POST /register creates accounts.",
        "registration_requires_token" => "Whether registering takes a registration token.",
        "allow_open_registration" => {
            "Allow registration without a token on a listener that is not loopback."
        }
        "guest_access_enabled" => "Whether POST /register?kind=guest creates guest accounts.",
        "enabled" => "Whether rate limits apply (turn off only for tests and benchmarks).",
        "trusted_proxies" => "Proxies (CIDR) whose X-Forwarded-For names the client.",
        "per_second" => "Sustained requests per second.",
        "burst" => "Requests allowed at once before M_LIMIT_EXCEEDED.",
        "presence_unavailable_after_ms" => "A user who stops syncing this long is unavailable.",
        "presence_offline_after_ms" => "A user who stops syncing this long is offline.",
        "read_your_writes_timeout_ms" => {
            "How long a write waits for /sync to reflect it before answering."
        }
        "backend" => "embedded (in-process, on disk) or kafka.",
        "kafka_brokers" => "Kafka bootstrap servers, comma separated.",
        "kafka_replication_factor" => "Replication factor of topics Ganglion creates.",
        "kafka_fetch_wait_max_ms" => {
            "Longest a Kafka fetch waits at the broker (idle polling bound)."
        }
        "topic_prefix" => "Prefix for topic and consumer group names.",
        "kafka_security_protocol" => "plaintext, ssl, sasl_plaintext or sasl_ssl.",
        "kafka_sasl_mechanism" => "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (sasl_* protocols).",
        "partitions" => "Partitions per topic: the most useful replicas of a writer service.",
        "log_format" => "pretty or json.",
        "log_filter" => "A tracing filter such as info or ganglion_roomserver=debug,info.",
        "listen" => "Address to listen on.",
        "drain_delay_ms" => "On SIGTERM, /readyz answers 503 this long before listeners close.",
        "http_listen" => "Polylith: public HTTP routes, for the gateway.",
        "operator_listen" => "Polylith: /healthz, /readyz and /metrics.",
        "verify_certificates" => "Whether remote servers' TLS certificates must be valid.",
        "ip_range_denylist" => "CIDR ranges outbound federation never connects to.",
        "ip_range_allowlist" => "CIDR ranges allowed despite the deny list.",
        "trusted_key_servers" => "Notaries asked for server keys (e.g. \"matrix.org\").",
        "dns_nameservers" => "DNS servers (ip:port) for SRV lookups; the system's when empty.",
        "request_timeout_ms" => "How long one outbound federation request may take.",
        "sender_lease_ms" => "How long a federationsender replica holds a destination unrenewed.",
        "replicas" => "Every replica of the service, as its callers reach them (see below).",
        "store" => "Where media blobs live: fs (media.path) or s3 (media.s3).",
        "max_upload_bytes" => "Uploads larger than this get 413 M_TOO_LARGE (m.upload.size).",
        "user_quota_bytes" => {
            "Media bytes one user may upload in all (403 M_RESOURCE_LIMIT_EXCEEDED past it); 0: none."
        }
        "max_pending_uploads" => "IDs from POST /media/v1/create one user may hold unfilled.",
        "pending_upload_expiry_ms" => "How long an ID from /create waits for its upload.",
        "max_download_wait_ms" => "The longest a download waits for media not uploaded yet.",
        "bucket" => "The S3 bucket of media blobs.",
        "thumbnail_sizes" => "Thumbnails made at upload and kept (WIDTHxHEIGHT crop|scale).",
        "max_thumbnail_pixels" => "Images with more pixels are not thumbnailed (413 M_TOO_LARGE).",
        "thumbnail_workers" => "Thumbnails made at once, each on a thread of its own.",
        "region" => "The S3 region.",
        "prefix" => "Prefix of every media object's key in the bucket.",
        "allow_http" => "Whether a plain http:// S3 endpoint is allowed.",
        "url_previews" => "Whether /preview_url fetches linked pages (through the deny list).",
        "url_preview_max_bytes" => "The most of a page read for its preview.",
        "url_preview_timeout_ms" => "How long fetching a page or its image for a preview may take.",
        _ => return None,
    })
}

fn describe_figment_error(error: figment::Error) -> String {
    let mut parts = Vec::new();
    for e in error {
        let key = if e.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", e.path.join("."))
        };
        parts.push(format!("{key}{}", e.kind));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/configuration.md` is what [`Config::reference_markdown`]
    /// makes of today's options.
    #[test]
    fn configuration_reference_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let made = Config::reference_markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, &made).expect("write docs/configuration.md");
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == made,
            "docs/configuration.md is out of date: run UPDATE_DOCS=1 cargo test -p ganglion-base configuration_reference"
        );
        for needed in [
            "GANGLION_CLIENT__LISTEN",
            "GANGLION_SERVICES__<NAME>__REPLICAS",
            "GANGLION_LOG__PARTITIONS",
        ] {
            assert!(made.contains(needed), "{needed}");
        }
    }

    /// What discovery announces must be usable: an invalid delegation
    /// would make other servers fail to find this one.
    #[test]
    fn discovery_settings_are_checked() {
        let check = |server: Option<&str>, url: Option<&str>| {
            let mut config = Config::default();
            config.federation.well_known_server = server.map(str::to_owned);
            config.client.public_base_url = url.map(str::to_owned);
            config.validate().is_ok()
        };
        assert!(check(None, None));
        assert!(check(
            Some("matrix.example.org:443"),
            Some("https://matrix.example.org")
        ));
        assert!(check(Some("[::1]:8448"), Some("http://127.0.0.1:8008")));
        for bad in [
            "https://matrix.example.org",
            "host:0",
            "host:99999",
            "",
            "a b",
        ] {
            assert!(!check(Some(bad), None), "{bad}");
        }
        for bad in ["matrix.example.org", "ftp://x", "https://", "https://a b"] {
            assert!(!check(None, Some(bad)), "{bad}");
        }
    }

    #[test]
    fn example_config_parses_back_to_the_defaults() {
        let example = Config::example_toml();
        let parsed: Config = Figment::new()
            .merge(Toml::string(&example))
            .extract()
            .expect("example parses");
        assert_eq!(parsed.server_name, "localhost");
        assert_eq!(parsed.client.listen, Config::default().client.listen);
        assert_eq!(parsed.services.len(), SERVICES.len());
        assert!(example.contains("# Request bodies larger than this"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[client]\nlisten_port = 3\n"))
            .extract::<Config>()
            .map_err(describe_figment_error)
            .expect_err("unknown key rejected");
        assert!(err.contains("listen_port"), "{err}");
    }

    /// Replicas are given in an environment variable as an inline list of
    /// tables (how the polylith's containers are configured).
    #[test]
    fn replicas_from_an_environment_value() {
        let value: figment::value::Value = r#"[{name="syncapi-0", address="http://a:7772", http_address="http://a:7872", operator_address="http://a:7972"}, {address="http://b:7772"}]"#
            .parse()
            .expect("infallible");
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default("services.syncapi.replicas", value))
            .extract()
            .expect("replicas parse");
        config.validate().expect("valid");
        let replicas = config.service_replicas("syncapi");
        assert_eq!(replicas.len(), 2);
        assert_eq!(replicas[0].key(), "syncapi-0");
        assert_eq!(replicas[1].key(), "http://b:7772");
        assert_eq!(
            replicas[0].operator_address.as_deref(),
            Some("http://a:7972")
        );
        // Without a list: the one replica of the service's own addresses.
        let single = config.service_replicas("clientapi");
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].address, "http://127.0.0.1:7777");
        assert_eq!(
            single[0].operator_address.as_deref(),
            Some("http://127.0.0.1:7977")
        );
        // The same replica twice is refused.
        let twice: figment::value::Value = r#"[{address="http://b:1"}, {address="http://b:1"}]"#
            .parse()
            .expect("infallible");
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default("services.syncapi.replicas", twice))
            .extract()
            .expect("parses");
        assert!(config.validate().is_err());
    }

    #[test]
    fn bad_value_is_named() {
        let err = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[log]\npartitions = \"many\"\n"))
            .extract::<Config>()
            .map_err(describe_figment_error)
            .expect_err("bad value rejected");
        assert!(err.contains("log.partitions"), "{err}");
    }

    /// Open registration on a public listener is refused unless meant;
    /// loopback (the zero-config monolith) stays easy.
    #[test]
    fn open_registration_on_a_public_listener_must_be_meant() {
        let public = |change: fn(&mut ClientConfig)| {
            let mut config = Config::default();
            config.client.listen = SocketAddr::from(([0, 0, 0, 0], 8008));
            change(&mut config.client);
            config.validate()
        };
        assert!(Config::default().validate().is_ok());
        let refused = public(|_| {}).expect_err("refused");
        assert!(refused.to_string().contains("registration"), "{refused}");
        assert!(public(|c| c.registration_requires_token = true).is_ok());
        assert!(public(|c| c.registration_enabled = false).is_ok());
        assert!(public(|c| c.allow_open_registration = true).is_ok());
    }

    #[test]
    fn kafka_security_settings_become_client_properties() {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = dir.path().join("kafka-password");
        std::fs::write(&password, "s3cret\n").expect("write");
        let mut log = LogConfig {
            kafka_security_protocol: "sasl_ssl".into(),
            kafka_ssl_ca_location: Some("/etc/ca.pem".into()),
            kafka_sasl_username: Some("ganglion".into()),
            kafka_sasl_password_file: Some(password),
            ..LogConfig::default()
        };
        let properties = log.kafka_properties().expect("properties");
        for (key, value) in [
            ("security.protocol", "sasl_ssl"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "ganglion"),
            ("sasl.password", "s3cret"),
        ] {
            assert!(
                properties.contains(&(key.to_owned(), value.to_owned())),
                "{key}: {properties:?}"
            );
        }
        log.kafka_sasl_username = None;
        assert!(log.kafka_properties().is_err(), "SASL needs a user");
        let plain = LogConfig::default().kafka_properties().expect("properties");
        assert_eq!(
            plain,
            [("security.protocol".to_owned(), "plaintext".to_owned())]
        );
        let bad = Config {
            log: LogConfig {
                kafka_security_protocol: "tls".into(),
                ..LogConfig::default()
            },
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn invalid_server_name_is_refused() {
        let config = Config {
            server_name: "not a name".into(),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
