//! The keyserver against both database engines.

use ganglion_api::ApiError;
use ganglion_api::keys::KeysApi;
use ganglion_api::proto::keyserver as pb;
use serde_json::json;

async fn service(database_url: Option<String>) -> (crate::Started, tempfile::TempDir) {
    let (config, dir) = ganglion_base::testing::service_config("keyserver", database_url);
    let log =
        std::sync::Arc::new(ganglion_log::EmbeddedLog::open(dir.path().join("log")).expect("log"));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    std::mem::forget(_stop);
    (
        crate::start(&config, log, shutdown).await.expect("start"),
        dir,
    )
}

fn device_keys(user: &str, device: &str) -> Vec<u8> {
    json!({
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): "c", format!("ed25519:{device}"): "e" },
        "signatures": { user: { format!("ed25519:{device}"): "sig" } },
    })
    .to_string()
    .into_bytes()
}

fn signed_curve(key: &str) -> serde_json::Value {
    json!({ "key": key, "signatures": { "@a:hs": { "ed25519:D": "sig" } } })
}

async fn upload_query_claim(api: &dyn KeysApi) {
    let counts = api
        .upload(pb::UploadRequest {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
            device_keys_json: Some(device_keys("@a:hs", "D")),
            one_time_keys_json: json!({
                "signed_curve25519:1": signed_curve("k1"),
                "signed_curve25519:2": signed_curve("k2"),
            })
            .to_string()
            .into_bytes(),
            fallback_keys_json: json!({ "signed_curve25519:f1": signed_curve("f1") })
                .to_string()
                .into_bytes(),
        })
        .await
        .expect("upload");
    assert_eq!(
        counts.one_time_key_counts.get("signed_curve25519"),
        Some(&2)
    );
    assert_eq!(counts.unused_fallback_algorithms, vec!["signed_curve25519"]);

    // The same key ID again: fine with the same key, refused with another.
    let again = |key: &str| pb::UploadRequest {
        user_id: "@a:hs".into(),
        device_id: "D".into(),
        one_time_keys_json: json!({ "signed_curve25519:1": signed_curve(key) })
            .to_string()
            .into_bytes(),
        ..Default::default()
    };
    assert!(api.upload(again("k1")).await.is_ok());
    assert!(matches!(
        api.upload(again("other")).await,
        Err(ApiError::InvalidInput(_))
    ));
    // Device keys must name the uploader.
    let wrong = api
        .upload(pb::UploadRequest {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
            device_keys_json: Some(device_keys("@b:hs", "D")),
            ..Default::default()
        })
        .await;
    assert!(matches!(wrong, Err(ApiError::InvalidInput(_))));
    let malformed = api
        .upload(pb::UploadRequest {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
            one_time_keys_json: json!({ "no-algorithm": "x" }).to_string().into_bytes(),
            ..Default::default()
        })
        .await;
    assert!(matches!(malformed, Err(ApiError::InvalidInput(_))));

    let query = api
        .query(pb::QueryRequest {
            users: [
                ("@a:hs".to_owned(), pb::DeviceIds::default()),
                ("@nobody:hs".to_owned(), pb::DeviceIds::default()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .await
        .expect("query");
    let keys: serde_json::Value =
        serde_json::from_slice(&query.device_keys["@a:hs"].devices["D"]).expect("JSON");
    assert_eq!(keys["keys"]["ed25519:D"], "e");
    assert!(query.device_keys["@nobody:hs"].devices.is_empty());

    // Claims take the one-time keys, then the fallback key (again and again).
    let claim = || pb::ClaimRequest {
        claims: vec![pb::ClaimOne {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
            algorithm: "signed_curve25519".into(),
        }],
    };
    let mut taken = Vec::new();
    for _ in 0..4 {
        let response = api.claim(claim()).await.expect("claim");
        taken.push(response.keys[0].key_id.clone());
    }
    assert_eq!(
        taken,
        [
            "signed_curve25519:1",
            "signed_curve25519:2",
            "signed_curve25519:f1",
            "signed_curve25519:f1"
        ]
    );
    let counts = api
        .counts(pb::CountsRequest {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
        })
        .await
        .expect("counts");
    assert!(counts.one_time_key_counts.is_empty());
    assert!(
        counts.unused_fallback_algorithms.is_empty(),
        "the fallback key was used"
    );
    // A new fallback key is unused again.
    api.upload(pb::UploadRequest {
        user_id: "@a:hs".into(),
        device_id: "D".into(),
        fallback_keys_json: json!({ "signed_curve25519:f2": signed_curve("f2") })
            .to_string()
            .into_bytes(),
        ..Default::default()
    })
    .await
    .expect("new fallback");
    let counts = api
        .counts(pb::CountsRequest {
            user_id: "@a:hs".into(),
            device_id: "D".into(),
        })
        .await
        .expect("counts");
    assert_eq!(counts.unused_fallback_algorithms, vec!["signed_curve25519"]);
    // Nothing to claim from an unknown device.
    let none = api
        .claim(pb::ClaimRequest {
            claims: vec![pb::ClaimOne {
                user_id: "@a:hs".into(),
                device_id: "NOPE".into(),
                algorithm: "signed_curve25519".into(),
            }],
        })
        .await
        .expect("claim");
    assert!(none.keys.is_empty());
}

#[tokio::test]
async fn sqlite_upload_query_claim() {
    let (started, _dir) = service(None).await;
    upload_query_claim(&*started.api).await;
}

#[tokio::test]
async fn postgres_upload_query_claim() {
    let url = ganglion_base::testing::scratch_postgres("keyserver").await;
    let (started, _dir) = service(Some(url)).await;
    upload_query_claim(&*started.api).await;
}

/// Uploading new identity keys, uploading the same again, and removing
/// devices: each change (and only a change) is one record on
/// `keyserver.key_changes`, keyed by user, with the keys as stored.
async fn key_changes(started: &crate::Started) {
    let api = &*started.api;
    let upload = |device: &str| pb::UploadRequest {
        user_id: "@a:hs".into(),
        device_id: device.into(),
        device_keys_json: Some(device_keys("@a:hs", device)),
        ..Default::default()
    };
    api.upload(upload("D1")).await.expect("upload D1");
    api.upload(upload("D1")).await.expect("the same keys again");
    api.upload(upload("D2")).await.expect("upload D2");
    api.upload(pb::UploadRequest {
        one_time_keys_json: json!({ "signed_curve25519:1": signed_curve("k1") })
            .to_string()
            .into_bytes(),
        device_keys_json: None,
        ..upload("D2")
    })
    .await
    .expect("one-time keys only");
    let removed = api
        .delete_devices(pb::DeleteDevicesRequest {
            user_id: "@a:hs".into(),
            device_ids: vec!["D1".into(), "UNKNOWN".into()],
            all_devices: false,
        })
        .await
        .expect("delete D1");
    assert_eq!(removed.devices_removed, 1);
    let query = api
        .query(pb::QueryRequest {
            users: [("@a:hs".to_owned(), pb::DeviceIds::default())]
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .await
        .expect("query");
    let devices: Vec<&String> = query.device_keys["@a:hs"].devices.keys().collect();
    assert_eq!(devices, ["D2"]);
    let all = api
        .delete_devices(pb::DeleteDevicesRequest {
            user_id: "@a:hs".into(),
            all_devices: true,
            ..Default::default()
        })
        .await
        .expect("delete all");
    assert_eq!(all.devices_removed, 1);
    let counts = api
        .counts(pb::CountsRequest {
            user_id: "@a:hs".into(),
            device_id: "D2".into(),
        })
        .await
        .expect("counts");
    assert!(counts.one_time_key_counts.is_empty(), "one-time keys gone");

    let mut reader = api
        .log
        .reader(&[(api.topics.keyserver_key_changes.as_str(), vec![])])
        .await
        .expect("reader");
    let mut changes = Vec::new();
    while changes.len() < 4 {
        let record = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
            .await
            .expect("record in time")
            .expect("record");
        assert_eq!(record.key, b"@a:hs");
        let change: ganglion_api::proto::topics::DeviceKeyChange =
            ganglion_api::topics::decode(&record.payload).expect("decode");
        changes.push(change);
    }
    let seen: Vec<(&str, bool)> = changes
        .iter()
        .map(|c| (c.device_id.as_str(), c.deleted))
        .collect();
    assert_eq!(
        seen,
        [("D1", false), ("D2", false), ("D1", true), ("D2", true)]
    );
    assert!(changes.windows(2).all(|w| w[0].stream_id < w[1].stream_id));
    assert_eq!(changes[0].device_keys_json, device_keys("@a:hs", "D1"));
    assert!(changes[2].device_keys_json.is_empty());
    let more = tokio::time::timeout(std::time::Duration::from_millis(200), reader.next()).await;
    assert!(more.is_err(), "nothing else was published");
    assert!(
        api.storage
            .pending_changes()
            .await
            .expect("outbox")
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_key_changes() {
    let (started, _dir) = service(None).await;
    key_changes(&started).await;
}

#[tokio::test]
async fn postgres_key_changes() {
    let url = ganglion_base::testing::scratch_postgres("keyserver_changes").await;
    let (started, _dir) = service(Some(url)).await;
    key_changes(&started).await;
}

/// An ed25519 key pair whose key ID (version) is its public key, and that
/// public key (unpadded base64).
fn key_pair() -> (ruma::signatures::Ed25519KeyPair, String) {
    use ruma::signatures::Ed25519KeyPair;
    let der = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&der, "probe".into()).expect("key");
    let public =
        ruma::serde::Base64::<ruma::serde::base64::Standard>::new(probe.public_key().to_vec())
            .encode();
    (
        Ed25519KeyPair::from_der(&der, public.clone()).expect("key"),
        public,
    )
}

/// `value` with `signer`'s signature by `pair` added.
fn signed(
    value: serde_json::Value,
    signer: &str,
    pair: &ruma::signatures::Ed25519KeyPair,
) -> serde_json::Value {
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(value).expect("canonical");
    ruma::signatures::sign_json(signer, pair, &mut object).expect("sign");
    serde_json::to_value(object).expect("JSON")
}

fn signing_key(user: &str, usage: &str, public: &str) -> serde_json::Value {
    json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{public}"): public } })
}

fn bytes(value: &serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

async fn cross_signing(started: &crate::Started) {
    let api: &dyn KeysApi = &*started.api;
    let user = "@a:hs";
    // A device whose ed25519 key is real, so it can sign the master key.
    let (device_pair, device_public) = {
        use ruma::signatures::Ed25519KeyPair;
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, "D".into()).expect("key");
        let public =
            ruma::serde::Base64::<ruma::serde::base64::Standard>::new(pair.public_key().to_vec())
                .encode();
        (pair, public)
    };
    let device = signed(
        json!({
            "user_id": user, "device_id": "D",
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { "curve25519:D": "c", "ed25519:D": device_public },
        }),
        user,
        &device_pair,
    );
    api.upload(pb::UploadRequest {
        user_id: user.into(),
        device_id: "D".into(),
        device_keys_json: Some(bytes(&device)),
        ..Default::default()
    })
    .await
    .expect("device keys");

    // A device named like a public key: no cross-signing key may be it.
    let (_, colliding) = key_pair();
    api.upload(pb::UploadRequest {
        user_id: user.into(),
        device_id: colliding.clone(),
        device_keys_json: Some(device_keys(user, &colliding)),
        ..Default::default()
    })
    .await
    .expect("device keys");
    let (master, master_public) = key_pair();
    let (self_signing, self_signing_public) = key_pair();
    let (user_signing, user_signing_public) = key_pair();
    let master_key = signing_key(user, "master", &master_public);
    let self_signing_key = signed(
        signing_key(user, "self_signing", &self_signing_public),
        user,
        &master,
    );
    let user_signing_key = signed(
        signing_key(user, "user_signing", &user_signing_public),
        user,
        &master,
    );
    let upload = |master: Option<&serde_json::Value>,
                  self_signing: Option<&serde_json::Value>,
                  user_signing: Option<&serde_json::Value>,
                  reauthenticated: bool| pb::UploadSigningKeysRequest {
        user_id: user.into(),
        master_key_json: master.map(bytes),
        self_signing_key_json: self_signing.map(bytes),
        user_signing_key_json: user_signing.map(bytes),
        reauthenticated,
    };

    // Refused, storing nothing: a self-signing key with no master key
    // anywhere, one the master key did not sign, a key of another user,
    // of the wrong usage, with two keys, or named like a device.
    let refused = [
        (
            upload(None, Some(&self_signing_key), None, false),
            "M_MISSING_PARAM",
        ),
        (
            upload(
                Some(&master_key),
                Some(&signing_key(user, "self_signing", &self_signing_public)),
                None,
                false,
            ),
            "M_INVALID_SIGNATURE",
        ),
        (
            upload(
                Some(&signing_key("@b:hs", "master", &master_public)),
                None,
                None,
                false,
            ),
            "M_INVALID_PARAM",
        ),
        (
            upload(
                Some(&signing_key(user, "self_signing", &master_public)),
                None,
                None,
                false,
            ),
            "M_INVALID_PARAM",
        ),
        (
            upload(
                Some(&json!({ "user_id": user, "usage": ["master"], "keys": {
                    format!("ed25519:{master_public}"): master_public,
                    format!("ed25519:{self_signing_public}"): self_signing_public,
                } })),
                None,
                None,
                false,
            ),
            "M_INVALID_PARAM",
        ),
        (
            upload(
                Some(&signing_key(user, "master", &colliding)),
                None,
                None,
                false,
            ),
            "M_FORBIDDEN",
        ),
    ];
    for (request, errcode) in refused {
        let error = api.upload_signing_keys(request).await.expect_err("refused");
        assert_eq!(
            ganglion_base::MatrixError::from(error.clone()).errcode,
            errcode,
            "{error:?}"
        );
    }
    assert!(
        started
            .api
            .storage
            .signing_keys(user)
            .await
            .expect("keys")
            .is_empty()
    );

    // The first keys need no reauthentication; the same again neither.
    for _ in 0..2 {
        let answer = api
            .upload_signing_keys(upload(
                Some(&master_key),
                Some(&self_signing_key),
                Some(&user_signing_key),
                false,
            ))
            .await
            .expect("first keys");
        assert!(!answer.needs_reauthentication);
    }
    let query = |requester: &str| pb::QueryRequest {
        users: [(user.to_owned(), pb::DeviceIds::default())]
            .into_iter()
            .collect(),
        requester: requester.into(),
        remote_users: vec!["@r:elsewhere".into()],
    };
    let json_of = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("JSON");
    let own = api.query(query(user)).await.expect("query");
    assert_eq!(json_of(&own.master_keys[user]), master_key);
    assert_eq!(json_of(&own.self_signing_keys[user]), self_signing_key);
    assert_eq!(json_of(&own.user_signing_keys[user]), user_signing_key);
    let others = api.query(query("@b:hs")).await.expect("query");
    assert!(others.user_signing_keys.is_empty(), "the user's own");
    assert_eq!(json_of(&others.master_keys[user]), master_key);

    // Signatures: the device by the self-signing key, the master key by
    // the device, another server's user's master key by the user-signing
    // key; one of each refused (wrong signer, unknown key, a changed
    // object).
    let device_signed = signed(device.clone(), user, &self_signing);
    let master_signed = signed(master_key.clone(), user, &device_pair);
    let (_, remote_public) = key_pair();
    let remote_master = signing_key("@r:elsewhere", "master", &remote_public);
    let remote_signed = signed(remote_master.clone(), user, &user_signing);
    let mut tampered = signed(device.clone(), user, &self_signing);
    tampered["keys"]["curve25519:D"] = json!("other");
    let answer = api
        .upload_signatures(pb::UploadSignaturesRequest {
            user_id: user.into(),
            signed_json: bytes(&json!({
                user: {
                    "D": device_signed,
                    master_public.clone(): master_signed,
                    "NOSUCH": device_signed,
                },
                "@r:elsewhere": {
                    remote_public.clone(): remote_signed,
                    "other": signed(remote_master.clone(), user, &master),
                },
            })),
        })
        .await
        .expect("signatures");
    let failures = json_of(&answer.failures_json);
    assert_eq!(
        failures[user]["NOSUCH"]["errcode"], "M_NOT_FOUND",
        "{failures}"
    );
    assert_eq!(
        failures["@r:elsewhere"]["other"]["errcode"], "M_INVALID_PARAM",
        "{failures}"
    );
    assert!(failures[user]["D"].is_null(), "{failures}");
    let refused = api
        .upload_signatures(pb::UploadSignaturesRequest {
            user_id: user.into(),
            signed_json: bytes(&json!({ user: {
                "D": tampered,
                master_public.clone(): signed(master_key.clone(), user, &self_signing),
            } })),
        })
        .await
        .expect("signatures");
    let failures = json_of(&refused.failures_json);
    assert_eq!(
        failures[user]["D"]["errcode"], "M_INVALID_PARAM",
        "{failures}"
    );
    assert_eq!(
        failures[user][&master_public]["errcode"], "M_INVALID_SIGNATURE",
        "{failures}"
    );

    // What the signatures show as: to everyone, the device and master
    // key signed; only to the signer, the remote user's master key.
    let seen = api.query(query("@b:hs")).await.expect("query");
    let device_seen = json_of(&seen.device_keys[user].devices["D"]);
    let ssk_id = format!("ed25519:{self_signing_public}");
    assert!(
        device_seen["signatures"][user][&ssk_id].is_string(),
        "{device_seen}"
    );
    assert!(device_seen["signatures"][user]["ed25519:D"].is_string());
    let master_seen = json_of(&seen.master_keys[user]);
    assert!(
        master_seen["signatures"][user]["ed25519:D"].is_string(),
        "{master_seen}"
    );
    assert!(seen.remote_master_signatures.is_empty());
    let own = api.query(query(user)).await.expect("query");
    let remote = json_of(&own.remote_master_signatures["@r:elsewhere"]);
    let usk_id = format!("ed25519:{user_signing_public}");
    assert!(remote[&remote_public][&usk_id].is_string(), "{remote}");
    let devices = api
        .user_devices(pb::UserDevicesRequest {
            user_id: user.into(),
        })
        .await
        .expect("devices");
    assert_eq!(json_of(&devices.master_key_json), master_seen);
    assert_eq!(json_of(&devices.self_signing_key_json), self_signing_key);

    // Replacing the keys needs reauthentication; with it, the signatures
    // the old self-signing key made go.
    let (new_self_signing, new_public) = key_pair();
    let _ = new_self_signing;
    let replacement = signed(
        signing_key(user, "self_signing", &new_public),
        user,
        &master,
    );
    let needs = api
        .upload_signing_keys(upload(None, Some(&replacement), None, false))
        .await
        .expect("upload");
    assert!(needs.needs_reauthentication);
    let own = api.query(query(user)).await.expect("query");
    assert_eq!(json_of(&own.self_signing_keys[user]), self_signing_key);
    let done = api
        .upload_signing_keys(upload(None, Some(&replacement), None, true))
        .await
        .expect("upload");
    assert!(!done.needs_reauthentication);
    let own = api.query(query(user)).await.expect("query");
    assert_eq!(json_of(&own.self_signing_keys[user]), replacement);
    let device_now = json_of(&own.device_keys[user].devices["D"]);
    assert!(
        device_now["signatures"][user][&ssk_id].is_null(),
        "{device_now}"
    );

    // Announced: the devices' keys, the first keys, the device's new
    // signature, the master key's, the replacement; each cross-signing
    // change carries the keys as they were then.
    let mut reader = started
        .api
        .log
        .reader(&[(started.api.topics.keyserver_key_changes.as_str(), vec![])])
        .await
        .expect("reader");
    // The user's own changes (one partition, in order), and apart, on the
    // remote user's partition, the one the user's signature of their
    // master key makes: for the user's device lists alone.
    let mut changes = Vec::new();
    let mut seen_by_signer = Vec::new();
    while changes.len() < 6 || seen_by_signer.is_empty() {
        let record = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
            .await
            .expect("record in time")
            .expect("record");
        let change: ganglion_api::proto::topics::DeviceKeyChange =
            ganglion_api::topics::decode(&record.payload).expect("decode");
        if change.seen_by.is_empty() {
            changes.push(change);
        } else {
            seen_by_signer.push(change);
        }
    }
    assert_eq!(seen_by_signer.len(), 1);
    assert_eq!(seen_by_signer[0].user_id, "@r:elsewhere");
    assert_eq!(seen_by_signer[0].seen_by, user);
    assert!(seen_by_signer[0].signing_keys && seen_by_signer[0].device_keys_json.is_empty());
    let mut seen: Vec<(&str, bool)> = changes
        .iter()
        .map(|c| (c.device_id.as_str(), c.signing_keys))
        .collect();
    // The two signatures' changes come in the order of the body's keys.
    seen[3..5].sort();
    assert_eq!(
        seen,
        [
            ("D", false),
            (colliding.as_str(), false),
            ("", true),
            ("", true),
            ("D", false),
            ("", true)
        ]
    );
    let first = json_of(&changes[2].device_keys_json);
    assert_eq!(first["user_id"], user);
    assert_eq!(first["master_key"]["keys"], master_key["keys"]);
    assert!(first.get("user_signing_key").is_none(), "{first}");
    let last = json_of(&changes[5].device_keys_json);
    assert_eq!(last["self_signing_key"], replacement);
    let more = tokio::time::timeout(std::time::Duration::from_millis(200), reader.next()).await;
    assert!(more.is_err(), "nothing else was published");
}

#[tokio::test]
async fn sqlite_cross_signing() {
    let (started, _dir) = service(None).await;
    cross_signing(&started).await;
}

#[tokio::test]
async fn postgres_cross_signing() {
    let url = ganglion_base::testing::scratch_postgres("keyserver_cross_signing").await;
    let (started, _dir) = service(Some(url)).await;
    cross_signing(&started).await;
}
