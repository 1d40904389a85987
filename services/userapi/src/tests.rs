//! The userapi against both database engines.

use ganglion_api::ApiError;
use ganglion_api::proto::userapi as pb;
use ganglion_api::users::UsersApi;

async fn service(database_url: Option<String>) -> (crate::Started, tempfile::TempDir) {
    let (config, dir) = ganglion_base::testing::service_config("userapi", database_url);
    let log =
        std::sync::Arc::new(ganglion_log::EmbeddedLog::open(dir.path().join("log")).expect("log"));
    (crate::start(&config, Some(log)).await.expect("start"), dir)
}

async fn accounts_and_tokens(api: &dyn UsersApi) {
    let session = api
        .register(pb::RegisterRequest {
            localpart: "alice".into(),
            password: "secret".into(),
            ..Default::default()
        })
        .await
        .expect("register");
    assert_eq!(session.user_id, "@alice:localhost");
    assert!(!session.access_token.is_empty());

    let again = api
        .register(pb::RegisterRequest {
            localpart: "alice".into(),
            password: "other".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(again, Err(ApiError::UserInUse));

    let device = api
        .authenticate(pb::AuthenticateRequest {
            access_token: session.access_token.clone(),
            ..Default::default()
        })
        .await
        .expect("token valid");
    assert_eq!(device.user_id, "@alice:localhost");
    assert_eq!(device.device_id, session.device_id);

    let wrong = api
        .login_with_password(pb::LoginRequest {
            localpart: "alice".into(),
            password: "nope".into(),
            ..Default::default()
        })
        .await;
    assert!(matches!(wrong, Err(ApiError::Forbidden(_))));

    let second = api
        .login_with_password(pb::LoginRequest {
            localpart: "alice".into(),
            password: "secret".into(),
            ..Default::default()
        })
        .await
        .expect("login");
    assert_ne!(second.access_token, session.access_token);

    api.logout(pb::LogoutRequest {
        access_token: session.access_token.clone(),
    })
    .await
    .expect("logout");
    assert_eq!(
        api.authenticate(pb::AuthenticateRequest {
            access_token: session.access_token,
            ..Default::default()
        })
        .await,
        Err(ApiError::UnknownToken)
    );
    let removed = api
        .logout_all(pb::LogoutAllRequest {
            user_id: "@alice:localhost".into(),
        })
        .await
        .expect("logout all");
    assert_eq!(removed.devices_removed, 1);
    assert_eq!(
        api.authenticate(pb::AuthenticateRequest {
            access_token: second.access_token,
            ..Default::default()
        })
        .await,
        Err(ApiError::UnknownToken)
    );
    assert!(matches!(
        api.register(pb::RegisterRequest {
            localpart: "Not Valid".into(),
            ..Default::default()
        })
        .await,
        Err(ApiError::InvalidInput(_))
    ));

    // Profiles: named by the localpart at first; fields set, checked and
    // removed; no profile for a user who does not exist.
    let profile = |user_id: &str| {
        api.get_profile(pb::GetProfileRequest {
            user_id: user_id.into(),
        })
    };
    let set = |field: &str, value: Option<&str>| {
        api.set_profile_field(pb::SetProfileFieldRequest {
            user_id: "@alice:localhost".into(),
            field: field.into(),
            value: value.map(str::to_owned),
        })
    };
    let fresh = profile("@alice:localhost").await.expect("profile");
    assert_eq!(fresh.displayname.as_deref(), Some("alice"));
    assert_eq!(fresh.avatar_url, None);
    let named = set("displayname", Some("Alice A.")).await.expect("set");
    assert_eq!(named.displayname.as_deref(), Some("Alice A."));
    let pictured = set("avatar_url", Some("mxc://localhost/abc"))
        .await
        .expect("set");
    assert_eq!(
        (
            pictured.displayname.as_deref(),
            pictured.avatar_url.as_deref()
        ),
        (Some("Alice A."), Some("mxc://localhost/abc"))
    );
    let unnamed = set("displayname", None).await.expect("removed");
    assert_eq!(unnamed.displayname, None);
    assert!(matches!(
        set("displayname", Some(&"x".repeat(257))).await,
        Err(ApiError::InvalidInput(_))
    ));
    assert!(matches!(
        set("status", Some("busy")).await,
        Err(ApiError::InvalidInput(_))
    ));
    assert_eq!(
        profile("@alice:localhost")
            .await
            .expect("profile")
            .avatar_url
            .as_deref(),
        Some("mxc://localhost/abc"),
        "refused changes change nothing"
    );
    assert!(matches!(
        profile("@nobody:localhost").await,
        Err(ApiError::NotFound(_))
    ));
    assert!(matches!(
        profile("@alice:elsewhere").await,
        Err(ApiError::InvalidInput(_))
    ));
}

#[tokio::test]
async fn sqlite_accounts_and_tokens() {
    let (started, _dir) = service(None).await;
    accounts_and_tokens(&*started.api).await;
}

#[tokio::test]
async fn postgres_accounts_and_tokens() {
    let url = ganglion_base::testing::scratch_postgres("userapi").await;
    let (started, _dir) = service(Some(url)).await;
    accounts_and_tokens(&*started.api).await;
}

/// Account data and tags: stored, read back, and each change published on
/// `userapi.account_data` with the content as stored.
async fn account_data_and_tags(started: &crate::Started) {
    let api: &dyn UsersApi = &*started.api;
    api.register(pb::RegisterRequest {
        localpart: "bob".into(),
        password: "secret".into(),
        ..Default::default()
    })
    .await
    .expect("register");
    let user_id = "@bob:localhost".to_owned();
    let written = api
        .set_account_data(pb::SetAccountDataRequest {
            user_id: user_id.clone(),
            room_id: String::new(),
            data_type: "m.direct".into(),
            content_json: br#"{"@a:b":["!r:b"]}"#.to_vec(),
        })
        .await
        .expect("set");
    let position = written.position.expect("position");
    assert!(position.topic.ends_with("userapi.account_data"));
    let read = api
        .get_account_data(pb::GetAccountDataRequest {
            user_id: user_id.clone(),
            room_id: String::new(),
            data_type: "m.direct".into(),
        })
        .await
        .expect("get");
    assert_eq!(
        read.content_json.as_deref(),
        Some(&br#"{"@a:b":["!r:b"]}"#[..])
    );
    for bad in [&b"[1]"[..], b"nope", b"\"1\""] {
        assert!(matches!(
            api.set_account_data(pb::SetAccountDataRequest {
                user_id: user_id.clone(),
                room_id: String::new(),
                data_type: "x".into(),
                content_json: bad.to_vec(),
            })
            .await,
            Err(ApiError::InvalidInput(_))
        ));
    }
    assert!(matches!(
        api.set_account_data(pb::SetAccountDataRequest {
            user_id: "@bob:elsewhere".into(),
            room_id: String::new(),
            data_type: "x".into(),
            content_json: b"{}".to_vec(),
        })
        .await,
        Err(ApiError::InvalidInput(_))
    ));
    for (tag, content) in [
        ("m.favourite", Some(br#"{"order":0.5}"#.to_vec())),
        ("u.work", Some(b"{}".to_vec())),
        ("m.favourite", None),
    ] {
        api.update_tag(pb::UpdateTagRequest {
            user_id: user_id.clone(),
            room_id: "!room:localhost".into(),
            tag: tag.into(),
            content_json: content,
        })
        .await
        .expect("tag");
    }
    let tags = api
        .get_account_data(pb::GetAccountDataRequest {
            user_id: user_id.clone(),
            room_id: "!room:localhost".into(),
            data_type: "m.tag".into(),
        })
        .await
        .expect("get tags")
        .content_json
        .expect("tags");
    assert_eq!(tags, br#"{"tags":{"u.work":{}}}"#.to_vec());

    // The log holds every change, in order, with the content as stored.
    let mut reader = started
        .api
        .log
        .as_ref()
        .expect("log")
        .reader(&[(started.api.topics.userapi_account_data.as_str(), vec![])])
        .await
        .expect("reader");
    let mut records = Vec::new();
    while records.len() < 4 {
        let record = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
            .await
            .expect("record in time")
            .expect("record");
        let update: ganglion_api::proto::topics::AccountDataUpdate =
            ganglion_api::topics::decode(&record.payload).expect("decode");
        assert_eq!(record.key, user_id.as_bytes());
        records.push((
            update.data_type,
            String::from_utf8(update.content_json).expect("utf8"),
        ));
    }
    assert_eq!(
        records[0],
        ("m.direct".to_owned(), r#"{"@a:b":["!r:b"]}"#.to_owned())
    );
    assert_eq!(records[3].0, "m.tag");
    assert_eq!(records[3].1, r#"{"tags":{"u.work":{}}}"#);
    assert!(
        started
            .api
            .storage
            .pending_account_data()
            .await
            .expect("outbox")
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_account_data_and_tags() {
    let (started, _dir) = service(None).await;
    account_data_and_tags(&started).await;
}

#[tokio::test]
async fn postgres_account_data_and_tags() {
    let url = ganglion_base::testing::scratch_postgres("userapi").await;
    let (started, _dir) = service(Some(url)).await;
    account_data_and_tags(&started).await;
}

/// Login tokens (once, then refused) and refresh tokens (new tokens, the
/// refresh token before usable until the new access token is, expired
/// access tokens refused as expired), on both engines.
async fn login_and_refresh_tokens(api: &dyn UsersApi) {
    let registered = api
        .register(pb::RegisterRequest {
            localpart: "tokens".into(),
            password: "secret".into(),
            refresh_token: true,
            ..Default::default()
        })
        .await
        .expect("register");
    assert!(!registered.refresh_token.is_empty());
    assert!(registered.expires_in_ms > 0);
    let given = api
        .create_login_token(pb::CreateLoginTokenRequest {
            user_id: registered.user_id.clone(),
            lifetime_ms: 60_000,
        })
        .await
        .expect("login token");
    let login = |token: String| pb::LoginWithTokenRequest {
        token,
        ..Default::default()
    };
    let other = api
        .login_with_token(login(given.token.clone()))
        .await
        .expect("login with the token");
    assert_eq!(other.user_id, registered.user_id);
    assert!(other.refresh_token.is_empty(), "not asked for");
    assert!(matches!(
        api.login_with_token(login(given.token)).await,
        Err(ApiError::Forbidden(_))
    ));
    let expired = api
        .create_login_token(pb::CreateLoginTokenRequest {
            user_id: registered.user_id.clone(),
            lifetime_ms: 1,
        })
        .await
        .expect("login token");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(matches!(
        api.login_with_token(login(expired.token)).await,
        Err(ApiError::Forbidden(_))
    ));

    let authenticate = |access_token: &str| pb::AuthenticateRequest {
        access_token: access_token.to_owned(),
        ..Default::default()
    };
    let refresh = |token: &str| pb::RefreshRequest {
        refresh_token: token.to_owned(),
    };
    let second = api
        .refresh(refresh(&registered.refresh_token))
        .await
        .expect("refresh");
    assert_eq!(second.device_id, registered.device_id);
    let third = api
        .refresh(refresh(&registered.refresh_token))
        .await
        .expect("the first again, the second access token unused");
    api.authenticate(authenticate(&third.access_token))
        .await
        .expect("the latest access token");
    for used in [&registered.refresh_token, &second.refresh_token] {
        assert_eq!(
            api.refresh(refresh(used)).await,
            Err(ApiError::UnknownToken)
        );
    }
    assert_eq!(
        api.authenticate(authenticate(&second.access_token)).await,
        Err(ApiError::UnknownToken)
    );
    api.refresh(refresh(&third.refresh_token))
        .await
        .expect("the latest refresh token");
}

#[tokio::test]
async fn sqlite_login_and_refresh_tokens() {
    let (started, _dir) = service(None).await;
    login_and_refresh_tokens(started.api.as_ref()).await;
}

#[tokio::test]
async fn postgres_login_and_refresh_tokens() {
    let url = ganglion_base::testing::scratch_postgres("userapi_tokens").await;
    let (started, _dir) = service(Some(url)).await;
    login_and_refresh_tokens(started.api.as_ref()).await;
}

/// Push rule changes: made on the rules as they are, none lost to another
/// made at the same time (here by `apis`, replicas on one database), and
/// refused with NotFound or InvalidInput as the push rules API asks.
async fn push_rule_changes(apis: &[&dyn UsersApi]) {
    use pb::update_push_rule_request::Change;
    let register = apis[0]
        .register(pb::RegisterRequest {
            localpart: "pusher".into(),
            password: "secret".into(),
            ..Default::default()
        })
        .await
        .expect("register");
    let user_id = register.user_id;
    let change = |kind: &str, rule_id: &str, change: Change| pb::UpdatePushRuleRequest {
        user_id: user_id.clone(),
        kind: kind.into(),
        rule_id: rule_id.into(),
        change: Some(change),
    };
    let put = |pattern: &str| {
        Change::Put(pb::PutPushRule {
            rule_json: serde_json::json!({"pattern": pattern, "actions": ["notify"]})
                .to_string()
                .into_bytes(),
            before: None,
            after: None,
        })
    };
    let writes = (0..20).map(|n| {
        let api = apis[n % apis.len()];
        let request = change("content", &format!("word{n}"), put(&format!("word{n}")));
        async move { api.update_push_rule(request).await }
    });
    for written in futures::future::join_all(writes).await {
        written.expect("change");
    }
    let stored = apis[0]
        .get_account_data(pb::GetAccountDataRequest {
            user_id: user_id.clone(),
            room_id: String::new(),
            data_type: "m.push_rules".into(),
        })
        .await
        .expect("get")
        .content_json
        .expect("stored");
    let user = ruma::UserId::parse(&user_id).expect("user ID");
    let rules = ganglion_base::push_rules::effective(
        &user,
        Some(std::str::from_utf8(&stored).expect("utf8")),
    );
    let words = rules
        .content
        .iter()
        .filter(|rule| rule.rule_id.starts_with("word"))
        .count();
    assert_eq!(words, 20, "every change kept");
    assert!(matches!(
        apis[0]
            .update_push_rule(change("room", "!nope:localhost", Change::Enabled(false)))
            .await,
        Err(ApiError::NotFound(_))
    ));
    assert!(matches!(
        apis[0]
            .update_push_rule(change("content", ".mine", put("x")))
            .await,
        Err(ApiError::InvalidInput(_))
    ));
    assert!(matches!(
        apis[0]
            .update_push_rule(change(
                "override",
                ".m.rule.master",
                Change::Delete(Default::default())
            ))
            .await,
        Err(ApiError::InvalidInput(_))
    ));
    let mut other = change("content", "word1", Change::Enabled(false));
    other.user_id = "@someone:elsewhere".into();
    assert!(matches!(
        apis[0].update_push_rule(other).await,
        Err(ApiError::InvalidInput(_))
    ));
}

#[tokio::test]
async fn sqlite_push_rule_changes() {
    let (started, _dir) = service(None).await;
    push_rule_changes(&[started.api.as_ref()]).await;
}

#[tokio::test]
async fn postgres_replicas_push_rule_changes() {
    let url = ganglion_base::testing::scratch_postgres("userapi_push_rules").await;
    let (config, dir) = ganglion_base::testing::service_config("userapi", Some(url));
    let log: std::sync::Arc<dyn ganglion_log::Log> =
        std::sync::Arc::new(ganglion_log::EmbeddedLog::open(dir.path().join("log")).expect("log"));
    let one = crate::start(&config, Some(log.clone()))
        .await
        .expect("start");
    let two = crate::start(&config, Some(log)).await.expect("start");
    push_rule_changes(&[one.api.as_ref(), two.api.as_ref()]).await;
}

/// Two replicas on one PostgreSQL database and one log: rows left in the
/// outbox are published once between them, and writes racing on one key
/// leave the key's latest content as its last record.
#[tokio::test]
async fn postgres_replicas_publish_the_outbox_once_and_in_order() {
    let url = ganglion_base::testing::scratch_postgres("userapi_replicas").await;
    let (config, dir) = ganglion_base::testing::service_config("userapi", Some(url));
    let log: std::sync::Arc<dyn ganglion_log::Log> =
        std::sync::Arc::new(ganglion_log::EmbeddedLog::open(dir.path().join("log")).expect("log"));
    let one = crate::start(&config, Some(log.clone()))
        .await
        .expect("start");
    let two = crate::start(&config, Some(log.clone()))
        .await
        .expect("start");
    // Rows a crash left: written, never published.
    for n in 0..20 {
        one.api
            .storage
            .set_account_data("carol", "", &format!("m.left.{n}"), r#"{"n":1}"#)
            .await
            .expect("row");
    }
    let (a, b) = tokio::join!(one.api.publish_pending(), two.api.publish_pending());
    a.expect("published");
    b.expect("published");
    // Racing writes of one key through both replicas.
    let writes = (0..30).map(|n| {
        let api: &dyn UsersApi = if n % 2 == 0 { &*one.api } else { &*two.api };
        api.set_account_data(pb::SetAccountDataRequest {
            user_id: "@carol:localhost".into(),
            room_id: String::new(),
            data_type: "m.raced".into(),
            content_json: format!(r#"{{"n":{n}}}"#).into_bytes(),
        })
    });
    for written in futures::future::join_all(writes).await {
        written.expect("written");
    }
    let stored = one
        .api
        .storage
        .account_data("carol", "", "m.raced")
        .await
        .expect("read")
        .expect("stored");

    let mut reader = log
        .reader(&[(one.api.topics.userapi_account_data.as_str(), vec![])])
        .await
        .expect("reader");
    let mut left = std::collections::BTreeMap::new();
    let mut last_raced = None;
    for _ in 0..50 {
        let record = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
            .await
            .expect("a record in time")
            .expect("record");
        let update: ganglion_api::proto::topics::AccountDataUpdate =
            ganglion_api::topics::decode(&record.payload).expect("decode");
        if update.data_type == "m.raced" {
            last_raced = Some(String::from_utf8(update.content_json).expect("utf8"));
        } else {
            *left.entry(update.data_type).or_insert(0) += 1;
        }
    }
    assert_eq!(left.len(), 20, "{left:?}");
    assert!(left.values().all(|n| *n == 1), "published twice: {left:?}");
    assert_eq!(last_raced.as_deref(), Some(stored.as_str()));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), reader.next())
            .await
            .is_err(),
        "no record beyond one per write"
    );
}

/// Devices on each engine: listed with their last sighting (noted on
/// authentication, behind trusted proxies, written by the flush and read
/// back), renamed, deleted with their tokens.
async fn devices(started: &crate::Started) {
    let api = &*started.api;
    let session = api
        .register(pb::RegisterRequest {
            localpart: "dora".into(),
            password: "secret".into(),
            initial_device_display_name: Some("laptop".into()),
            ..Default::default()
        })
        .await
        .expect("register");
    let user_id = session.user_id.clone();
    let list = |device_id: &str| {
        api.get_devices(pb::GetDevicesRequest {
            user_id: user_id.clone(),
            device_id: device_id.to_owned(),
        })
    };
    let before = list("").await.expect("devices");
    assert_eq!(before.devices.len(), 1);
    assert_eq!(before.devices[0].display_name.as_deref(), Some("laptop"));
    assert_eq!(before.devices[0].last_seen_ts, None);
    // Seen through a trusted proxy (loopback): the client's address.
    api.authenticate(pb::AuthenticateRequest {
        access_token: session.access_token.clone(),
        peer_ip: "127.0.0.1".into(),
        forwarded_for: "10.9.9.9, 203.0.113.7".into(),
        user_agent: "Agent/2".into(),
    })
    .await
    .expect("authenticated");
    let noted = list(&session.device_id).await.expect("device");
    assert_eq!(
        noted.devices[0].last_seen_ip.as_deref(),
        Some("203.0.113.7")
    );
    assert_eq!(
        noted.devices[0].last_seen_user_agent.as_deref(),
        Some("Agent/2")
    );
    api.last_seen.flush(&api.storage).await;
    let written = list(&session.device_id).await.expect("device");
    assert_eq!(written.devices, noted.devices);
    // Renamed; unknown devices are not found.
    api.rename_device(pb::RenameDeviceRequest {
        user_id: user_id.clone(),
        device_id: session.device_id.clone(),
        display_name: Some("desk".into()),
    })
    .await
    .expect("renamed");
    assert_eq!(
        list("").await.expect("devices").devices[0]
            .display_name
            .as_deref(),
        Some("desk")
    );
    assert!(matches!(
        api.rename_device(pb::RenameDeviceRequest {
            user_id: user_id.clone(),
            device_id: "NOPE".into(),
            display_name: None,
        })
        .await,
        Err(ApiError::NotFound(_))
    ));
    assert!(list("NOPE").await.expect("none").devices.is_empty());
    // A new password logs out every other device when asked.
    let second = api
        .login_with_password(pb::LoginRequest {
            localpart: "dora".into(),
            password: "secret".into(),
            ..Default::default()
        })
        .await
        .expect("login");
    let changed = api
        .set_password(pb::SetPasswordRequest {
            user_id: user_id.clone(),
            new_password: "new secret".into(),
            logout_devices: true,
            keep_device_id: session.device_id.clone(),
        })
        .await
        .expect("changed");
    assert_eq!(changed.logged_out, vec![second.device_id.clone()]);
    assert!(matches!(
        api.check_password(pb::CheckPasswordRequest {
            localpart: "dora".into(),
            password: "secret".into(),
        })
        .await,
        Err(ApiError::Forbidden(_))
    ));
    api.check_password(pb::CheckPasswordRequest {
        localpart: "dora".into(),
        password: "new secret".into(),
    })
    .await
    .expect("the new password");
    // Deleted: those that existed are named, the token stops working.
    let deleted = api
        .delete_devices(pb::DeleteDevicesRequest {
            user_id: user_id.clone(),
            device_ids: vec![session.device_id.clone(), "NOPE".into()],
        })
        .await
        .expect("deleted");
    assert_eq!(deleted.deleted, vec![session.device_id.clone()]);
    assert_eq!(
        api.authenticate(pb::AuthenticateRequest {
            access_token: session.access_token.clone(),
            ..Default::default()
        })
        .await,
        Err(ApiError::UnknownToken)
    );
    assert!(list("").await.expect("devices").devices.is_empty());
}

#[tokio::test]
async fn sqlite_devices() {
    let (started, _dir) = service(None).await;
    devices(&started).await;
}

#[tokio::test]
async fn postgres_devices() {
    let url = ganglion_base::testing::scratch_postgres("userapi_devices").await;
    let (started, _dir) = service(Some(url)).await;
    devices(&started).await;
}

/// Deactivation on each engine: devices and password gone, logins and
/// password checks refused as deactivated, the profile erased if asked.
async fn deactivation(started: &crate::Started) {
    let api = &*started.api;
    let session = api
        .register(pb::RegisterRequest {
            localpart: "gone".into(),
            password: "secret".into(),
            ..Default::default()
        })
        .await
        .expect("register");
    let done = api
        .deactivate(pb::DeactivateRequest {
            user_id: session.user_id.clone(),
            erase: true,
        })
        .await
        .expect("deactivated");
    assert_eq!(done.logged_out, vec![session.device_id.clone()]);
    let login = api
        .login_with_password(pb::LoginRequest {
            localpart: "gone".into(),
            password: "secret".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(login, Err(ApiError::UserDeactivated));
    let profile = api
        .get_profile(pb::GetProfileRequest {
            user_id: session.user_id.clone(),
        })
        .await
        .expect("profile");
    assert_eq!(profile.displayname, None);
    let again = api
        .register(pb::RegisterRequest {
            localpart: "gone".into(),
            password: "other".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(again, Err(ApiError::UserInUse));
    assert!(matches!(
        api.deactivate(pb::DeactivateRequest {
            user_id: "@nobody:localhost".into(),
            erase: false,
        })
        .await,
        Err(ApiError::NotFound(_))
    ));
}

#[tokio::test]
async fn sqlite_deactivation() {
    let (started, _dir) = service(None).await;
    deactivation(&started).await;
}

#[tokio::test]
async fn postgres_deactivation() {
    let url = ganglion_base::testing::scratch_postgres("userapi_deactivation").await;
    let (started, _dir) = service(Some(url)).await;
    deactivation(&started).await;
}

/// Push badges: each notification adds one to what a member has unread in
/// the room; a read receipt clears the room (changing the badge once); a
/// member who leaves has nothing unread there.
async fn push_badges(started: &crate::Started) {
    use crate::storage::Storage;
    let storage = &started.api.storage;
    let mut tx = storage.db.pool.begin().await.expect("begin");
    for room in ["!a:hs", "!b:hs"] {
        Storage::set_membership(&mut tx, room, "@u:hs", "join", None)
            .await
            .expect("member");
    }
    assert_eq!(
        Storage::add_unread(&mut tx, "!a:hs", "@u:hs")
            .await
            .expect("add"),
        1
    );
    assert_eq!(
        Storage::add_unread(&mut tx, "!a:hs", "@u:hs")
            .await
            .expect("add"),
        2
    );
    assert_eq!(
        Storage::add_unread(&mut tx, "!b:hs", "@u:hs")
            .await
            .expect("add"),
        3
    );
    assert_eq!(
        Storage::mark_read(&mut tx, "!a:hs", "@u:hs")
            .await
            .expect("read"),
        Some(1)
    );
    assert_eq!(
        Storage::mark_read(&mut tx, "!a:hs", "@u:hs")
            .await
            .expect("read"),
        None,
        "nothing unread: no new badge"
    );
    Storage::set_membership(&mut tx, "!b:hs", "@u:hs", "leave", None)
        .await
        .expect("leave");
    assert_eq!(
        Storage::add_unread(&mut tx, "!a:hs", "@u:hs")
            .await
            .expect("add"),
        1
    );
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn sqlite_push_badges() {
    let (started, _dir) = service(None).await;
    push_badges(&started).await;
}

#[tokio::test]
async fn postgres_push_badges() {
    let url = ganglion_base::testing::scratch_postgres("userapi_badges").await;
    let (started, _dir) = service(Some(url)).await;
    push_badges(&started).await;
}
