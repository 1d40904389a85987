//! `/healthz` (the process is alive), `/readyz` (its database answers and its
//! consumers have caught up) and `/metrics`, served by every process.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

/// Something that must hold before a process takes traffic.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// A short name shown in `/readyz`.
    fn name(&self) -> String;
    /// `Err(reason)` while not ready.
    async fn check(&self) -> Result<(), String>;
}

/// The readiness checks of one process.
#[derive(Clone, Default)]
pub struct Health {
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl Health {
    pub fn add(&mut self, check: Arc<dyn ReadinessCheck>) {
        self.checks.push(check);
    }

    pub fn extend(&mut self, other: Health) {
        self.checks.extend(other.checks);
    }

    /// `/healthz`, `/readyz` and `/metrics`.
    pub fn router(&self) -> Router {
        let checks = self.checks.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let checks = checks.clone();
                    async move {
                        let mut failing = serde_json::Map::new();
                        for check in &checks {
                            if let Err(reason) = check.check().await {
                                failing.insert(check.name(), reason.into());
                            }
                        }
                        if failing.is_empty() {
                            (StatusCode::OK, "ready".to_owned()).into_response()
                        } else {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                serde_json::Value::Object(failing).to_string(),
                            )
                                .into_response()
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(|| async {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        crate::metrics::render(),
                    )
                }),
            )
    }
}

/// Ready while the database answers.
pub struct DatabaseReady {
    pub service: &'static str,
    pub db: crate::database::Database,
}

#[async_trait]
impl ReadinessCheck for DatabaseReady {
    fn name(&self) -> String {
        format!("{}_database", self.service)
    }
    async fn check(&self) -> Result<(), String> {
        if self.db.ping().await {
            Ok(())
        } else {
            Err("database unreachable".to_owned())
        }
    }
}
