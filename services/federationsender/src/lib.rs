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
//! - Owns: its database (joined hosts, per-destination queues, retry state).
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
    let consumer = ganglion_api::consume::spawn(
        log.clone(),
        &format!("{}federationsender", config.log.topic_prefix),
        &[topics.roomserver_output.as_str()],
        Arc::new(consumers::roomserver_output::OutputConsumer {
            storage: storage.clone(),
            queues: queues.clone(),
            server_name: config.server_name.clone(),
        }),
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
