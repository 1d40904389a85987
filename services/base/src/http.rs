//! HTTP plumbing shared by every service that serves HTTP: the Matrix JSON
//! body extractor (`M_NOT_JSON` vs `M_BAD_JSON`), unknown-endpoint handling,
//! body limits, request metrics and spans, and serving with a shutdown future.

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use crate::matrix_error::MatrixError;
use crate::metrics;

/// A JSON request body. Not JSON → 400 `M_NOT_JSON`; JSON of the wrong shape
/// → 400 `M_BAD_JSON`; an empty body is read as `{}` (several endpoints, such
/// as `/logout`, allow it).
pub struct MatrixJson<T>(pub T);

impl<T, S> FromRequest<S> for MatrixJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let MatrixBody(bytes) = MatrixBody::from_request(req, state).await?;
        parse_json(&bytes).map(MatrixJson)
    }
}

/// The configured largest request body, set by [`matrix_router`].
#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// How much of an oversized body is still read (and discarded) so the client
/// gets its 413 instead of a connection reset while it is still sending.
const DRAIN_FACTOR: usize = 16;

/// A raw request body of at most the configured size, else 413 `M_TOO_LARGE`.
pub struct MatrixBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for MatrixBody {
    type Rejection = MatrixError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        use futures::StreamExt;
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(1024 * 1024);
        let mut stream = req.into_body().into_data_stream();
        let mut body = Vec::new();
        let mut total = 0_usize;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|_| MatrixError::not_json("Could not read the request body"))?;
            total += chunk.len();
            if total > limit.saturating_mul(DRAIN_FACTOR) {
                break;
            }
            if total <= limit {
                body.extend_from_slice(&chunk);
            }
        }
        if total > limit {
            return Err(MatrixError::too_large("Request body too large"));
        }
        Ok(MatrixBody(Bytes::from(body)))
    }
}

/// A request as ruma's type for its endpoint: path arguments, query and
/// body parsed and checked by the spec's own definitions. Bad input is the
/// spec's error: a body that is not JSON `M_NOT_JSON`, JSON of the wrong
/// shape `M_BAD_JSON`, an invalid identifier or query `M_INVALID_PARAM`;
/// a body over the listener's limit `M_TOO_LARGE`.
pub struct Ruma<T>(pub T);

impl<S: Send + Sync, T: ruma::api::IncomingRequest> FromRequest<S> for Ruma<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Self::from_request_checked(req, state, |_| Ok(())).await
    }
}

impl<T: ruma::api::IncomingRequest> Ruma<T> {
    /// The extractor, with `check` run on the body's JSON before ruma
    /// parses it, for a route whose own rules answer some bad input with
    /// another error than ruma's parsing would. As with [`parse_json`], a
    /// body whose strings hold U+0000 is 400 `M_BAD_JSON`.
    pub async fn from_request_checked<S: Send + Sync>(
        req: Request,
        state: &S,
        check: impl FnOnce(&serde_json::Value) -> Result<(), MatrixError>,
    ) -> Result<Self, MatrixError> {
        use ruma::api::IncomingRequestExt;
        let (mut parts, body) = req.into_parts();
        let params = axum::extract::RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| MatrixError::invalid_param("malformed path"))?;
        let args: Vec<String> = params.iter().map(|(_, value)| value.to_owned()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let MatrixBody(bytes) =
            MatrixBody::from_request(Request::from_parts(parts.clone(), body), state).await?;
        // A request without a body is one without fields in it.
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace)
            && parts.method != axum::http::Method::GET
        {
            b"{}"
        } else {
            &bytes
        };
        // The whole body of a POST or PUT is JSON, as the spec requires of
        // them and `parse_json` says (ruma's hand-written parsers of some
        // endpoints would let trailing text pass, and endpoints without
        // body fields would not look).
        let must_be_json = matches!(
            parts.method,
            axum::http::Method::POST | axum::http::Method::PUT
        );
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(value) => {
                if crate::limits::json_holds_nul(&value) {
                    return Err(MatrixError::bad_json("Strings may not hold U+0000"));
                }
                check(&value)?;
            }
            Err(e) if must_be_json => {
                return Err(MatrixError::not_json(format!("Content not JSON: {e}")));
            }
            Err(_) => {}
        }
        let request = axum::http::Request::from_parts(parts, bytes);
        T::try_from_http_request(request, &args)
            .map(Ruma)
            .map_err(ruma_request_error)
    }
}

fn ruma_request_error(error: ruma::api::error::FromHttpRequestError) -> MatrixError {
    use ruma::api::error::{DeserializationError, FromHttpRequestError};
    match error {
        FromHttpRequestError::Deserialization(DeserializationError::Json(json))
            if json.is_syntax() || json.is_eof() =>
        {
            MatrixError::not_json(json.to_string())
        }
        FromHttpRequestError::Deserialization(DeserializationError::Json(json)) => {
            MatrixError::bad_json(json.to_string())
        }
        FromHttpRequestError::Deserialization(DeserializationError::Utf8(e)) => {
            MatrixError::not_json(e.to_string())
        }
        // One rule for identifiers over the spec's 255 bytes, as everywhere.
        FromHttpRequestError::Deserialization(DeserializationError::Ident(
            ruma::IdParseError::MaximumLengthExceeded,
        )) => MatrixError::too_large("an identifier is longer than 255 bytes"),
        FromHttpRequestError::MethodMismatch { .. } => MatrixError::method_not_allowed(),
        other => MatrixError::invalid_param(other.to_string()),
    }
}

/// Answers with ruma's response type for the endpoint.
pub fn respond_ruma<R: ruma::api::OutgoingResponse>(response: R) -> MatrixResult {
    use ruma::api::OutgoingResponseExt;
    let response = response
        .try_into_http_response::<Vec<u8>>()
        .map_err(|e| MatrixError::unknown(format!("building the response: {e}")))?;
    Ok(response.map(Body::from).into_response())
}

/// Parses a request's query string; a malformed one is 400 `M_INVALID_PARAM`.
pub fn parse_query<T: DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, MatrixError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| MatrixError::invalid_param(e.body_text()))
}

/// Every value of a query parameter that may repeat (`via`, `ver`),
/// percent-decoded; values that do not decode to UTF-8 are left out.
pub fn query_values(uri: &axum::http::Uri, key: &str) -> Vec<String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == key)
        .filter_map(|(_, value)| percent_decode(value))
        .collect()
}

/// Percent-encodes a path segment or query value (everything but the
/// unreserved characters).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    String::from_utf8(percent_decode_bytes(text)?).ok()
}

/// The bytes a percent-encoded text stands for; `None` for a malformed escape.
fn percent_decode_bytes(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Parses a request body with the spec's two distinct errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MatrixError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))?;
    if crate::limits::json_holds_nul(&value) {
        return Err(MatrixError::bad_json("Strings may not hold U+0000"));
    }
    serde_json::from_value(value)
        .map_err(|e| MatrixError::bad_json(format!("Invalid request: {e}")))
}

/// Turns a router into a Matrix one: unknown paths → 404 `M_UNRECOGNIZED`,
/// wrong method → 405 `M_UNRECOGNIZED`, bodies over `max_body_bytes` → 413
/// `M_TOO_LARGE`, CORS for web clients, one span and metrics per request.
pub fn matrix_router(router: Router, service: &'static str, max_body_bytes: usize) -> Router {
    router
        .method_not_allowed_fallback(|| async { MatrixError::method_not_allowed() })
        .fallback(|| async { MatrixError::unrecognized() })
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(BodyLimit(max_body_bytes)))
        .layer(axum::middleware::from_fn(move |req, next| {
            observe(service, req, next)
        }))
        .layer(tower_http::cors::CorsLayer::very_permissive())
        // Outermost, so that answers given before the router (CORS
        // preflights) find the body read too.
        .layer(axum::middleware::from_fn(move |req, next| {
            read_declared_body(max_body_bytes, req, next)
        }))
}

/// As [`matrix_router`], for routes that read their bodies as streams
/// (media uploads of any size): no body is read ahead and no limit applies
/// here; each handler enforces its own as the bytes arrive.
pub fn streaming_router(router: Router, service: &'static str) -> Router {
    router
        .method_not_allowed_fallback(|| async { MatrixError::method_not_allowed() })
        .fallback(|| async { MatrixError::unrecognized() })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(move |req, next| {
            observe(service, req, next)
        }))
        .layer(tower_http::cors::CorsLayer::very_permissive())
        .layer(axum::middleware::from_fn(drain_unread_body))
}

/// How much of a request's body is read and dropped after an answer given
/// before the handler read it all ([`drain_unread_body`]).
pub const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

type DataStream = axum::body::BodyDataStream;

/// Middleware for routes that stream bodies: whatever the handler left
/// unread of the request's body (an upload refused for its size, its token,
/// its method) is read and dropped, up to [`DRAIN_LIMIT`], before the
/// answer goes out. A server that answers and closes with the client's
/// bytes still unread resets the connection, and the client (or the
/// gateway, on behalf of one) sees an error instead of the answer.
pub async fn drain_unread_body(req: Request, next: Next) -> Response {
    use futures::StreamExt;
    let (parts, body) = req.into_parts();
    let source: std::sync::Arc<tokio::sync::Mutex<DataStream>> =
        std::sync::Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let handed = futures::stream::unfold(source.clone(), |source| async move {
        let next = source.lock().await.next().await;
        next.map(|item| (item, source))
    });
    let response = next
        .run(Request::from_parts(parts, Body::from_stream(handed)))
        .await;
    let mut rest = source.lock().await;
    let mut drained = 0_u64;
    while drained <= DRAIN_LIMIT
        && let Some(Ok(chunk)) = rest.next().await
    {
        drained += chunk.len() as u64;
    }
    response
}

/// Why [`limited_body`] ended its stream.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A request body's bytes, at most `limit` of them: past it the stream
/// ends with an error that [`is_body_too_large`] recognises (the rest is
/// left for [`drain_unread_body`]).
pub fn limited_body(
    body: Body,
    limit: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    use futures::StreamExt;
    let mut passed = 0_u64;
    let mut over = false;
    body.into_data_stream()
        .map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            passed += chunk.len() as u64;
            if passed > limit {
                return Err(std::io::Error::other(BodyTooLarge(limit)));
            }
            Ok(chunk)
        })
        .take_while(move |item| {
            let stop = over;
            over = over || item.is_err();
            futures::future::ready(!stop)
        })
}

/// Whether a body's error is [`limited_body`]'s limit.
pub fn is_body_too_large(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<BodyTooLarge>())
}

/// One listener for two routers: requests whose path `other_serves` go to
/// `other` (e.g. the media routes, which stream their bodies), the rest to
/// `main`, each with its own layers and limits.
pub fn split_by_path(main: Router, other_serves: fn(&str) -> bool, other: Router) -> Router {
    main.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let other = other.clone();
            async move {
                if other_serves(req.uri().path()) {
                    match tower::ServiceExt::oneshot(other, req).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                } else {
                    next.run(req).await
                }
            }
        },
    ))
}

/// Reads a body whose declared length is within the limit before the
/// handler runs, whether the handler wants it or not. An answer sent
/// while a body is still unread makes the server close the connection,
/// and a client (the gateway, keeping connections to the services) that
/// sends its next request on it gets an error instead of an answer.
async fn read_declared_body(limit: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(length) if length > 0 && length <= limit => {
            let (parts, body) = req.into_parts();
            match axum::body::to_bytes(body, limit).await {
                Ok(bytes) => {
                    next.run(Request::from_parts(parts, Body::from(bytes)))
                        .await
                }
                Err(_) => MatrixError::not_json("Could not read the request body").into_response(),
            }
        }
        _ => next.run(req).await,
    }
}

/// Whether a request's path or query holds an encoded U+0000, which no
/// Matrix identifier or parameter may hold and PostgreSQL cannot store.
fn holds_encoded_nul(uri: &axum::http::Uri) -> bool {
    let raw = uri.path_and_query().map_or("", |p| p.as_str());
    raw.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

async fn observe(service: &'static str, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if holds_encoded_nul(req.uri()) {
        return MatrixError::invalid_param("The request holds U+0000").into_response();
    }
    let path = req.uri().path().to_owned();
    let span =
        tracing::info_span!("http", %method, path = %path, service, status = tracing::field::Empty);
    crate::telemetry::continue_from_http(&span, req.headers());
    let started = Instant::now();
    let _in_flight = crate::shutdown::InFlight::enter();
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = response.status();
    span.record("status", status.as_u16());
    let method = method_label(&method);
    metrics::HTTP_REQUESTS
        .with_label_values(&[service, method, status.as_str()])
        .inc();
    metrics::HTTP_DURATION
        .with_label_values(&[service, method])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A request method as a metric label: the methods Matrix uses, and
/// `other` for anything a client invents (which must not add a series).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// A service's HTTP routes with their path patterns kept beside them, so
/// the gateway forwards exactly the paths the service serves (its route
/// table) and nothing else. Built without the service's state, so the table
/// can be read without starting the service.
pub struct Routes<S> {
    router: Router<S>,
    paths: Vec<String>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// Adds `path` (an axum pattern such as `/_matrix/client/v3/rooms/{room_id}/send`).
    pub fn route(mut self, path: &str, method_router: axum::routing::MethodRouter<S>) -> Self {
        self.router = self.router.route(path, method_router);
        self.paths.push(path.to_owned());
        self
    }

    /// Adds every route of `other`.
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// The path patterns, in the order they were added.
    pub fn into_paths(self) -> Vec<String> {
        self.paths
    }

    /// The router still waiting for its state (to add a layer first).
    pub fn into_router(self) -> Router<S> {
        self.router
    }

    /// The router, given the state its handlers take.
    pub fn with_state(self, state: S) -> Router {
        self.router.with_state(state)
    }
}

/// Whether a request path may be routed at all: no dot segments (`.`,
/// `..`, in any mix of literal and percent-encoded dots), no literal
/// backslashes or control characters, no empty segments but a trailing one
/// (an empty state key arrives as a trailing slash), and nothing that is
/// not a valid percent-encoding. HTTP clients and proxies resolve dot
/// segments (and URL parsers read a literal backslash as `/`), so a path with
/// them could be routed as one thing and reach another. Encoded slashes,
/// backslashes and other characters stay inside their segment (routes match
/// the raw path; event types and state keys may hold any of them).
pub fn is_routable_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.bytes().any(|b| b == b'\\' || b.is_ascii_control()) {
        return false;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, segment)| {
        if segment.is_empty() {
            return i == last;
        }
        match percent_decode_bytes(segment) {
            Some(decoded) => decoded != b"." && decoded != b"..",
            None => false,
        }
    })
}

/// A JSON response with a status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// `200 OK` with a JSON body.
pub fn ok_json(body: serde_json::Value) -> Response {
    json_response(StatusCode::OK, &body)
}

/// What one listener takes from the world.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Open connections at most; further ones wait in the kernel's backlog
    /// until one closes.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (HTTP/1),
    /// including an idle kept-alive connection's next request, before the
    /// connection is closed: a slow client cannot hold a connection open.
    pub header_read_timeout: std::time::Duration,
}

impl ListenerLimits {
    /// Limits for a listener only other Ganglion processes or operators use.
    pub const INTERNAL: ListenerLimits = ListenerLimits {
        max_connections: 1024,
        header_read_timeout: std::time::Duration::from_secs(10),
    };
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    accept_loop(listener, router, None, limits, shutdown).await
}

/// Convenience: a `Result` whose error renders as a Matrix error.
pub type MatrixResult<T = Response> = Result<T, MatrixError>;

/// Makes a plain `Response` usable as the success type of [`MatrixResult`].
pub fn respond(body: serde_json::Value) -> MatrixResult {
    Ok(ok_json(body).into_response())
}

/// `200 OK` with a typed body, serialised once (large bodies that carry
/// events as JSON text skip building a tree).
pub fn respond_with<T: serde::Serialize>(body: &T) -> MatrixResult {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| MatrixError::unknown(format!("serialising the response: {e}")))?;
    let mut response = Response::new(Body::from(bytes));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Serves `router` over TLS on `listener` (the federation port) within
/// `limits` until `shutdown`.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |e: rustls::pki_types::pem::Error| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(invalid)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(invalid)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    accept_loop(listener, router, Some(acceptor), limits, shutdown).await
}

/// How long a stopping process lets its open requests finish (within
/// Kubernetes' default 30 s grace period); what is still open then is cut.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Accepts connections while fewer than `limits.max_connections` are open,
/// serves each (over TLS when an acceptor is given) with the header-read
/// timeout, and on `shutdown` stops accepting and lets the open connections
/// finish their requests (at most [`DRAIN_TIMEOUT`]) before returning.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let (closing, _) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Answers go out as soon as written (Nagle's algorithm would hold
        // a response's last TLS record for the peer's delayed ACK).
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            // The peer's address wraps the router as one service. (The
            // router's own `layer` would rebuild every route's service for
            // each connection: about 150 KB and the CPU to build it.)
            let service = hyper_util::service::TowerToHyperService::new(tower::Layer::layer(
                &axum::Extension(axum::extract::ConnectInfo(peer)),
                router,
            ));
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(tls_stream)) =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                            .await
                    else {
                        tracing::debug!(%peer, "TLS handshake failed");
                        return;
                    };
                    if let Some(io) =
                        first_bytes_within(tls_stream, limits.header_read_timeout).await
                    {
                        serve_connection(io, service, limits, &mut closing).await;
                    }
                }
                None => {
                    if let Some(io) = first_bytes_within(stream, limits.header_read_timeout).await {
                        serve_connection(io, service, limits, &mut closing).await;
                    }
                }
            }
        });
    }
    let _ = closing.send(true);
    // Every connection holds a permit until it is done: all of them back
    // means every request in flight has been answered.
    let open = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, permits.acquire_many(open))
        .await
        .is_err()
    {
        tracing::warn!("requests still open after the drain timeout were cut");
    }
    Ok(())
}

/// The connection with its first bytes read, if the peer sends any within
/// `timeout`. A connection that says nothing is closed: serving it would
/// wait for its first bytes (to tell HTTP/1 from HTTP/2) with no timeout,
/// holding a connection slot for ever.
async fn first_bytes_within<I>(mut io: I, timeout: std::time::Duration) -> Option<Prefixed<I>>
where
    I: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut first = vec![0_u8; 4096];
    match tokio::time::timeout(timeout, io.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {
            first.truncate(n);
            Some(Prefixed {
                prefix: first,
                at: 0,
                io,
            })
        }
        _ => None,
    }
}

/// A connection whose first bytes were already read: they are read again
/// first, then the rest of the connection.
struct Prefixed<I> {
    prefix: Vec<u8>,
    at: usize,
    io: I,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn serve_connection<I, S>(
    io: I,
    service: S,
    limits: ListenerLimits,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection =
        builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = async { let _ = closing.wait_for(|closing| *closing).await; } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod path_tests {
    use super::is_routable_path;

    #[test]
    fn dot_segments_and_odd_paths_are_not_routable() {
        for bad in [
            "",
            "no-slash",
            "/_matrix/federation/../v1/version",
            "/_matrix/federation/%2e%2e/%2E%2E/ganglion.federationapi.Federation/Invite",
            "/_matrix/federation/.%2e/x",
            "/_matrix/federation/%2e/x",
            "/_matrix/./client",
            "/_matrix//client/v3/sync",
            "/_matrix/client\\v3",
            "/_matrix/client\\..\\v3",
            "/_matrix/client/v3/rooms/%zz",
            "/_matrix/client/v3/rooms/%+1",
        ] {
            assert!(!is_routable_path(bad), "{bad:?}");
        }
        for good in [
            "/",
            "/_matrix/client/v3/sync",
            "/_matrix/client/v3/rooms/!a%3Ab/state/m.room.name/",
            "/_matrix/client/v3/rooms/!a%3Ab/state/m.widget/a%2Fb",
            "/_matrix/client/v3/rooms/!a%3Ab/send/m.room.message/t...1",
            "/_matrix/client/v3/pushrules/",
            "/_matrix/client/v3/rooms/!a%3Ab/send/org.example.back%5Cslash%01/t",
        ] {
            assert!(is_routable_path(good), "{good:?}");
        }
    }
}

#[cfg(test)]
mod query_tests {
    #[test]
    fn repeated_query_values_are_decoded() {
        let uri: axum::http::Uri = "/x?via=a.example%3A8448&ver=1&via=b.example&ver=%zz&via="
            .parse()
            .expect("uri");
        assert_eq!(
            super::query_values(&uri, "via"),
            ["a.example:8448", "b.example", ""]
        );
        assert_eq!(super::query_values(&uri, "ver"), ["1"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Body {
        #[allow(dead_code)]
        n: u32,
    }

    #[test]
    fn not_json_and_bad_json_differ() {
        assert_eq!(
            parse_json::<Body>(b"{nope").unwrap_err().errcode,
            "M_NOT_JSON"
        );
        assert_eq!(
            parse_json::<Body>(br#"{"n": "x"}"#).unwrap_err().errcode,
            "M_BAD_JSON"
        );
        assert!(parse_json::<Body>(br#"{"n": 3}"#).is_ok());
        assert_eq!(parse_json::<Body>(b"").unwrap_err().errcode, "M_BAD_JSON");
        let nul = parse_json::<serde_json::Value>(br#"{"a": ["b\u0000"]}"#);
        assert_eq!(nul.unwrap_err().errcode, "M_BAD_JSON");
        assert!(parse_json::<serde_json::Value>(br#"{"a": ["b\\u0000"]}"#).is_ok());
    }
}

#[cfg(test)]
mod ruma_tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::post;
    use ruma::api::client::membership::leave_room;
    use tower::ServiceExt;

    use super::{MatrixResult, Ruma, respond_ruma};

    async fn leave(Ruma(_): Ruma<leave_room::v3::Request>) -> MatrixResult {
        respond_ruma(leave_room::v3::Response::new())
    }

    /// The status and errcode of a leave with `room_id` and `body`.
    async fn answer(room_id: &str, body: &'static str) -> (u16, String) {
        let router = Router::new().route("/rooms/{room_id}/leave", post(leave));
        let request = Request::post(format!("/rooms/{room_id}/leave"))
            .body(Body::from(body))
            .expect("request");
        let response = router.oneshot(request).await.expect("response");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        (
            status,
            body["errcode"].as_str().unwrap_or_default().to_owned(),
        )
    }

    #[tokio::test]
    async fn bad_input_is_the_spec_error() {
        let room = "!r:example.org";
        assert_eq!(answer(room, "").await, (200, String::new()));
        assert_eq!(answer(room, r#"{"reason": "why"}"#).await.0, 200);
        assert_eq!(answer(room, "{nope").await, (400, "M_NOT_JSON".into()));
        assert_eq!(answer(room, "{} {}").await, (400, "M_NOT_JSON".into()));
        assert_eq!(
            answer(room, r#"{"reason": 5}"#).await,
            (400, "M_BAD_JSON".into())
        );
        // The U+0000 rule of every JSON body holds here too.
        assert_eq!(
            answer(room, r#"{"reason": "a\u0000b"}"#).await,
            (400, "M_BAD_JSON".into())
        );
        assert_eq!(
            answer("not-a-room", "{}").await,
            (400, "M_INVALID_PARAM".into())
        );
        // A path argument's parse error reaches us as a query error (ruma
        // reads both with serde_html_form's error type): an identifier over
        // 255 bytes there is 400, as the limits module answers it.
        let long = format!("!{}:example.org", "x".repeat(256));
        assert_eq!(answer(&long, "{}").await, (400, "M_INVALID_PARAM".into()));
    }
}

#[cfg(test)]
mod path_properties {
    use proptest::prelude::*;

    use super::{is_routable_path, percent_decode_bytes};

    proptest! {
        /// A routable path has no segment that means `.` or `..` however
        /// it is written, and no backslash or control character.
        #[test]
        fn a_routable_path_has_no_dot_segment(path in "(/([a-zA-Z0-9._~!$&'()*+,;=:@-]|%[0-9a-fA-F]{2}|%2[eE]|\\.){0,6}){0,6}/?") {
            if is_routable_path(&path) {
                for segment in path.trim_start_matches('/').split('/') {
                    let decoded = percent_decode_bytes(segment).expect("decodes");
                    prop_assert!(decoded != b"." && decoded != b"..", "{}", path);
                }
                prop_assert!(!path.contains('\\') && !path.chars().any(char::is_control));
            }
        }

        #[test]
        fn any_text_is_judged_without_panic(path in ".{0,100}") {
            let _ = is_routable_path(&path);
        }
    }
}

/// The address a request came from: the connection's peer, or, when the
/// peer is a trusted proxy (the gateway, a load balancer), the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_address(
    peer: std::net::IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(forwarded_for) = forwarded_for else {
        return peer;
    };
    let mut nearest = peer;
    for hop in forwarded_for.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
            // A hop we cannot read: trust nothing beyond it.
            return nearest;
        };
        nearest = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    nearest
}

#[cfg(test)]
mod client_address_tests {
    use super::client_address;
    use std::net::IpAddr;

    #[test]
    fn the_forwarded_address_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().expect("net")];
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // A client talking to us directly cannot pick its address.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("198.51.100.1"), &trusted),
            ip("203.0.113.9")
        );
        // Behind the gateway: the client's address, not the gateway's.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        // A client's own forged entries sit left of what the proxy added.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("10.9.9.9, 198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("nonsense"), &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), None, &trusted),
            ip("127.0.0.1")
        );
    }
}
