//! A user's devices, as the client-server API's "Device management"
//! section says: listed with their names and last sighting, renamed, and
//! deleted behind User-Interactive Auth; a deleted device's token stops
//! working, its keys go, and those who share a room hear of it.

use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::{Value, json};

/// Logs `user` in again: a new device.
pub(crate) async fn login(base_url: &str, user: &str, password: &str, agent: &str) -> Client {
    let http = reqwest::Client::builder()
        .user_agent(agent)
        .build()
        .expect("client");
    let reply: Value = http
        .post(format!("{base_url}/_matrix/client/v3/login"))
        .json(&json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": "second phone"
        }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login json");
    Client {
        base_url: base_url.to_owned(),
        http,
        user_id: reply["user_id"].as_str().expect("user_id").to_owned(),
        access_token: reply["access_token"].as_str().expect("token").to_owned(),
        device_id: reply["device_id"].as_str().expect("device_id").to_owned(),
    }
}

fn password_auth(user_id: &str, password: &str, session: &Value) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
        "session": session
    })
}

#[tokio::test]
async fn devices_are_listed_renamed_and_deleted_behind_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let logs = || server.process.log_tail();
    let alice = Client::register(base, "alice", "pw-alice-devices").await;
    let phone = login(base, "alice", "pw-alice-devices", "PhoneApp/1.0").await;
    let bob = Client::register(base, "bob", "pw-bob-devices").await;

    // Listed with the last sighting (the phone has made a request).
    let _ = phone
        .call(Method::GET, "/_matrix/client/v3/account/whoami", None)
        .await;
    let listed = alice
        .call(Method::GET, "/_matrix/client/v3/devices", None)
        .await;
    assert_eq!(listed.status, 200, "{listed:?}\n{}", logs());
    let devices = listed.body["devices"].as_array().expect("devices").clone();
    assert_eq!(devices.len(), 2, "{devices:?}");
    let phone_entry = devices
        .iter()
        .find(|d| d["device_id"] == phone.device_id.as_str())
        .expect("the phone");
    assert_eq!(phone_entry["display_name"], "second phone");
    assert_eq!(phone_entry["last_seen_ip"], "127.0.0.1", "{phone_entry}");
    assert!(phone_entry["last_seen_ts"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(phone_entry["last_seen_user_agent"], "PhoneApp/1.0");
    // One device; someone else's or no one's is not found.
    let path = |id: &str| format!("/_matrix/client/v3/devices/{}", encode(id));
    let one = alice.call(Method::GET, &path(&phone.device_id), None).await;
    assert_eq!(
        (one.status, one.body["device_id"].clone()),
        (200, json!(phone.device_id))
    );
    for other in [bob.device_id.as_str(), "NOSUCHDEVICE"] {
        let missing = alice.call(Method::GET, &path(other), None).await;
        assert_eq!(
            (missing.status, missing.body["errcode"].clone()),
            (404, json!("M_NOT_FOUND")),
            "{other}"
        );
        let rename = alice
            .call(
                Method::PUT,
                &path(other),
                Some(json!({"display_name": "x"})),
            )
            .await;
        assert_eq!(rename.status, 404, "{other}: {rename:?}");
    }

    // Renamed; a body without a name changes nothing.
    let renamed = alice
        .call(
            Method::PUT,
            &path(&phone.device_id),
            Some(json!({"display_name": "Alice's phone"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    let kept = alice
        .call(Method::PUT, &path(&phone.device_id), Some(json!({})))
        .await;
    assert_eq!(kept.status, 200);
    let one = alice.call(Method::GET, &path(&phone.device_id), None).await;
    assert_eq!(one.body["display_name"], "Alice's phone");
    let bad = alice
        .call(
            Method::PUT,
            &path(&phone.device_id),
            Some(json!({"display_name": 7})),
        )
        .await;
    assert_eq!(bad.status, 400, "{bad:?}");

    // The phone has keys, and bob shares a room with alice.
    let keys = phone
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(json!({"device_keys": {
                "user_id": phone.user_id, "device_id": phone.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {format!("curve25519:{}", phone.device_id): "key"},
                "signatures": {}
            }})),
        )
        .await;
    assert_eq!(keys.status, 200, "{keys:?}");
    // Others see its name with its keys.
    let named = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {alice.user_id.clone(): []}})),
        )
        .await;
    assert_eq!(
        named.body["device_keys"][&alice.user_id][&phone.device_id]["unsigned"]["device_display_name"],
        "Alice's phone",
        "{named:?}"
    );
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room_id).await.status, 200);
    let since = bob.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .expect("batch")
        .to_owned();

    // Deleting asks for the password: the challenge, then a wrong one.
    let asked = alice
        .call(Method::DELETE, &path(&phone.device_id), Some(json!({})))
        .await;
    assert_eq!(asked.status, 401, "{asked:?}");
    assert_eq!(
        asked.body["flows"][0]["stages"],
        json!(["m.login.password"])
    );
    let session = asked.body["session"].clone();
    assert!(session.is_string());
    let wrong = alice
        .call(
            Method::DELETE,
            &path(&phone.device_id),
            Some(json!({"auth": password_auth(&alice.user_id, "wrong", &session)})),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.body["errcode"].clone()),
        (401, json!("M_FORBIDDEN")),
        "{wrong:?}"
    );
    // Bob's password does not delete alice's device.
    let borrowed = alice
        .call(
            Method::DELETE,
            &path(&phone.device_id),
            Some(json!({"auth": password_auth(&bob.user_id, "pw-bob-devices", &session)})),
        )
        .await;
    assert_eq!(borrowed.status, 401, "{borrowed:?}");
    let deleted = alice
        .call(
            Method::DELETE,
            &path(&phone.device_id),
            Some(json!({"auth": password_auth(&alice.user_id, "pw-alice-devices", &session)})),
        )
        .await;
    assert_eq!(deleted.status, 200, "{deleted:?}\n{}", logs());
    // Its token is gone, and so is it and its keys.
    let gone = phone
        .call(Method::GET, "/_matrix/client/v3/account/whoami", None)
        .await;
    assert_eq!(
        (gone.status, gone.body["errcode"].clone()),
        (401, json!("M_UNKNOWN_TOKEN"))
    );
    let listed = alice
        .call(Method::GET, "/_matrix/client/v3/devices", None)
        .await;
    assert_eq!(listed.body["devices"].as_array().map(Vec::len), Some(1));
    let queried = bob
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {alice.user_id.clone(): []}})),
        )
        .await;
    assert!(
        queried.body["device_keys"][&alice.user_id]
            .get(&phone.device_id)
            .is_none(),
        "{queried:?}"
    );
    // Bob hears that alice's devices changed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sync = bob.sync(Some(&since), 1000, 1).await;
        let changed = sync["device_lists"]["changed"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if changed.contains(&json!(alice.user_id)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sync}");
    }

    // Several at once; unknown IDs are passed over, the auth as above.
    let third = login(base, "alice", "pw-alice-devices", "Tablet").await;
    let asked = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/delete_devices",
            Some(json!({"devices": [third.device_id, "UNKNOWN"]})),
        )
        .await;
    assert_eq!(asked.status, 401, "{asked:?}");
    let session = asked.body["session"].clone();
    let done = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/delete_devices",
            Some(json!({
                "devices": [third.device_id, "UNKNOWN"],
                "auth": password_auth(&alice.user_id, "pw-alice-devices", &session)
            })),
        )
        .await;
    assert_eq!(done.status, 200, "{done:?}");
    let gone = third
        .call(Method::GET, "/_matrix/client/v3/account/whoami", None)
        .await;
    assert_eq!(gone.status, 401);
    let malformed = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/delete_devices",
            Some(json!({"devices": "all"})),
        )
        .await;
    assert_eq!(malformed.status, 400, "{malformed:?}");
    // Without a token: 401 everywhere.
    let anonymous = reqwest::Client::new()
        .get(format!("{base}/_matrix/client/v3/devices"))
        .send()
        .await
        .expect("anonymous");
    assert_eq!(anonymous.status(), 401);
}

/// `POST /account/password` behind User-Interactive Auth: other devices
/// logged out unless asked not to, the asking device kept, the old
/// password refused; and the `/account/3pid` family of a server without
/// identity servers, with `/capabilities` telling both.
#[tokio::test]
async fn passwords_change_and_third_party_identifiers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let alice = Client::register(base, "carol", "pw-carol-1").await;
    let other = login(base, "carol", "pw-carol-1", "Other").await;
    let change = |body: Value| {
        let alice = alice.clone();
        async move {
            alice
                .call(
                    Method::POST,
                    "/_matrix/client/v3/account/password",
                    Some(body),
                )
                .await
        }
    };
    let asked = change(json!({"new_password": "pw-carol-2"})).await;
    assert_eq!(asked.status, 401, "{asked:?}");
    let session = asked.body["session"].clone();
    let wrong = change(json!({
        "new_password": "pw-carol-2",
        "auth": password_auth(&alice.user_id, "nope", &session)
    }))
    .await;
    assert_eq!(
        (wrong.status, wrong.body["errcode"].clone()),
        (401, json!("M_FORBIDDEN"))
    );
    let missing =
        change(json!({"auth": password_auth(&alice.user_id, "pw-carol-1", &session)})).await;
    assert_eq!(
        (missing.status, missing.body["errcode"].clone()),
        (400, json!("M_MISSING_PARAM"))
    );
    let changed = change(json!({
        "new_password": "pw-carol-2",
        "auth": password_auth(&alice.user_id, "pw-carol-1", &session)
    }))
    .await;
    assert_eq!(
        changed.status,
        200,
        "{changed:?}\n{}",
        server.process.log_tail()
    );
    // The asking device stays; the other is logged out.
    let me = alice
        .call(Method::GET, "/_matrix/client/v3/account/whoami", None)
        .await;
    assert_eq!(me.status, 200);
    let out = other
        .call(Method::GET, "/_matrix/client/v3/account/whoami", None)
        .await;
    assert_eq!(
        (out.status, out.body["errcode"].clone()),
        (401, json!("M_UNKNOWN_TOKEN"))
    );
    // The old password no longer logs in; the new one does.
    let old = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "user": "carol", "password": "pw-carol-1"}))
        .send()
        .await
        .expect("login");
    assert_eq!(old.status(), 403);
    let third = login(base, "carol", "pw-carol-2", "Third").await;
    // logout_devices false keeps the others.
    let asked = change(json!({"new_password": "pw-carol-3"})).await;
    let kept = change(json!({
        "new_password": "pw-carol-3",
        "logout_devices": false,
        "auth": password_auth(&alice.user_id, "pw-carol-2", &asked.body["session"])
    }))
    .await;
    assert_eq!(kept.status, 200, "{kept:?}");
    let still = third
        .call(Method::GET, "/_matrix/client/v3/account/whoami", None)
        .await;
    assert_eq!(still.status, 200);

    // No third-party identifiers here, none to be had.
    let listed = alice
        .call(Method::GET, "/_matrix/client/v3/account/3pid", None)
        .await;
    assert_eq!(
        (listed.status, listed.body.clone()),
        (200, json!({"threepids": []}))
    );
    let token_request =
        json!({"client_secret": "s3cret", "email": "c@example.org", "send_attempt": 1});
    for path in [
        "/_matrix/client/v3/account/3pid/email/requestToken",
        "/_matrix/client/v3/register/email/requestToken",
    ] {
        let refused = alice
            .call(Method::POST, path, Some(token_request.clone()))
            .await;
        assert_eq!(
            (refused.status, refused.body["errcode"].clone()),
            (403, json!("M_THREEPID_DENIED")),
            "{path}"
        );
    }
    let reset = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/account/password/email/requestToken",
            Some(token_request),
        )
        .await;
    assert_eq!(
        (reset.status, reset.body["errcode"].clone()),
        (400, json!("M_THREEPID_NOT_FOUND"))
    );
    let add = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/account/3pid/add",
            Some(json!({"client_secret": "s", "sid": "x"})),
        )
        .await;
    assert_eq!(add.status, 401, "UIA first: {add:?}");
    let add = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/account/3pid/add",
            Some(json!({
                "client_secret": "s", "sid": "x",
                "auth": password_auth(&alice.user_id, "pw-carol-3", &add.body["session"])
            })),
        )
        .await;
    assert_eq!(
        (add.status, add.body["errcode"].clone()),
        (400, json!("M_THREEPID_AUTH_FAILED"))
    );
    let removed = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/account/3pid/delete",
            Some(json!({"medium": "email", "address": "c@example.org"})),
        )
        .await;
    assert_eq!(
        removed.body["id_server_unbind_result"], "no-support",
        "{removed:?}"
    );
    let capabilities = alice
        .call(Method::GET, "/_matrix/client/v3/capabilities", None)
        .await;
    let capabilities = &capabilities.body["capabilities"];
    assert_ne!(
        capabilities["m.change_password"]["enabled"],
        json!(false),
        "{capabilities}"
    );
    assert_eq!(capabilities["m.3pid_changes"]["enabled"], json!(false));
}

/// `POST /account/deactivate` behind User-Interactive Auth: the user
/// leaves their rooms, every device and token goes, logins are refused
/// with `M_USER_DEACTIVATED`, the ID stays taken, and `erase` clears the
/// profile.
#[tokio::test]
async fn deactivated_accounts_leave_and_stay_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let dan = Client::register(base, "dan", "pw-dan-1").await;
    let other = login(base, "dan", "pw-dan-1", "Other").await;
    let eve = Client::register(base, "eve", "pw-eve-1").await;
    let named = dan
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                encode(&dan.user_id)
            ),
            Some(json!({"displayname": "Dan the Man"})),
        )
        .await;
    assert_eq!(named.status, 200, "{named:?}");
    let room_id = eve.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(dan.join(&room_id).await.status, 200);
    // An invite still pending when Dan goes.
    let invited_to = eve.create_room(json!({"preset": "private_chat"})).await;
    let invite = eve
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&invited_to)),
            Some(json!({"user_id": dan.user_id})),
        )
        .await;
    assert_eq!(invite.status, 200, "{invite:?}");

    let asked = dan
        .call(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            Some(json!({"erase": true})),
        )
        .await;
    assert_eq!(asked.status, 401, "{asked:?}");
    let done = dan
        .call(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            Some(json!({
                "erase": true,
                "auth": password_auth(&dan.user_id, "pw-dan-1", &asked.body["session"])
            })),
        )
        .await;
    assert_eq!(done.status, 200, "{done:?}\n{}", server.process.log_tail());
    assert_eq!(done.body["id_server_unbind_result"], "no-support");
    // Every token is gone.
    for client in [&dan, &other] {
        let gone = client
            .call(Method::GET, "/_matrix/client/v3/account/whoami", None)
            .await;
        assert_eq!(gone.status, 401, "{gone:?}");
    }
    // Logins are refused as deactivated, the ID stays taken.
    let refused = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "user": "dan", "password": "pw-dan-1"}))
        .send()
        .await
        .expect("login");
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["errcode"], "M_USER_DEACTIVATED", "{body}");
    let available = reqwest::Client::new()
        .get(format!(
            "{base}/_matrix/client/v3/register/available?username=dan"
        ))
        .send()
        .await
        .expect("available");
    assert_eq!(available.status(), 400);
    // The room sees them leave; the profile is erased.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let members = eve
            .call(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/joined_members",
                    encode(&room_id)
                ),
                None,
            )
            .await;
        if members.body["joined"].get(&dan.user_id).is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{members:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let profile = eve
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{}", encode(&dan.user_id)),
            None,
        )
        .await;
    assert!(
        profile.body.get("displayname").is_none_or(Value::is_null),
        "{profile:?}"
    );
    // The pending invite was rejected.
    let member = eve
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                encode(&invited_to),
                encode(&dan.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(member.body["membership"], "leave", "{member:?}");
}

/// User-Interactive Auth sessions: given out by this server, each for one
/// operation of one account; a retried registration in its session
/// answers with the user it made; what the first request said stands.
#[tokio::test]
async fn auth_sessions_hold_to_their_operation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let http = reqwest::Client::new();
    let register = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/_matrix/client/v3/register");
        async move {
            let response = http.post(url).json(&body).send().await.expect("register");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    // The first request names the user; the one that completes does not.
    let (status, asked) = register(json!({"username": "fay", "password": "pw-fay-1"})).await;
    assert_eq!(status, 401, "{asked}");
    let session = asked["session"].clone();
    let completing = json!({
        "password": "pw-fay-1",
        "auth": {"type": "m.login.dummy", "session": session}
    });
    let (status, first) = register(completing.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert!(
        first["user_id"]
            .as_str()
            .is_some_and(|u| u.starts_with("@fay:")),
        "{first}"
    );
    // Its answer lost, the client retries: the same user, logged in again.
    let (status, again) = register(completing).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user_id"], first["user_id"]);
    assert!(again["access_token"].is_string());
    assert_ne!(again["access_token"], first["access_token"]);
    // A session this server never gave out.
    let (status, unknown) = register(json!({
        "username": "gus", "password": "pw-gus-1",
        "auth": {"type": "m.login.dummy", "session": "madeup"}
    }))
    .await;
    assert_eq!(
        (status, unknown["errcode"].clone()),
        (400, json!("M_UNKNOWN")),
        "{unknown}"
    );

    // A session given for one operation does not serve another.
    let fay = Client::register(base, "hal", "pw-hal-1").await;
    let other = login(base, "hal", "pw-hal-1", "Other").await;
    let asked = fay
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}", encode(&other.device_id)),
            Some(json!({})),
        )
        .await;
    let session = asked.body["session"].clone();
    let moved = fay
        .call(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Some(json!({
                "new_password": "pw-hal-2",
                "auth": password_auth(&fay.user_id, "pw-hal-1", &session)
            })),
        )
        .await;
    assert_eq!(
        (moved.status, moved.body["errcode"].clone()),
        (403, json!("M_FORBIDDEN")),
        "{moved:?}"
    );
    // Nor another account's.
    let ivy = Client::register(base, "ivy", "pw-ivy-1").await;
    let borrowed = ivy
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}", encode(&other.device_id)),
            Some(json!({"auth": password_auth(&ivy.user_id, "pw-ivy-1", &session)})),
        )
        .await;
    assert_eq!(borrowed.status, 403, "{borrowed:?}");
    // In its own operation it completes.
    let done = fay
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}", encode(&other.device_id)),
            Some(json!({"auth": password_auth(&fay.user_id, "pw-hal-1", &session)})),
        )
        .await;
    assert_eq!(done.status, 200, "{done:?}");
}
