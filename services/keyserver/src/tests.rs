//! The keyserver against both database engines.

use ganglion_api::ApiError;
use ganglion_api::keys::KeysApi;
use ganglion_api::proto::keyserver as pb;
use serde_json::json;

async fn service(database_url: Option<String>) -> (crate::Started, tempfile::TempDir) {
    let (config, dir) = ganglion_base::testing::service_config("keyserver", database_url);
    (crate::start(&config).await.expect("start"), dir)
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
