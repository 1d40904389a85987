//! Server-side key backups (`/room_keys`), as the spec's "Server-side key
//! backups" section and its API say: versions that only grow, keys stored
//! in the current version with a better key replacing a worse one, `etag`
//! and `count`, and each error code.

use ganglion_integration_tests::client::{Client, Reply, encode};
use reqwest::Method;
use serde_json::{Value, json};

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

fn key(first_message_index: u64, forwarded_count: u64, verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": verified,
        "session_data": {"ephemeral": "e", "ciphertext": tag, "mac": "m"},
    })
}

fn assert_error(reply: &Reply, status: u16, errcode: &str, what: &str) {
    assert_eq!(
        (reply.status, reply.errcode()),
        (status, errcode),
        "{what}: {reply:?}"
    );
}

pub(crate) async fn key_backups(base_url: &str) {
    let alice = Client::register(base_url, "kb_alice", "pw-kb-alice").await;
    let bob = Client::register(base_url, "kb_bob", "pw-kb-bob").await;
    let call = |method: Method, path: String, body: Option<Value>| {
        let alice = alice.clone();
        async move {
            alice
                .call(method, &format!("/_matrix/client/v3{path}"), body)
                .await
        }
    };
    assert_error(
        &call(Method::GET, "/room_keys/version".into(), None).await,
        404,
        "M_NOT_FOUND",
        "none yet",
    );
    let auth_data = json!({"public_key": "abcdefg", "signatures": {}});
    let created = call(
        Method::POST,
        "/room_keys/version".into(),
        Some(json!({"algorithm": ALGORITHM, "auth_data": auth_data})),
    )
    .await;
    assert_eq!(created.status, 200, "{created:?}");
    let v1 = created.body["version"]
        .as_str()
        .expect("version")
        .to_owned();
    let latest = call(Method::GET, "/room_keys/version".into(), None).await;
    assert_eq!(latest.body["version"], v1.as_str());
    assert_eq!(latest.body["algorithm"], ALGORITHM);
    assert_eq!(latest.body["auth_data"], auth_data);
    assert_eq!(latest.body["count"], 0);
    assert!(latest.body["etag"].is_string(), "{latest:?}");
    for bad in [
        json!({"algorithm": ALGORITHM}),
        json!({"algorithm": ALGORITHM, "auth_data": "x"}),
        json!({"auth_data": {}}),
    ] {
        assert_error(
            &call(Method::POST, "/room_keys/version".into(), Some(bad.clone())).await,
            400,
            "M_BAD_JSON",
            &bad.to_string(),
        );
    }

    // One key, then the spec's rules for a key already stored.
    let room = "!backup:example.org";
    let session = format!("/room_keys/keys/{}/sess1?version={v1}", encode(room));
    let put = |tag: Value| call(Method::PUT, session.clone(), Some(tag));
    let first = put(key(5, 1, false, "first")).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["count"], 1);
    let stored = || call(Method::GET, session.clone(), None);
    let tag = |reply: &Reply| {
        reply.body["session_data"]["ciphertext"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(tag(&stored().await), "first");
    // Worse (a later first message, or more forwards, unverified): kept out.
    for worse in [key(6, 0, false, "later"), key(5, 2, false, "forwarded")] {
        let reply = put(worse).await;
        assert_eq!(
            reply.body["etag"], first.body["etag"],
            "nothing changed: {reply:?}"
        );
        assert_eq!(tag(&stored().await), "first");
    }
    // Better: fewer forwards, then an earlier first message, then verified
    // (which wins over an earlier first message).
    assert_eq!(put(key(5, 0, false, "fewer forwards")).await.status, 200);
    assert_eq!(tag(&stored().await), "fewer forwards");
    assert_eq!(put(key(2, 3, false, "earlier")).await.status, 200);
    assert_eq!(tag(&stored().await), "earlier");
    let verified = put(key(9, 9, true, "verified")).await;
    assert_ne!(verified.body["etag"], first.body["etag"]);
    assert_eq!(tag(&stored().await), "verified");
    assert_eq!(put(key(0, 0, false, "unverified")).await.status, 200);
    assert_eq!(tag(&stored().await), "verified", "verified stays");

    // A room's keys and every room's, in one request each.
    let room_path = format!("/room_keys/keys/{}?version={v1}", encode(room));
    let reply = call(
        Method::PUT,
        room_path.clone(),
        Some(json!({"sessions": {"sess2": key(0, 0, true, "two")}})),
    )
    .await;
    assert_eq!(reply.body["count"], 2, "{reply:?}");
    let other_room = "!other:example.org";
    let reply = call(
        Method::PUT,
        format!("/room_keys/keys?version={v1}"),
        Some(json!({"rooms": {other_room: {"sessions": {"sess3": key(0, 0, true, "three")}}}})),
    )
    .await;
    assert_eq!(reply.body["count"], 3, "{reply:?}");
    let room_keys = call(Method::GET, room_path.clone(), None).await;
    let sessions: Vec<&String> = room_keys.body["sessions"]
        .as_object()
        .expect("sessions")
        .keys()
        .collect();
    assert_eq!(sessions, ["sess1", "sess2"]);
    let all = call(Method::GET, format!("/room_keys/keys?version={v1}"), None).await;
    assert_eq!(
        all.body["rooms"][other_room]["sessions"]["sess3"]["session_data"]["ciphertext"],
        "three"
    );
    assert_eq!(
        call(Method::GET, "/room_keys/version".into(), None)
            .await
            .body["count"],
        3
    );

    // Keys that are not keys.
    for bad in [
        json!({"first_message_index": 1}),
        json!("x"),
        key(0, 0, true, "x")
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("is_verified".into(), json!("yes"));
                Value::Object(o)
            })
            .unwrap_or_default(),
    ] {
        assert_error(&put(bad.clone()).await, 400, "M_BAD_JSON", &bad.to_string());
    }
    assert_error(
        &call(
            Method::PUT,
            format!("/room_keys/keys/{}/sess1", encode(room)),
            Some(key(0, 0, true, "x")),
        )
        .await,
        400,
        "M_MISSING_PARAM",
        "no version",
    );
    assert_error(
        &call(
            Method::GET,
            format!("/room_keys/keys/{}/nope?version={v1}", encode(room)),
            None,
        )
        .await,
        404,
        "M_NOT_FOUND",
        "no such session",
    );
    let empty_room = call(
        Method::GET,
        format!("/room_keys/keys/%21empty%3Ax?version={v1}"),
        None,
    )
    .await;
    assert_eq!(empty_room.body, json!({"sessions": {}}));
    assert_error(
        &call(Method::GET, "/room_keys/keys?version=abc".into(), None).await,
        404,
        "M_NOT_FOUND",
        "not a version",
    );

    // A newer version: the old one takes no more keys.
    let v2 = call(
        Method::POST,
        "/room_keys/version".into(),
        Some(json!({"algorithm": ALGORITHM, "auth_data": {"public_key": "second"}})),
    )
    .await
    .body["version"]
        .as_str()
        .expect("version")
        .to_owned();
    assert_ne!(v2, v1);
    let old = put(key(0, 0, true, "late")).await;
    assert_error(&old, 403, "M_WRONG_ROOM_KEYS_VERSION", "old version");
    assert_eq!(old.body["current_version"], v2.as_str());
    assert_eq!(
        call(Method::GET, format!("/room_keys/keys?version={v2}"), None)
            .await
            .body,
        json!({"rooms": {}})
    );
    // Its auth data changes; its algorithm and number do not.
    let path = format!("/room_keys/version/{v2}");
    let changed = call(
        Method::PUT,
        path.clone(),
        Some(json!({"algorithm": ALGORITHM, "auth_data": {"public_key": "changed"}})),
    )
    .await;
    assert_eq!(changed.status, 200, "{changed:?}");
    assert_eq!(
        call(Method::GET, path.clone(), None).await.body["auth_data"]["public_key"],
        "changed"
    );
    assert_error(
        &call(
            Method::PUT,
            path.clone(),
            Some(json!({"algorithm": "m.other", "auth_data": {}})),
        )
        .await,
        400,
        "M_INVALID_PARAM",
        "another algorithm",
    );
    assert_error(
        &call(
            Method::PUT,
            path.clone(),
            Some(json!({"algorithm": ALGORITHM, "auth_data": {}, "version": "99"})),
        )
        .await,
        400,
        "M_INVALID_PARAM",
        "another version in the body",
    );
    assert_error(
        &call(
            Method::PUT,
            "/room_keys/version/99".into(),
            Some(json!({"algorithm": ALGORITHM, "auth_data": {}})),
        )
        .await,
        404,
        "M_NOT_FOUND",
        "no such version",
    );

    // Deleting keys: one session, a room, everything.
    let deleted = call(Method::DELETE, session.clone(), None).await;
    assert_eq!(deleted.body["count"], 2, "{deleted:?}");
    let deleted = call(Method::DELETE, room_path.clone(), None).await;
    assert_eq!(deleted.body["count"], 1, "{deleted:?}");
    let deleted = call(
        Method::DELETE,
        format!("/room_keys/keys?version={v1}"),
        None,
    )
    .await;
    assert_eq!(deleted.body["count"], 0, "{deleted:?}");

    // Deleting versions: gone, deleting again is fine, numbers not reused.
    assert_eq!(call(Method::DELETE, path.clone(), None).await.status, 200);
    assert_error(
        &call(Method::GET, path.clone(), None).await,
        404,
        "M_NOT_FOUND",
        "deleted",
    );
    assert_eq!(
        call(Method::DELETE, path.clone(), None).await.status,
        200,
        "deleted again"
    );
    assert_error(
        &call(Method::DELETE, "/room_keys/version/99".into(), None).await,
        404,
        "M_NOT_FOUND",
        "never was",
    );
    assert_eq!(
        call(Method::GET, "/room_keys/version".into(), None)
            .await
            .body["version"],
        v1.as_str()
    );
    let v3 = call(
        Method::POST,
        "/room_keys/version".into(),
        Some(json!({"algorithm": ALGORITHM, "auth_data": {}})),
    )
    .await
    .body["version"]
        .as_str()
        .expect("version")
        .to_owned();
    assert!(v3.parse::<u64>().expect("number") > v2.parse::<u64>().expect("number"));

    // Another user's backups are not theirs.
    let theirs = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/room_keys/version/{v1}"),
            None,
        )
        .await;
    assert_error(&theirs, 404, "M_NOT_FOUND", "Bob reading Alice's");
    assert_error(
        &bob.call(Method::GET, "/_matrix/client/v3/room_keys/version", None)
            .await,
        404,
        "M_NOT_FOUND",
        "Bob has none",
    );
    let anonymous = ganglion_integration_tests::client::request(
        &alice.http,
        Method::GET,
        &format!("{base_url}/_matrix/client/v3/room_keys/version"),
        None,
        None,
    )
    .await;
    assert_eq!(anonymous.status, 401);
}
