//! Registration (User-Interactive Auth by `m.login.dummy`), login, logout,
//! whoami.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use ganglion_api::ApiError;
use ganglion_api::proto::userapi as pb;
use ganglion_api::users::{User, UserOrGuest};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixJson, MatrixResult, Ruma, parse_query, respond, respond_ruma};
use ganglion_base::limits;
use ruma::api::client::account::{get_username_availability, whoami};
use ruma::api::client::session::{get_login_types, logout, logout_all};
use serde::Deserialize;
use serde_json::json;

use super::uia::{challenge_in, random_session};
use crate::ClientApi;

/// The client's address, for rate limiting (through trusted proxies).
pub(crate) struct ClientIp(IpAddr);

impl FromRequestParts<Arc<ClientApi>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<ClientApi>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let forwarded_for = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        Ok(ClientIp(ganglion_base::http::client_address(
            peer,
            forwarded_for,
            &api.trusted_proxies,
        )))
    }
}

#[derive(Deserialize)]
pub(crate) struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    inhibit_login: Option<bool>,
    /// The client can refresh its access token, which then expires.
    refresh_token: Option<bool>,
    auth: Option<AuthData>,
    /// A guest's access token: the guest's account becomes a full one.
    guest_access_token: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct AuthData {
    #[serde(rename = "type")]
    kind: Option<String>,
    session: Option<String>,
    /// For `m.login.registration_token`.
    token: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RegisterQuery {
    kind: Option<String>,
}

fn invalid_username(message: &str) -> MatrixError {
    MatrixError::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", message)
}

pub(crate) async fn register(
    State(api): State<Arc<ClientApi>>,
    ClientIp(ip): ClientIp,
    uri: Uri,
    MatrixJson(body): MatrixJson<RegisterBody>,
) -> MatrixResult {
    api.rate_limits
        .registration_per_address
        .check(&ip.to_string())?;
    let query: RegisterQuery = parse_query(&uri)?;
    match query.kind.as_deref() {
        None | Some("user") => {}
        Some("guest") => return register_guest(&api, body).await,
        Some(_) => return Err(MatrixError::invalid_param("kind must be user or guest")),
    }
    if !api.registration_enabled {
        return Err(MatrixError::forbidden("Registration is disabled"));
    }
    // The session the request continues, if it names one: a retry of a
    // registration that went through answers with the same user, and
    // what the first request said (its password as a hash) stands where a
    // later one is silent.
    let mut operation = super::uia::Operation {
        method: "POST",
        path: uri.path(),
        user_id: "",
        params: json!({
            "username": body.username,
            "device_id": body.device_id,
            "initial_device_display_name": body.initial_device_display_name,
            "inhibit_login": body.inhibit_login,
            "refresh_token": body.refresh_token,
        }),
    };
    let session = body.auth.as_ref().and_then(|a| a.session.clone());
    let mut body = body;
    let mut password_hash = None;
    if let Some(session) = &session {
        let found = super::uia::resume(&api, session, &operation).await?;
        let first: serde_json::Value = serde_json::from_str(&found.params).unwrap_or_default();
        let remembered = |key: &str| first[key].as_str().map(str::to_owned);
        body.username = body.username.or_else(|| remembered("username"));
        body.device_id = body.device_id.or_else(|| remembered("device_id"));
        body.initial_device_display_name = body
            .initial_device_display_name
            .or_else(|| remembered("initial_device_display_name"));
        body.inhibit_login = body.inhibit_login.or(first["inhibit_login"].as_bool());
        body.refresh_token = body.refresh_token.or(first["refresh_token"].as_bool());
        password_hash = remembered("password_hash");
        if let Some(user_id) = found.registered_user_id {
            return registered_again(&api, user_id, body).await;
        }
    }
    let session = session.as_deref();
    // A session given out now remembers the password, as a hash.
    if session.is_none()
        && let Some(password) = body.password.clone().filter(|p| !p.is_empty())
        && body.auth.as_ref().and_then(|a| a.kind.as_deref()).is_none()
    {
        let hash = api
            .users
            .hash_password(pb::HashPasswordRequest { password })
            .await
            .map_err(MatrixError::from)?
            .hash;
        operation.params["password_hash"] = json!(hash);
    }
    let inhibit_login = body.inhibit_login.unwrap_or(false);
    // A guest upgrading keeps their user ID: the username, if given, must
    // be their localpart.
    let guest = match body.guest_access_token.as_deref() {
        Some(token) => {
            let device = api
                .users
                .authenticate(pb::AuthenticateRequest {
                    access_token: token.to_owned(),
                    ..Default::default()
                })
                .await
                .map_err(MatrixError::from)?;
            if !device.is_guest {
                return Err(MatrixError::forbidden("Not a guest's access token"));
            }
            let localpart = device
                .user_id
                .strip_prefix('@')
                .and_then(|u| u.split_once(':'))
                .map(|(local, _)| local.to_owned())
                .unwrap_or_default();
            if body
                .username
                .as_deref()
                .is_some_and(|name| name.to_lowercase() != localpart)
            {
                return Err(invalid_username("A guest upgrading keeps their username"));
            }
            Some(localpart)
        }
        None => None,
    };
    let localpart = match (&guest, body.username.as_deref()) {
        (Some(localpart), _) => localpart.clone(),
        (None, Some(name)) => {
            let name = name.to_lowercase();
            if !ganglion_api::users::valid_localpart(&name) {
                return Err(invalid_username("The desired username is not valid"));
            }
            name
        }
        (None, None) => format!("u{}", random_session().to_lowercase()),
    };
    // Check the name before asking for authentication, as clients expect.
    if guest.is_none() {
        let available = api
            .users
            .localpart_available(pb::LocalpartAvailableRequest {
                localpart: localpart.clone(),
            })
            .await
            .map_err(MatrixError::from)?;
        if !available.available {
            return Err(ApiError::UserInUse.into());
        }
    }
    // One flow: a registration token where the operator asks for one,
    // else the dummy stage.
    let stage = if api.registration_requires_token {
        "m.login.registration_token"
    } else {
        "m.login.dummy"
    };
    let mut registration_token = None;
    match body.auth.as_ref().and_then(|a| a.kind.as_deref()) {
        Some(kind) if kind == stage => {
            if api.registration_requires_token {
                let token = body.auth.as_ref().and_then(|a| a.token.clone());
                let invalid = || {
                    challenge_in(
                        &api,
                        stage,
                        session,
                        &operation,
                        Some(MatrixError::new(
                            StatusCode::UNAUTHORIZED,
                            "M_FORBIDDEN",
                            "Invalid registration token",
                        )),
                    )
                };
                let Some(token) = token else {
                    return Ok(invalid().await);
                };
                let valid = api
                    .users
                    .registration_token_valid(pb::RegistrationTokenRequest {
                        token: token.clone(),
                    })
                    .await
                    .map_err(MatrixError::from)?
                    .valid;
                if !valid {
                    return Ok(invalid().await);
                }
                registration_token = Some(token);
            }
        }
        // The spec's 401 for a stage not offered: the flows again, with why.
        Some(_) => {
            return Ok(challenge_in(
                &api,
                stage,
                session,
                &operation,
                Some(MatrixError::new(
                    StatusCode::UNAUTHORIZED,
                    "M_UNRECOGNIZED",
                    "Unsupported auth stage",
                )),
            )
            .await);
        }
        None => return Ok(challenge_in(&api, stage, session, &operation, None).await),
    }
    if let Some(device_id) = &body.device_id {
        limits::opaque_id("device_id", device_id)?;
    }
    let password = body.password.unwrap_or_default();
    if password.is_empty() && password_hash.is_none() {
        return Err(MatrixError::missing_param("password is required"));
    }
    let session_id = session.map(str::to_owned);
    let registered = api
        .users
        .register(pb::RegisterRequest {
            localpart,
            password_hash: password.is_empty().then_some(password_hash).flatten(),
            password,
            device_id: body.device_id,
            initial_device_display_name: body.initial_device_display_name,
            inhibit_login,
            admin: false,
            guest: false,
            registration_token,
            upgrade_guest: guest.is_some(),
            refresh_token: body.refresh_token.unwrap_or(false),
        })
        .await
        .map_err(MatrixError::from)?;
    if let Some(uia_session) = session_id
        && let Err(error) = api
            .storage
            .set_uia_registered(&uia_session, &registered.user_id)
            .await
    {
        tracing::warn!(%error, "a registration's session does not remember it");
    }
    if inhibit_login {
        return respond(json!({ "user_id": registered.user_id, "home_server": api.server_name }));
    }
    respond(super::tokens::session_json(&registered, &api.server_name))
}

/// A retried registration that went through in its session: the same
/// user, on a new device (unless `inhibit_login`); the session proves who
/// they are, so no password is needed again.
async fn registered_again(api: &ClientApi, user_id: String, body: RegisterBody) -> MatrixResult {
    if body.inhibit_login.unwrap_or(false) {
        return respond(json!({ "user_id": user_id, "home_server": api.server_name }));
    }
    let localpart = user_id
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .map(|(localpart, _)| localpart.to_owned())
        .unwrap_or_default();
    let session = api
        .users
        .new_session(pb::NewSessionRequest {
            localpart,
            device_id: body.device_id,
            initial_device_display_name: body.initial_device_display_name,
            refresh_token: body.refresh_token.unwrap_or(false),
        })
        .await
        .map_err(MatrixError::from)?;
    respond(super::tokens::session_json(&session, &api.server_name))
}

/// `POST /register?kind=guest`: an account with a generated name and no
/// password, which can do only what the spec lets guests do.
async fn register_guest(api: &ClientApi, body: RegisterBody) -> MatrixResult {
    if !api.guest_access_enabled {
        return Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            "Guest access is not enabled",
        ));
    }
    let session = api
        .users
        .register(pb::RegisterRequest {
            localpart: format!("guest-{}", random_session().to_lowercase()),
            password: String::new(),
            device_id: body.device_id,
            initial_device_display_name: body.initial_device_display_name,
            inhibit_login: false,
            admin: false,
            guest: true,
            registration_token: None,
            upgrade_guest: false,
            refresh_token: body.refresh_token.unwrap_or(false),
            password_hash: None,
        })
        .await
        .map_err(MatrixError::from)?;
    respond(super::tokens::session_json(&session, &api.server_name))
}

#[derive(Deserialize)]
pub(crate) struct AvailableQuery {
    username: Option<String>,
}

pub(crate) async fn available(
    State(api): State<Arc<ClientApi>>,
    ClientIp(ip): ClientIp,
    uri: Uri,
    request: Result<Ruma<get_username_availability::v3::Request>, MatrixError>,
) -> MatrixResult {
    api.rate_limits
        .registration_per_address
        .check(&ip.to_string())?;
    let request = match request {
        Ok(Ruma(request)) => request,
        // A username left out is the spec's M_MISSING_PARAM (ruma's query
        // parsing would answer M_INVALID_PARAM).
        Err(error) => {
            parse_query::<AvailableQuery>(&uri)?
                .username
                .ok_or_else(|| MatrixError::missing_param("username is required"))?;
            return Err(error);
        }
    };
    let username = request.username.to_lowercase();
    if !ganglion_api::users::valid_localpart(&username) {
        return Err(invalid_username("The desired username is not valid"));
    }
    let available = api
        .users
        .localpart_available(pb::LocalpartAvailableRequest {
            localpart: username,
        })
        .await
        .map_err(MatrixError::from)?;
    if !available.available {
        return Err(ApiError::UserInUse.into());
    }
    respond_ruma(get_username_availability::v3::Response::new(true))
}

/// The password, and login tokens when they are allowed (`m.login.token`,
/// which `POST /login/get_token` gives out).
pub(crate) async fn login_flows(
    State(api): State<Arc<ClientApi>>,
    Ruma(_): Ruma<get_login_types::v3::Request>,
) -> MatrixResult {
    use get_login_types::v3::{LoginType, TokenLoginType};
    let mut flows = vec![LoginType::Password(Default::default())];
    if api.login_via_existing_session {
        let mut token = TokenLoginType::new();
        token.get_login_token = true;
        flows.push(LoginType::Token(token));
    }
    respond_ruma(get_login_types::v3::Response::new(flows))
}

#[derive(Deserialize)]
pub(crate) struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<Identifier>,
    user: Option<String>,
    password: Option<String>,
    /// For `m.login.token`.
    token: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    /// The client can refresh its access token, which then expires.
    #[serde(default)]
    refresh_token: bool,
}

#[derive(Deserialize)]
pub(crate) struct Identifier {
    #[serde(rename = "type")]
    kind: String,
    user: Option<String>,
}

pub(crate) async fn login(
    State(api): State<Arc<ClientApi>>,
    ClientIp(ip): ClientIp,
    MatrixJson(body): MatrixJson<LoginBody>,
) -> MatrixResult {
    api.rate_limits.login_per_address.check(&ip.to_string())?;
    if let Some(device_id) = &body.device_id {
        limits::opaque_id("device_id", device_id)?;
    }
    if body.kind == "m.login.token" && api.login_via_existing_session {
        let token = body
            .token
            .ok_or_else(|| MatrixError::bad_json("token is required"))?;
        let session = api
            .users
            .login_with_token(pb::LoginWithTokenRequest {
                token,
                device_id: body.device_id,
                initial_device_display_name: body.initial_device_display_name,
                refresh_token: body.refresh_token,
            })
            .await
            .map_err(MatrixError::from)?;
        return respond(super::tokens::session_json(&session, &api.server_name));
    }
    if body.kind != "m.login.password" {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Unknown login type",
        ));
    }
    let user = match (&body.identifier, &body.user) {
        (Some(identifier), _) if identifier.kind == "m.id.user" => identifier.user.clone(),
        (Some(_), _) => {
            return Err(MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Unsupported identifier type",
            ));
        }
        (None, user) => user.clone(),
    }
    .ok_or_else(|| MatrixError::bad_json("user is required"))?;
    let password = body
        .password
        .ok_or_else(|| MatrixError::bad_json("password is required"))?;
    // A localpart holds no colon, so the server name is everything after
    // the first (it may carry a port).
    let localpart = match user.strip_prefix('@') {
        Some(rest) => match rest.split_once(':') {
            Some((localpart, server)) if server == api.server_name => localpart.to_lowercase(),
            _ => return Err(MatrixError::forbidden("Invalid username or password")),
        },
        None => user.to_lowercase(),
    };
    // Per account, whatever address the attempts come from; failures count
    // on their own, so guessing a password is slow even from many addresses.
    api.rate_limits.login_per_account.check(&localpart)?;
    api.rate_limits.failed_logins_per_account.peek(&localpart)?;
    let session = match api
        .users
        .login_with_password(pb::LoginRequest {
            localpart: localpart.clone(),
            password,
            device_id: body.device_id,
            initial_device_display_name: body.initial_device_display_name,
            refresh_token: body.refresh_token,
        })
        .await
    {
        Ok(session) => session,
        Err(error) => {
            if matches!(error, ApiError::Forbidden(_)) {
                let _ = api.rate_limits.failed_logins_per_account.check(&localpart);
            }
            return Err(error.into());
        }
    };
    respond(super::tokens::session_json(&session, &api.server_name))
}

pub(crate) async fn logout(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
    uri: Uri,
    Ruma(_): Ruma<logout::v3::Request>,
) -> MatrixResult {
    // Logging out is the token's last lookup: an unknown token fails here.
    let token = ganglion_api::users::access_token(&headers, uri.query())
        .ok_or_else(MatrixError::missing_token)?;
    let removed = api
        .users
        .logout(pb::LogoutRequest {
            access_token: token,
        })
        .await
        .map_err(MatrixError::from)?;
    forget_device_keys(&api, &removed.user_id, vec![removed.device_id]).await;
    respond_ruma(logout::v3::Response::new())
}

/// A logged-out device's end-to-end keys go with it, and the users who
/// share a room with its owner hear of the change. The device is already
/// gone, so a keyserver that cannot be reached is logged, not answered.
pub(crate) async fn forget_device_keys(api: &ClientApi, user_id: &str, device_ids: Vec<String>) {
    let all_devices = device_ids.is_empty();
    let request = ganglion_api::proto::keyserver::DeleteDevicesRequest {
        user_id: user_id.to_owned(),
        device_ids,
        all_devices,
    };
    if let Err(error) = api.keys.delete_devices(request).await {
        tracing::warn!(
            ?error,
            user_id,
            "keyserver: logged-out devices keep their keys"
        );
    }
}

pub(crate) async fn logout_all(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    Ruma(_): Ruma<logout_all::v3::Request>,
) -> MatrixResult {
    api.users
        .logout_all(pb::LogoutAllRequest {
            user_id: device.user_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    forget_device_keys(&api, &device.user_id, Vec::new()).await;
    respond_ruma(logout_all::v3::Response::new())
}

pub(crate) async fn whoami(
    UserOrGuest(device): UserOrGuest,
    Ruma(_): Ruma<whoami::v3::Request>,
) -> MatrixResult {
    let user_id = ruma::OwnedUserId::try_from(device.user_id)
        .map_err(|_| MatrixError::unknown("the device's user ID is invalid"))?;
    let mut response = whoami::v3::Response::new(user_id, device.is_guest);
    response.device_id = Some(device.device_id.into());
    respond_ruma(response)
}

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// `GET /v1/register/m.login.registration_token/validity`: whether a
/// registration token may be used now (rate limited as registration is).
pub(crate) async fn registration_token_validity(
    State(api): State<Arc<ClientApi>>,
    ClientIp(ip): ClientIp,
    uri: Uri,
) -> MatrixResult {
    api.rate_limits
        .registration_per_address
        .check(&ip.to_string())?;
    if !api.registration_enabled {
        return Err(MatrixError::forbidden("Registration is disabled"));
    }
    let query: TokenQuery = parse_query(&uri)?;
    let token = query
        .token
        .ok_or_else(|| MatrixError::missing_param("token is required"))?;
    let valid = api
        .users
        .registration_token_valid(pb::RegistrationTokenRequest { token })
        .await
        .map_err(MatrixError::from)?
        .valid;
    respond(json!({ "valid": valid }))
}

#[derive(Deserialize)]
struct PasswordChange {
    new_password: Option<String>,
    logout_devices: Option<bool>,
    auth: Option<serde_json::Value>,
}

/// `POST /account/password` (User-Interactive Auth): the new password;
/// unless `logout_devices` is false, every other device is logged out
/// (its keys removed, as on logout). The device asking stays.
pub(crate) async fn change_password(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    uri: Uri,
    ganglion_base::http::MatrixBody(body): ganglion_base::http::MatrixBody,
) -> MatrixResult {
    let body: PasswordChange = ganglion_base::http::parse_json(&body)?;
    if let Err(challenge) = super::uia::password(
        &api,
        &device.user_id,
        ("POST", uri.path()),
        body.auth.as_ref(),
    )
    .await
    {
        return Ok(challenge);
    }
    let new_password = body
        .new_password
        .filter(|p| !p.is_empty())
        .ok_or_else(|| MatrixError::missing_param("new_password is required"))?;
    let changed = api
        .users
        .set_password(pb::SetPasswordRequest {
            user_id: device.user_id.clone(),
            new_password,
            logout_devices: body.logout_devices.unwrap_or(true),
            keep_device_id: device.device_id.clone(),
        })
        .await
        .map_err(MatrixError::from)?;
    if !changed.logged_out.is_empty() {
        forget_device_keys(&api, &device.user_id, changed.logged_out).await;
    }
    respond(serde_json::json!({}))
}

#[derive(Deserialize)]
struct Deactivation {
    auth: Option<serde_json::Value>,
    #[serde(default)]
    erase: bool,
}

/// `POST /account/deactivate` (User-Interactive Auth): the account is
/// closed for good (its password and devices go, their keys with them,
/// logins are refused with 403 `M_USER_DEACTIVATED`, the user ID stays
/// taken), the user leaves every room (rejecting invites, withdrawing
/// knocks), and with `erase` the profile is cleared. No identity server was asked to unbind anything.
pub(crate) async fn deactivate(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    uri: Uri,
    ganglion_base::http::MatrixBody(body): ganglion_base::http::MatrixBody,
) -> MatrixResult {
    let body: Deactivation = ganglion_base::http::parse_json(&body)?;
    if let Err(challenge) = super::uia::password(
        &api,
        &device.user_id,
        ("POST", uri.path()),
        body.auth.as_ref(),
    )
    .await
    {
        return Ok(challenge);
    }
    // Every room it is in, has been invited to or knocked on: left,
    // invites rejected, knocks withdrawn.
    let rooms = api
        .roomserver
        .query_joined_rooms(ganglion_api::proto::roomserver::QueryJoinedRoomsRequest {
            user_id: device.user_id.clone(),
            memberships: ["join", "invite", "knock"].map(str::to_owned).to_vec(),
        })
        .await
        .map_err(MatrixError::from)?
        .room_ids;
    api.users
        .deactivate(pb::DeactivateRequest {
            user_id: device.user_id.clone(),
            erase: body.erase,
        })
        .await
        .map_err(MatrixError::from)?;
    forget_device_keys(&api, &device.user_id, Vec::new()).await;
    for room_id in rooms {
        if let Err(error) =
            super::rooms::own_membership(&api, &device, None, &room_id, "leave").await
        {
            tracing::warn!(room_id, ?error, "a deactivated user did not leave a room");
        }
    }
    respond(json!({ "id_server_unbind_result": "no-support" }))
}
