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

/// A room the fake server hosts: its state (event IDs in the order
/// created) and its latest event.
#[derive(Default, Clone)]
struct HostedRoom {
    version: String,
    state: Vec<String>,
    create: String,
    join_rules: String,
    power_levels: String,
    latest: String,
    depth: i64,
}

/// What the fake server answers for one of its media IDs.
#[derive(Clone, Debug)]
pub enum FakeMedia {
    /// A federation media answer holding these bytes, with this type and
    /// `Content-Disposition`.
    File {
        content_type: String,
        disposition: String,
        bytes: Vec<u8>,
    },
    /// A federation media answer whose file part points to this URL.
    Location(String),
    /// The federation media API unknown (404 `M_UNRECOGNIZED`); the
    /// deprecated download answers with these bytes and type.
    LegacyOnly {
        content_type: String,
        bytes: Vec<u8>,
    },
    /// This status and JSON body.
    Error(u16, Value),
    /// A 200 answer that is not what the federation media API answers.
    Garbage(String, Vec<u8>),
}

#[derive(Default)]
struct Held {
    /// Media by ID, served from the federation media API and `/cdn/{id}`.
    media: HashMap<String, FakeMedia>,
    /// Media requests received: (path and query, `Authorization`).
    media_requests: Vec<(String, Option<String>)>,
    rooms: HashMap<String, HostedRoom>,
    /// Events by ID, served from `/event` and `get_missing_events`.
    events: HashMap<String, Value>,
    /// What `get_missing_events` answers with, oldest first.
    missing: Vec<String>,
    /// How many times `get_missing_events` was asked.
    missing_asked: usize,
    /// How long `get_missing_events` takes to answer (a slow server).
    missing_delay: std::time::Duration,
    /// Transactions received: (transaction ID, body).
    received: Vec<(String, Value)>,
    /// Whether `/_matrix/key/v2/server` answers 404 (a server whose keys
    /// cannot be had from it, only from a notary).
    keys_withheld: bool,
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

async fn key_response(
    State(shared): State<Shared>,
) -> Result<axum::Json<Value>, axum::http::StatusCode> {
    if shared.held.lock().expect("held").keys_withheld {
        return Err(axum::http::StatusCode::NOT_FOUND);
    }
    let body = json!({
        "server_name": shared.server_name,
        "valid_until_ts": now_ms() + 3_600_000,
        "verify_keys": { format!("ed25519:{}", shared.key.version): { "key": shared.key.public_key_base64 } },
        "old_verify_keys": {},
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(body).expect("object");
    ruma::signatures::sign_json(&shared.server_name, &shared.key.key_pair, &mut object)
        .expect("signed");
    Ok(axum::Json(serde_json::to_value(object).expect("JSON")))
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
    let delay = {
        let mut held = shared.held.lock().expect("held");
        held.missing_asked += 1;
        held.missing_delay
    };
    tokio::time::sleep(delay).await;
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

#[derive(serde::Deserialize)]
struct MakeJoinPath {
    room_id: String,
    user_id: String,
}

async fn make_join(
    State(shared): State<Shared>,
    UrlPath(path): UrlPath<MakeJoinPath>,
) -> axum::Json<Value> {
    let held = shared.held.lock().expect("held");
    let room = held.rooms.get(&path.room_id).cloned().unwrap_or_default();
    axum::Json(json!({
        "room_version": room.version,
        "event": {
            "type": "m.room.member", "state_key": path.user_id, "sender": path.user_id,
            "room_id": path.room_id, "content": { "membership": "join" },
            "prev_events": [room.latest], "depth": room.depth + 1,
            "auth_events": [room.create, room.join_rules, room.power_levels],
            "origin_server_ts": now_ms(), "origin": shared.server_name,
        },
    }))
}

async fn send_join(
    State(shared): State<Shared>,
    UrlPath((room_id, _event_id)): UrlPath<(String, String)>,
    axum::Json(event): axum::Json<Value>,
) -> axum::Json<Value> {
    let held = shared.held.lock().expect("held");
    let room = held.rooms.get(&room_id).cloned().unwrap_or_default();
    let state: Vec<Value> = room
        .state
        .iter()
        .filter_map(|id| held.events.get(id).cloned())
        .collect();
    axum::Json(json!({
        "origin": shared.server_name, "state": state, "auth_chain": state.clone(), "event": event,
    }))
}

impl FakeServer {
    /// Hosts a public room (version 10) with `members` of the fake
    /// server's users joined besides its creator: every event signed, the
    /// membership a linear chain. Returns the room ID.
    pub fn host_room(&self, members: usize) -> String {
        let version = "10";
        let room_id = format!(
            "!hosted{}:{}",
            self.held.lock().expect("held").rooms.len(),
            self.server_name
        );
        let creator = format!("@creator:{}", self.server_name);
        let mut depth = 0;
        let mut prev: Option<String> = None;
        let mut state = Vec::new();
        let mut add = |this: &Self,
                       kind: &str,
                       key: &str,
                       sender: &str,
                       content: Value,
                       auth: Vec<String>| {
            depth += 1;
            let (id, _) = this.sign_event(
                version,
                json!({
                    "type": kind, "state_key": key, "sender": sender, "room_id": room_id,
                    "content": content, "depth": depth, "origin_server_ts": now_ms(),
                    "prev_events": prev.iter().collect::<Vec<_>>(), "auth_events": auth,
                }),
            );
            prev = Some(id.clone());
            state.push(id.clone());
            id
        };
        let create = add(
            self,
            "m.room.create",
            "",
            &creator,
            json!({ "creator": creator, "room_version": version }),
            vec![],
        );
        let creator_join = add(
            self,
            "m.room.member",
            &creator,
            &creator,
            json!({ "membership": "join" }),
            vec![create.clone()],
        );
        let power_levels = add(
            self,
            "m.room.power_levels",
            "",
            &creator,
            json!({ "users": { creator.clone(): 100 } }),
            vec![create.clone(), creator_join.clone()],
        );
        let join_rules = add(
            self,
            "m.room.join_rules",
            "",
            &creator,
            json!({ "join_rule": "public" }),
            vec![create.clone(), creator_join.clone(), power_levels.clone()],
        );
        add(
            self,
            "m.room.name",
            "",
            &creator,
            json!({ "name": format!("hosted, {members} members") }),
            vec![create.clone(), creator_join.clone(), power_levels.clone()],
        );
        for i in 0..members {
            let user = format!("@member{i}:{}", self.server_name);
            add(
                self,
                "m.room.member",
                &user,
                &user,
                json!({ "membership": "join" }),
                vec![create.clone(), join_rules.clone(), power_levels.clone()],
            );
        }
        let room = HostedRoom {
            version: version.into(),
            state,
            create,
            join_rules,
            power_levels,
            latest: prev.unwrap_or_default(),
            depth,
        };
        self.held
            .lock()
            .expect("held")
            .rooms
            .insert(room_id.clone(), room);
        room_id
    }

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
            .route(
                "/_matrix/federation/v1/media/download/{media_id}",
                get(federation_media),
            )
            .route(
                "/_matrix/media/v3/download/{server_name}/{media_id}",
                get(legacy_media),
            )
            .route("/cdn/{media_id}", get(cdn_media))
            .route(
                "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
                get(make_join),
            )
            .route(
                "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
                put(send_join),
            )
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
                ganglion_base::http::ListenerLimits::INTERNAL,
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

    /// Serves `media` as `media_id` from now on.
    pub fn hold_media(&self, media_id: &str, media: FakeMedia) {
        self.held
            .lock()
            .expect("held")
            .media
            .insert(media_id.to_owned(), media);
    }

    /// The media requests received so far: (path and query,
    /// `Authorization` header).
    pub fn media_requests(&self) -> Vec<(String, Option<String>)> {
        self.held.lock().expect("held").media_requests.clone()
    }

    /// Whether this server answers for its own keys (`false`: 404, as a
    /// server that is down would give none).
    pub fn serve_keys(&self, serve: bool) {
        self.held.lock().expect("held").keys_withheld = !serve;
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

    /// `user_id` (of this server) joins a room of the server at
    /// `base_url` (named `destination`): make_join, sign, send_join v2.
    /// The room version, the join's ID and PDU, and send_join's answer.
    pub async fn join_room(
        &self,
        (base_url, destination): (&str, &str),
        room_id: &str,
        user_id: &str,
    ) -> (String, String, Value, Value) {
        let encode = crate::client::encode;
        let (status, template) = self
            .request(
                base_url,
                destination,
                reqwest::Method::GET,
                &format!(
                    "/_matrix/federation/v1/make_join/{}/{}?ver=10&ver=11&ver=12",
                    encode(room_id),
                    encode(user_id)
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "make_join: {template}");
        let version = template["room_version"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut join = template["event"].clone();
        join["origin_server_ts"] = serde_json::json!(now_ms());
        let (join_id, join) = self.sign_event(&version, join);
        let (status, joined) = self
            .request(
                base_url,
                destination,
                reqwest::Method::PUT,
                &format!(
                    "/_matrix/federation/v2/send_join/{}/{}",
                    encode(room_id),
                    encode(&join_id)
                ),
                Some(join.clone()),
            )
            .await;
        assert_eq!(status, 200, "send_join: {joined}");
        (version, join_id, join, joined)
    }

    /// Joins `members` users of this server to another server's public
    /// room: the first through make_join and send_join, the rest as join
    /// events built here (each after the one before) and sent in
    /// transactions of 50 PDUs, each once the one before was taken. Panics
    /// on a refused PDU.
    pub async fn fill_room(
        &self,
        (base_url, destination): (&str, &str),
        room_id: &str,
        members: usize,
    ) {
        let first = format!("@member0:{}", self.server_name);
        let (version, mut prev, join, joined) = self
            .join_room((base_url, destination), room_id, &first)
            .await;
        let rules = ruma::RoomVersionId::try_from(version.as_str())
            .expect("version")
            .rules()
            .expect("rules");
        let id_of = |event: &Value| -> String {
            let object: CanonicalJsonObject =
                serde_json::from_value(event.clone()).expect("object");
            format!(
                "${}",
                ruma::signatures::reference_hash(&object, &rules).expect("hash")
            )
        };
        let state_id = |kind: &str| -> Option<String> {
            joined["state"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["type"] == kind)
                .map(id_of)
        };
        // Version 12 names no create event among auth events.
        let mut auth: Vec<String> = ["m.room.join_rules", "m.room.power_levels"]
            .iter()
            .filter_map(|kind| state_id(kind))
            .collect();
        if !rules.authorization.room_create_event_id_as_room_id {
            auth.extend(state_id("m.room.create"));
        }
        let mut depth = join["depth"].as_i64().unwrap_or(1);
        let mut pdus = Vec::new();
        // Transaction IDs of this fill only: a server takes a repeated one
        // as a retry and answers it without taking its PDUs.
        let fill = now_ms();
        for i in 1..members {
            let user = format!("@member{i}:{}", self.server_name);
            depth += 1;
            let (id, pdu) = self.sign_event(
                &version,
                serde_json::json!({
                    "type": "m.room.member", "state_key": user, "sender": user,
                    "room_id": room_id, "content": { "membership": "join" },
                    "depth": depth, "origin_server_ts": now_ms(),
                    "prev_events": [prev], "auth_events": auth,
                }),
            );
            prev = id;
            pdus.push(pdu);
            if pdus.len() == 50 || i + 1 == members {
                let body = serde_json::json!({
                    "origin": self.server_name, "origin_server_ts": now_ms(),
                    "pdus": std::mem::take(&mut pdus),
                });
                let (status, answer) = self
                    .request(
                        base_url,
                        destination,
                        reqwest::Method::PUT,
                        &format!("/_matrix/federation/v1/send/fill{fill}-{i}"),
                        Some(body),
                    )
                    .await;
                assert_eq!(status, 200, "send: {answer}");
                let refused: Vec<&Value> = answer["pdus"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, result)| result.get("error").is_some())
                    .map(|(_, result)| result)
                    .collect();
                assert!(refused.is_empty(), "refused: {refused:?}");
                // The next transaction builds on this one: wait until the
                // remote has taken it (Synapse takes PDUs in the
                // background, and would otherwise miss their prev events).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                loop {
                    let (status, _) = self
                        .request(
                            base_url,
                            destination,
                            reqwest::Method::GET,
                            &format!(
                                "/_matrix/federation/v1/event/{}",
                                crate::client::encode(&prev)
                            ),
                            None,
                        )
                        .await;
                    if status == 200 {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{destination} never took {prev}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
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

    /// How long `get_missing_events` takes to answer from now on.
    pub fn set_missing_delay(&self, delay: std::time::Duration) {
        self.held.lock().expect("held").missing_delay = delay;
    }

    /// What `get_missing_events` answers with from now on (held events).
    pub fn set_missing(&self, event_ids: Vec<String>) {
        self.held.lock().expect("held").missing = event_ids;
    }

    /// How many PDUs received so far `wanted` holds for.
    pub fn count_received(&self, wanted: impl Fn(&Value) -> bool) -> usize {
        let held = self.held.lock().expect("held");
        held.received
            .iter()
            .flat_map(|(_, body)| body["pdus"].as_array().into_iter().flatten())
            .filter(|pdu| wanted(pdu))
            .count()
    }

    /// The transactions received so far.
    /// How many times another server asked this one `get_missing_events`.
    pub fn missing_events_asked(&self) -> usize {
        self.held.lock().expect("held").missing_asked
    }

    pub fn received(&self) -> Vec<(String, Value)> {
        self.held.lock().expect("held").received.clone()
    }
}

fn record_media_request(shared: &Shared, uri: &axum::http::Uri, headers: &axum::http::HeaderMap) {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    shared
        .held
        .lock()
        .expect("held")
        .media_requests
        .push((path, authorization));
}

fn json_error(status: u16, body: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::from_u16(status).expect("status"),
        axum::Json(body),
    )
        .into_response()
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`, as the test set
/// it up (any signature taken: the test checks the recorded header).
async fn federation_media(
    State(shared): State<Shared>,
    UrlPath(media_id): UrlPath<String>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    record_media_request(&shared, &uri, &headers);
    let media = shared
        .held
        .lock()
        .expect("held")
        .media
        .get(&media_id)
        .cloned();
    let boundary = "fake0boundary1";
    let multipart = |part_headers: String, bytes: &[u8]| {
        let mut body = format!(
            "\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n{part_headers}\r\n"
        )
        .into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        (
            [(
                "content-type",
                format!("multipart/mixed; boundary={boundary}"),
            )],
            body,
        )
            .into_response()
    };
    match media {
        None => json_error(
            404,
            json!({"errcode": "M_NOT_FOUND", "error": "no such media"}),
        ),
        Some(FakeMedia::File {
            content_type,
            disposition,
            bytes,
        }) => multipart(
            format!("Content-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n"),
            &bytes,
        ),
        Some(FakeMedia::Location(url)) => multipart(format!("Location: {url}\r\n"), b""),
        Some(FakeMedia::LegacyOnly { .. }) => json_error(
            404,
            json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}),
        ),
        Some(FakeMedia::Error(status, body)) => json_error(status, body),
        Some(FakeMedia::Garbage(content_type, body)) => {
            ([("content-type", content_type)], body).into_response()
        }
    }
}

/// The deprecated `GET /_matrix/media/v3/download/{serverName}/{mediaId}`.
async fn legacy_media(
    State(shared): State<Shared>,
    UrlPath((_server, media_id)): UrlPath<(String, String)>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    record_media_request(&shared, &uri, &headers);
    let media = shared
        .held
        .lock()
        .expect("held")
        .media
        .get(&media_id)
        .cloned();
    match media {
        Some(FakeMedia::LegacyOnly {
            content_type,
            bytes,
        }) => (
            [
                ("content-type", content_type),
                (
                    "content-disposition",
                    "inline; filename=\"legacy.bin\"".to_owned(),
                ),
            ],
            bytes,
        )
            .into_response(),
        _ => json_error(
            404,
            json!({"errcode": "M_NOT_FOUND", "error": "no such media"}),
        ),
    }
}

/// A plain download (what a `Location` points to), unauthenticated.
async fn cdn_media(
    State(shared): State<Shared>,
    UrlPath(media_id): UrlPath<String>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    record_media_request(&shared, &uri, &headers);
    let media = shared
        .held
        .lock()
        .expect("held")
        .media
        .get(&media_id)
        .cloned();
    match media {
        Some(FakeMedia::File {
            content_type,
            disposition,
            bytes,
        }) => (
            [
                ("content-type", content_type),
                ("content-disposition", disposition),
            ],
            bytes,
        )
            .into_response(),
        _ => json_error(404, json!({"errcode": "M_NOT_FOUND"})),
    }
}
