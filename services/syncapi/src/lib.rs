//! syncapi: the read side of rooms.
//!
//! - Serves: `/sync`, `/rooms/{roomId}/messages`, filters (`routes/`), and
//!   the [`SyncApi`](ganglion_api::sync::SyncApi) that lets writers wait
//!   until a write is visible (`api.rs`).
//! - Consumes: `roomserver.output` (`consumers/roomserver_output.rs`) and
//!   the ephemeral and per-user topics `edu.typing`, `edu.receipt`,
//!   `edu.presence`, `edu.to_device`, `userapi.account_data`,
//!   `keyserver.key_changes` (`consumers/ephemeral.rs`), every partition from the positions stored
//!   in its own database (no consumer group: positions commit with the
//!   data): each replica is a view built from the log and can be dropped
//!   and rebuilt from it.
//! - Produces: `edu.presence`, when `/sync`'s `set_presence` or
//!   `PUT /presence` changes a user's presence (`presence.rs`).
//! - Asks: the federationapi to backfill a room's history when
//!   `/messages` pages past the oldest event held (`routes/messages.rs`);
//!   what it takes arrives as historical events in `roomserver.output`
//!   and sits below every live position (`storage/history.rs`).
//! - Owns: its copy of timelines and current state, the ephemeral streams,
//!   consumed positions, filters.
//! - Operators: the media a room's events name, for `ganglion media …
//!   --room` (`operator.rs`).
//!
//! Sync tokens are log positions (`sync_token.rs`), valid on any replica;
//! `notifier.rs` wakes a long-polling request only for its own user's news.
#![forbid(unsafe_code)]

mod api;
mod consumers;
mod device_lists;
mod filter;
mod internal_events;
mod lazy_members;
mod notifications;
mod notifier;
pub mod operator;
mod presence;
mod pruning;
mod routes;
mod sliding;
mod storage;
mod summary;
mod sync_token;
mod user_settings;
mod visibility;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ganglion_api::federation::FederationHandle;
use ganglion_api::keys::KeysHandle;
use ganglion_api::topics::Topics;
use ganglion_api::users::UsersHandle;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database};
use ganglion_log::Log;
use tokio::sync::watch;

use storage::Storage;
use sync_token::{Stream, SyncToken};

/// The syncapi service; implements `SyncApi` and serves the sync routes.
pub struct SyncService {
    storage: Storage,
    server_name: String,
    users: UsersHandle,
    /// One-time key counts and fallback keys for `/sync`.
    keys: KeysHandle,
    /// Backfill, when `/messages` pages past the history held.
    federation: FederationHandle,
    log: Arc<dyn Log>,
    topics: Topics,
    partitions: usize,
    /// The next offset to consume per stream and partition (stream-major,
    /// as in tokens); bumped after each commit, which wakes position
    /// waiters and requests catching up with a token.
    positions: watch::Sender<Vec<u64>>,
    /// Wakes the long-polling requests a consumed record concerns.
    notifier: notifier::Notifier,
    /// Users this process saw syncing, for presence by inactivity.
    presence: presence::Activity,
    /// The membership events each device was sent (lazy-loading).
    lazy_members: lazy_members::LazyMembers,
    /// The push rules users changed, for notification counts.
    push_rules: user_settings::SettingCache<ruma::push::Ruleset>,
    /// The users each user ignores.
    ignored_users: user_settings::SettingCache<std::collections::HashSet<String>>,
    /// Turns true when the process is asked to stop: long-polls answer at
    /// once instead of holding the drain.
    closing: watch::Sender<bool>,
}

impl ganglion_api::users::Authenticates for SyncService {
    fn users(&self) -> &UsersHandle {
        &self.users
    }
}

impl SyncService {
    /// The users `user_id` ignores, as this syncapi last consumed them.
    pub(crate) async fn ignored(
        &self,
        user_id: &str,
    ) -> Result<filter::Ignored, ganglion_base::MatrixError> {
        Ok(filter::Ignored::new(
            self.ignored_users.of_user(&self.storage, user_id).await?,
        ))
    }

    /// The process is stopping: every long-poll answers now, and new ones
    /// do not wait.
    pub fn stop_long_polls(&self) {
        let _ = self.closing.send(true);
    }

    /// Waits for news of the user `wake` watches until `deadline`: true
    /// when there is some to look at, false at the deadline or when the
    /// process is stopping (the long-poll then answers with what it has,
    /// and the client's next request goes to a replica that stays).
    pub(crate) async fn wait_for_news(
        &self,
        wake: &mut watch::Receiver<u64>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let mut closing = self.closing.subscribe();
        if *closing.borrow() {
            return false;
        }
        tokio::select! {
            news = tokio::time::timeout_at(deadline, wake.changed()) => matches!(news, Ok(Ok(()))),
            _ = closing.wait_for(|stop| *stop) => false,
        }
    }

    /// The position every response built now reflects.
    pub(crate) fn current_token(&self) -> SyncToken {
        SyncToken::new(self.positions.borrow().clone(), self.partitions)
    }

    /// How far this view is: for every partition of every topic it reads,
    /// (records consumed, records in the log now). A view is caught up with
    /// a moment when each partition's consumed count reaches the log's end
    /// as it stood then.
    pub async fn progress(&self) -> Result<Vec<(u64, u64)>, ganglion_log::LogError> {
        let positions = self.positions.borrow().clone();
        let mut out = Vec::with_capacity(positions.len());
        for (index, stream) in Stream::ALL.into_iter().enumerate() {
            let ends = self.log.end_offsets(stream.topic(&self.topics)).await?;
            for partition in 0..self.partitions {
                let consumed = positions
                    .get(index * self.partitions + partition)
                    .copied()
                    .unwrap_or(0);
                out.push((consumed, ends.get(partition).copied().unwrap_or(0)));
            }
        }
        Ok(out)
    }

    /// Marks a record of `stream` as consumed (after its transaction committed).
    fn advance(&self, stream: Stream, record: &ganglion_log::Record) {
        self.advance_all(stream, std::slice::from_ref(record));
    }

    /// Marks records of `stream` as consumed (after their transaction
    /// committed), waking position waiters once.
    fn advance_all(&self, stream: Stream, records: &[ganglion_log::Record]) {
        self.positions.send_modify(|positions| {
            for record in records {
                if let Some(next) = stream
                    .slot(record.partition, self.partitions)
                    .and_then(|slot| positions.get_mut(slot))
                {
                    *next = (*next).max(record.offset + 1);
                }
            }
        });
    }
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

/// The path patterns of this service's HTTP routes: the gateway forwards
/// exactly these to it.
pub fn route_paths() -> Vec<String> {
    routes::table().into_paths()
}

/// Opens the database and starts consuming `roomserver.output` as replica `replica_id`.
pub async fn start(
    config: &Config,
    log: Arc<dyn Log>,
    users: UsersHandle,
    keys: KeysHandle,
    federation: FederationHandle,
    replica_id: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<Started, StartError> {
    // A view: its positions commit with its data, so a power cut that
    // loses its last commits makes it read those records again.
    let db = Database::open_without_flush(config, "syncapi", storage::MIGRATIONS).await?;
    let storage = Storage::new(db.clone());
    let topics = Topics::new(&config.log.topic_prefix);
    for stream in Stream::ALL {
        log.ensure_topic(stream.topic(&topics), config.log.partitions)
            .await?;
    }
    let partitions = config.log.partitions as usize;
    let storage_error = |e: storage::StorageError| StartError::Storage(format!("{e:?}"));
    let mut positions = vec![0_u64; Stream::ALL.len() * partitions];
    for (stream, partition, next) in storage.positions().await.map_err(storage_error)? {
        if let Some(slot) = stream
            .slot(partition, partitions)
            .and_then(|slot| positions.get_mut(slot))
        {
            *slot = next;
        }
    }
    let joined = storage.all_joined().await.map_err(storage_error)?;
    let service = Arc::new(SyncService {
        storage,
        server_name: config.server_name.clone(),
        users,
        keys,
        federation,
        log: log.clone(),
        topics: topics.clone(),
        partitions,
        positions: watch::Sender::new(positions.clone()),
        notifier: notifier::Notifier::new(joined),
        presence: presence::Activity::new(
            Duration::from_millis(config.client.presence_unavailable_after_ms),
            Duration::from_millis(config.client.presence_offline_after_ms),
            config.client.max_syncs_per_user,
        ),
        lazy_members: Default::default(),
        push_rules: user_settings::push_rules(),
        ignored_users: user_settings::ignored_users(),
        closing: watch::channel(false).0,
    });
    // The view's positions are stored with its data, in the transaction of
    // each record (or batch of records), so it resumes exactly where it
    // stopped: no consumer group.
    // One reader per topic, so a busy room stream never delays typing.
    let mut consumers = Vec::new();
    for (index, stream) in Stream::ALL.into_iter().enumerate() {
        let starts = [(
            stream.topic(&topics),
            positions[index * partitions..(index + 1) * partitions].to_vec(),
        )];
        let handler: Arc<dyn ganglion_api::consume::RecordHandler> = match stream {
            Stream::Room => Arc::new(consumers::roomserver_output::OutputConsumer {
                service: service.clone(),
            }),
            _ => Arc::new(consumers::ephemeral::StreamConsumer {
                service: service.clone(),
                stream,
            }),
        };
        consumers.push(
            ganglion_api::consume::spawn_reader(
                log.clone(),
                &format!(
                    "{}syncapi-{replica_id}-{}",
                    config.log.topic_prefix,
                    stream.name()
                ),
                &starts,
                handler,
                shutdown.clone(),
            )
            .await?,
        );
    }
    presence::spawn_sweeper(service.clone(), shutdown);
    let cursor = Arc::new(std::sync::Mutex::new(String::new()));
    let pruned = service.clone();
    ganglion_base::pruning::spawn(
        "to_device_of_gone_devices",
        ganglion_base::pruning::EVERY,
        move || {
            let (service, cursor) = (pruned.clone(), cursor.clone());
            async move {
                let users = service.users.clone();
                pruning::prune_gone_devices(&service.storage, &cursor, |user_id| {
                    let users = users.clone();
                    async move {
                        users
                            .list_devices(ganglion_api::proto::userapi::ListDevicesRequest {
                                user_id,
                            })
                            .await
                            .map(|r| r.device_ids)
                    }
                })
                .await
            }
        },
    );
    let pruned = service.clone();
    ganglion_base::pruning::spawn(
        "read_notifications",
        ganglion_base::pruning::EVERY,
        move || {
            let service = pruned.clone();
            async move {
                service
                    .storage
                    .prune_read_notifications(ganglion_base::clock::ago_ms(
                        routes::NOTIFICATIONS_KEPT,
                    ))
                    .await
            }
        },
    );
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "syncapi",
        db,
    }));
    for consumer in consumers {
        health.add(consumer);
    }
    Ok(Started {
        routes: routes::router(service.clone()),
        api: service,
        health,
    })
}
