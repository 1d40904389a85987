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

/// The request's `X-Matrix` authorization, or 401 `M_UNAUTHORIZED`.
fn x_matrix_of(headers: &axum::http::HeaderMap) -> Result<XMatrix, MatrixError> {
    XMatrix::extract_from_http_headers(headers)
        .map_err(|e| unauthorized(format!("no valid X-Matrix authorization: {e}")))
}

async fn verified(service: &FederationService, request: Request) -> Result<Request, MatrixError> {
    let (mut parts, body) = request.into_parts();
    // The header first: a request without one is not worth reading.
    x_matrix_of(&parts.headers)?;
    let bytes = axum::body::to_bytes(body, service.max_body_bytes)
        .await
        .map_err(|_| MatrixError::too_large("Request body too large"))?;
    let origin = origin_of(service, &parts.method, &parts.uri, &parts.headers, &bytes).await?;
    tracing::Span::current().record("origin", origin.as_str());
    parts.extensions.insert(Origin(origin));
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The server whose `X-Matrix` signature, for this server as destination,
/// covers this method, URI and body; else 401 `M_UNAUTHORIZED`. (Also what
/// other services ask through `authenticate_request`.)
pub(crate) async fn origin_of(
    service: &FederationService,
    method: &http::Method,
    uri: &http::Uri,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<String, MatrixError> {
    let header = x_matrix_of(headers)?;
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
        .method(method.clone())
        .uri(uri.clone())
        .body(body)
        .map_err(|_| unauthorized("malformed request"))?;
    header
        .verify_http_request(&signed, own, &map)
        .map_err(|e| unauthorized(format!("bad signature: {e}")))?;
    Ok(origin)
}

/// The `Authorization` header is the first thing a stranger's request
/// reaches: any value gets a parsed header or 401, never a panic, and a
/// well-formed header reads back as written.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn header(value: &[u8]) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        if let Ok(value) = axum::http::HeaderValue::from_bytes(value) {
            headers.insert(axum::http::header::AUTHORIZATION, value);
        }
        headers
    }

    proptest! {
        #[test]
        fn any_authorization_is_parsed_or_refused_with_401(
            value in prop_oneof![
                any::<Vec<u8>>(),
                "X-Matrix [ -~]{0,200}".prop_map(String::into_bytes),
                "X-Matrix (origin|destination|key|sig)=(\"[^\"]{0,30}\"|[a-z:.0-9]{0,30})(,[a-z]{1,11}=\"?[ -~]{0,20}\"?){0,6}"
                    .prop_map(String::into_bytes),
            ]
        ) {
            if let Err(error) = x_matrix_of(&header(&value)) {
                prop_assert_eq!(error.status, StatusCode::UNAUTHORIZED);
                prop_assert_eq!(error.errcode, "M_UNAUTHORIZED");
            }
        }

        #[test]
        fn a_well_formed_header_reads_back(
            origin in "[a-z]{1,10}\\.[a-z]{2,5}(:[1-9][0-9]{0,3})?",
            destination in "[a-z]{1,10}\\.[a-z]{2,5}",
            version in "[a-zA-Z0-9_]{1,10}",
            sig in proptest::collection::vec(any::<u8>(), 64),
        ) {
            let value = format!(
                "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"ed25519:{version}\",sig=\"{}\"",
                Base64::<ruma::serde::base64::Standard, _>::new(sig.clone()).encode()
            );
            let parsed = x_matrix_of(&header(value.as_bytes())).expect("well-formed");
            prop_assert_eq!(parsed.origin.as_str(), origin.as_str());
            prop_assert_eq!(parsed.destination.as_ref().map(|d| d.as_str()), Some(destination.as_str()));
            prop_assert_eq!(parsed.key.to_string(), format!("ed25519:{version}"));
            prop_assert_eq!(parsed.sig.as_bytes(), sig.as_slice());
        }
    }
}
