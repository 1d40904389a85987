//! federationsender: delivers our users' events to the other servers in
//! their rooms.
//!
//! - Consumes: `roomserver.output` as a consumer group
//!   (`consumers/roomserver_output.rs`): membership changes keep each
//!   room's joined hosts; each event a local user sent is queued for every
//!   server in the room. `edu.typing` and `edu.receipt`
//!   (`consumers/edus.rs`): local users' typing and public receipts are
//!   queued as EDUs likewise; `edu.presence` and `keyserver.key_changes`:
//!   local users' presence and device changes as `m.presence` and
//!   `m.device_list_update` EDUs; `edu.to_device`: local users' messages
//!   to remote users' devices as `m.direct_to_device` EDUs.
//! - Sends: per destination, one transaction of at most 50 PDUs in flight,
//!   with exponential backoff (`queues.rs`), through the federationapi,
//!   which signs and delivers it.
//! - Scales out: replicas share the database and split the partitions of
//!   `roomserver.output` (one consumer group); work for a destination is
//!   announced on `federationsender.destinations`, keyed by destination,
//!   whose partitions spread destinations over the replicas
//!   (`consumers/destinations.rs`); a lease in the database keeps each
//!   destination to one replica at a time.
//! - Owns: its database (joined hosts, per-destination queues, retry
//!   state). The joined hosts are a view of `roomserver.output`, stored
//!   with the position of each partition they reflect; [`rebuild`] builds
//!   them afresh into another database, and a federationsender started on
//!   such a database first applies the records its consumer group handled
//!   elsewhere since ([`catch_up`]).
//!
#![forbid(unsafe_code)]

mod consumers;
mod internal_events;
mod queues;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ganglion_api::federation::FederationHandle;
use ganglion_api::topics::Topics;
use ganglion_base::health::{DatabaseReady, Health};
use ganglion_base::{Config, Database, DatabaseError};
use ganglion_log::Log;
use tokio::sync::watch;

use storage::Storage;

/// A started federationsender.
pub struct Started {
    pub health: Health,
}

/// Why the federationsender could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("log")]
    Log(#[from] ganglion_log::LogError),
    #[error("reading the queues: {0}")]
    Storage(String),
}

/// Opens the database, resumes the queues left from before, and joins the
/// `roomserver.output` consumer group.
pub async fn start(
    config: &Config,
    log: Arc<dyn Log>,
    federation: FederationHandle,
    shutdown: watch::Receiver<bool>,
) -> Result<Started, StartError> {
    let db = Database::open_for_service_one_writer(config, "federationsender", storage::MIGRATIONS)
        .await?;
    internal_events::export();
    let storage = Storage { db: db.clone() };
    let pruned = storage.clone();
    let keep = config.retention.dead_destination();
    ganglion_base::pruning::spawn(
        "dead_destination_queues",
        ganglion_base::pruning::EVERY,
        move || {
            let storage = pruned.clone();
            async move {
                storage
                    .prune_dead_destinations(ganglion_base::clock::ago_ms(keep))
                    .await
            }
        },
    );
    let topics = Topics::new(&config.log.topic_prefix);
    log.ensure_topic(&topics.roomserver_output, config.log.partitions)
        .await?;
    log.ensure_topic(&topics.federationsender_destinations, config.log.partitions)
        .await?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let listen = config
        .service("federationsender")
        .listen
        .map(|l| l.to_string())
        .unwrap_or_else(|| "monolith".to_owned());
    let owner = format!("{host}/{listen}/{}", config.data_dir.display());
    let queues = queues::Queues::new(
        storage.clone(),
        federation,
        (log.clone(), topics.federationsender_destinations.clone()),
        (owner, config.federation.sender_lease_ms),
        shutdown.clone(),
    );
    // Whatever waits from before is announced at once, then every half
    // lease what no replica holds.
    let waiting = storage
        .unleased_destinations_with_work(queues::now_ms())
        .await
        .map_err(|e| StartError::Storage(format!("{e:?}")))?;
    queues.announce(&waiting).await;
    tokio::spawn(queues.clone().sweep());
    let delivery = ganglion_api::consume::spawn(
        log.clone(),
        &format!("{}federationsender-destinations", config.log.topic_prefix),
        &[topics.federationsender_destinations.as_str()],
        Arc::new(consumers::destinations::DestinationConsumer {
            queues: queues.clone(),
        }),
        shutdown.clone(),
    )
    .await?;
    for topic in [
        &topics.edu_typing,
        &topics.edu_receipt,
        &topics.edu_presence,
        &topics.keyserver_key_changes,
        &topics.edu_to_device,
    ] {
        log.ensure_topic(topic, config.log.partitions).await?;
    }
    let group = output_group(config);
    catch_up(&log, &storage, &group, &topics.roomserver_output, config).await?;
    let consumer = ganglion_api::consume::spawn(
        log.clone(),
        &group,
        &[topics.roomserver_output.as_str()],
        Arc::new(consumers::roomserver_output::OutputConsumer::new(
            storage.clone(),
            Some(queues.clone()),
            config.server_name.clone(),
        )),
        shutdown.clone(),
    )
    .await?;
    // EDUs in a group of their own, so typing never waits behind a busy room.
    let edus = ganglion_api::consume::spawn(
        log,
        &format!("{}federationsender-edus", config.log.topic_prefix),
        &[
            topics.edu_typing.as_str(),
            topics.edu_receipt.as_str(),
            topics.edu_presence.as_str(),
            topics.keyserver_key_changes.as_str(),
            topics.edu_to_device.as_str(),
        ],
        Arc::new(consumers::edus::EduConsumer {
            storage,
            queues,
            server_name: config.server_name.clone(),
            topics: topics.clone(),
        }),
        shutdown,
    )
    .await?;
    let mut health = Health::default();
    health.add(Arc::new(DatabaseReady {
        service: "federationsender",
        db,
    }));
    health.add(consumer);
    health.add(edus);
    health.add(delivery);
    Ok(Started { health })
}

/// The consumer group of `roomserver.output`, whose committed offsets say
/// how far delivery has gone.
fn output_group(config: &Config) -> String {
    format!("{}federationsender", config.log.topic_prefix)
}

/// Brings the joined hosts up to the consumer group's committed offsets
/// where the database stands behind them: a database rebuilt beside the
/// live one and switched to later misses what the group handled in
/// between. Those records were delivered from the old database, so they
/// only update the joined hosts. A database the group never moved past
/// (the usual case) reads nothing.
async fn catch_up(
    log: &Arc<dyn Log>,
    storage: &Storage,
    group: &str,
    topic: &str,
    config: &Config,
) -> Result<(), StartError> {
    let committed = log.committed_offsets(group, topic).await?;
    let stored = stored_positions(storage, committed.len()).await?;
    let mut from = Vec::with_capacity(committed.len());
    let mut to = Vec::with_capacity(committed.len());
    for (stored, committed) in stored.into_iter().zip(&committed) {
        match (stored, *committed) {
            (Some(stored), Some(committed)) if stored < committed => {
                from.push(stored);
                to.push(committed);
            }
            _ => {
                let at = committed.unwrap_or(0);
                from.push(at);
                to.push(at);
            }
        }
    }
    let behind: u64 = from.iter().zip(&to).map(|(f, t)| t - f).sum();
    if behind == 0 {
        return Ok(());
    }
    tracing::info!(
        records = behind,
        "the joined hosts stand behind the consumer group: applying what it handled elsewhere"
    );
    let (done, _) = watch::channel(Vec::new());
    consumers::roomserver_output::replay(
        log.clone(),
        topic,
        consumers::roomserver_output::OutputConsumer::new(
            storage.clone(),
            None,
            config.server_name.clone(),
        ),
        &from,
        &to,
        &done,
    )
    .await?;
    Ok(())
}

/// The stored position of each of `partitions` partitions (`None` where
/// nothing was applied).
async fn stored_positions(
    storage: &Storage,
    partitions: usize,
) -> Result<Vec<Option<u64>>, StartError> {
    let mut positions = vec![None; partitions];
    for (partition, next) in storage
        .output_positions()
        .await
        .map_err(|e| StartError::Storage(format!("{e:?}")))?
    {
        if let Some(slot) = positions.get_mut(partition as usize) {
            *slot = Some(next);
        }
    }
    Ok(positions)
}

/// A rebuild of the joined hosts under way (see [`rebuild`]).
pub struct Rebuild {
    done: watch::Receiver<Vec<u64>>,
    targets: Vec<u64>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl Rebuild {
    /// For each partition of `roomserver.output`: (records applied, where
    /// the live federationsenders stood when the rebuild began).
    pub fn progress(&self) -> Vec<(u64, u64)> {
        let done = self.done.borrow();
        self.targets
            .iter()
            .enumerate()
            .map(|(partition, target)| (done.get(partition).copied().unwrap_or(0), *target))
            .collect()
    }

    /// Waits for the rebuild to end: every partition applied up to its
    /// target and the positions stored.
    pub async fn finish(self) -> Result<(), StartError> {
        self.task
            .await
            .map_err(|e| StartError::Storage(format!("the rebuild stopped: {e}")))?
    }
}

/// `ganglion rebuild federationsender`: builds the joined hosts into the
/// database `config` names (a fresh one beside the live one, or one an
/// interrupted rebuild left, which resumes at its stored positions) from
/// `roomserver.output`, up to where the live federationsenders' consumer
/// group stands now. Nothing is queued: what the group has handled was
/// delivered from the live database. Stopping there (not at the log's end)
/// keeps the rebuilt view behind the group whenever it is switched to, so
/// [`catch_up`] applies what the group handled since and the group itself
/// delivers the rest: no event is left undelivered, none is sent twice.
pub async fn rebuild(config: &Config, log: Arc<dyn Log>) -> Result<Rebuild, StartError> {
    let db = Database::open_for_service_one_writer(config, "federationsender", storage::MIGRATIONS)
        .await?;
    let storage = Storage { db };
    let topic = Topics::new(&config.log.topic_prefix).roomserver_output;
    log.ensure_topic(&topic, config.log.partitions).await?;
    let targets: Vec<u64> = log
        .committed_offsets(&output_group(config), &topic)
        .await?
        .into_iter()
        .map(|committed| committed.unwrap_or(0))
        .collect();
    let from: Vec<u64> = stored_positions(&storage, targets.len())
        .await?
        .into_iter()
        .map(|next| next.unwrap_or(0))
        .collect();
    let (done, watching) = watch::channel(from.clone());
    let applying = consumers::roomserver_output::OutputConsumer::new(
        storage.clone(),
        None,
        config.server_name.clone(),
    );
    let to = targets.clone();
    let task = tokio::spawn(async move {
        consumers::roomserver_output::replay(log, &topic, applying, &from, &to, &done).await?;
        // Records that changed no membership stored no position: the
        // view stands at the targets now, whatever they held.
        storage
            .advance_positions(&to)
            .await
            .map_err(|e| StartError::Storage(format!("{e:?}")))
    });
    Ok(Rebuild {
        done: watching,
        targets,
        task,
    })
}
