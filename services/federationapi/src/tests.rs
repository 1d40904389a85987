//! The federationapi's storage against both database engines, and the
//! checks on key responses.

use std::collections::BTreeMap;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};

use crate::key_ring::{checked_response, signed_by};
use crate::storage::Storage;
use crate::storage::server_keys::StoredKey;

fn key_pair(version: &str) -> (Ed25519KeyPair, String) {
    let der = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&der, version.to_owned()).expect("key pair");
    let public =
        ruma::serde::Base64::<ruma::serde::base64::Standard>::new(pair.public_key().to_vec())
            .encode();
    (pair, public)
}

fn signed(server: &str, pair: &Ed25519KeyPair, mut body: Value) -> Value {
    let mut object: CanonicalJsonObject = serde_json::from_value(body.take()).expect("object");
    ruma::signatures::sign_json(server, pair, &mut object).expect("signed");
    serde_json::to_value(object).expect("JSON")
}

fn response(server: &str, public: &str, version: &str) -> Value {
    json!({
        "server_name": server,
        "valid_until_ts": 4_000_000_000_000_i64,
        "verify_keys": { format!("ed25519:{version}"): { "key": public } },
        "old_verify_keys": { "ed25519:old": { "key": "b2xk", "expired_ts": 1_000_i64 } },
    })
}

#[test]
fn a_key_response_counts_only_when_its_server_signed_it() {
    let (pair, public) = key_pair("k1");
    let good = signed("a.example", &pair, response("a.example", &public, "k1"));
    let (keys, until, _) = checked_response("a.example", &good).expect("accepted");
    assert_eq!(until, 4_000_000_000_000);
    assert_eq!(
        keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(),
        ["ed25519:k1", "ed25519:old"]
    );
    assert_eq!(keys[1].expired_ts, 1_000);

    // Another server's name, a changed body, an unsigned one, a signature
    // by a key it does not list: all refused.
    assert!(checked_response("b.example", &good).is_none());
    let mut tampered = good.clone();
    tampered["valid_until_ts"] = json!(4_000_000_000_001_i64);
    assert!(checked_response("a.example", &tampered).is_none());
    assert!(checked_response("a.example", &response("a.example", &public, "k1")).is_none());
    let (other, _) = key_pair("k1");
    let by_other = signed("a.example", &other, response("a.example", &public, "k1"));
    assert!(checked_response("a.example", &by_other).is_none());

    // A notary's countersignature is checked on its own.
    let (notary, notary_public) = key_pair("n");
    let vouched = signed("notary.example", &notary, good.clone());
    let object: CanonicalJsonObject = serde_json::from_value(vouched.clone()).expect("object");
    let notary_keys = BTreeMap::from([("ed25519:n".to_owned(), notary_public)]);
    assert!(signed_by(&object, "notary.example", &notary_keys));
    assert!(checked_response("a.example", &vouched).is_some());
    let good_object: CanonicalJsonObject = serde_json::from_value(good).expect("object");
    assert!(!signed_by(&good_object, "notary.example", &notary_keys));
}

async fn stores_keys(database_url: Option<String>) {
    let (db, _dir) = ganglion_base::testing::open_scratch(
        "federationapi",
        crate::storage::MIGRATIONS,
        database_url,
    )
    .await;
    let storage = Storage { db };
    let key = |id: &str, until: i64| StoredKey {
        key_id: id.into(),
        public_key: format!("pk-{id}"),
        valid_until_ts: until,
        expired_ts: 0,
    };
    storage
        .store_server_keys("a.example", &[key("ed25519:1", 100)], r#"{"v":1}"#, 100)
        .await
        .expect("store");
    // A later response replaces the key's validity and the response kept;
    // an older one does not replace the response.
    storage
        .store_server_keys(
            "a.example",
            &[key("ed25519:1", 200), key("ed25519:2", 200)],
            r#"{"v":2}"#,
            200,
        )
        .await
        .expect("store");
    storage
        .store_server_keys("a.example", &[], r#"{"v":0}"#, 50)
        .await
        .expect("store");
    assert_eq!(
        storage.server_keys("a.example").await.expect("keys"),
        vec![key("ed25519:1", 200), key("ed25519:2", 200)]
    );
    assert_eq!(
        storage
            .server_key_response("a.example")
            .await
            .expect("response"),
        Some((r#"{"v":2}"#.to_owned(), 200))
    );
    assert!(
        storage
            .server_keys("b.example")
            .await
            .expect("keys")
            .is_empty()
    );
}

/// One replica at a time holds an origin's inbound lease; it expires,
/// and its holder may renew it.
async fn leases_origins(storage: &Storage) {
    assert!(
        storage
            .lease_origin("o.example", "a", 1_000, 2_000)
            .await
            .expect("lease")
    );
    assert!(
        !storage
            .lease_origin("o.example", "b", 1_500, 2_500)
            .await
            .expect("lease")
    );
    assert!(
        storage
            .lease_origin("p.example", "b", 1_500, 2_500)
            .await
            .expect("lease")
    );
    assert!(
        storage
            .lease_origin("o.example", "a", 1_600, 2_600)
            .await
            .expect("renew")
    );
    // Expired: another takes it.
    assert!(
        storage
            .lease_origin("o.example", "b", 2_700, 3_700)
            .await
            .expect("lease")
    );
    // Released by its holder only.
    storage
        .release_origin("o.example", "a")
        .await
        .expect("release");
    assert!(
        !storage
            .lease_origin("o.example", "a", 2_800, 3_800)
            .await
            .expect("lease")
    );
    storage
        .release_origin("o.example", "b")
        .await
        .expect("release");
    assert!(
        storage
            .lease_origin("o.example", "a", 2_900, 3_900)
            .await
            .expect("lease")
    );

    // Old inbound transactions are forgotten, newer ones kept.
    storage
        .remember_transaction("o.example", "t1", &json!({"pdus": {}}))
        .await
        .expect("remember");
    assert_eq!(storage.prune_transactions(0).await.expect("prune"), 0);
    let later = crate::key_ring::now_ms() + 1;
    assert_eq!(storage.prune_transactions(later).await.expect("prune"), 1);
    assert!(
        storage
            .transaction_answer("o.example", "t1")
            .await
            .expect("answer")
            .is_none()
    );
}

#[tokio::test]
async fn sqlite_stores_keys() {
    stores_keys(None).await;
}

#[tokio::test]
async fn leases_on_both_engines() {
    for url in [
        None,
        Some(ganglion_base::testing::scratch_postgres("federationapi_leases").await),
    ] {
        let (db, _dir) =
            ganglion_base::testing::open_scratch("federationapi", crate::storage::MIGRATIONS, url)
                .await;
        leases_origins(&Storage { db }).await;
    }
}

#[tokio::test]
async fn postgres_stores_keys() {
    stores_keys(Some(
        ganglion_base::testing::scratch_postgres("federationapi").await,
    ))
    .await;
}
