//! The `/account/3pid` family, for a server without identity servers or
//! email and SMS sending: no account has third-party identifiers, none can
//! be added or bound, and the token requests that would start adding one
//! are refused with the spec's errors. `/capabilities` says
//! `m.3pid_changes` is off.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use ganglion_api::users::{User, UserOrGuest};
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixBody, MatrixResult, ok_json, parse_json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ClientApi;

fn denied() -> MatrixError {
    MatrixError::new(
        StatusCode::FORBIDDEN,
        "M_THREEPID_DENIED",
        "This server does not take third-party identifiers",
    )
}

/// `GET /account/3pid`: none.
pub(crate) async fn list(UserOrGuest(_device): UserOrGuest) -> MatrixResult {
    Ok(ok_json(json!({ "threepids": [] })))
}

/// `POST /account/3pid/{email,msisdn}/requestToken` and
/// `POST /register/{email,msisdn}/requestToken`: this server sends no
/// validation tokens (403 `M_THREEPID_DENIED`).
pub(crate) async fn request_token(MatrixBody(body): MatrixBody) -> MatrixResult {
    let _: Value = parse_json(&body)?;
    Err(denied())
}

/// `POST /account/password/{email,msisdn}/requestToken`: no account has
/// the identifier (400 `M_THREEPID_NOT_FOUND`).
pub(crate) async fn password_reset_token(MatrixBody(body): MatrixBody) -> MatrixResult {
    let _: Value = parse_json(&body)?;
    Err(MatrixError::new(
        StatusCode::BAD_REQUEST,
        "M_THREEPID_NOT_FOUND",
        "No account has this third-party identifier",
    ))
}

#[derive(Deserialize)]
struct Add {
    auth: Option<Value>,
    client_secret: Option<String>,
    sid: Option<String>,
}

/// `POST /account/3pid/add` (User-Interactive Auth): no validation session
/// exists here, so none can be added (400 `M_THREEPID_AUTH_FAILED`).
pub(crate) async fn add(
    State(api): State<Arc<ClientApi>>,
    User(device): User,
    uri: axum::http::Uri,
    MatrixBody(body): MatrixBody,
) -> MatrixResult {
    let body: Add = parse_json(&body)?;
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
    if body.client_secret.is_none() || body.sid.is_none() {
        return Err(MatrixError::missing_param(
            "client_secret and sid are required",
        ));
    }
    Err(MatrixError::new(
        StatusCode::BAD_REQUEST,
        "M_THREEPID_AUTH_FAILED",
        "No such validation session",
    ))
}

/// `POST /account/3pid/bind`: there is no identity server to bind with.
pub(crate) async fn bind(User(_device): User, MatrixBody(body): MatrixBody) -> MatrixResult {
    let _: Value = parse_json(&body)?;
    Err(denied())
}

#[derive(Deserialize)]
struct Remove {
    medium: String,
    address: String,
}

/// `POST /account/3pid/delete` and `/unbind`: nothing to remove; the
/// identity server was not asked (`no-support`).
pub(crate) async fn remove(User(_device): User, MatrixBody(body): MatrixBody) -> MatrixResult {
    let Remove { medium, address } = parse_json(&body)?;
    if medium.is_empty() || address.is_empty() {
        return Err(MatrixError::missing_param(
            "medium and address are required",
        ));
    }
    Ok(ok_json(json!({ "id_server_unbind_result": "no-support" })))
}
