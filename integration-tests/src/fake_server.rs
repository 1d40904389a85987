//! A remote homeserver the tests control, over real TLS and real
//! signatures: it serves its signing key, takes the transactions sent to
//! it, answers `get_missing_events` and `/event` from events the test
//! gives it, and sends requests and PDUs signed with its key (or forged,
//! as a test wishes). It is for what a real Synapse will not do on
//! command: gaps, forged signatures, events that break the auth rules.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post, put};
use ganglion_base::keys::SigningKey;
use ruma::CanonicalJsonValue;
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::{Value, json};

use crate::process::free_port;

#[derive(Default)]
struct Held {
    /// Events by ID, served from `/event` and `get_missing_events`.
    events: HashMap<String, Value>,
    /// What `get_missing_events` answers with, oldest first.
    missing: Vec<String>,
    /// Transactions received: (transaction ID, body).
    received: Vec<(String, Value)>,
}

#[derive(Clone)]
struct Shared {
    server_name: String,
    key: Arc<SigningKey>,
    held: Arc<Mutex<Held>>,
}

pub struct FakeServer {
    pub server_name: String,
    key: Arc<SigningKey>,
    held: Arc<Mutex<Held>>,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

async fn key_response(State(shared): State<Shared>) -> axum::Json<Value> {
    let body = json!({
        "server_name": shared.server_name,
        "valid_until_ts": now_ms() + 3_600_000,
        "verify_keys": { format!("ed25519:{}", shared.key.version): { "key": shared.key.public_key_base64 } },
        "old_verify_keys": {},
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(body).expect("object");
    ruma::signatures::sign_json(&shared.server_name, &shared.key.key_pair, &mut object)
        .expect("signed");
    axum::Json(serde_json::to_value(object).expect("JSON"))
}

async fn take_transaction(
    State(shared): State<Shared>,
    UrlPath(txn_id): UrlPath<String>,
    axum::Json(body): axum::Json<Value>,
) -> axum::Json<Value> {
    let mut held = shared.held.lock().expect("held");
    held.received.push((txn_id, body));
    axum::Json(json!({ "pdus": {} }))
}

async fn missing_events(State(shared): State<Shared>) -> axum::Json<Value> {
    let held = shared.held.lock().expect("held");
    let events: Vec<Value> = held
        .missing
        .iter()
        .filter_map(|id| held.events.get(id).cloned())
        .collect();
    axum::Json(json!({ "events": events }))
}

async fn event(
    State(shared): State<Shared>,
    UrlPath(event_id): UrlPath<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let held = shared.held.lock().expect("held");
    match held.events.get(&event_id) {
        Some(event) => axum::Json(json!({
            "origin": shared.server_name, "origin_server_ts": now_ms(), "pdus": [event],
        }))
        .into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({ "errcode": "M_NOT_FOUND", "error": "unknown event" })),
        )
            .into_response(),
    }
}

impl FakeServer {
    /// Starts on a free loopback port, named `localhost:<port>`.
    pub async fn start(dir: &Path) -> FakeServer {
        let port = free_port();
        let server_name = format!("localhost:{port}");
        let config = ganglion_base::Config {
            server_name: server_name.clone(),
            data_dir: dir.to_owned(),
            ..Default::default()
        };
        let key = Arc::new(
            ganglion_base::keys::load_or_generate_signing_key(&config).expect("signing key"),
        );
        let (cert, private_key) =
            ganglion_base::keys::load_or_generate_tls(&config).expect("certificate");
        let held: Arc<Mutex<Held>> = Arc::default();
        let shared = Shared {
            server_name: server_name.clone(),
            key: key.clone(),
            held: held.clone(),
        };
        let router = Router::new()
            .route("/_matrix/key/v2/server", get(key_response))
            .route(
                "/_matrix/federation/v1/send/{txn_id}",
                put(take_transaction),
            )
            .route(
                "/_matrix/federation/v1/get_missing_events/{room_id}",
                post(missing_events),
            )
            .route("/_matrix/federation/v1/event/{event_id}", get(event))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let task = tokio::spawn(async move {
            let _ = ganglion_base::http::serve_tls(
                listener,
                router,
                &cert,
                &private_key,
                std::future::pending(),
            )
            .await;
        });
        FakeServer {
            server_name,
            key,
            held,
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .expect("client"),
            task,
        }
    }

    /// The X-Matrix header of a request to `destination`.
    pub fn authorization(
        &self,
        destination: &str,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> String {
        let mut object = CanonicalJsonObject::from([
            ("method".to_owned(), method.into()),
            ("uri".to_owned(), path_and_query.into()),
            ("origin".to_owned(), self.server_name.as_str().into()),
            ("destination".to_owned(), destination.into()),
        ]);
        if let Some(body) = body {
            let content: CanonicalJsonValue =
                serde_json::from_value(body.clone()).expect("canonical");
            object.insert("content".into(), content);
        }
        ruma::signatures::sign_json(&self.server_name, &self.key.key_pair, &mut object)
            .expect("signed");
        let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
            panic!("no signatures");
        };
        let Some(CanonicalJsonValue::Object(ours)) = signatures.get(&self.server_name) else {
            panic!("no signature");
        };
        let (key_id, sig) = ours.iter().next().expect("one signature");
        let CanonicalJsonValue::String(sig) = sig else {
            panic!("signature");
        };
        format!(
            "X-Matrix origin=\"{}\",destination=\"{destination}\",key=\"{key_id}\",sig=\"{sig}\"",
            self.server_name
        )
    }

    /// A signed request to the server at `base_url` (named `destination`).
    pub async fn request(
        &self,
        base_url: &str,
        destination: &str,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let header =
            self.authorization(destination, method.as_str(), path_and_query, body.as_ref());
        self.request_with(base_url, method, path_and_query, body, &header)
            .await
    }

    /// A request with the `Authorization` header given (forged ones too).
    pub async fn request_with(
        &self,
        base_url: &str,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Value>,
        authorization: &str,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{base_url}{path_and_query}"))
            .header("authorization", authorization);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Hashes and signs an event of a room of `room_version` (3 and later);
    /// its event ID and the PDU. It is also held for `/event`.
    pub fn sign_event(&self, room_version: &str, event: Value) -> (String, Value) {
        let rules = ruma::RoomVersionId::try_from(room_version)
            .expect("version")
            .rules()
            .expect("rules");
        let mut object: CanonicalJsonObject = serde_json::from_value(event).expect("object");
        ruma::signatures::hash_and_sign_event(
            &self.server_name,
            &self.key.key_pair,
            &mut object,
            &rules.redaction,
        )
        .expect("signed");
        let event_id = format!(
            "${}",
            ruma::signatures::reference_hash(&object, &rules).expect("reference hash")
        );
        let pdu = serde_json::to_value(object).expect("JSON");
        self.held
            .lock()
            .expect("held")
            .events
            .insert(event_id.clone(), pdu.clone());
        (event_id, pdu)
    }

    /// What `get_missing_events` answers with from now on (held events).
    pub fn set_missing(&self, event_ids: Vec<String>) {
        self.held.lock().expect("held").missing = event_ids;
    }

    /// The transactions received so far.
    pub fn received(&self) -> Vec<(String, Value)> {
        self.held.lock().expect("held").received.clone()
    }
}
