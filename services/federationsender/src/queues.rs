//! One sender per destination: it sends the destination's queued PDUs and
//! EDUs in transactions of at most 50 PDUs and 100 EDUs, one transaction in
//! flight at a time, in the order queued. A transaction's ID names the
//! queue entries it carries, so a retry of it carries the same ID and is
//! taken once. A failure
//! backs off exponentially (1 s doubling to at most an hour); the queue is
//! in the database, so a restart resumes where it stopped.
//!
//! Replicas share the database. New work for a destination is announced
//! on `federationsender.destinations` (keyed by destination), so the
//! replica whose partition it is delivers it; it holds a lease on the
//! destination while it does (renewed as it goes, given up after a third of
//! a lease with nothing to send), and no other replica sends there
//! meanwhile. While it holds the lease, news for the destination from its
//! own consumers goes straight to it. A sweep announces work whose replica
//! stopped. Right after partitions move, a destination may wait up to a
//! third of a lease for its old holder to let go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_api::federation::FederationHandle;
use ganglion_api::proto::federationapi as pb;
use ganglion_api::proto::topics as topic_pb;
use ganglion_api::topics::{PAYLOAD_VERSION, produce};
use ganglion_log::Log;
use tokio::sync::{Notify, watch};

use crate::storage::{Storage, StorageError};

/// The most PDUs and EDUs one transaction carries (the spec's limits).
const PDUS_PER_TRANSACTION: u32 = 50;
const EDUS_PER_TRANSACTION: u32 = 100;
const FIRST_BACKOFF_MS: i64 = 1_000;
const MAX_BACKOFF_MS: i64 = 3_600_000;

pub(crate) use ganglion_base::clock::now_ms;

/// How long to wait after `failures` failures in a row.
pub(crate) fn backoff_ms(failures: i64) -> i64 {
    let exponent = failures.saturating_sub(1).clamp(0, 32) as u32;
    FIRST_BACKOFF_MS
        .saturating_mul(2_i64.saturating_pow(exponent))
        .min(MAX_BACKOFF_MS)
}

pub(crate) struct Queues {
    storage: Storage,
    federation: FederationHandle,
    /// This replica, as destination leases name it: the same again when
    /// it restarts (same host, address and data), so it takes its
    /// destinations back at once.
    owner: String,
    /// How long a lease lasts unless renewed (renewed before each
    /// transaction, and every third of it while a backoff is waited out).
    lease_ms: i64,
    /// Where destinations with new work are announced
    /// (`federationsender.destinations`).
    log: Arc<dyn Log>,
    topic: String,
    /// A sender per destination this replica was asked to deliver to.
    senders: Mutex<HashMap<String, Arc<Sender>>>,
    shutdown: watch::Receiver<bool>,
}

/// A destination's sender here: woken when work is queued; `holding`
/// while it holds the destination's lease, when news for it need not go
/// through the log.
#[derive(Default)]
struct Sender {
    notify: Notify,
    holding: AtomicBool,
}

impl Queues {
    pub(crate) fn new(
        storage: Storage,
        federation: FederationHandle,
        (log, topic): (Arc<dyn Log>, String),
        (owner, lease_ms): (String, u64),
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Queues> {
        Arc::new(Queues {
            storage,
            federation,
            owner,
            lease_ms: i64::try_from(lease_ms).unwrap_or(i64::MAX).max(1_000),
            log,
            topic,
            senders: Mutex::default(),
            shutdown,
        })
    }

    /// Announces that `destinations` have work: each goes to the replica
    /// whose partition of `federationsender.destinations` it falls in. One
    /// that cannot be announced now is found by the sweep.
    pub(crate) async fn announce(&self, destinations: &[String]) {
        for destination in destinations {
            // Held here: this replica's sender takes it without the log.
            if let Some(sender) = self
                .senders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(destination)
                && sender.holding.load(Ordering::SeqCst)
            {
                sender.notify.notify_one();
                continue;
            }
            let work = topic_pb::DestinationWork {
                version: PAYLOAD_VERSION,
                destination: destination.clone(),
            };
            if let Err(error) = produce(&*self.log, &self.topic, destination, &work).await {
                tracing::warn!(destination, ?error, "federationsender: announcing work");
            }
        }
    }

    /// Every half lease: announces the destinations with work that no replica
    /// holds (its replica died, or an announcement was lost).
    pub(crate) async fn sweep(self: Arc<Self>) {
        let every = Duration::from_millis((self.lease_ms / 2) as u64);
        let mut shutdown = self.shutdown.clone();
        loop {
            match self.storage.unleased_destinations_with_work(now_ms()).await {
                Ok(waiting) => self.announce(&waiting).await,
                Err(error) => tracing::warn!(?error, "federationsender: sweeping the queues"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Wakes (or starts) this replica's senders of `destinations`.
    pub(crate) fn wake(self: &Arc<Self>, destinations: &[String]) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        for destination in destinations {
            match senders.get(destination) {
                Some(sender) => sender.notify.notify_one(),
                None => {
                    let sender = Arc::new(Sender::default());
                    senders.insert(destination.clone(), sender.clone());
                    tokio::spawn(self.clone().send_loop(destination.clone(), sender));
                }
            }
        }
    }

    /// Takes or renews this replica's lease on `destination`.
    async fn lease(&self, destination: &str) -> bool {
        let now = now_ms();
        match self
            .storage
            .claim_lease(
                destination,
                &self.owner,
                now,
                now.saturating_add(self.lease_ms),
            )
            .await
        {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(destination, ?error, "federationsender: taking a lease");
                false
            }
        }
    }

    async fn release(&self, destination: &str) {
        if let Err(error) = self.storage.release_lease(destination, &self.owner).await {
            tracing::warn!(destination, ?error, "federationsender: releasing a lease");
        }
    }

    /// The destination's next PDUs and EDUs.
    async fn next_batch(
        &self,
        destination: &str,
    ) -> Result<
        (
            Vec<crate::storage::QueuedPdu>,
            Vec<crate::storage::QueuedPdu>,
        ),
        StorageError,
    > {
        let batch = self
            .storage
            .queued(destination, PDUS_PER_TRANSACTION)
            .await?;
        let edus = self
            .storage
            .queued_edus(destination, EDUS_PER_TRANSACTION)
            .await?;
        Ok((batch, edus))
    }

    /// Delivers the destination's queue while this replica holds its
    /// lease (renewed every third of it); idle for a third of it, gives
    /// the lease up and waits for news. Stops when another replica holds
    /// the lease (it sends what is queued).
    async fn send_loop(self: Arc<Self>, destination: String, sender: Arc<Sender>) {
        let mut shutdown = self.shutdown.clone();
        let renew_every = self.lease_ms / 3;
        let mut renewed_at = i64::MIN;
        'deliver: loop {
            if *shutdown.borrow() {
                break;
            }
            if !sender.holding.load(Ordering::SeqCst) || now_ms() - renewed_at >= renew_every {
                if !self.lease(&destination).await {
                    tracing::debug!(
                        destination,
                        "federationsender: another replica delivers here"
                    );
                    break;
                }
                sender.holding.store(true, Ordering::SeqCst);
                renewed_at = now_ms();
            }
            let (failures, retry_at) = match self.storage.retry_state(&destination).await {
                Ok(state) => state,
                Err(error) => {
                    tracing::warn!(destination, ?error, "federationsender: reading retry state");
                    (1, now_ms() + FIRST_BACKOFF_MS)
                }
            };
            if failures > 0 {
                // Wait out the backoff, keeping the lease.
                loop {
                    let wait = retry_at - now_ms();
                    if wait <= 0 {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait.min(renew_every) as u64)) => {}
                        _ = shutdown.changed() => break 'deliver,
                    }
                    if !self.lease(&destination).await {
                        sender.holding.store(false, Ordering::SeqCst);
                        continue 'deliver;
                    }
                    renewed_at = now_ms();
                }
            }
            let (batch, edus) = match self.next_batch(&destination).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(destination, ?error, "federationsender: reading the queue");
                    tokio::time::sleep(Duration::from_millis(FIRST_BACKOFF_MS as u64)).await;
                    continue;
                }
            };
            let depth = if batch.len() < PDUS_PER_TRANSACTION as usize {
                Ok(batch.len() as i64)
            } else {
                self.storage.queue_depth(&destination).await
            };
            if let Ok(depth) = depth {
                crate::internal_events::QUEUED_PDUS
                    .with_label_values(&[destination.as_str()])
                    .set(depth);
            }
            if !batch.is_empty() || !edus.is_empty() {
                self.send_batch(&destination, failures, batch, edus).await;
                continue;
            }
            // Idle: news comes straight to this sender while it holds the
            // lease; after a third of a lease without any, let it go.
            tokio::select! {
                _ = sender.notify.notified() => continue,
                _ = tokio::time::sleep(Duration::from_millis(renew_every as u64)) => {}
                _ = shutdown.changed() => break,
            }
            sender.holding.store(false, Ordering::SeqCst);
            self.release(&destination).await;
            // Work queued just before the release may have been handed to
            // this sender, or announced elsewhere and found the lease
            // taken: look again before waiting.
            if self
                .next_batch(&destination)
                .await
                .is_ok_and(|(pdus, edus)| pdus.is_empty() && edus.is_empty())
            {
                tokio::select! {
                    _ = sender.notify.notified() => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
        sender.holding.store(false, Ordering::SeqCst);
        self.release(&destination).await;
        let _ = crate::internal_events::QUEUED_PDUS.remove_label_values(&[destination.as_str()]);
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if senders
            .get(&destination)
            .is_some_and(|s| Arc::ptr_eq(s, &sender))
        {
            senders.remove(&destination);
        }
    }

    /// One transaction; on success the queue entries it carried go, on
    /// failure the destination backs off.
    async fn send_batch(
        &self,
        destination: &str,
        failures: i64,
        batch: Vec<crate::storage::QueuedPdu>,
        edus: Vec<crate::storage::QueuedPdu>,
    ) {
        let span = |items: &[crate::storage::QueuedPdu]| {
            items
                .first()
                .zip(items.last())
                .map(|(first, last)| (first.id, last.id))
        };
        let (pdus_span, edus_span) = (span(&batch), span(&edus));
        // Named after what it carries: a retry of the same batch has the
        // same ID, a batch that grew meanwhile a new one.
        let txn_id = format!(
            "{}.{}",
            pdus_span
                .map(|(a, b)| format!("{a}-{b}"))
                .unwrap_or_default(),
            edus_span
                .map(|(a, b)| format!("{a}-{b}"))
                .unwrap_or_default()
        );
        let request = pb::SendTransactionRequest {
            destination: destination.to_owned(),
            txn_id,
            pdus_json: batch.iter().map(|p| p.json.clone().into_bytes()).collect(),
            edus_json: edus.iter().map(|e| e.json.clone().into_bytes()).collect(),
        };
        let count = batch.len() + edus.len();
        match self.federation.send_transaction(request).await {
            Ok(_) => {
                tracing::debug!(destination, count, "federationsender: transaction sent");
                crate::internal_events::TRANSACTIONS_SENT
                    .with_label_values::<&str>(&[])
                    .inc();
                if let Err(error) = self
                    .storage
                    .delivered(
                        destination,
                        pdus_span.map(|(_, last)| last),
                        edus_span.map(|(_, last)| last),
                    )
                    .await
                {
                    tracing::warn!(destination, ?error, "federationsender: clearing the queue");
                }
            }
            Err(error) => {
                let delay = backoff_ms(failures + 1);
                tracing::info!(
                    destination,
                    ?error,
                    delay_ms = delay,
                    "federationsender: transaction failed, backing off"
                );
                crate::internal_events::TRANSACTIONS_FAILED
                    .with_label_values::<&str>(&[])
                    .inc();
                let now = now_ms();
                if let Err(error) = self.storage.failed(destination, now, now + delay).await {
                    tracing::warn!(destination, ?error, "federationsender: recording a failure");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(super::backoff_ms(1), 1_000);
        assert_eq!(super::backoff_ms(2), 2_000);
        assert_eq!(super::backoff_ms(5), 16_000);
        assert_eq!(super::backoff_ms(100), 3_600_000);
    }
}
