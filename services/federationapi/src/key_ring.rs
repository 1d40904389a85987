//! Remote servers' signing keys: read from the database while valid,
//! otherwise fetched from the server itself (`/_matrix/key/v2/server`)
//! and, failing that, from the configured notaries (`/_matrix/key/v2/query`).
//! A key response is kept only if the server signed it with the keys it
//! lists (and, through a notary, if the notary signed it too).

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::serde::Base64;
use serde_json::{Value, json};

use crate::storage::server_keys::StoredKey;
use crate::storage::{Storage, StorageError};
use ganglion_outbound::{FederationClient, FederationError};

/// Why no usable key was found.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0} has no valid key {1}")]
    Missing(String, String),
}

/// This server's own key, which needs no fetching.
pub(crate) struct OwnKey {
    pub(crate) server_name: String,
    pub(crate) key_id: String,
    pub(crate) public_key: String,
}

pub(crate) struct KeyRing {
    storage: Storage,
    client: Arc<FederationClient>,
    notaries: Vec<String>,
    own: OwnKey,
    /// Servers' keys as last read from the database, for a short while:
    /// a join checks thousands of events signed by the same few keys.
    cache: std::sync::Mutex<
        ganglion_base::bounded::Bounded<String, (Vec<StoredKey>, std::time::Instant)>,
    >,
    /// Servers whose own key endpoint failed lately, and when: not asked
    /// again for [`RETRY_DIRECT_AFTER`], so requests naming an origin that
    /// does not answer (forged ones, say) cost one outbound fetch, not one
    /// each.
    failed_direct: std::sync::Mutex<ganglion_base::bounded::Bounded<String, std::time::Instant>>,
}

static KEY_FETCHES: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(
    || {
        ganglion_base::metrics::counter_vec(
            "ganglion_server_key_fetches_total",
            "Fetches of other servers' signing keys from the servers themselves, by outcome (ok, failed, skipped: failed lately)",
            &["outcome"],
        )
    },
);

/// How long a server whose key endpoint failed is not asked again.
const RETRY_DIRECT_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// How long keys read from the database are used without reading again.
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) use ganglion_base::clock::now_ms;

/// Whether a stored key could sign something at `at_ms`: a current key
/// until its `valid_until_ts`, an old one until it expired.
fn usable(key: &StoredKey, at_ms: i64) -> bool {
    key.valid_until_ts >= at_ms || key.expired_ts > at_ms
}

/// Checks that `object` is signed by `entity` with one of `keys` (key ID →
/// unpadded base64), ignoring other entities' signatures.
pub(crate) fn signed_by(
    object: &CanonicalJsonObject,
    entity: &str,
    keys: &BTreeMap<String, String>,
) -> bool {
    let Some(ruma::CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return false;
    };
    let Some(own) = signatures.get(entity) else {
        return false;
    };
    let mut only = object.clone();
    only.insert(
        "signatures".into(),
        ruma::CanonicalJsonValue::Object(CanonicalJsonObject::from([(
            entity.to_owned(),
            own.clone(),
        )])),
    );
    let set: BTreeMap<String, Base64> = keys
        .iter()
        .filter_map(|(id, key)| Some((id.clone(), Base64::parse(key).ok()?)))
        .collect();
    let map = BTreeMap::from([(entity.to_owned(), set)]);
    ruma::signatures::verify_json(&map, &only).is_ok()
}

/// A key response (`/_matrix/key/v2/server`, or one entry of a notary's
/// answer) checked: it names `server`, and `server` signed it with a key
/// it lists. Its keys, and its `valid_until_ts`.
pub(crate) fn checked_response(
    server: &str,
    response: &Value,
) -> Option<(Vec<StoredKey>, i64, CanonicalJsonObject)> {
    if response["server_name"] != server {
        return None;
    }
    let valid_until_ts = response["valid_until_ts"].as_i64()?;
    let mut keys = Vec::new();
    let mut current = BTreeMap::new();
    for (key_id, key) in response["verify_keys"].as_object()? {
        let public_key = key["key"].as_str()?.to_owned();
        current.insert(key_id.clone(), public_key.clone());
        keys.push(StoredKey {
            key_id: key_id.clone(),
            public_key,
            valid_until_ts,
            expired_ts: 0,
        });
    }
    if let Some(old) = response["old_verify_keys"].as_object() {
        for (key_id, key) in old {
            if current.contains_key(key_id) {
                continue;
            }
            let (Some(public_key), Some(expired_ts)) =
                (key["key"].as_str(), key["expired_ts"].as_i64())
            else {
                continue;
            };
            keys.push(StoredKey {
                key_id: key_id.clone(),
                public_key: public_key.to_owned(),
                valid_until_ts: 0,
                expired_ts,
            });
        }
    }
    let object: CanonicalJsonObject = serde_json::from_value(response.clone()).ok()?;
    signed_by(&object, server, &current).then_some((keys, valid_until_ts, object))
}

impl KeyRing {
    pub(crate) fn new(
        storage: Storage,
        client: Arc<FederationClient>,
        notaries: Vec<String>,
        own: OwnKey,
        cache_size: usize,
    ) -> KeyRing {
        for outcome in ["ok", "failed", "skipped"] {
            KEY_FETCHES.with_label_values(&[outcome]);
        }
        KeyRing {
            storage,
            client,
            notaries,
            own,
            cache: std::sync::Mutex::new(ganglion_base::bounded::Bounded::new(cache_size)),
            failed_direct: std::sync::Mutex::new(ganglion_base::bounded::Bounded::new(cache_size)),
        }
    }

    /// A server's stored keys, from the cache while fresh.
    async fn stored_keys(&self, server: &str) -> Result<Vec<StoredKey>, KeyError> {
        if let Some((keys, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(keys);
        }
        let keys = self.storage.server_keys(server).await?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server.to_owned(), (keys.clone(), std::time::Instant::now()));
        Ok(keys)
    }

    fn forget_cached(&self, server: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(server);
    }

    /// The keys `server` could sign with at `at_ms` among `key_ids`
    /// (key ID → unpadded base64), fetching them when not held. A key
    /// that cannot be had is left out.
    pub(crate) async fn keys_for(
        &self,
        server: &str,
        key_ids: &[String],
        at_ms: i64,
    ) -> Result<BTreeMap<String, String>, KeyError> {
        if server == self.own.server_name {
            return Ok(BTreeMap::from([(
                self.own.key_id.clone(),
                self.own.public_key.clone(),
            )]));
        }
        let held = |keys: Vec<StoredKey>| -> BTreeMap<String, String> {
            keys.into_iter()
                .filter(|k| usable(k, at_ms) && key_ids.contains(&k.key_id))
                .map(|k| (k.key_id, k.public_key))
                .collect()
        };
        let found = held(self.stored_keys(server).await?);
        if found.len() == key_ids.len() {
            return Ok(found);
        }
        if let Err(error) = self.fetch_direct_unless_failed_lately(server).await {
            tracing::info!(server, %error, "fetching server keys directly failed");
        }
        let found = held(self.stored_keys(server).await?);
        if found.len() == key_ids.len() {
            return Ok(found);
        }
        for notary in &self.notaries {
            if notary == server {
                continue;
            }
            if let Err(error) = self.fetch_from_notary(notary, server).await {
                tracing::info!(server, notary, %error, "fetching server keys from a notary failed");
            }
            let found = held(self.stored_keys(server).await?);
            if found.len() == key_ids.len() {
                return Ok(found);
            }
        }
        Ok(held(self.stored_keys(server).await?))
    }

    /// One key of `server` valid at `at_ms`, or why not.
    pub(crate) async fn key(
        &self,
        server: &str,
        key_id: &str,
        at_ms: i64,
    ) -> Result<String, KeyError> {
        self.keys_for(server, &[key_id.to_owned()], at_ms)
            .await?
            .remove(key_id)
            .ok_or_else(|| KeyError::Missing(server.to_owned(), key_id.to_owned()))
    }

    /// [`Self::fetch_direct`] for a request that names `server` as its
    /// origin: not again for a while after a failure. (A notary query,
    /// from a server that trusts us, always asks.)
    async fn fetch_direct_unless_failed_lately(&self, server: &str) -> Result<(), FederationError> {
        let failed_lately = self
            .failed_direct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            .is_some_and(|at| at.elapsed() < RETRY_DIRECT_AFTER);
        if failed_lately {
            KEY_FETCHES.with_label_values(&["skipped"]).inc();
            return Err(FederationError::Request(
                server.to_owned(),
                "failed lately; not asked again yet".into(),
            ));
        }
        let fetched = self.fetch_direct(server).await;
        let mut failed = self.failed_direct.lock().unwrap_or_else(|e| e.into_inner());
        KEY_FETCHES
            .with_label_values(&[if fetched.is_ok() { "ok" } else { "failed" }])
            .inc();
        match &fetched {
            Ok(()) => {
                failed.remove(server);
            }
            Err(_) => {
                failed.insert(server.to_owned(), std::time::Instant::now());
            }
        }
        fetched
    }

    async fn fetch_direct(&self, server: &str) -> Result<(), FederationError> {
        let response = self
            .client
            .get_unsigned(server, "/_matrix/key/v2/server")
            .await?;
        self.keep(server, &response).await
    }

    async fn fetch_from_notary(&self, notary: &str, server: &str) -> Result<(), FederationError> {
        let notary_keys: BTreeMap<String, String> = {
            let response = self
                .client
                .get_unsigned(notary, "/_matrix/key/v2/server")
                .await?;
            let (keys, _, _) = checked_response(notary, &response).ok_or_else(|| {
                FederationError::BadResponse(notary.to_owned(), "unsigned key response".into())
            })?;
            self.keep(notary, &response).await?;
            keys.into_iter()
                .filter(|k| k.expired_ts == 0)
                .map(|k| (k.key_id, k.public_key))
                .collect()
        };
        let body = json!({ "server_keys": { server: {} } });
        let answer = self
            .client
            .post_unsigned(notary, "/_matrix/key/v2/query", &body)
            .await?;
        for response in answer["server_keys"].as_array().into_iter().flatten() {
            let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(response.clone()) else {
                continue;
            };
            if signed_by(&object, notary, &notary_keys) {
                self.keep(server, response).await?;
            }
        }
        Ok(())
    }

    /// Stores a key response `server` signed.
    async fn keep(&self, server: &str, response: &Value) -> Result<(), FederationError> {
        let (keys, valid_until_ts, object) =
            checked_response(server, response).ok_or_else(|| {
                FederationError::BadResponse(
                    server.to_owned(),
                    "key response not signed by it".into(),
                )
            })?;
        let text = serde_json::to_string(&object)
            .map_err(|e| FederationError::BadResponse(server.to_owned(), e.to_string()))?;
        self.storage
            .store_server_keys(server, &keys, &text, valid_until_ts)
            .await
            .map_err(|e| FederationError::BadResponse(server.to_owned(), e.to_string()))?;
        self.forget_cached(server);
        Ok(())
    }

    /// Key responses for a notary query: `server`'s latest one valid until
    /// at least `minimum_valid_until_ts`, fetched when the one held is older.
    pub(crate) async fn response_for_notary(
        &self,
        server: &str,
        minimum_valid_until_ts: i64,
    ) -> Result<Option<CanonicalJsonObject>, KeyError> {
        let held = self.storage.server_key_response(server).await?;
        let fresh = held
            .as_ref()
            .is_some_and(|(_, until)| *until >= minimum_valid_until_ts.max(now_ms()));
        if !fresh && let Err(error) = self.fetch_direct(server).await {
            tracing::info!(server, %error, "notary: fetching server keys failed");
        }
        Ok(self
            .storage
            .server_key_response(server)
            .await?
            .and_then(|(json, _)| serde_json::from_str(&json).ok()))
    }
}
