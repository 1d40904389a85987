//! Sessions beyond the password login, as the client-server API's "Login"
//! and "Registration" sections say: login tokens for another device
//! (`POST /login/get_token`, `m.login.token`), refresh tokens and expiring
//! access tokens (`POST /refresh`, `soft_logout`), and a registration that
//! remembers what its first request said, password too, across its stages.

use ganglion_integration_tests::client::{Client, Reply, request};
use ganglion_integration_tests::process::Monolith;
use reqwest::Method;
use serde_json::{Value, json};

async fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> Reply {
    request(
        &reqwest::Client::new(),
        Method::POST,
        &format!("{base}{path}"),
        token,
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn whoami(base: &str, token: &str) -> Reply {
    request(
        &reqwest::Client::new(),
        Method::GET,
        &format!("{base}/_matrix/client/v3/account/whoami"),
        Some(token),
        None,
    )
    .await
}

fn password_login(user: &str, password: &str, refresh: bool) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        "refresh_token": refresh,
    })
}

/// Login tokens: offered when the operator allows them, given out behind
/// the password, each logging in once before it expires.
async fn login_tokens(base: &str) {
    let flows = request(
        &reqwest::Client::new(),
        Method::GET,
        &format!("{base}/_matrix/client/v3/login"),
        None,
        None,
    )
    .await;
    assert!(
        flows.body["flows"]
            .as_array()
            .is_some_and(|f| f.contains(&json!({"type": "m.login.token", "get_login_token": true}))),
        "{flows:?}"
    );
    let alice = Client::register(base, "lt_alice", "pw-lt-alice").await;
    let capabilities = alice
        .call(Method::GET, "/_matrix/client/v3/capabilities", None)
        .await;
    assert_eq!(
        capabilities.body["capabilities"]["m.get_login_token"],
        json!({"enabled": true})
    );
    let path = "/_matrix/client/v1/login/get_token";
    let asked = alice.call(Method::POST, path, Some(json!({}))).await;
    assert_eq!(asked.status, 401, "{asked:?}");
    assert_eq!(asked.body["flows"][0]["stages"][0], "m.login.password");
    let given = alice
        .call(
            Method::POST,
            path,
            Some(json!({"auth": {
                "type": "m.login.password", "session": asked.body["session"],
                "identifier": {"type": "m.id.user", "user": alice.user_id},
                "password": "pw-lt-alice",
            }})),
        )
        .await;
    assert_eq!(given.status, 200, "{given:?}");
    let token = given.body["login_token"]
        .as_str()
        .expect("login_token")
        .to_owned();
    assert!(
        given.body["expires_in_ms"]
            .as_i64()
            .is_some_and(|ms| ms > 0)
    );
    let login = |token: &str| {
        post(
            base,
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.token", "token": token, "initial_device_display_name": "TV"}),
        )
    };
    let other = login(&token).await;
    assert_eq!(other.status, 200, "{other:?}");
    assert_eq!(other.body["user_id"], alice.user_id.as_str());
    assert_ne!(other.body["device_id"], alice.device_id.as_str());
    let token_of = |reply: &Reply| {
        reply.body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(whoami(base, &token_of(&other)).await.status, 200);
    // Once only; a token never given out is refused the same way.
    for used in [token.as_str(), "not-a-token"] {
        let again = login(used).await;
        assert_eq!(
            (again.status, again.errcode()),
            (403, "M_FORBIDDEN"),
            "{again:?}"
        );
    }
    let missing = post(
        base,
        "/_matrix/client/v3/login",
        None,
        json!({"type": "m.login.token"}),
    )
    .await;
    assert_eq!(missing.status, 400, "{missing:?}");
}

/// Refresh tokens: asked for at login or registration, they come with an
/// access token that expires (then 401 `soft_logout`); each refresh gives
/// new tokens, and the refresh token before stays usable until the new
/// access token is used.
async fn refresh_tokens(base: &str, lifetime_ms: u64) {
    let bob = Client::register(base, "rt_bob", "pw-rt-bob").await;
    // Without asking: no refresh token, an access token that lasts.
    let plain = post(
        base,
        "/_matrix/client/v3/login",
        None,
        password_login("rt_bob", "pw-rt-bob", false),
    )
    .await;
    assert_eq!(plain.status, 200, "{plain:?}");
    assert!(plain.body.get("refresh_token").is_none() && plain.body.get("expires_in_ms").is_none());
    let refreshing = post(
        base,
        "/_matrix/client/v3/login",
        None,
        password_login("rt_bob", "pw-rt-bob", true),
    )
    .await;
    assert_eq!(refreshing.status, 200, "{refreshing:?}");
    assert_eq!(refreshing.body["expires_in_ms"], lifetime_ms);
    let access = refreshing.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let first_refresh = refreshing.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_eq!(whoami(base, &access).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(lifetime_ms + 500)).await;
    let expired = whoami(base, &access).await;
    assert_eq!(
        (expired.status, expired.errcode()),
        (401, "M_UNKNOWN_TOKEN"),
        "{expired:?}"
    );
    assert_eq!(expired.body["soft_logout"], true);
    // The token that did not ask still works.
    let plain_token = plain.body["access_token"].as_str().unwrap_or_default();
    assert_eq!(whoami(base, plain_token).await.status, 200);
    assert_eq!(whoami(base, &bob.access_token).await.status, 200);

    let refresh = |token: &str| {
        post(
            base,
            "/_matrix/client/v3/refresh",
            None,
            json!({"refresh_token": token}),
        )
    };
    let renewed = refresh(&first_refresh).await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    assert_eq!(renewed.body["expires_in_ms"], lifetime_ms);
    let second_access = renewed.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let second_refresh = renewed.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(second_refresh, first_refresh);
    // Its answer lost, the client refreshes again with the first: still
    // usable, as the new access token was not used.
    let again = refresh(&first_refresh).await;
    assert_eq!(again.status, 200, "{again:?}");
    let third_access = again.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let third_refresh = again.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let me = whoami(base, &third_access).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.body["device_id"], refreshing.body["device_id"]);
    // The latest access token used: the first refresh token is done, and
    // the access token before the latest with it.
    let done = refresh(&first_refresh).await;
    assert_eq!(
        (done.status, done.errcode()),
        (401, "M_UNKNOWN_TOKEN"),
        "{done:?}"
    );
    assert_eq!(whoami(base, &second_access).await.status, 401);
    assert_eq!(refresh(&second_refresh).await.status, 401);
    assert_eq!(refresh(&third_refresh).await.status, 200);
    for bad in [json!({}), json!({"refresh_token": 5})] {
        let reply = post(base, "/_matrix/client/v3/refresh", None, bad).await;
        assert_eq!(
            (reply.status, reply.errcode()),
            (400, "M_BAD_JSON"),
            "{reply:?}"
        );
    }
    assert_eq!(refresh("never-given").await.status, 401);
}

/// Registration: what the first request said (password, device name,
/// `refresh_token`) holds for the one that completes, which may say only
/// its `auth`; retried in the same session, the same user on a new device.
async fn registration_remembers(base: &str) {
    let url = "/_matrix/client/v3/register";
    let asked = post(
        base,
        url,
        None,
        json!({"username": "rr_cat", "password": "pw-rr-cat",
               "initial_device_display_name": "Cat's phone", "refresh_token": true}),
    )
    .await;
    assert_eq!(asked.status, 401, "{asked:?}");
    let auth = json!({"auth": {"type": "m.login.dummy", "session": asked.body["session"]}});
    let done = post(base, url, None, auth.clone()).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert!(
        done.body["user_id"]
            .as_str()
            .is_some_and(|u| u.starts_with("@rr_cat:")),
        "{done:?}"
    );
    assert!(done.body["refresh_token"].is_string(), "{done:?}");
    let token = done.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let devices = request(
        &reqwest::Client::new(),
        Method::GET,
        &format!("{base}/_matrix/client/v3/devices"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        devices.body["devices"][0]["display_name"], "Cat's phone",
        "{devices:?}"
    );
    // The password the first request gave logs in.
    let login = post(
        base,
        "/_matrix/client/v3/login",
        None,
        password_login("rr_cat", "pw-rr-cat", false),
    )
    .await;
    assert_eq!(login.status, 200, "{login:?}");
    // A retry: the same user, a new device, no password asked.
    let again = post(base, url, None, auth).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["user_id"], done.body["user_id"]);
    assert_ne!(again.body["access_token"], done.body["access_token"]);
    // With neither a password then nor now: refused.
    let asked = post(base, url, None, json!({"username": "rr_dog"})).await;
    let refused = post(
        base,
        url,
        None,
        json!({"auth": {"type": "m.login.dummy", "session": asked.body["session"]}}),
    )
    .await;
    assert_eq!(
        (refused.status, refused.errcode()),
        (400, "M_MISSING_PARAM"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn login_tokens_refresh_tokens_and_remembered_registration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lifetime_ms = 1500;
    let mut env = Monolith::default_env(dir.path());
    env.extend([
        (
            "GANGLION_CLIENT__LOGIN_VIA_EXISTING_SESSION".to_owned(),
            "true".to_owned(),
        ),
        (
            "GANGLION_CLIENT__REFRESHABLE_ACCESS_TOKEN_LIFETIME_MS".to_owned(),
            lifetime_ms.to_string(),
        ),
    ]);
    let server = Monolith::start_with(dir.path(), env).await;
    login_tokens(&server.base_url).await;
    refresh_tokens(&server.base_url, lifetime_ms).await;
    registration_remembers(&server.base_url).await;
}

/// Login tokens are off unless the operator turns them on, as in Synapse.
#[tokio::test]
async fn login_tokens_are_off_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Monolith::start(dir.path()).await;
    let base = &server.base_url;
    let alice = Client::register(base, "off_alice", "pw-off-alice").await;
    let get = alice
        .call(
            Method::POST,
            "/_matrix/client/v1/login/get_token",
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (get.status, get.errcode()),
        (404, "M_UNRECOGNIZED"),
        "{get:?}"
    );
    let flows = alice
        .call(Method::GET, "/_matrix/client/v3/login", None)
        .await;
    assert_eq!(flows.body["flows"], json!([{"type": "m.login.password"}]));
    let login = post(
        base,
        "/_matrix/client/v3/login",
        None,
        json!({"type": "m.login.token", "token": "x"}),
    )
    .await;
    assert_eq!(
        (login.status, login.errcode()),
        (400, "M_UNKNOWN"),
        "{login:?}"
    );
    let capabilities = alice
        .call(Method::GET, "/_matrix/client/v3/capabilities", None)
        .await;
    assert!(
        capabilities.body["capabilities"]["m.get_login_token"]
            .get("enabled")
            .is_none_or(|e| e == false),
        "{capabilities:?}"
    );
}
