//! What a client does for cross-signing: ed25519 key pairs, signed JSON,
//! a user's master, self-signing and user-signing keys, and their upload
//! with User-Interactive Auth by password.

use base64::Engine;
use reqwest::Method;
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};

use crate::client::{Client, Reply};

/// An ed25519 key pair named `version` (its key ID is `ed25519:<version>`;
/// `None`: its own public key, as cross-signing keys are named), and its
/// public key (unpadded base64).
pub fn key_pair(version: Option<&str>) -> (Ed25519KeyPair, String) {
    let der = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&der, "probe".into()).expect("key");
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(probe.public_key());
    let version = version.map_or_else(|| public.clone(), str::to_owned);
    (
        Ed25519KeyPair::from_der(&der, version).expect("key"),
        public,
    )
}

/// `value` with `signer`'s signature by `pair` added to its others.
pub fn signed(value: &Value, signer: &str, pair: &Ed25519KeyPair) -> Value {
    let mut object: ruma::CanonicalJsonObject =
        serde_json::from_value(value.clone()).expect("canonical");
    ruma::signatures::sign_json(signer, pair, &mut object).expect("sign");
    serde_json::to_value(object).expect("JSON")
}

/// A device's identity keys with a real ed25519 key, signed by it: the
/// keys and the device's key pair.
pub fn device_keys(client: &Client) -> (Value, Ed25519KeyPair) {
    let device = &client.device_id;
    let (pair, public) = key_pair(Some(device));
    let keys = json!({
        "user_id": client.user_id, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "9TVnY0k/SyjWN1UVdjLs4/XOPZw6GnS7u8cj1lRYZE0",
            format!("ed25519:{device}"): public,
        },
    });
    (signed(&keys, &client.user_id, &pair), pair)
}

/// Uploads new identity keys for `client`'s device ([`device_keys`]).
pub async fn upload_device_keys(client: &Client) -> (Value, Ed25519KeyPair) {
    let (keys, pair) = device_keys(client);
    let reply = client
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "device_keys": keys })),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    (keys, pair)
}

/// A user's cross-signing keys and their key pairs.
pub struct CrossSigning {
    pub master: Ed25519KeyPair,
    pub self_signing: Ed25519KeyPair,
    pub user_signing: Ed25519KeyPair,
    pub master_key: Value,
    pub self_signing_key: Value,
    pub user_signing_key: Value,
}

fn public_key(key: &Value) -> String {
    key["keys"]
        .as_object()
        .and_then(|keys| keys.values().next())
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl CrossSigning {
    /// New keys for `user_id`: the self-signing and user-signing keys
    /// signed by the master key.
    pub fn new(user_id: &str) -> CrossSigning {
        let key = |usage: &str| {
            let (pair, public) = key_pair(None);
            let key = json!({
                "user_id": user_id, "usage": [usage],
                "keys": { format!("ed25519:{public}"): public },
            });
            (pair, key)
        };
        let (master, master_key) = key("master");
        let (self_signing, self_signing_key) = key("self_signing");
        let (user_signing, user_signing_key) = key("user_signing");
        CrossSigning {
            self_signing_key: signed(&self_signing_key, user_id, &master),
            user_signing_key: signed(&user_signing_key, user_id, &master),
            master,
            self_signing,
            user_signing,
            master_key,
        }
    }

    /// The master key's public key (its ID in `/keys/signatures/upload`).
    pub fn master_public(&self) -> String {
        public_key(&self.master_key)
    }

    pub fn self_signing_public(&self) -> String {
        public_key(&self.self_signing_key)
    }

    pub fn user_signing_public(&self) -> String {
        public_key(&self.user_signing_key)
    }

    /// The upload body with all three keys.
    pub fn body(&self) -> Value {
        json!({
            "master_key": self.master_key,
            "self_signing_key": self.self_signing_key,
            "user_signing_key": self.user_signing_key,
        })
    }
}

pub const UPLOAD_PATH: &str = "/_matrix/client/v3/keys/device_signing/upload";

/// Uploads cross-signing keys (`body`), answering the server's
/// User-Interactive Auth challenge, if it asks, with `password`.
pub async fn upload(client: &Client, password: &str, body: &Value) -> Reply {
    let first = client
        .call(Method::POST, UPLOAD_PATH, Some(body.clone()))
        .await;
    if first.status != 401 {
        return first;
    }
    assert!(
        first.body["flows"].as_array().is_some_and(|flows| flows
            .iter()
            .any(|f| f["stages"] == json!(["m.login.password"]))),
        "{first:?}"
    );
    let mut body = body.clone();
    body["auth"] = json!({
        "type": "m.login.password", "session": first.body["session"],
        "identifier": { "type": "m.id.user", "user": client.user_id },
        "password": password,
    });
    client.call(Method::POST, UPLOAD_PATH, Some(body)).await
}

/// `/keys/signatures/upload` of `signed`; the reply's `failures`.
pub async fn upload_signatures(client: &Client, signed: &Value) -> Value {
    let reply = client
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/signatures/upload",
            Some(signed.clone()),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["failures"].clone()
}
