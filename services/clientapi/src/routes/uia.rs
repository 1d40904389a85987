//! User-Interactive Authentication: the 401 challenge naming the flows a
//! request may complete, and the one stage that proves who the user is
//! again, `m.login.password`. Every flow here has a single stage, so a
//! request that carries a completed stage is done; the session only ties
//! the client's retry to its challenge.

use axum::http::StatusCode;
use axum::response::Response;
use ganglion_api::proto::userapi as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::json_response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ClientApi;

/// A new UIA session ID (also a random name where one is needed).
pub(crate) fn random_session() -> String {
    ganglion_base::random::alphanumeric(24)
}

/// The 401 that asks for `stage`, with the error of a failed attempt.
pub(crate) fn challenge(
    stage: &str,
    session: Option<&str>,
    failed: Option<MatrixError>,
) -> Response {
    let mut body = json!({
        "flows": [{ "stages": [stage] }],
        "params": {},
        "session": session.map_or_else(random_session, str::to_owned),
    });
    if let Some(error) = failed {
        body["errcode"] = json!(error.errcode);
        body["error"] = json!(error.error);
        body["completed"] = json!([]);
    }
    json_response(StatusCode::UNAUTHORIZED, &body)
}

#[derive(Deserialize)]
struct PasswordAuth {
    #[serde(rename = "type")]
    kind: Option<String>,
    session: Option<String>,
    identifier: Option<Identifier>,
    /// The identifier of clients older than `identifier`.
    user: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
struct Identifier {
    #[serde(rename = "type")]
    kind: String,
    user: Option<String>,
}

/// Whether `auth` (a request's `auth`) proves by password that the one
/// asking is `user_id`: `Ok(())` when it does, else the response to send
/// (the challenge, or the challenge with why the attempt failed).
pub(crate) async fn password(
    api: &ClientApi,
    user_id: &str,
    auth: Option<&Value>,
) -> Result<(), Response> {
    const STAGE: &str = "m.login.password";
    let Some(auth) = auth else {
        return Err(challenge(STAGE, None, None));
    };
    let Ok(auth) = serde_json::from_value::<PasswordAuth>(auth.clone()) else {
        return Err(challenge(
            STAGE,
            None,
            Some(MatrixError::bad_json(
                "auth is not an authentication object",
            )),
        ));
    };
    let session = auth.session.as_deref();
    let fail = |error: MatrixError| challenge(STAGE, session, Some(error));
    if auth.kind.as_deref() != Some(STAGE) {
        return Err(match auth.kind {
            // Only the session: the client asks which stages are left.
            None => challenge(STAGE, session, None),
            Some(_) => fail(MatrixError::new(
                StatusCode::UNAUTHORIZED,
                "M_UNRECOGNIZED",
                "Unsupported auth stage",
            )),
        });
    }
    let named = match (&auth.identifier, &auth.user) {
        (Some(identifier), _) if identifier.kind == "m.id.user" => identifier.user.clone(),
        (Some(_), _) => None,
        (None, user) => user.clone(),
    };
    let Some(named) = named else {
        return Err(fail(MatrixError::bad_json("auth names no user")));
    };
    let localpart = user_id
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .map(|(localpart, _)| localpart)
        .unwrap_or_default();
    let names_them = named == user_id || named.to_lowercase() == localpart;
    let Some(password) = auth.password.filter(|_| names_them) else {
        return Err(fail(MatrixError::forbidden("Invalid username or password")));
    };
    if let Err(limited) = api.rate_limits.password_checks_per_user.check(user_id) {
        return Err(axum::response::IntoResponse::into_response(limited));
    }
    match api
        .users
        .check_password(pb::CheckPasswordRequest {
            localpart: localpart.to_owned(),
            password,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(ganglion_api::ApiError::Forbidden(_)) => {
            Err(fail(MatrixError::forbidden("Invalid username or password")))
        }
        Err(error) => Err(axum::response::IntoResponse::into_response(
            MatrixError::from(error),
        )),
    }
}
