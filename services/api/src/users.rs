//! The userapi's API: accounts, devices, access tokens and account data.

use crate::proto::userapi as pb;
use crate::proto::userapi::users_client::UsersClient as PbClient;
use crate::proto::userapi::users_server::UsersServer;

crate::grpc::service_api! {
    /// Accounts, devices and access tokens (owned by userapi).
    api "users";
    trait UsersApi;
    client UsersClient = PbClient;
    adapter UsersGrpc: pb::users_server::Users, UsersServer;
    {
        /// Creates an account (and, unless `inhibit_login`, a device with a token).
        fn register(pb::RegisterRequest) -> pb::Session, once;
        fn localpart_available(pb::LocalpartAvailableRequest) -> pb::LocalpartAvailableResponse;
        /// Whether a registration token may register an account now.
        fn registration_token_valid(pb::RegistrationTokenRequest) -> pb::RegistrationTokenValidity;
        /// Checks the password and creates a device with a new access token.
        fn login_with_password(pb::LoginRequest) -> pb::Session, once;
        /// Logs in with a login token (used up).
        fn login_with_token(pb::LoginWithTokenRequest) -> pb::Session, once;
        /// A single-use login token for the user.
        fn create_login_token(pb::CreateLoginTokenRequest) -> pb::LoginToken, once;
        /// A new device for an account whose user proved who they are otherwise.
        fn new_session(pb::NewSessionRequest) -> pb::Session, once;
        /// New tokens for a refresh token.
        fn refresh(pb::RefreshRequest) -> pb::Session, once;
        /// A password's hash.
        fn hash_password(pb::HashPasswordRequest) -> pb::HashPasswordResponse;
        /// Checks a user's password; Forbidden when wrong.
        fn check_password(pb::CheckPasswordRequest) -> pb::CheckPasswordResponse;
        /// Resolves an access token to its device; `UnknownToken` otherwise.
        fn authenticate(pb::AuthenticateRequest) -> pb::Device;
        fn logout(pb::LogoutRequest) -> pb::LogoutResponse;
        fn logout_all(pb::LogoutAllRequest) -> pb::LogoutResponse;
        fn list_devices(pb::ListDevicesRequest) -> pb::ListDevicesResponse;
        /// A user's devices with their names and last-seen details.
        fn get_devices(pb::GetDevicesRequest) -> pb::GetDevicesResponse;
        /// Renames one of a user's devices.
        fn rename_device(pb::RenameDeviceRequest) -> pb::RenameDeviceResponse;
        /// Deletes devices of a user, and their access tokens.
        fn delete_devices(pb::DeleteDevicesRequest) -> pb::DeleteDevicesResponse;
        /// Sets, reads and deletes a user's dehydrated device (MSC3814).
        fn put_dehydrated_device(pb::PutDehydratedDeviceRequest) -> pb::DehydratedDevice;
        fn get_dehydrated_device(pb::GetDehydratedDeviceRequest) -> pb::DehydratedDevice;
        fn delete_dehydrated_device(pb::GetDehydratedDeviceRequest) -> pb::DehydratedDevice;
        /// Sets a user's password, logging out their other devices if asked.
        fn set_password(pb::SetPasswordRequest) -> pb::SetPasswordResponse;
        /// Deactivates an account (and erases its profile if asked).
        fn deactivate(pb::DeactivateRequest) -> pb::DeactivateResponse, once;
        /// Stores account data and publishes it on `userapi.account_data`.
        fn set_account_data(pb::SetAccountDataRequest) -> pb::AccountDataWritten;
        fn get_account_data(pb::GetAccountDataRequest) -> pb::GetAccountDataResponse;
        /// Adds or removes one tag of a room's `m.tag`, atomically.
        fn update_tag(pb::UpdateTagRequest) -> pb::AccountDataWritten;
        /// Changes one of a user's push rules, atomically.
        fn update_push_rule(pb::UpdatePushRuleRequest) -> pb::AccountDataWritten, once;
        /// A user's pushers.
        fn get_pushers(pb::GetPushersRequest) -> pb::GetPushersResponse;
        /// Creates, updates or removes a pusher.
        fn set_pusher(pb::SetPusherRequest) -> crate::proto::common::Empty;
        /// A local user's displayname and avatar URL.
        fn get_profile(pb::GetProfileRequest) -> pb::Profile;
        /// Sets or removes one field of a local user's profile.
        fn set_profile_field(pb::SetProfileFieldRequest) -> pb::Profile;
        /// Which of the given local users are guests.
        fn query_guests(pb::QueryGuestsRequest) -> pb::QueryGuestsResponse;
    }
}

/// What is wrong with a pusher to create or update, if anything: the
/// push API's limits (app ID 1 to 64 characters, pushkey 1 to 512 bytes),
/// `http` the only kind, and `data.url` an http(s) URL whose path is the
/// push gateway API's `/_matrix/push/v1/notify`.
pub fn pusher_problem(pusher: &pb::PusherInfo) -> Option<String> {
    if pusher.app_id.is_empty() || pusher.app_id.chars().count() > 64 {
        return Some("app_id is 1 to 64 characters".into());
    }
    if pusher.pushkey.is_empty() || pusher.pushkey.len() > 512 {
        return Some("pushkey is 1 to 512 bytes".into());
    }
    if pusher.kind != "http" {
        return Some(format!("unsupported pusher kind {:?}", pusher.kind));
    }
    for (name, value) in [
        ("app_display_name", &pusher.app_display_name),
        ("device_display_name", &pusher.device_display_name),
        ("lang", &pusher.lang),
    ] {
        if value.len() > 1024 {
            return Some(format!("{name} is too long"));
        }
    }
    if pusher.data_json.len() > 64 * 1024 {
        return Some("data is too large".into());
    }
    let data: serde_json::Value = match serde_json::from_slice(&pusher.data_json) {
        Ok(data @ serde_json::Value::Object(_)) => data,
        _ => return Some("data is a JSON object".into()),
    };
    let Some(url) = data["url"].as_str() else {
        return Some("an http pusher's data has a url".into());
    };
    match reqwest::Url::parse(url) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.host().is_some()
                && url.path() == "/_matrix/push/v1/notify" => {}
        _ => {
            return Some("data.url is an http(s) URL with the path /_matrix/push/v1/notify".into());
        }
    }
    None
}

/// The server of a user ID (or of an alias, or a room ID that names
/// one): what follows the first colon.
pub fn server_of(id: &str) -> Option<&str> {
    id.split_once(':').map(|(_, server)| server)
}

/// What callers hold: the service itself (monolith) or a [`UsersClient`].
pub type UsersHandle = std::sync::Arc<dyn UsersApi>;

/// The access token of a request: `Authorization: Bearer` or `?access_token=`.
pub fn access_token(headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "access_token")
        .map(|(_, value)| value.to_owned())
}

/// Resolves a request's access token to its device, with the spec's errors.
/// `peer` (the connection's address) with the request's `X-Forwarded-For`
/// and `User-Agent` tell the userapi where the device was last seen.
pub async fn authenticate(
    users: &UsersHandle,
    headers: &http::HeaderMap,
    query: Option<&str>,
    peer: Option<std::net::IpAddr>,
) -> Result<pb::Device, ganglion_base::MatrixError> {
    let token =
        access_token(headers, query).ok_or_else(ganglion_base::MatrixError::missing_token)?;
    let header = |name: http::header::HeaderName, most: usize| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= most)
            .unwrap_or_default()
            .to_owned()
    };
    users
        .authenticate(pb::AuthenticateRequest {
            access_token: token,
            peer_ip: peer.map(|p| p.to_string()).unwrap_or_default(),
            forwarded_for: header(
                http::header::HeaderName::from_static("x-forwarded-for"),
                1024,
            ),
            user_agent: header(http::header::USER_AGENT, 512),
        })
        .await
        .map_err(ganglion_base::MatrixError::from)
}

/// Whether `localpart` uses only the characters the spec allows in a new
/// user ID's localpart (and is of a sane length).
pub fn valid_localpart(localpart: &str) -> bool {
    !localpart.is_empty()
        && localpart.len() <= 200
        && localpart.bytes().all(
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        )
}

/// A state whose handlers can tell who is asking: it holds the userapi.
pub trait Authenticates: Send + Sync {
    fn users(&self) -> &UsersHandle;
}

impl<T: Authenticates> Authenticates for std::sync::Arc<T> {
    fn users(&self) -> &UsersHandle {
        (**self).users()
    }
}

/// The device behind a request's access token, for a route only full
/// accounts may use: a guest's token gets 403 `M_GUEST_ACCESS_FORBIDDEN`,
/// a missing or unknown one 401. Taking this (or [`UserOrGuest`]) as a
/// handler's argument is how a route declares who may call it; it runs
/// before the body is read.
pub struct User(pub pb::Device);

/// The device behind a request's access token, for a route the spec opens
/// to guests too (its "Guest access" module, and what clients need beside
/// it: filters, capabilities, presence).
pub struct UserOrGuest(pub pb::Device);

/// Resolves the token of a request's `parts`.
async fn device_of<S: Authenticates>(
    parts: &http::request::Parts,
    state: &S,
) -> Result<pb::Device, ganglion_base::MatrixError> {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    authenticate(state.users(), &parts.headers, parts.uri.query(), peer).await
}

impl<S: Authenticates> axum::extract::FromRequestParts<S> for User {
    type Rejection = ganglion_base::MatrixError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let device = device_of(parts, state).await?;
        if device.is_guest {
            return Err(ganglion_base::MatrixError::guest_access_forbidden(
                "Guests may not do this",
            ));
        }
        Ok(User(device))
    }
}

impl<S: Authenticates> axum::extract::FromRequestParts<S> for UserOrGuest {
    type Rejection = ganglion_base::MatrixError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(UserOrGuest(device_of(parts, state).await?))
    }
}
