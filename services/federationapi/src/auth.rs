//! Inbound request authentication: every `/_matrix/federation` request but
//! `/version` carries an `X-Matrix` signature by its origin, for this
//! server as destination, over its method, URI and body; the origin's key
//! is fetched as needed. Anything else is 401 `M_UNAUTHORIZED`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ganglion_base::MatrixError;
use ruma::api::federation::authentication::XMatrix;
use ruma::serde::Base64;

use crate::FederationService;
use crate::key_ring::now_ms;

/// The server that signed an inbound request.
#[derive(Debug, Clone)]
pub(crate) struct Origin(pub(crate) String);

fn unauthorized(error: impl Into<String>) -> MatrixError {
    MatrixError::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", error)
}

/// Verifies the request's signature, then passes it on with its [`Origin`].
pub(crate) async fn authenticate(
    State(service): State<Arc<FederationService>>,
    request: Request,
    next: Next,
) -> Response {
    match verified(&service, request).await {
        Ok(request) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

async fn verified(service: &FederationService, request: Request) -> Result<Request, MatrixError> {
    let (mut parts, body) = request.into_parts();
    // The header first: a request without one is not worth reading.
    let header = XMatrix::extract_from_http_headers(&parts.headers)
        .map_err(|e| unauthorized(format!("no valid X-Matrix authorization: {e}")))?;
    let bytes = axum::body::to_bytes(body, service.max_body_bytes)
        .await
        .map_err(|_| MatrixError::too_large("Request body too large"))?;
    let own = service.client.server_name();
    if header.destination.as_deref().is_some_and(|d| d != own) {
        return Err(unauthorized("the request is for another server"));
    }
    let origin = header.origin.to_string();
    let key_id = header.key.to_string();
    let key = service
        .key_ring
        .key(&origin, &key_id, now_ms())
        .await
        .map_err(|e| unauthorized(format!("the origin's key: {e}")))?;
    let key = Base64::parse(&key).map_err(|_| unauthorized("the origin's key is not base64"))?;
    let map = BTreeMap::from([(origin.clone(), BTreeMap::from([(key_id, key)]))]);
    let signed = http::Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .body(bytes.as_ref())
        .map_err(|_| unauthorized("malformed request"))?;
    header
        .verify_http_request(&signed, own, &map)
        .map_err(|e| unauthorized(format!("bad signature: {e}")))?;
    tracing::Span::current().record("origin", origin.as_str());
    parts.extensions.insert(Origin(origin));
    Ok(Request::from_parts(parts, Body::from(bytes)))
}
