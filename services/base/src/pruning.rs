//! Tables that would grow for ever (transaction IDs, processed inputs) are
//! pruned by a background task per service: every so often it deletes
//! rows older than their retention, counts them in
//! `ganglion_pruned_rows_total` and logs how many went.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::IntCounterVec;

static PRUNED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "ganglion_pruned_rows_total",
        "Rows deleted by the background pruning, by what they were",
        &["what"],
    )
});

/// How often pruning runs.
pub const EVERY: Duration = Duration::from_secs(600);

/// Runs `prune` now and then every `every` for as long as the process
/// does; `prune` answers how many rows it deleted.
pub fn spawn<F, Fut, E>(what: &'static str, every: Duration, prune: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, E>> + Send,
    E: std::fmt::Display,
{
    PRUNED.with_label_values(&[what]);
    tokio::spawn(async move {
        loop {
            match prune().await {
                Ok(0) => {}
                Ok(rows) => {
                    PRUNED.with_label_values(&[what]).inc_by(rows);
                    tracing::info!(what, rows, "pruned");
                }
                Err(error) => tracing::warn!(what, %error, "pruning failed; trying again later"),
            }
            tokio::time::sleep(every).await;
        }
    });
}
