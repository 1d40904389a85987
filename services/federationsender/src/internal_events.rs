//! The federationsender's metrics.

use std::sync::LazyLock;

use ganglion_base::metrics::counter_vec;
use prometheus::IntCounterVec;

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
