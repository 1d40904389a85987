//! Stopping without failing a request. On SIGTERM (or Ctrl-C) a process:
//!
//! 1. answers `/readyz` with 503 at once, so that callers probing it (the
//!    gateway, other services' clients, Kubernetes) stop sending to it, and
//!    tells long-polls to answer now;
//! 2. keeps serving for the drain delay, then until no request is in flight
//!    (at most [`crate::http::DRAIN_TIMEOUT`]): calls still arriving are
//!    served, including the answers a request in flight waits for (another
//!    roomserver delivering an outcome, say);
//! 3. closes its listeners, letting open connections finish;
//! 4. only then stops its consumers, each after committing the offset of
//!    the record it finished, so what a request waited on was consumed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::health::ReadinessCheck;

/// Requests being handled in this process (HTTP and gRPC, not the operator
/// listener's).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts one request in flight while held.
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Requests being handled now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// The stages of one process's stop.
#[derive(Clone)]
pub struct Shutdown {
    draining: watch::Receiver<bool>,
    close_listeners: watch::Receiver<bool>,
    stop_consumers: std::sync::Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// Waits for SIGTERM or Ctrl-C, then drains: `delay` of answering not
    /// ready while serving, then until nothing is in flight.
    pub fn on_signal(delay: Duration) -> Shutdown {
        let (signalled, signal) = watch::channel(false);
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let term = std::future::pending::<()>();
            tokio::select! {
                _ = ctrl_c => {}
                _ = term => {}
            }
            let _ = signalled.send(true);
        });
        Self::after(signal, delay)
    }

    /// Drains once `signal` turns true (tests drive this directly).
    pub fn after(mut signal: watch::Receiver<bool>, delay: Duration) -> Shutdown {
        let (draining_tx, draining) = watch::channel(false);
        let (close_tx, close_listeners) = watch::channel(false);
        let (stop_tx, _) = watch::channel(false);
        tokio::spawn(async move {
            let _ = signal.wait_for(|stop| *stop).await;
            tracing::info!(delay_ms = delay.as_millis() as u64, "draining");
            let _ = draining_tx.send(true);
            tokio::time::sleep(delay).await;
            let deadline = tokio::time::Instant::now() + crate::http::DRAIN_TIMEOUT;
            while in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(in_flight = in_flight(), "closing listeners");
            let _ = close_tx.send(true);
        });
        Shutdown {
            draining,
            close_listeners,
            stop_consumers: std::sync::Arc::new(stop_tx),
        }
    }

    /// True from the signal on: not ready, long-polls answer now.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.clone()
    }

    /// True once the listeners are to close.
    pub fn listeners(&self) -> watch::Receiver<bool> {
        self.close_listeners.clone()
    }

    /// Resolves when the listeners are to close.
    pub fn listeners_closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut close = self.close_listeners.clone();
        async move {
            let _ = close.wait_for(|close| *close).await;
        }
    }

    /// True once the consumers are to stop (after the listeners closed).
    pub fn consumers(&self) -> watch::Receiver<bool> {
        self.stop_consumers.subscribe()
    }

    /// The listeners are closed: the consumers stop after their record.
    pub fn stop_consumers(&self) {
        self.stop_consumers.send_replace(true);
    }
}

/// Not ready while draining.
pub struct Draining(pub watch::Receiver<bool>);

#[async_trait]
impl ReadinessCheck for Draining {
    fn name(&self) -> String {
        "draining".to_owned()
    }
    async fn check(&self) -> Result<(), String> {
        if *self.0.borrow() {
            Err("stopping".to_owned())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request in flight holds the listeners open; they close when it is
    /// done, and the consumers stop only when told.
    #[tokio::test]
    async fn listeners_close_after_the_requests_in_flight() {
        let (signal, receiver) = watch::channel(false);
        let shutdown = Shutdown::after(receiver, Duration::from_millis(50));
        let request = InFlight::enter();
        let _ = signal.send(true);
        let mut draining = shutdown.draining();
        draining.wait_for(|d| *d).await.expect("draining");
        assert!(Draining(shutdown.draining()).check().await.is_err());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!*shutdown.listeners().borrow(), "closed under a request");
        drop(request);
        tokio::time::timeout(Duration::from_secs(5), shutdown.listeners_closing())
            .await
            .expect("closed once idle");
        assert!(!*shutdown.consumers().borrow());
        shutdown.stop_consumers();
        assert!(*shutdown.consumers().borrow());
    }
}
