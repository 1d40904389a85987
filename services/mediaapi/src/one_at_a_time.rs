//! Work done once at a time per key in this process (fetching one remote
//! media, previewing one URL): a second caller with the same key waits for
//! the first, then usually finds its result kept.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub(crate) struct OneAtATime {
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl OneAtATime {
    /// Runs `work` once no other work with `key` runs here.
    pub(crate) async fn run<T>(&self, key: &str, work: impl Future<Output = T>) -> T {
        let lock = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        let done = {
            let _turn = lock.lock().await;
            work.await
        };
        // Whoever still waits holds the lock it took; a newcomer makes a
        // new one and finds the result kept.
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_key_runs_once_at_a_time_and_others_run_alongside() {
        let gate = OneAtATime::default();
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let work = || async {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            running.fetch_sub(1, Ordering::SeqCst);
        };
        futures::future::join3(
            gate.run("a", work()),
            gate.run("a", work()),
            gate.run("a", work()),
        )
        .await;
        assert_eq!(most.load(Ordering::SeqCst), 1);
        most.store(0, Ordering::SeqCst);
        futures::future::join(gate.run("a", work()), gate.run("b", work())).await;
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert!(gate.running.lock().expect("map").is_empty());
    }
}
