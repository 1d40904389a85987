//! End-to-end encryption keys through the keyserver: upload, query and
//! claim, and the one-time key counts and fallback key types in `/sync`
//! and in sliding sync's `e2ee` extension.

use ganglion_integration_tests::client::Client;
use reqwest::Method;
use serde_json::{Value, json};

fn device_keys(client: &Client) -> Value {
    let device = &client.device_id;
    json!({
        "user_id": client.user_id, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): "curve", format!("ed25519:{device}"): "ed" },
        "signatures": { client.user_id.clone(): { format!("ed25519:{device}"): "sig" } },
    })
}

fn signed(key: &str) -> Value {
    json!({ "key": key, "signatures": { "@x:localhost": { "ed25519:X": "sig" } } })
}

async fn counts_in_sync(client: &Client) -> (Value, Value) {
    let body = client.sync_all(None, 0).await;
    (
        body["device_one_time_keys_count"].clone(),
        body["device_unused_fallback_key_types"].clone(),
    )
}

pub(crate) async fn upload_query_claim(base_url: &str) {
    let alice = Client::register(base_url, "k_alice", "pw-alice-k").await;
    let bob = Client::register(base_url, "k_bob", "pw-bob-k").await;
    let upload = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({
                "device_keys": device_keys(&alice),
                "one_time_keys": {
                    "signed_curve25519:AAAA": signed("one"),
                    "signed_curve25519:AAAB": signed("two"),
                },
                "fallback_keys": { "signed_curve25519:FFFF": signed("fallback") },
            })),
        )
        .await;
    assert_eq!(upload.status, 200, "{upload:?}");
    assert_eq!(upload.body["one_time_key_counts"]["signed_curve25519"], 2);
    let (counts, fallback) = counts_in_sync(&alice).await;
    assert_eq!(counts["signed_curve25519"], 2, "{counts}");
    assert_eq!(fallback, json!(["signed_curve25519"]));

    // Bob reads alice's device keys; a remote server is a failure for now.
    let query = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(
                json!({ "device_keys": { alice.user_id.clone(): [], "@eve:remote.example": [] } }),
            ),
        )
        .await;
    assert_eq!(query.status, 200, "{query:?}");
    assert_eq!(
        query.body["device_keys"][&alice.user_id][&alice.device_id],
        device_keys(&alice)
    );
    assert!(
        query.body["failures"]["remote.example"].is_object(),
        "{query:?}"
    );

    // Bob claims a one-time key: alice holds one fewer.
    let claim = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(json!({ "one_time_keys": {
                alice.user_id.clone(): { alice.device_id.clone(): "signed_curve25519" }
            } })),
        )
        .await;
    assert_eq!(claim.status, 200, "{claim:?}");
    assert_eq!(
        claim.body["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:AAAA"],
        signed("one")
    );
    let (counts, _) = counts_in_sync(&alice).await;
    assert_eq!(counts["signed_curve25519"], 1);

    // Sliding sync's e2ee extension carries the same counts.
    let sliding = alice
        .call(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(json!({ "extensions": { "e2ee": { "enabled": true } } })),
        )
        .await;
    assert_eq!(sliding.status, 200, "{sliding:?}");
    let e2ee = &sliding.body["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"], 1,
        "{e2ee}"
    );
    assert_eq!(
        e2ee["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    // Refused, and nothing changed.
    let bad = [
        json!({ "device_keys": device_keys(&bob) }),
        json!({ "one_time_keys": { "signed_curve25519:AAAB": signed("not two") } }),
        json!({ "one_time_keys": { "no_algorithm": signed("x") } }),
    ];
    for body in bad {
        let reply = alice
            .call(Method::POST, "/_matrix/client/v3/keys/upload", Some(body))
            .await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, "M_INVALID_PARAM"),
            "{reply:?}"
        );
    }
    let reply = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({ "device_keys": 5 })),
        )
        .await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (400, "M_BAD_JSON"),
        "{reply:?}"
    );
    let reply = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { "not a user": [] } })),
        )
        .await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (400, "M_INVALID_PARAM"),
        "{reply:?}"
    );
    let (counts, _) = counts_in_sync(&alice).await;
    assert_eq!(counts["signed_curve25519"], 1, "nothing changed");
    let no_token = ganglion_integration_tests::client::request(
        &alice.http,
        Method::POST,
        &format!("{base_url}/_matrix/client/v3/keys/upload"),
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(no_token.status, 401);
}
