//! The userapi's metrics.

use std::sync::LazyLock;

use ganglion_base::metrics::counter_vec;
use prometheus::IntCounter;

/// Accounts created.
pub(crate) static ACCOUNTS_CREATED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter_vec(
        "ganglion_userapi_accounts_created_total",
        "Accounts created",
        &[],
    )
    .with_label_values::<&str>(&[])
});

/// Successful password logins.
pub(crate) static LOGINS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter_vec(
        "ganglion_userapi_logins_total",
        "Successful password logins",
        &[],
    )
    .with_label_values::<&str>(&[])
});

/// Password checks and hashes turned away because the hashing queue was full.
pub(crate) static PASSWORD_QUEUE_FULL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter_vec(
        "ganglion_userapi_password_queue_full_total",
        "Password checks turned away with 429 because the hashing queue was full",
        &[],
    )
    .with_label_values::<&str>(&[])
});

/// Notifications a push gateway took.
pub(crate) static PUSHES_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    counter_vec(
        "ganglion_userapi_pushes_sent_total",
        "Notifications a push gateway accepted",
        &[],
    )
    .with_label_values::<&str>(&[])
});

/// Attempts at a push gateway that failed (to be retried).
pub(crate) static PUSHES_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter_vec(
        "ganglion_userapi_push_attempts_failed_total",
        "Requests to push gateways that failed and will be retried",
        &[],
    )
    .with_label_values::<&str>(&[])
});

/// Notifications given up (too old, or refused by their gateway).
pub(crate) static PUSHES_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter_vec(
        "ganglion_userapi_pushes_dropped_total",
        "Notifications given up: refused by their gateway, or undelivered for too long",
        &[],
    )
    .with_label_values::<&str>(&[])
});

/// Makes every series of this service exist from the start, at 0.
pub(crate) fn export() {
    for counter in [
        &ACCOUNTS_CREATED,
        &LOGINS,
        &PASSWORD_QUEUE_FULL,
        &PUSHES_SENT,
        &PUSHES_FAILED,
        &PUSHES_DROPPED,
    ] {
        LazyLock::force(counter);
    }
}
