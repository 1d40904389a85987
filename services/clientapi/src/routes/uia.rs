//! User-Interactive Authentication: the 401 challenge naming the flows a
//! request may complete, the sessions that tie a client's retries to their
//! challenge, and the one stage that proves who the user is again,
//! `m.login.password`.
//!
//! Sessions are kept in the clientapi's database (its replicas share
//! them) for [`SESSION_LIFETIME`]. A session answers for the operation it
//! was given out for: the same method and path, for the same account. A
//! session this server did not give out (or that expired) is 400
//! `M_UNKNOWN`; one used for another operation is 403 `M_FORBIDDEN`. A
//! request may also complete a single-stage flow without a session.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ganglion_api::proto::userapi as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::json_response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ClientApi;
use crate::storage::UiaSession;

/// How long a session given out stays usable.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(3600);

/// A new UIA session ID (also a random name where one is needed).
pub(crate) fn random_session() -> String {
    ganglion_base::random::alphanumeric(24)
}

/// What a session is for: the request's method and path, whose account
/// (empty for registration), and what the request said that later ones
/// may leave out (registration's username).
pub(crate) struct Operation<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) user_id: &'a str,
    pub(crate) params: Value,
}

/// Gives out a session for `operation`.
pub(crate) async fn open(
    api: &ClientApi,
    operation: &Operation<'_>,
) -> Result<String, MatrixError> {
    let session = random_session();
    api.storage
        .insert_uia_session(
            &session,
            &UiaSession {
                method: operation.method.to_owned(),
                path: operation.path.to_owned(),
                user_id: operation.user_id.to_owned(),
                params: operation.params.to_string(),
                registered_user_id: None,
            },
            ganglion_base::clock::now_ms(),
        )
        .await
        .map_err(|e| ganglion_base::database::matrix_error("clientapi", &e))?;
    Ok(session)
}

/// The session a request names, if it is one given out for `operation`.
pub(crate) async fn resume(
    api: &ClientApi,
    session: &str,
    operation: &Operation<'_>,
) -> Result<UiaSession, MatrixError> {
    let found = api
        .storage
        .uia_session(session, ganglion_base::clock::ago_ms(SESSION_LIFETIME))
        .await
        .map_err(|e| ganglion_base::database::matrix_error("clientapi", &e))?
        .ok_or_else(|| {
            MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Unknown or expired authentication session",
            )
        })?;
    if found.method != operation.method
        || found.path != operation.path
        || found.user_id != operation.user_id
    {
        return Err(MatrixError::forbidden(
            "The operation changed during the authentication session",
        ));
    }
    Ok(found)
}

/// The 401 that asks for `stage` in `session`, with the error of a failed
/// attempt.
pub(crate) fn challenge(stage: &str, session: &str, failed: Option<MatrixError>) -> Response {
    let mut body = json!({
        "flows": [{ "stages": [stage] }],
        "params": {},
        "session": session,
    });
    if let Some(error) = failed {
        body["errcode"] = json!(error.errcode);
        body["error"] = json!(error.error);
        body["completed"] = json!([]);
    }
    json_response(StatusCode::UNAUTHORIZED, &body)
}

/// The challenge for `operation` in the session the request named (or a
/// new one), with why an attempt failed.
pub(crate) async fn challenge_in(
    api: &ClientApi,
    stage: &str,
    session: Option<&str>,
    operation: &Operation<'_>,
    failed: Option<MatrixError>,
) -> Response {
    let session = match session {
        Some(session) => session.to_owned(),
        None => match open(api, operation).await {
            Ok(session) => session,
            Err(error) => return error.into_response(),
        },
    };
    challenge(stage, &session, failed)
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
/// asking is `user_id`, for the operation `method` `path`: `Ok(())` when
/// it does, else the response to send (the challenge, the challenge with
/// why the attempt failed, or why its session does not hold).
pub(crate) async fn password(
    api: &ClientApi,
    user_id: &str,
    (method, path): (&str, &str),
    auth: Option<&Value>,
) -> Result<(), Response> {
    const STAGE: &str = "m.login.password";
    let operation = Operation {
        method,
        path,
        user_id,
        params: json!({}),
    };
    let Some(auth) = auth else {
        return Err(challenge_in(api, STAGE, None, &operation, None).await);
    };
    let Ok(auth) = serde_json::from_value::<PasswordAuth>(auth.clone()) else {
        return Err(challenge_in(
            api,
            STAGE,
            None,
            &operation,
            Some(MatrixError::bad_json(
                "auth is not an authentication object",
            )),
        )
        .await);
    };
    let session = auth.session.as_deref();
    if let Some(session) = session
        && let Err(error) = resume(api, session, &operation).await
    {
        return Err(error.into_response());
    }
    let fail = |error: MatrixError| challenge_in(api, STAGE, session, &operation, Some(error));
    if auth.kind.as_deref() != Some(STAGE) {
        return Err(match auth.kind {
            // Only the session: the client asks which stages are left.
            None => challenge_in(api, STAGE, session, &operation, None).await,
            Some(_) => {
                fail(MatrixError::new(
                    StatusCode::UNAUTHORIZED,
                    "M_UNRECOGNIZED",
                    "Unsupported auth stage",
                ))
                .await
            }
        });
    }
    let named = match (&auth.identifier, &auth.user) {
        (Some(identifier), _) if identifier.kind == "m.id.user" => identifier.user.clone(),
        (Some(_), _) => None,
        (None, user) => user.clone(),
    };
    let Some(named) = named else {
        return Err(fail(MatrixError::bad_json("auth names no user")).await);
    };
    let localpart = user_id
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .map(|(localpart, _)| localpart)
        .unwrap_or_default();
    let names_them = named == user_id || named.to_lowercase() == localpart;
    let Some(password) = auth.password.filter(|_| names_them) else {
        return Err(fail(MatrixError::forbidden("Invalid username or password")).await);
    };
    if let Err(limited) = api.rate_limits.password_checks_per_user.check(user_id) {
        return Err(limited.into_response());
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
            Err(fail(MatrixError::forbidden("Invalid username or password")).await)
        }
        Err(error) => Err(MatrixError::from(error).into_response()),
    }
}
