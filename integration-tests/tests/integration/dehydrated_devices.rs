//! Dehydrated devices (MSC3814): one per user, uploaded with its keys in
//! one request, replaced by the next, collecting to-device messages that a
//! later login reads in batches without deleting them.

use std::time::Duration;

use ganglion_integration_tests::client::{Client, Reply, encode};
use reqwest::Method;
use serde_json::{Value, json};

const PATH: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

fn device_keys(user_id: &str, device_id: &str) -> Value {
    json!({
        "user_id": user_id, "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device_id}"): format!("curve-{device_id}"),
            format!("ed25519:{device_id}"): format!("ed-{device_id}"),
        },
        "signatures": { user_id: { format!("ed25519:{device_id}"): "sig" } },
        "dehydrated": true,
    })
}

fn upload(client: &Client, device_id: &str) -> Value {
    json!({
        "device_id": device_id,
        "device_data": {"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "pickle"},
        "initial_device_display_name": "Dehydrated",
        "device_keys": device_keys(&client.user_id, device_id),
        "one_time_keys": {
            "signed_curve25519:AAAA": {"key": "otk", "signatures": {
                client.user_id.clone(): {format!("ed25519:{device_id}"): "sig"}
            }}
        },
        "fallback_keys": {
            "signed_curve25519:FFFF": {"key": "fb", "fallback": true, "signatures": {
                client.user_id.clone(): {format!("ed25519:{device_id}"): "sig"}
            }}
        },
    })
}

async fn events(client: &Client, device_id: &str, next_batch: Option<&str>) -> Reply {
    let body = match next_batch {
        Some(token) => json!({ "next_batch": token }),
        None => json!({}),
    };
    client
        .call(
            Method::POST,
            &format!("{PATH}/{}/events", encode(device_id)),
            Some(body),
        )
        .await
}

/// The device IDs of a user's keys as another user's `/keys/query` sees
/// them.
async fn queried_devices(viewer: &Client, user_id: &str) -> Value {
    let reply = viewer
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({ "device_keys": { user_id: [] } })),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["device_keys"][user_id].clone()
}

pub(crate) async fn dehydrated_devices(base_url: &str) {
    let alice = Client::register(base_url, "dh_alice", "pw-dh-alice").await;
    let bob = Client::register(base_url, "dh_bob", "pw-dh-bob").await;
    let versions = alice
        .call(Method::GET, "/_matrix/client/versions", None)
        .await;
    assert_eq!(
        versions.body["unstable_features"]["org.matrix.msc3814"],
        true
    );

    // None yet.
    for method in [Method::GET, Method::DELETE] {
        let reply = alice.call(method, PATH, None).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (404, "M_NOT_FOUND"),
            "{reply:?}"
        );
    }

    // Refused, and nothing made.
    let mut missing_data = upload(&alice, "DEHYDRATED1");
    missing_data
        .as_object_mut()
        .expect("present")
        .remove("device_data");
    let mut missing_id = upload(&alice, "DEHYDRATED1");
    missing_id
        .as_object_mut()
        .expect("present")
        .remove("device_id");
    let mut missing_keys = upload(&alice, "DEHYDRATED1");
    missing_keys
        .as_object_mut()
        .expect("present")
        .remove("device_keys");
    let mut data_not_object = upload(&alice, "DEHYDRATED1");
    data_not_object["device_data"] = json!("pickle");
    let mut keys_of_another = upload(&alice, "DEHYDRATED1");
    keys_of_another["device_keys"] = device_keys(&alice.user_id, "SOMETHINGELSE");
    let mut bad_key_id = upload(&alice, "DEHYDRATED1");
    bad_key_id["one_time_keys"] = json!({"no_algorithm": "x"});
    for (body, status, errcode) in [
        (missing_data, 400, "M_MISSING_PARAM"),
        (missing_id, 400, "M_MISSING_PARAM"),
        (missing_keys, 400, "M_MISSING_PARAM"),
        (data_not_object, 400, "M_BAD_JSON"),
        (
            upload(&alice, &alice.device_id.clone()),
            400,
            "M_INVALID_PARAM",
        ),
        (keys_of_another, 400, "M_INVALID_PARAM"),
        (bad_key_id, 400, "M_INVALID_PARAM"),
    ] {
        let reply = alice.call(Method::PUT, PATH, Some(body.clone())).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (status, errcode),
            "{body}: {reply:?}"
        );
        let none = alice.call(Method::GET, PATH, None).await;
        assert_eq!(none.status, 404, "{body}: {none:?}");
    }
    // Alice's own device is untouched by the refusal naming it.
    let own = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/devices/{}", encode(&alice.device_id)),
            None,
        )
        .await;
    assert_eq!(own.status, 200, "{own:?}");

    // Made: its data read back, a device of Alice's, its keys seen by Bob.
    let reply = alice
        .call(Method::PUT, PATH, Some(upload(&alice, "DEHYDRATED1")))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["device_id"], "DEHYDRATED1");
    let got = alice.call(Method::GET, PATH, None).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body["device_id"], "DEHYDRATED1");
    assert_eq!(got.body["device_data"]["device_pickle"], "pickle");
    let listed = alice
        .call(Method::GET, "/_matrix/client/v3/devices", None)
        .await;
    assert!(
        listed.body["devices"]
            .as_array()
            .expect("present")
            .iter()
            .any(|d| d["device_id"] == "DEHYDRATED1" && d["display_name"] == "Dehydrated"),
        "{listed:?}"
    );
    let keys = queried_devices(&bob, &alice.user_id).await;
    assert_eq!(keys["DEHYDRATED1"]["dehydrated"], true, "{keys}");
    let claim = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(json!({"one_time_keys": {alice.user_id.clone(): {"DEHYDRATED1": "signed_curve25519"}}})),
        )
        .await;
    assert_eq!(claim.status, 200, "{claim:?}");
    assert!(
        claim.body["one_time_keys"][&alice.user_id]["DEHYDRATED1"]["signed_curve25519:AAAA"]
            .is_object(),
        "{claim:?}"
    );

    // Bob sends it room keys (to-device); Alice's next login reads them
    // in batches, as often as it likes.
    for n in 0..3 {
        let reply = bob
            .call(
                Method::PUT,
                &format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/dh{n}"),
                Some(json!({"messages": {alice.user_id.clone(): {
                    "DEHYDRATED1": {"algorithm": "m.olm.v1.curve25519-aes-sha2", "n": n}
                }}})),
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // To all of Alice's devices, the dehydrated one among them.
    let reply = bob
        .call(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.room.encrypted/dh-all",
            Some(json!({"messages": {alice.user_id.clone(): {"*": {"n": "all"}}}})),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        let reply = events(&alice, "DEHYDRATED1", None).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        if reply.body["events"].as_array().map(Vec::len) == Some(4) {
            break reply;
        }
        assert!(std::time::Instant::now() < deadline, "{reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let contents: Vec<Value> = first.body["events"]
        .as_array()
        .expect("present")
        .iter()
        .map(|e| {
            assert_eq!(e["sender"], bob.user_id.as_str());
            assert_eq!(e["type"], "m.room.encrypted");
            e["content"]["n"].clone()
        })
        .collect();
    assert_eq!(contents, [json!(0), json!(1), json!(2), json!("all")]);
    let token = first.body["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let last = events(&alice, "DEHYDRATED1", Some(&token)).await;
    assert_eq!(last.status, 200, "{last:?}");
    assert_eq!(last.body["events"], json!([]), "{last:?}");
    assert!(last.body["next_batch"].is_string(), "{last:?}");
    // Nothing was deleted: read again from the start.
    let again = events(&alice, "DEHYDRATED1", None).await;
    assert_eq!(
        again.body["events"].as_array().map(Vec::len),
        Some(4),
        "{again:?}"
    );
    // Not the dehydrated device, or a token never given: refused.
    let reply = events(&alice, &alice.device_id.clone(), None).await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (403, "M_FORBIDDEN"),
        "{reply:?}"
    );
    let reply = events(&bob, "DEHYDRATED1", None).await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (403, "M_FORBIDDEN"),
        "{reply:?}"
    );
    let reply = events(&alice, "DEHYDRATED1", Some("nonsense")).await;
    assert_eq!(
        (reply.status, reply.errcode()),
        (400, "M_INVALID_PARAM"),
        "{reply:?}"
    );

    // A new one replaces it: the old device and its keys are gone.
    let reply = alice
        .call(Method::PUT, PATH, Some(upload(&alice, "DEHYDRATED2")))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let got = alice.call(Method::GET, PATH, None).await;
    assert_eq!(got.body["device_id"], "DEHYDRATED2", "{got:?}");
    let reply = events(&alice, "DEHYDRATED1", None).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let keys = queried_devices(&bob, &alice.user_id).await;
        if keys.get("DEHYDRATED1").is_none() && keys.get("DEHYDRATED2").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{keys}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleted: answered with its ID, then nothing.
    let deleted = alice.call(Method::DELETE, PATH, None).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert_eq!(deleted.body["device_id"], "DEHYDRATED2");
    let none = alice.call(Method::GET, PATH, None).await;
    assert_eq!(none.status, 404, "{none:?}");
    let listed = alice
        .call(Method::GET, "/_matrix/client/v3/devices", None)
        .await;
    assert_eq!(
        listed.body["devices"].as_array().map(Vec::len),
        Some(1),
        "{listed:?}"
    );
}
