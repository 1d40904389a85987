//! The roomserver's metrics.

use std::sync::LazyLock;

use ganglion_base::metrics::{counter_vec, histogram_vec};
use prometheus::{HistogramVec, IntCounterVec};

/// Events persisted, by outcome (accepted/rejected).
pub(crate) static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_roomserver_events_total",
        "Events processed by the roomserver, by outcome",
        &["outcome"],
    )
});

/// Time from an input record's arrival to its outputs being in the log.
pub(crate) static INPUT_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "ganglion_roomserver_input_duration_seconds",
        "Time to process one roomserver.input record",
        &["kind"],
    )
});
