//! The federationsender's metrics.

use std::sync::LazyLock;

use ganglion_base::metrics::{counter_vec, gauge_vec};
use prometheus::{IntCounterVec, IntGaugeVec};

/// Transactions a destination took.
pub(crate) static TRANSACTIONS_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_federationsender_transactions_sent_total",
        "Transactions delivered to remote servers",
        &[],
    )
});

/// Transactions that failed (to be retried after a backoff).
pub(crate) static TRANSACTIONS_FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_federationsender_transactions_failed_total",
        "Transactions that failed and will be retried",
        &[],
    )
});

/// PDUs queued for remote servers (one per destination).
pub(crate) static PDUS_QUEUED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_federationsender_pdus_queued_total",
        "PDUs queued for remote servers, one per destination",
        &[],
    )
});

/// PDUs waiting per destination, as its sender last looked (a destination
/// leaves the metric when its sender stops).
pub(crate) static QUEUED_PDUS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "ganglion_federationsender_queued_pdus",
        "PDUs waiting for a destination, as the replica delivering there last counted",
        &["destination"],
    )
});

/// Makes every series of this service exist from the start, at 0.
pub(crate) fn export() {
    for counter in [&TRANSACTIONS_SENT, &TRANSACTIONS_FAILED, &PDUS_QUEUED] {
        counter.with_label_values::<&str>(&[]);
    }
}
