//! One sender per destination: it sends the destination's queued PDUs and
//! EDUs in transactions of at most 50 PDUs and 100 EDUs, one transaction in
//! flight at a time, in the order queued. A transaction's ID names the
//! queue entries it carries, so a retry of it carries the same ID and is
//! taken once. A failure
//! backs off exponentially (1 s doubling to at most an hour); the queue is
//! in the database, so a restart resumes where it stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_api::federation::FederationHandle;
use ganglion_api::proto::federationapi as pb;
use tokio::sync::{Notify, watch};

use crate::storage::Storage;

/// The most PDUs and EDUs one transaction carries (the spec's limits).
const PDUS_PER_TRANSACTION: u32 = 50;
const EDUS_PER_TRANSACTION: u32 = 100;
const FIRST_BACKOFF_MS: i64 = 1_000;
const MAX_BACKOFF_MS: i64 = 3_600_000;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

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
    /// A running sender per destination, woken when PDUs are queued.
    senders: Mutex<HashMap<String, Arc<Notify>>>,
    shutdown: watch::Receiver<bool>,
}

impl Queues {
    pub(crate) fn new(
        storage: Storage,
        federation: FederationHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Queues> {
        Arc::new(Queues {
            storage,
            federation,
            senders: Mutex::default(),
            shutdown,
        })
    }

    /// Wakes (or starts) the senders of `destinations`.
    pub(crate) fn wake(self: &Arc<Self>, destinations: &[String]) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        for destination in destinations {
            match senders.get(destination) {
                Some(notify) => notify.notify_one(),
                None => {
                    let notify = Arc::new(Notify::new());
                    senders.insert(destination.clone(), notify.clone());
                    tokio::spawn(self.clone().send_loop(destination.clone(), notify));
                }
            }
        }
    }

    async fn send_loop(self: Arc<Self>, destination: String, notify: Arc<Notify>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let (failures, retry_at) = match self.storage.retry_state(&destination).await {
                Ok(state) => state,
                Err(error) => {
                    tracing::warn!(destination, ?error, "federationsender: reading retry state");
                    (1, now_ms() + FIRST_BACKOFF_MS)
                }
            };
            let wait = retry_at - now_ms();
            if failures > 0 && wait > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            let batch = self
                .storage
                .queued(&destination, PDUS_PER_TRANSACTION)
                .await;
            let edus = self
                .storage
                .queued_edus(&destination, EDUS_PER_TRANSACTION)
                .await;
            let (batch, edus) = match (batch, edus) {
                (Ok(batch), Ok(edus)) => (batch, edus),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(destination, ?error, "federationsender: reading the queue");
                    tokio::time::sleep(Duration::from_millis(FIRST_BACKOFF_MS as u64)).await;
                    continue;
                }
            };
            if batch.is_empty() && edus.is_empty() {
                tokio::select! {
                    _ = notify.notified() => continue,
                    _ = shutdown.changed() => return,
                }
            }
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
                destination: destination.clone(),
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
                            &destination,
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
                    if let Err(error) = self.storage.failed(&destination, now_ms() + delay).await {
                        tracing::warn!(
                            destination,
                            ?error,
                            "federationsender: recording a failure"
                        );
                    }
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
