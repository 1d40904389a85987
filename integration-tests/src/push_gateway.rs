//! A push gateway for the tests: it takes `POST /_matrix/push/v1/notify`
//! as the push gateway API has it, records every request, and answers as
//! the test says: accepted, failed with a status for the next few
//! requests, or with pushkeys rejected.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Default)]
struct Gateway {
    /// Every request body, in the order they came (failed ones too).
    requests: Vec<Value>,
    /// The bodies of requests answered 200.
    accepted: Vec<Value>,
    /// Answer the next this many requests with `fail_status`.
    fail_next: u32,
    fail_status: u16,
    /// Pushkeys answered as rejected.
    rejected: Vec<String>,
}

pub struct PushGateway {
    /// The URL a pusher names: `http://127.0.0.1:<port>/_matrix/push/v1/notify`.
    pub url: String,
    state: Arc<Mutex<Gateway>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PushGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn notify(State(state): State<Arc<Mutex<Gateway>>>, Json(body): Json<Value>) -> Response {
    let mut gateway = state.lock().unwrap_or_else(|p| p.into_inner());
    gateway.requests.push(body.clone());
    if gateway.fail_next > 0 {
        gateway.fail_next -= 1;
        let status = StatusCode::from_u16(gateway.fail_status).unwrap_or(StatusCode::BAD_GATEWAY);
        return (status, Json(json!({"error": "failing as asked"}))).into_response();
    }
    let rejected: Vec<String> = body["notification"]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|device| device["pushkey"].as_str())
        .filter(|key| gateway.rejected.iter().any(|r| r == key))
        .map(str::to_owned)
        .collect();
    gateway.accepted.push(body);
    Json(json!({ "rejected": rejected })).into_response()
}

impl PushGateway {
    pub async fn start() -> PushGateway {
        let state = Arc::new(Mutex::new(Gateway::default()));
        let router = Router::new()
            .route("/_matrix/push/v1/notify", post(notify))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        PushGateway {
            url: format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"),
            state,
            task,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Gateway) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The notifications accepted so far (each request's `notification`).
    pub fn accepted(&self) -> Vec<Value> {
        self.with(|g| {
            g.accepted
                .iter()
                .map(|b| b["notification"].clone())
                .collect()
        })
    }

    /// How many requests came, failed ones too.
    pub fn requests(&self) -> usize {
        self.with(|g| g.requests.len())
    }

    /// Answers the next `count` requests with `status`.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.with(|g| {
            g.fail_next = count;
            g.fail_status = status;
        });
    }

    /// Answers requests for this pushkey as rejected.
    pub fn reject(&self, pushkey: &str) {
        self.with(|g| g.rejected.push(pushkey.to_owned()));
    }
}
