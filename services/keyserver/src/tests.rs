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
