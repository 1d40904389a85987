//! One inbound transaction per origin at a time, in this replica (a queue
//! per origin) and across replicas (a lease in the shared database), as
//! the spec expects a server to send them: a server cannot make us work
//! on many of its transactions at once. Each transaction also gets a
//! budget for filling gaps before its PDUs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ganglion_base::MatrixError;

use crate::FederationService;
use crate::key_ring::now_ms;

/// How long a replica holds an origin's lease without finishing.
const LEASE_MS: i64 = 120_000;
/// How long a transaction waits for the one before it (the sender's
/// request times out about then, and it sends the same again).
const WAIT_FOR_TURN: Duration = Duration::from_secs(30);

/// The per-origin queues of this replica.
pub(crate) struct Origins {
    /// Names this replica in the lease table.
    replica: String,
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An origin's turn, held while its transaction is taken.
pub(crate) struct Turn {
    _queue: tokio::sync::OwnedMutexGuard<()>,
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
        loop {
            let now = now_ms();
            if self
                .storage
                .lease_origin(origin, &self.inbound.replica, now, now + LEASE_MS)
                .await?
            {
                return Ok(Turn { _queue: queue });
            }
            if Instant::now() >= deadline {
                return Err(busy());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends `origin`'s turn on every replica.
    pub(crate) async fn end_turn(&self, origin: &str, turn: Turn) {
        if let Err(error) = self
            .storage
            .release_origin(origin, &self.inbound.replica)
            .await
        {
            tracing::warn!(origin, %error, "could not release an origin's lease (it expires)");
        }
        drop(turn);
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
