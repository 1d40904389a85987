//! One inbound transaction per origin at a time, in this replica (a queue
//! per origin) and across replicas (a lease in the shared database), as
//! the spec expects a server to send them: a server cannot make us work
//! on many of its transactions at once. Each transaction also gets a
//! budget for filling gaps before its PDUs.
//!
//! A lease is short and renewed while its transaction is taken, so a
//! replica that dies holding one (killed mid-transaction) keeps its origin
//! waiting a few seconds, not until the sender gives up and backs off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ganglion_base::MatrixError;

use crate::FederationService;
use crate::key_ring::now_ms;
use crate::storage::Storage;

/// How long an origin's lease lasts unless its holder renews it.
const LEASE: Duration = Duration::from_secs(10);
/// How often a holder renews its lease while its transaction is taken.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long a transaction waits for the one before it (the sender's
/// request times out about then, and it sends the same again).
const WAIT_FOR_TURN: Duration = Duration::from_secs(30);

/// The per-origin queues of this replica.
pub(crate) struct Origins {
    /// Names this replica in the lease table.
    replica: String,
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An origin's turn, held while its transaction is taken: this replica's
/// place in the origin's queue and the lease, renewed until the turn ends.
/// Dropped without [`Turn::end`] (the request was cancelled), it still
/// gives the lease back before the next in the queue goes.
pub(crate) struct Turn {
    origin: String,
    holder: String,
    storage: Storage,
    renewal: Option<tokio::task::JoinHandle<()>>,
    queue: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Origins {
    pub(crate) fn new() -> Origins {
        Origins {
            replica: {
                use rand::Rng;
                let nonce: u64 = rand::thread_rng().r#gen();
                format!("{}-{nonce:016x}", std::process::id())
            },
            queues: Mutex::default(),
        }
    }
}

impl FederationService {
    /// Waits for `origin`'s turn (its earlier transactions done, here and
    /// on every replica); 429 if it does not come in time.
    pub(crate) async fn origin_turn(&self, origin: &str) -> Result<Turn, MatrixError> {
        let queue = {
            let mut queues = self
                .inbound
                .queues
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Queues nobody waits on go: the map holds origins at work.
            queues.retain(|_, queue| Arc::strong_count(queue) > 1);
            queues.entry(origin.to_owned()).or_default().clone()
        };
        let deadline = Instant::now() + WAIT_FOR_TURN;
        let busy = || MatrixError::limit_exceeded(1_000);
        let queue = tokio::time::timeout_at(deadline.into(), queue.lock_owned())
            .await
            .map_err(|_| busy())?;
        let holder = &self.inbound.replica;
        loop {
            if lease(&self.storage, origin, holder).await? {
                return Ok(Turn {
                    origin: origin.to_owned(),
                    holder: holder.clone(),
                    storage: self.storage.clone(),
                    renewal: Some(tokio::spawn(renew(
                        self.storage.clone(),
                        origin.to_owned(),
                        holder.clone(),
                    ))),
                    queue: Some(queue),
                });
            }
            if Instant::now() >= deadline {
                return Err(busy());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Takes or renews `holder`'s lease on `origin`.
async fn lease(
    storage: &Storage,
    origin: &str,
    holder: &str,
) -> Result<bool, crate::storage::StorageError> {
    let now = now_ms();
    storage
        .lease_origin(origin, holder, now, now + LEASE.as_millis() as i64)
        .await
}

/// Renews the lease until aborted.
async fn renew(storage: Storage, origin: String, holder: String) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match lease(&storage, &origin, &holder).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    origin,
                    "an inbound origin's lease expired while its transaction was taken"
                );
            }
            Err(error) => {
                tracing::warn!(origin, %error, "could not renew an inbound origin's lease")
            }
        }
    }
}

impl Turn {
    /// Ends the turn: the lease is given back, then the next in the queue goes.
    pub(crate) async fn end(mut self) {
        if let (Some(renewal), Some(queue)) = (self.renewal.take(), self.queue.take()) {
            give_back(&self.storage, &self.origin, &self.holder, renewal).await;
            drop(queue);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (Some(renewal), Some(queue)) = (self.renewal.take(), self.queue.take()) else {
            return;
        };
        let (storage, origin, holder) = (
            self.storage.clone(),
            self.origin.clone(),
            self.holder.clone(),
        );
        // Without a runtime (shutting down) the lease simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                give_back(&storage, &origin, &holder, renewal).await;
                drop(queue);
            });
        }
    }
}

/// Stops the renewal (waiting for it, so it cannot take the lease again),
/// then releases the lease.
async fn give_back(
    storage: &Storage,
    origin: &str,
    holder: &str,
    renewal: tokio::task::JoinHandle<()>,
) {
    renewal.abort();
    let _ = renewal.await;
    if let Err(error) = storage.release_origin(origin, holder).await {
        tracing::warn!(origin, %error, "could not release an inbound origin's lease (it expires)");
    }
}

/// What one transaction may spend on filling gaps before its PDUs.
pub(crate) struct GapBudget {
    gaps_left: usize,
    until: Instant,
}

impl GapBudget {
    /// At most `gaps` gaps, all done within `time`.
    pub(crate) fn new(gaps: usize, time: Duration) -> GapBudget {
        GapBudget {
            gaps_left: gaps,
            until: Instant::now() + time,
        }
    }

    /// Takes one gap's worth, with the time left for it; `None` when spent.
    pub(crate) fn take(&mut self) -> Option<Duration> {
        let left = self.until.checked_duration_since(Instant::now())?;
        if self.gaps_left == 0 || left.is_zero() {
            return None;
        }
        self.gaps_left -= 1;
        Some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::GapBudget;
    use std::time::Duration;

    #[test]
    fn a_gap_budget_runs_out() {
        let mut budget = GapBudget::new(2, Duration::from_secs(60));
        assert!(budget.take().is_some());
        assert!(budget.take().is_some());
        assert!(budget.take().is_none());
        let mut spent = GapBudget::new(5, Duration::ZERO);
        assert!(spent.take().is_none());
    }
}
