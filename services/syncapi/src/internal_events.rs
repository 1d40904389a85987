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
