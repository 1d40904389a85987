//! Where and when each device was last seen: noted in memory on every
//! authenticated request (the address behind trusted proxies, the user
//! agent, the time) and written to the database every few seconds, so the
//! request path takes a lock and a map insert, never a write. What a
//! replica has not written yet is read over the database's rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::storage::Storage;

/// How often noted sightings are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// The most devices noted between writes (more are dropped until then).
const MAX_PENDING: usize = 100_000;

/// One sighting of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) ip: String,
    pub(crate) user_agent: Option<String>,
    pub(crate) ts: i64,
}

/// Sightings not written yet, by (localpart, device ID).
#[derive(Default)]
pub(crate) struct LastSeen {
    pending: Mutex<HashMap<(String, String), Seen>>,
}

impl LastSeen {
    pub(crate) fn note(&self, localpart: &str, device_id: &str, seen: Seen) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let key = (localpart.to_owned(), device_id.to_owned());
        if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
            return;
        }
        pending.insert(key, seen);
    }

    /// The noted sighting of a device, if one waits to be written.
    pub(crate) fn pending(&self, localpart: &str, device_id: &str) -> Option<Seen> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(localpart.to_owned(), device_id.to_owned()))
            .cloned()
    }

    /// Writes what was noted (what fails to be written is dropped: the
    /// next sighting brings it again).
    pub(crate) async fn flush(&self, storage: &Storage) {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for ((localpart, device_id), seen) in taken {
            if let Err(error) = storage.set_last_seen(&localpart, &device_id, &seen).await {
                tracing::warn!(%error, "a device's last sighting was not written");
            }
        }
    }

    /// Writes what was noted every [`FLUSH_EVERY`], for the process's life.
    pub(crate) fn spawn_flusher(this: Arc<LastSeen>, storage: Storage) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FLUSH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                this.flush(&storage).await;
            }
        });
    }
}
