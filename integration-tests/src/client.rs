//! A minimal Matrix client over HTTP, enough to drive scenarios.

use std::time::Duration;

use serde_json::{Value, json};

#[derive(Clone)]
pub struct Client {
    pub base_url: String,
    pub http: reqwest::Client,
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
}

/// A response: status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn errcode(&self) -> &str {
        self.body["errcode"].as_str().unwrap_or("")
    }
}

pub async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Reply {
    let mut builder = http.request(method, url).timeout(Duration::from_secs(120));
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = body {
        builder = builder
            .header("content-type", "application/json")
            .body(body);
    }
    let response = builder.send().await.expect("request sent");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply { status, body }
}

impl Client {
    /// Registers through the User-Interactive Auth dummy flow.
    pub async fn register(base_url: &str, username: &str, password: &str) -> Client {
        Self::register_with(reqwest::Client::new(), base_url, username, password).await
    }

    /// As [`Client::register`], through the given HTTP client (one that
    /// trusts a test server's self-signed certificate, say), which the
    /// returned client keeps using.
    pub async fn register_with(
        http: reqwest::Client,
        base_url: &str,
        username: &str,
        password: &str,
    ) -> Client {
        let url = format!("{base_url}/_matrix/client/v3/register");
        let first = request(
            &http,
            reqwest::Method::POST,
            &url,
            None,
            Some(
                json!({"username": username, "password": password})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
        assert_eq!(first.status, 401, "UIA challenge first: {first:?}");
        let session = first.body["session"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let done = request(
            &http,
            reqwest::Method::POST,
            &url,
            None,
            Some(
                json!({"username": username, "password": password,
                       "auth": {"type": "m.login.dummy", "session": session}})
                .to_string()
                .into_bytes(),
            ),
        )
        .await;
        assert_eq!(done.status, 200, "register: {done:?}");
        Client {
            base_url: base_url.to_owned(),
            http,
            user_id: done.body["user_id"].as_str().unwrap_or_default().to_owned(),
            access_token: done.body["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            device_id: done.body["device_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        request(
            &self.http,
            method,
            &format!("{}{path}", self.base_url),
            Some(&self.access_token),
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    pub async fn create_room(&self, body: Value) -> String {
        let reply = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(body),
            )
            .await;
        assert_eq!(reply.status, 200, "createRoom: {reply:?}");
        reply.body["room_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn join(&self, room_id: &str) -> Reply {
        self.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode(room_id)),
            Some(json!({})),
        )
        .await
    }

    /// Joins a room (ID or alias) through another server, as a room this
    /// server does not know is joined.
    pub async fn join_via(&self, room: &str, server_name: &str) -> Reply {
        self.call(
            reqwest::Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                encode(room),
                encode(server_name)
            ),
            Some(json!({})),
        )
        .await
    }

    pub async fn leave(&self, room_id: &str) -> Reply {
        self.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", encode(room_id)),
            Some(json!({})),
        )
        .await
    }

    pub async fn send_text(&self, room_id: &str, txn_id: &str, body: &str) -> Reply {
        self.call(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn_id}",
                encode(room_id)
            ),
            Some(json!({"msgtype": "m.text", "body": body})),
        )
        .await
    }

    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64, limit: u32) -> Value {
        let filter = encode(&json!({"room": {"timeline": {"limit": limit}}}).to_string());
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}&filter={filter}");
        if let Some(since) = since {
            path.push_str(&format!("&since={}", encode(since)));
        }
        let reply = self.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(reply.status, 200, "sync: {reply:?}");
        reply.body
    }

    /// `/sync` with no filter, from `since`, long-polling up to `timeout_ms`.
    pub async fn sync_all(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={}", encode(since)));
        }
        let reply = self.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(reply.status, 200, "sync: {reply:?}");
        reply.body
    }

    pub async fn messages(
        &self,
        room_id: &str,
        from: Option<&str>,
        dir: &str,
        limit: u32,
    ) -> Value {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir={dir}&limit={limit}",
            encode(room_id)
        );
        if let Some(from) = from {
            path.push_str(&format!("&from={}", encode(from)));
        }
        let reply = self.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(reply.status, 200, "messages: {reply:?}");
        reply.body
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The bodies of `m.room.message` events in a timeline, in order.
pub fn message_bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
