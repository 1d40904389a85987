//! The clientapi's metrics.

use std::sync::LazyLock;

use ganglion_base::metrics::{counter_vec, histogram_vec};
use prometheus::{HistogramVec, IntCounterVec};

/// Room writes answered, by kind and outcome.
pub(crate) static ROOM_WRITES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_clientapi_room_writes_total",
        "Room writes (send, state, membership, create) by outcome",
        &["kind", "outcome"],
    )
});

/// Time a write waited for the sync service to reflect it.
pub(crate) static READ_YOUR_WRITES_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "ganglion_clientapi_read_your_writes_wait_seconds",
        "Time a write waited until /sync reflects it",
        &["reached"],
    )
});
