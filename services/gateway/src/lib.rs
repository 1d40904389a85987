//! gateway: the polylith's HTTP edge. Stateless and replicable: it routes
//! each request to the service that owns its path, so clients and remote
//! servers see one address. Routing only; no Matrix logic.
//!
//! It forwards only paths that match a route table a service exports (the
//! same patterns the service's own router is built from), after refusing
//! paths that a proxy could resolve into another path (dot segments and the
//! like, see [`ganglion_base::http::is_routable_path`]). Everything else is
//! 404 `M_UNRECOGNIZED` here and never reaches a service.
#![forbid(unsafe_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use ganglion_base::MatrixError;
use ganglion_base::http::is_routable_path;

/// One service behind the gateway: where it is and what it serves.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// A name for logs (`clientapi`, `syncapi`, `federationapi`).
    pub name: &'static str,
    /// Base URL of the service's HTTP listener, `http://host:port`.
    pub base_url: String,
    /// The path patterns it exports (its route table).
    pub paths: Vec<String>,
    /// Largest request body forwarded to it; larger ones are 413 `M_TOO_LARGE`.
    pub max_body_bytes: usize,
}

#[derive(Clone)]
struct Forward {
    upstream: std::sync::Arc<Upstream>,
    client: reqwest::Client,
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Two services export the same path pattern, or one the router cannot take.
    #[error("route {path} of {service}: {reason}")]
    Route {
        service: &'static str,
        path: String,
        reason: String,
    },
}

/// The gateway's router: each exported path is proxied to its service,
/// anything else is refused.
pub fn router(upstreams: Vec<Upstream>) -> Result<Router, GatewayError> {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let mut router = Router::new();
    let mut seen = std::collections::HashMap::new();
    for upstream in upstreams {
        let upstream = std::sync::Arc::new(upstream);
        for path in &upstream.paths {
            if let Some(owner) = seen.insert(path.clone(), upstream.name) {
                return Err(GatewayError::Route {
                    service: upstream.name,
                    path: path.clone(),
                    reason: format!("also exported by {owner}"),
                });
            }
            let forward = Forward {
                upstream: upstream.clone(),
                client: client.clone(),
            };
            let route = any(proxy).with_state(forward);
            router = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                router.clone().route(path, route)
            }))
            .map_err(|_| GatewayError::Route {
                service: upstream.name,
                path: path.clone(),
                reason: "conflicts with another route".to_owned(),
            })?;
        }
    }
    Ok(router
        .fallback(|| async { MatrixError::unrecognized() })
        .layer(axum::middleware::from_fn(refuse_unroutable)))
}

/// Refuses paths that could mean another path once a client library or
/// proxy normalises them, before any route is matched.
async fn refuse_unroutable(request: Request, next: axum::middleware::Next) -> Response {
    if !is_routable_path(request.uri().path()) {
        tracing::warn!(path = %request.uri().path(), "refused an unroutable path");
        return MatrixError::unrecognized().into_response();
    }
    next.run(request).await
}

async fn proxy(State(forward): State<Forward>, request: Request) -> Response {
    let upstream = &forward.upstream;
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{path_and_query}", upstream.base_url);
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, upstream.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => return MatrixError::too_large("Request body too large").into_response(),
    };
    let mut outgoing = forward
        .client
        .request(parts.method.clone(), &url)
        .body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != "x-forwarded-for" {
            outgoing = outgoing.header(name, value);
        }
    }
    // The service behind sees the gateway as its peer: the address the
    // gateway saw goes last in X-Forwarded-For, where a client cannot put
    // it (the services trust the gateway's entry, not the client's).
    if let Some(peer) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(earlier) => format!("{earlier}, {}", peer.0.ip()),
            None => peer.0.ip().to_string(),
        };
        outgoing = outgoing.header("x-forwarded-for", forwarded);
    }
    // A kept-alive connection the service has just closed fails the
    // request sent on it; an idempotent one is sent once more on a fresh
    // connection (POSTs are not: the first may have been taken).
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    );
    let again = idempotent.then(|| outgoing.try_clone()).flatten();
    let sent = match (outgoing.send().await, again) {
        (Err(error), Some(again)) if !error.is_timeout() => again.send().await,
        (sent, _) => sent,
    };
    match sent {
        Ok(response) => {
            let status = response.status();
            let headers = response.headers().clone();
            let mut out = Response::new(Body::from_stream(response.bytes_stream()));
            *out.status_mut() = status;
            for (name, value) in &headers {
                if !is_hop_by_hop(name) {
                    out.headers_mut().append(name.clone(), value.clone());
                }
            }
            out
        }
        Err(error) => {
            // The path only: a query may carry an access token (and so
            // may the error's URL).
            let error = error.without_url();
            tracing::warn!(upstream = upstream.name, path = %parts.uri.path(), %error, "upstream unavailable");
            let mut response =
                MatrixError::unavailable("Upstream service unavailable").into_response();
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &'static str, paths: &[&str]) -> Upstream {
        Upstream {
            name,
            base_url: "http://127.0.0.1:9".to_owned(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            max_body_bytes: 1024,
        }
    }

    /// The address the gateway saw goes last in `X-Forwarded-For`, after
    /// whatever the client claimed.
    #[tokio::test]
    async fn the_peer_address_is_appended_to_x_forwarded_for() {
        use tower::ServiceExt;
        let echo = Router::new().route(
            "/_matrix/client/v3/sync",
            any(|headers: axum::http::HeaderMap| async move {
                headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, echo).await });
        let router = router(vec![Upstream {
            name: "syncapi",
            base_url: format!("http://{address}"),
            paths: vec!["/_matrix/client/v3/sync".to_owned()],
            max_body_bytes: 1024,
        }])
        .expect("router");
        for (claimed, expected) in [
            (Some("10.1.1.1"), "10.1.1.1, 203.0.113.7"),
            (None, "203.0.113.7"),
        ] {
            let mut request = Request::builder().uri("/_matrix/client/v3/sync");
            if let Some(claimed) = claimed {
                request = request.header("x-forwarded-for", claimed);
            }
            let mut request = request.body(Body::empty()).expect("request");
            request.extensions_mut().insert(axum::extract::ConnectInfo(
                std::net::SocketAddr::from(([203, 0, 113, 7], 5555)),
            ));
            let response = router.clone().oneshot(request).await.expect("response");
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .expect("body");
            assert_eq!(body, expected.as_bytes());
        }
    }

    #[test]
    fn a_path_exported_twice_is_an_error() {
        let result = router(vec![
            upstream("clientapi", &["/_matrix/client/v3/sync"]),
            upstream("syncapi", &["/_matrix/client/v3/sync"]),
        ]);
        assert!(matches!(result, Err(GatewayError::Route { .. })));
    }

    #[tokio::test]
    async fn unexported_and_traversal_paths_are_refused_without_forwarding() {
        use tower::ServiceExt;
        // The upstream address is a closed port: a forwarded request would
        // answer 502, a refused one 404.
        let router = router(vec![upstream(
            "federationapi",
            &["/_matrix/federation/v1/send/{txn_id}"],
        )])
        .expect("router");
        for path in [
            "/_matrix/federation/%2e%2e/%2e%2e/ganglion.federationapi.Federation/Invite",
            "/_matrix/federation/v1/send/..",
            "/_matrix/federation/v1/send/%2E",
            "/_matrix/federation/v1/send//",
            "/ganglion.federationapi.Federation/Invite",
            "/_matrix/federation/v1/unknown",
        ] {
            let response = router
                .clone()
                .oneshot(
                    Request::builder()
                        .method("POST")
                        .uri(path)
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("response");
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let forwarded = router
            .oneshot(
                Request::builder()
                    .method("PUT")
                    .uri("/_matrix/federation/v1/send/t1")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(forwarded.status(), StatusCode::BAD_GATEWAY);
    }
}
