//! Tokens beyond the password login: `POST /login/get_token` (a login
//! token for another device, `m.login.token`, when the operator allows it)
//! and `POST /refresh` (new tokens for a refresh token).

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use ganglion_api::ApiError;
use ganglion_api::proto::userapi as pb;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, parse_json, respond};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ClientApi;

#[derive(Deserialize)]
struct GetToken {
    auth: Option<Value>,
}

/// `POST /v1/login/get_token` (User-Interactive Auth: the password
/// again): a token that logs the user in once on another device. 404
/// `M_UNRECOGNIZED` unless `client.login_via_existing_session` is on.
pub(crate) async fn get_token(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    uri: Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    if !api.login_via_existing_session {
        return Err(MatrixError::unrecognized());
    }
    if device.is_guest {
        return Err(MatrixError::guest_access_forbidden(
            "Guests cannot log other devices in",
        ));
    }
    let body: GetToken = parse_json(&body)?;
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
    let token = api
        .users
        .create_login_token(pb::CreateLoginTokenRequest {
            user_id: device.user_id.clone(),
            lifetime_ms: api.login_token_lifetime_ms,
        })
        .await
        .map_err(MatrixError::from)?;
    respond(json!({
        "login_token": token.token,
        "expires_in_ms": token.expires_in_ms,
    }))
}

#[derive(Deserialize)]
struct Refresh {
    refresh_token: String,
}

/// `POST /refresh`: a new access token and refresh token; 401
/// `M_UNKNOWN_TOKEN` for a refresh token that is not (or no longer) one.
pub(crate) async fn refresh(
    State(api): State<Arc<ClientApi>>,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: Refresh = parse_json(&body)?;
    let session = api
        .users
        .refresh(pb::RefreshRequest {
            refresh_token: body.refresh_token,
        })
        .await
        .map_err(|error| match error {
            ApiError::UnknownToken => MatrixError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "M_UNKNOWN_TOKEN",
                "Unknown or used refresh token",
            ),
            other => MatrixError::from(other),
        })?;
    respond(json!({
        "access_token": session.access_token,
        "refresh_token": session.refresh_token,
        "expires_in_ms": session.expires_in_ms,
    }))
}

/// A login or registration's answer: the session, with its refresh token
/// and expiry when it has them.
pub(crate) fn session_json(session: &pb::Session, server_name: &str) -> Value {
    let mut body = json!({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": server_name,
    });
    if !session.refresh_token.is_empty() {
        body["refresh_token"] = json!(session.refresh_token);
        body["expires_in_ms"] = json!(session.expires_in_ms);
    }
    body
}
