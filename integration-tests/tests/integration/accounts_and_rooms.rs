//! The rest of the first conversation's surface: accounts and discovery,
//! room creation options, state, joins by alias, leaving, and the process
//! endpoints (`/readyz`, `/metrics`).

use ganglion_integration_tests::client::{Client, encode, request};
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::{Value, json};

fn state_event<'a>(sync: &'a Value, room_id: &str, event_type: &str) -> Option<&'a Value> {
    let room = &sync["rooms"]["join"][room_id];
    room["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(room["timeline"]["events"].as_array().into_iter().flatten())
        .rfind(|e| e["type"] == event_type)
}

#[tokio::test]
async fn accounts_login_logout_and_discovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{base}{p}");

    let versions = request(
        &http,
        Method::GET,
        &url("/_matrix/client/versions"),
        None,
        None,
    )
    .await;
    assert!(
        versions.body["versions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("v1.1")))
    );
    let well_known = request(
        &http,
        Method::GET,
        &url("/.well-known/matrix/client"),
        None,
        None,
    )
    .await;
    assert!(well_known.body["m.homeserver"]["base_url"].is_string());

    let available = request(
        &http,
        Method::GET,
        &url("/_matrix/client/v3/register/available?username=carol"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (available.status, available.body["available"].clone()),
        (200, json!(true))
    );
    let carol = Client::register(base, "carol", "s3cret").await;
    assert_eq!(carol.user_id, "@carol:localhost");
    let taken = request(
        &http,
        Method::GET,
        &url("/_matrix/client/v3/register/available?username=carol"),
        None,
        None,
    )
    .await;
    assert_eq!((taken.status, taken.errcode()), (400, "M_USER_IN_USE"));

    let flows = request(
        &http,
        Method::GET,
        &url("/_matrix/client/v3/login"),
        None,
        None,
    )
    .await;
    assert_eq!(flows.body["flows"][0]["type"], "m.login.password");
    let login = |user: &str| {
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "s3cret"})
            .to_string()
            .into_bytes()
    };
    let by_localpart = request(
        &http,
        Method::POST,
        &url("/_matrix/client/v3/login"),
        None,
        Some(login("carol")),
    )
    .await;
    assert_eq!(by_localpart.status, 200, "{by_localpart:?}");
    let by_user_id = request(
        &http,
        Method::POST,
        &url("/_matrix/client/v3/login"),
        None,
        Some(login("@carol:localhost")),
    )
    .await;
    assert_eq!(by_user_id.status, 200);
    let token = by_localpart.body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let other = by_user_id.body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let whoami = request(
        &http,
        Method::GET,
        &url("/_matrix/client/v3/account/whoami"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(whoami.body["user_id"], "@carol:localhost");
    assert_eq!(whoami.body["device_id"], by_localpart.body["device_id"]);

    // Logging out ends that session only; logout/all ends the rest.
    let out = request(
        &http,
        Method::POST,
        &url("/_matrix/client/v3/logout"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(out.status, 200);
    let gone = request(
        &http,
        Method::GET,
        &url("/_matrix/client/v3/account/whoami"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(gone.errcode(), "M_UNKNOWN_TOKEN");
    let still = request(
        &http,
        Method::GET,
        &url("/_matrix/client/v3/account/whoami"),
        Some(&other),
        None,
    )
    .await;
    assert_eq!(still.status, 200);
    let all = request(
        &http,
        Method::POST,
        &url("/_matrix/client/v3/logout/all"),
        Some(&other),
        None,
    )
    .await;
    assert_eq!(all.status, 200);
    for t in [&other, &carol.access_token] {
        let r = request(
            &http,
            Method::GET,
            &url("/_matrix/client/v3/account/whoami"),
            Some(t),
            None,
        )
        .await;
        assert_eq!(r.errcode(), "M_UNKNOWN_TOKEN");
    }

    // The process endpoints: on the operator listener, not the client's.
    for path in ["/readyz", "/metrics", "/healthz"] {
        let on_client_port = http.get(url(path)).send().await.expect(path);
        assert_eq!(on_client_port.status(), 404, "{path} on the client port");
    }
    let operator = |path: &str| format!("{}{path}", server.operator_url);
    let ready = http.get(operator("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let metrics = http
        .get(operator("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "ganglion_http_requests_total",
        "ganglion_http_request_duration_seconds",
        "ganglion_userapi_accounts_created_total",
        "ganglion_consumer_lag_records",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
}

#[tokio::test]
async fn room_options_state_aliases_and_leaving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let alice = Client::register(base, "alice", "pw").await;
    let bob = Client::register(base, "bob", "pw").await;

    // The default room version, initial state and a trusted private chat.
    let trusted = alice
        .create_room(json!({
            "preset": "trusted_private_chat",
            "invite": [bob.user_id],
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        }))
        .await;
    let sync = alice.sync(None, 0, 50).await;
    assert_eq!(
        state_event(&sync, &trusted, "m.room.create").map(|e| e["content"]["room_version"].clone()),
        Some(json!("12"))
    );
    assert_eq!(
        state_event(&sync, &trusted, "m.room.join_rules")
            .map(|e| e["content"]["join_rule"].clone()),
        Some(json!("invite"))
    );
    let power = state_event(&sync, &trusted, "m.room.power_levels")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        power["content"]["users"][&bob.user_id], 100,
        "trusted invitees are admins"
    );
    assert!(state_event(&sync, &trusted, "m.room.encryption").is_some());
    // Bob was invited: he sees it, and may join.
    let bob_sync = bob.sync(None, 0, 10).await;
    assert!(
        bob_sync["rooms"]["invite"][&trusted].is_object(),
        "{bob_sync}"
    );
    assert_eq!(bob.join(&trusted).await.status, 200);

    // Room version 12: the room ID is the create event's hash, no server part.
    let v12 = alice
        .create_room(json!({"room_version": "12", "preset": "public_chat"}))
        .await;
    assert!(v12.starts_with('!') && !v12.contains(':'), "{v12}");
    assert_eq!(bob.join(&v12).await.status, 200);
    assert_eq!(bob.send_text(&v12, "v12", "hello twelve").await.status, 200);
    let unsupported = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"room_version": "99"})),
        )
        .await;
    assert_eq!(
        (unsupported.status, unsupported.errcode()),
        (400, "M_UNSUPPORTED_ROOM_VERSION")
    );

    // Aliases: join by alias; a taken alias is refused.
    let public = alice
        .create_room(json!({"preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby"}))
        .await;
    let again = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"room_alias_name": "lobby"})),
        )
        .await;
    assert_eq!((again.status, again.errcode()), (400, "M_ROOM_IN_USE"));
    let joined = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode("#lobby:localhost")),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (joined.status, joined.body["room_id"].clone()),
        (200, json!(public))
    );
    let missing = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode("#nowhere:localhost")),
            Some(json!({})),
        )
        .await;
    assert_eq!((missing.status, missing.errcode()), (404, "M_NOT_FOUND"));

    // State: alice (admin) sets the topic; bob (default level) may not.
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
        encode(&public)
    );
    let set = alice
        .call(Method::PUT, &path, Some(json!({"topic": "tea"})))
        .await;
    assert_eq!(set.status, 200, "{set:?}");
    assert!(
        set.body["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('$'))
    );
    let denied = bob
        .call(Method::PUT, &path, Some(json!({"topic": "coffee"})))
        .await;
    assert_eq!((denied.status, denied.errcode()), (403, "M_FORBIDDEN"));
    let read = bob
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic",
                encode(&public)
            ),
            None,
        )
        .await;
    assert_eq!(read.body, json!({"topic": "tea"}));
    let none = bob
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.avatar",
                encode(&public)
            ),
            None,
        )
        .await;
    assert_eq!((none.status, none.errcode()), (404, "M_NOT_FOUND"));

    // Leaving: the room moves to "leave" in bob's next sync, and he can no longer send.
    let since = bob.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let left = bob.leave(&public).await;
    assert_eq!(left.status, 200);
    let after = bob.sync(Some(&since), 0, 10).await;
    assert!(after["rooms"]["leave"][&public].is_object(), "{after}");
    assert!(after["rooms"]["join"][&public].is_null());
    let refused = bob.send_text(&public, "late", "still here?").await;
    assert_eq!((refused.status, refused.errcode()), (403, "M_FORBIDDEN"));
}

/// Profiles: a new user is named by their localpart, which their join
/// carries; a new displayname or avatar reaches every room they are in as
/// a new membership event; only one's own profile changes; bad input is
/// refused and changes nothing.
#[tokio::test]
async fn profiles_are_kept_and_carried_into_rooms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let alice = Client::register(base, "alice", "pw").await;
    let bob = Client::register(base, "bob", "pw").await;
    let http = reqwest::Client::new();
    let profile_url = |user: &str, field: &str| {
        format!("{base}/_matrix/client/v3/profile/{}{field}", encode(user))
    };
    // Reading needs no token.
    let fresh = request(
        &http,
        Method::GET,
        &profile_url(&alice.user_id, ""),
        None,
        None,
    )
    .await;
    assert_eq!(
        (fresh.status, fresh.body.clone()),
        (200, json!({ "displayname": "alice" }))
    );

    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = bob.join(&room_id).await;
    assert_eq!(join.status, 200, "{join:?}");
    let member = |who: &Client| {
        let alice = alice.clone();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            encode(&room_id),
            encode(&who.user_id)
        );
        async move { alice.call(Method::GET, &path, None).await.body }
    };
    assert_eq!(member(&bob).await["displayname"], "bob");

    let put = |client: &Client, user: &str, field: &str, body: Value| {
        let client = client.clone();
        let path = format!("/_matrix/client/v3/profile/{}/{field}", encode(user));
        async move { client.call(Method::PUT, &path, Some(body)).await }
    };
    let renamed = put(
        &bob,
        &bob.user_id,
        "displayname",
        json!({ "displayname": "Bobby" }),
    )
    .await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    // Read-your-writes: the room shows the new name at once.
    assert_eq!(member(&bob).await["displayname"], "Bobby");
    assert_eq!(member(&bob).await["membership"], "join");
    let pictured = put(
        &bob,
        &bob.user_id,
        "avatar_url",
        json!({ "avatar_url": "mxc://localhost/bob" }),
    )
    .await;
    assert_eq!(pictured.status, 200, "{pictured:?}");
    let whole = request(
        &http,
        Method::GET,
        &profile_url(&bob.user_id, ""),
        None,
        None,
    )
    .await;
    assert_eq!(
        whole.body,
        json!({ "displayname": "Bobby", "avatar_url": "mxc://localhost/bob" })
    );
    assert_eq!(member(&bob).await["avatar_url"], "mxc://localhost/bob");

    // Refusals, none of which changes anything.
    let others = put(
        &alice,
        &bob.user_id,
        "displayname",
        json!({ "displayname": "x" }),
    )
    .await;
    assert_eq!(
        (others.status, others.errcode()),
        (403, "M_FORBIDDEN"),
        "{others:?}"
    );
    let long = put(
        &bob,
        &bob.user_id,
        "displayname",
        json!({ "displayname": "b".repeat(300) }),
    )
    .await;
    assert_eq!(long.status, 400, "{long:?}");
    let not_mxc = put(
        &bob,
        &bob.user_id,
        "avatar_url",
        json!({ "avatar_url": "https://x/y" }),
    )
    .await;
    assert_eq!(
        (not_mxc.status, not_mxc.errcode()),
        (400, "M_INVALID_PARAM"),
        "{not_mxc:?}"
    );
    let not_string = put(
        &bob,
        &bob.user_id,
        "displayname",
        json!({ "displayname": 5 }),
    )
    .await;
    assert_eq!(
        (not_string.status, not_string.errcode()),
        (400, "M_BAD_JSON"),
        "{not_string:?}"
    );
    let unknown_field = put(&bob, &bob.user_id, "mood", json!({ "mood": "fine" })).await;
    assert_eq!(unknown_field.status, 400, "{unknown_field:?}");
    let anonymous = request(
        &http,
        Method::PUT,
        &profile_url(&bob.user_id, "/displayname"),
        None,
        Some(br#"{"displayname":"anon"}"#.to_vec()),
    )
    .await;
    assert_eq!(
        (anonymous.status, anonymous.errcode()),
        (401, "M_MISSING_TOKEN")
    );
    let after = request(
        &http,
        Method::GET,
        &profile_url(&bob.user_id, "/displayname"),
        None,
        None,
    )
    .await;
    assert_eq!(after.body, json!({ "displayname": "Bobby" }));
    let our_server = alice
        .user_id
        .split_once(':')
        .map(|(_, s)| s)
        .unwrap_or_default();
    let nobody = request(
        &http,
        Method::GET,
        &profile_url(&format!("@nobody:{our_server}"), ""),
        None,
        None,
    )
    .await;
    assert_eq!((nobody.status, nobody.errcode()), (404, "M_NOT_FOUND"));
    let bad_id = request(
        &http,
        Method::GET,
        &profile_url("not-a-user", ""),
        None,
        None,
    )
    .await;
    assert_eq!(bad_id.status, 400, "{bad_id:?}");
    let unset = request(
        &http,
        Method::GET,
        &profile_url(&alice.user_id, "/avatar_url"),
        None,
        None,
    )
    .await;
    assert_eq!(unset.status, 404, "{unset:?}");
    drop(server);
}

/// Registration by token: the one flow offered, tokens made with the
/// operator command, checked at the validity endpoint, used up; and a
/// server listening beyond loopback refuses to start with registration
/// open to anyone unless told that is meant.
#[tokio::test]
async fn registration_tokens_and_the_open_registration_guard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.push((
        "GANGLION_CLIENT__REGISTRATION_REQUIRES_TOKEN".to_owned(),
        "true".to_owned(),
    ));
    let server = Monolith::start_with(dir.path(), env.clone()).await;
    let http = reqwest::Client::new();
    let register_url = format!("{}/_matrix/client/v3/register", server.base_url);
    let register = |body: serde_json::Value| {
        request(
            &http,
            Method::POST,
            &register_url,
            None,
            Some(body.to_string().into_bytes()),
        )
    };
    let first = register(json!({"username": "tess", "password": "password-tess"})).await;
    assert_eq!(first.status, 401);
    assert_eq!(
        first.body["flows"],
        json!([{"stages": ["m.login.registration_token"]}])
    );
    let session = first.body["session"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The dummy stage is not enough here.
    let dummy = register(json!({"username": "tess", "password": "password-tess",
        "auth": {"type": "m.login.dummy", "session": session}}))
    .await;
    assert_eq!((dummy.status, dummy.errcode()), (401, "M_UNRECOGNIZED"));

    // An operator makes a one-use token.
    let made = std::process::Command::new(ganglion_integration_tests::process::ganglion_binary())
        .args(["registration-token", "create", "--uses", "1"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("operator command");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    assert_eq!(token.len(), 16, "{token}");

    let validity = |token: &str| {
        let url = format!(
            "{}/_matrix/client/v1/register/m.login.registration_token/validity?token={}",
            server.base_url,
            encode(token)
        );
        let http = http.clone();
        async move { request(&http, Method::GET, &url, None, None).await }
    };
    assert_eq!(validity(&token).await.body["valid"], true);
    assert_eq!(validity("not-a-token").await.body["valid"], false);

    let wrong = register(json!({"username": "tess", "password": "password-tess",
        "auth": {"type": "m.login.registration_token", "token": "not-a-token", "session": session}}))
    .await;
    assert_eq!((wrong.status, wrong.errcode()), (401, "M_FORBIDDEN"));
    let done = register(json!({"username": "tess", "password": "password-tess",
        "auth": {"type": "m.login.registration_token", "token": token, "session": session}}))
    .await;
    assert_eq!(done.status, 200, "{done:?}");
    assert!(done.body["access_token"].is_string());
    // Used up.
    assert_eq!(validity(&token).await.body["valid"], false);
    let again = register(json!({"username": "tom", "password": "password-tom",
        "auth": {"type": "m.login.registration_token", "token": token}}))
    .await;
    assert_eq!((again.status, again.errcode()), (401, "M_FORBIDDEN"));

    // Open registration beyond loopback: refused at start-up, unless meant.
    let open_dir = tempfile::tempdir().expect("tempdir");
    let mut open_env = Monolith::default_env(open_dir.path());
    open_env.retain(|(k, _)| k != "GANGLION_CLIENT__LISTEN");
    open_env.push((
        "GANGLION_CLIENT__LISTEN".to_owned(),
        format!(
            "0.0.0.0:{}",
            ganglion_integration_tests::process::free_port()
        ),
    ));
    let refused =
        std::process::Command::new(ganglion_integration_tests::process::ganglion_binary())
            .arg("check-config")
            .envs(open_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("check-config");
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("registration"), "{why}");
    open_env.push((
        "GANGLION_CLIENT__ALLOW_OPEN_REGISTRATION".to_owned(),
        "true".to_owned(),
    ));
    let meant = std::process::Command::new(ganglion_integration_tests::process::ganglion_binary())
        .arg("check-config")
        .envs(open_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("check-config");
    assert!(
        meant.status.success(),
        "{}",
        String::from_utf8_lossy(&meant.stderr)
    );
}

/// Discovery an operator configures: `/.well-known/matrix/server` delegates
/// federation to `federation.well_known_server` (404 `M_NOT_FOUND` when
/// unset, so other servers use the server name itself), and
/// `/.well-known/matrix/client` announces `client.public_base_url`. And
/// `ganglion create-account` takes its password from `GANGLION_PASSWORD`
/// (which the configuration loader leaves alone: it is not an option).
#[tokio::test]
async fn operators_configure_discovery_and_create_accounts() {
    let http = reqwest::Client::new();
    let get = async |base_url: &str, path: &str| {
        request(&http, Method::GET, &format!("{base_url}{path}"), None, None).await
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = Monolith::start(dir.path()).await;
    let unset = get(&plain.base_url, "/.well-known/matrix/server").await;
    assert_eq!((unset.status, unset.errcode()), (404, "M_NOT_FOUND"));
    let client = get(&plain.base_url, "/.well-known/matrix/client").await;
    assert_eq!(
        client.body["m.homeserver"]["base_url"],
        plain.base_url.as_str(),
        "the request's own host when unset"
    );
    drop(plain);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.push((
        "GANGLION_FEDERATION__WELL_KNOWN_SERVER".to_owned(),
        "matrix.example.org:443".to_owned(),
    ));
    env.push((
        "GANGLION_CLIENT__PUBLIC_BASE_URL".to_owned(),
        "https://matrix.example.org".to_owned(),
    ));
    let server = Monolith::start_with(dir.path(), env.clone()).await;
    let delegated = get(&server.base_url, "/.well-known/matrix/server").await;
    assert_eq!(delegated.status, 200);
    assert_eq!(
        delegated.body,
        json!({"m.server": "matrix.example.org:443"})
    );
    let client = get(&server.base_url, "/.well-known/matrix/client").await;
    assert_eq!(
        client.body["m.homeserver"]["base_url"],
        "https://matrix.example.org"
    );

    let made = std::process::Command::new(ganglion_integration_tests::process::ganglion_binary())
        .args(["create-account", "carol"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("GANGLION_PASSWORD", "password-of-carol")
        .output()
        .expect("operator command");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let login = request(
        &http,
        Method::POST,
        &format!("{}/_matrix/client/v3/login", server.base_url),
        None,
        Some(
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"},
                "password": "password-of-carol"})
            .to_string()
            .into_bytes(),
        ),
    )
    .await;
    assert_eq!(login.status, 200, "{login:?}");
}
