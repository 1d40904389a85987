//! The userapi against both database engines.

use ganglion_api::ApiError;
use ganglion_api::proto::userapi as pb;
use ganglion_api::users::UsersApi;
use ganglion_base::Config;

async fn service(database_url: Option<String>) -> (crate::Started, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    if let Some(url) = database_url {
        config
            .services
            .entry("userapi".into())
            .or_default()
            .database_url = Some(url);
    }
    (crate::start(&config).await.expect("start"), dir)
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
            access_token: session.access_token
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
            access_token: second.access_token
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
