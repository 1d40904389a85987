//! The syncapi's metrics.

use std::sync::LazyLock;

use ganglion_base::metrics::counter_vec;
use prometheus::IntCounterVec;

/// Events stored from `roomserver.output` (duplicates are not counted).
pub(crate) static EVENTS_STORED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_syncapi_events_consumed_total",
        "Events consumed from roomserver.output",
        &[],
    )
});

/// Long-polling `/sync` requests woken by news (one per waiting user).
pub(crate) static SYNC_WAKEUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_syncapi_wakeups_total",
        "Waiting /sync requests woken because something new concerns their user",
        &[],
    )
});
