//! gateway: the polylith's HTTP edge. Stateless and replicable: it routes
//! each request to a replica of the service that owns its path, so clients
//! and remote servers see one address. Routing only; no Matrix logic.
//!
//! It forwards only paths that match a route table a service exports (the
//! same patterns the service's own router is built from), after refusing
//! paths that a proxy could resolve into another path (dot segments and the
//! like, see [`ganglion_base::http::is_routable_path`]). Everything else is
//! 404 `M_UNRECOGNIZED` here and never reaches a service.
//!
//! Replicas: requests for the clientapi and the federationapi are spread
//! over their ready replicas; the syncapi's go to the one replica that
//! serves the request's user ([`Routing::ByUser`]: the access token
//! resolved through the userapi, cached briefly, the user placed by
//! rendezvous hashing in [`ganglion_api::replicas`]). A replica that cannot
//! be reached is skipped for the next one in the same order.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use ganglion_api::replicas::ReplicaSet;
use ganglion_api::users::UsersHandle;
use ganglion_base::MatrixError;
use ganglion_base::bounded::Bounded;
use ganglion_base::http::is_routable_path;
use ganglion_base::metrics::counter_vec;
use sha2::Digest;

/// How a service's requests are shared among its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Any ready replica, in turn.
    Spread,
    /// The replica that serves the request's user: a view with its own
    /// database per replica (the syncapi), so a user stays where their
    /// connections and caches are.
    ByUser,
}

/// One service behind the gateway: its replicas and what it serves.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// A name for logs (`clientapi`, `syncapi`, `federationapi`).
    pub name: &'static str,
    /// Its replicas; each one's `http_address` is where requests go.
    pub replicas: Arc<ReplicaSet>,
    /// How requests are shared among them.
    pub routing: Routing,
    /// The path patterns it exports (its route table).
    pub paths: Vec<String>,
    /// Largest request body forwarded to it; larger ones are 413 `M_TOO_LARGE`.
    pub max_body_bytes: usize,
    /// Request bodies go through as they arrive instead of being read
    /// whole first (media uploads); such a request is sent to one replica
    /// only, as its body cannot be sent twice.
    pub streams_bodies: bool,
}

/// Which user an access token belongs to, as far as routing needs to know:
/// asked of the userapi, kept for [`TOKEN_TTL`], dropped on logout. A stale
/// entry only routes a request (the service behind authenticates it).
pub struct TokenUsers {
    users: Option<UsersHandle>,
    /// By the token's SHA-256: its user (`None`: unknown) and when asked.
    cache: std::sync::Mutex<Bounded<[u8; 32], KnownToken>>,
}

type KnownToken = (Option<String>, Instant);

/// How long a token's user is remembered.
pub const TOKEN_TTL: Duration = Duration::from_secs(30);

impl TokenUsers {
    /// Resolves through `users`, remembering at most `capacity` tokens.
    /// Without `users`, requests are placed by their token alone.
    pub fn new(users: Option<UsersHandle>, capacity: usize) -> Arc<TokenUsers> {
        Arc::new(TokenUsers {
            users,
            cache: std::sync::Mutex::new(Bounded::new(capacity)),
        })
    }

    fn key(token: &str) -> [u8; 32] {
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// The user of `token`, if the userapi knows it.
    pub async fn user_of(&self, token: &str) -> Option<String> {
        let key = Self::key(token);
        if let Ok(cache) = self.cache.lock()
            && let Some((user, at)) = cache.peek(&key)
            && at.elapsed() < TOKEN_TTL
        {
            return user.clone();
        }
        let users = self.users.as_ref()?;
        let user = match users
            .authenticate(ganglion_api::proto::userapi::AuthenticateRequest {
                access_token: token.to_owned(),
                ..Default::default()
            })
            .await
        {
            Ok(device) => Some(device.user_id),
            // An unknown token is remembered too (briefly), so a stream of
            // made-up tokens costs the userapi one question each per TTL.
            Err(ganglion_api::ApiError::UnknownToken) => None,
            // The userapi unreachable: placed by token, not remembered.
            Err(_) => return None,
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, (user.clone(), Instant::now()));
        }
        user
    }

    /// A token was logged out: forget it (and with `all`, every token of its user).
    fn forget(&self, token: &str, all: bool) {
        if let Ok(mut cache) = self.cache.lock() {
            let user = cache.remove(&Self::key(token)).and_then(|(user, _)| user);
            if all && let Some(user) = user {
                cache.retain(|_, (other, _)| other.as_deref() != Some(user.as_str()));
            }
        }
    }
}

#[derive(Clone)]
struct Forward {
    upstream: Arc<Upstream>,
    client: reqwest::Client,
    tokens: Arc<TokenUsers>,
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

static FORWARDED: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    counter_vec(
        "ganglion_gateway_forwarded_total",
        "Requests the gateway forwarded, by service and outcome (ok, next_replica, unavailable)",
        &["service", "outcome"],
    )
});

/// The gateway's router: each exported path is proxied to a replica of its
/// service, anything else is refused.
pub fn router(upstreams: Vec<Upstream>, tokens: Arc<TokenUsers>) -> Result<Router, GatewayError> {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let mut router = Router::new();
    let mut seen = std::collections::HashMap::new();
    for upstream in upstreams {
        let upstream = Arc::new(upstream);
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
                tokens: tokens.clone(),
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
        .layer(axum::middleware::from_fn(refuse_unroutable))
        .layer(axum::middleware::from_fn(
            ganglion_base::http::drain_unread_body,
        )))
}

/// Ready while every service has a ready replica.
pub struct UpstreamsReady(pub Vec<Arc<ReplicaSet>>);

#[async_trait::async_trait]
impl ganglion_base::health::ReadinessCheck for UpstreamsReady {
    fn name(&self) -> String {
        "gateway_upstreams".to_owned()
    }
    async fn check(&self) -> Result<(), String> {
        let missing: Vec<&str> = self
            .0
            .iter()
            .filter(|set| set.ready().is_empty())
            .map(|set| set.service())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no ready replica of {}", missing.join(", ")))
        }
    }
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

/// The replicas to try for a request, in order.
async fn replicas_for(forward: &Forward, parts: &axum::http::request::Parts) -> Vec<usize> {
    let replicas = &forward.upstream.replicas;
    if forward.upstream.routing == Routing::Spread || replicas.len() < 2 {
        return replicas.spread();
    }
    match ganglion_api::users::access_token(&parts.headers, parts.uri.query()) {
        Some(token) => match forward.tokens.user_of(&token).await {
            Some(user) => replicas.for_user(&user),
            // Unknown to the userapi: the replica answers 401; the same
            // token always goes to the same one.
            None => replicas.for_user(&token),
        },
        None => replicas.spread(),
    }
}

async fn proxy(State(forward): State<Forward>, request: Request) -> Response {
    let upstream = &forward.upstream;
    let (parts, body) = request.into_parts();
    if upstream.streams_bodies && matches!(parts.method, Method::POST | Method::PUT) {
        return proxy_streaming(&forward, parts, body).await;
    }
    let body = match axum::body::to_bytes(body, upstream.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => return MatrixError::too_large("Request body too large").into_response(),
    };
    // A kept-alive connection the service has just closed fails the
    // request sent on it; an idempotent one is sent once more on a fresh
    // connection, then to the next replica (POSTs are not: the first may
    // have been taken). A replica that refuses the connection took nothing:
    // any request goes on to the next.
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    );
    for index in replicas_for(&forward, &parts).await {
        let Some(base_url) = upstream
            .replicas
            .get(index)
            .and_then(|r| r.config.http_address.clone())
        else {
            continue;
        };
        let attempts = if idempotent { 2 } else { 1 };
        for attempt in 1..=attempts {
            match send(&forward, &base_url, &parts, body.clone()).await {
                Ok(response) => {
                    FORWARDED.with_label_values(&[upstream.name, "ok"]).inc();
                    if upstream.name == "clientapi" && response.status().is_success() {
                        forget_logged_out(&forward, &parts);
                    }
                    return response;
                }
                Err(error) => {
                    // The path only: a query may carry an access token (and
                    // so may the error's URL).
                    let never_sent = error.is_connect();
                    let error = error.without_url();
                    tracing::warn!(upstream = upstream.name, path = %parts.uri.path(), %error, "upstream failed");
                    if error.is_timeout() {
                        return unavailable(upstream.name);
                    }
                    if never_sent || attempt == attempts {
                        upstream.replicas.mark_down(index);
                        if never_sent || idempotent {
                            FORWARDED
                                .with_label_values(&[upstream.name, "next_replica"])
                                .inc();
                            break;
                        }
                        return unavailable(upstream.name);
                    }
                }
            }
        }
    }
    unavailable(upstream.name)
}

/// Forwards a request whose body streams through (bounded by the
/// upstream's limit as it passes) to the first replica in order.
async fn proxy_streaming(
    forward: &Forward,
    parts: axum::http::request::Parts,
    body: Body,
) -> Response {
    let upstream = &forward.upstream;
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = upstream.max_body_bytes as u64;
    if declared.is_some_and(|length| length > limit) {
        return MatrixError::too_large("Request body too large").into_response();
    }
    let Some((index, base_url)) = replicas_for(forward, &parts)
        .await
        .into_iter()
        .find_map(|i| {
            let url = upstream.replicas.get(i)?.config.http_address.clone()?;
            Some((i, url))
        })
    else {
        return unavailable(upstream.name);
    };
    let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let overflow = overflowed.clone();
    let bounded = futures::StreamExt::inspect(
        ganglion_base::http::limited_body(body, limit),
        move |item| {
            if let Err(error) = item
                && ganglion_base::http::is_body_too_large(error)
            {
                overflow.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        },
    );
    let body = reqwest::Body::wrap_stream(bounded);
    match send(forward, &base_url, &parts, body).await {
        Ok(response) => {
            FORWARDED.with_label_values(&[upstream.name, "ok"]).inc();
            response
        }
        // The body went past the limit here (a length not declared).
        Err(_) if overflowed.load(std::sync::atomic::Ordering::Relaxed) => {
            MatrixError::too_large("Request body too large").into_response()
        }
        Err(error) => {
            let error = error.without_url();
            tracing::warn!(upstream = upstream.name, path = %parts.uri.path(), %error, "upstream failed");
            if error.is_connect() {
                upstream.replicas.mark_down(index);
            }
            unavailable(upstream.name)
        }
    }
}

fn unavailable(name: &'static str) -> Response {
    FORWARDED.with_label_values(&[name, "unavailable"]).inc();
    let mut response = MatrixError::unavailable("Upstream service unavailable").into_response();
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// After a successful `/logout` or `/logout/all`, the token's user is
/// forgotten at once rather than at the end of its TTL.
fn forget_logged_out(forward: &Forward, parts: &axum::http::request::Parts) {
    let path = parts.uri.path();
    let all = path.ends_with("/logout/all");
    if (all || path.ends_with("/logout"))
        && let Some(token) = ganglion_api::users::access_token(&parts.headers, parts.uri.query())
    {
        forward.tokens.forget(&token, all);
    }
}

/// Sends the request to one replica and streams its answer back.
async fn send(
    forward: &Forward,
    base_url: &str,
    parts: &axum::http::request::Parts,
    body: impl Into<reqwest::Body>,
) -> Result<Response, reqwest::Error> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{base_url}{path_and_query}");
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
    let response = outgoing.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut out = Response::new(Body::from_stream(response.bytes_stream()));
    *out.status_mut() = status;
    // The length goes through with the answer (a download's progress),
    // unlike a request's, which is sent anew.
    for (name, value) in &headers {
        if !is_hop_by_hop(name) || name == axum::http::header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(out)
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

    fn replicas(name: &'static str, urls: &[String]) -> Arc<ReplicaSet> {
        ReplicaSet::new(
            name,
            urls.iter()
                .map(|url| ganglion_base::config::ReplicaConfig {
                    address: url.clone(),
                    http_address: Some(url.clone()),
                    ..Default::default()
                })
                .collect(),
        )
    }

    fn upstream(name: &'static str, paths: &[&str]) -> Upstream {
        Upstream {
            name,
            replicas: replicas(name, &["http://127.0.0.1:9".to_owned()]),
            routing: Routing::Spread,
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            max_body_bytes: 1024,
            streams_bodies: false,
        }
    }

    fn tokens() -> Arc<TokenUsers> {
        TokenUsers::new(None, 100)
    }

    /// A server that answers every request with its own name.
    async fn named(name: &'static str) -> String {
        let app = Router::new().fallback(any(move || async move { name }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    async fn get(router: &Router, token: Option<&str>) -> (StatusCode, String) {
        use tower::ServiceExt;
        let mut request = Request::builder().uri("/_matrix/client/v3/sync");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// By-user routing keeps each caller on one replica, spreads callers
    /// over the replicas, and moves a caller on when its replica cannot be
    /// reached (a closed port: the connection is refused).
    #[tokio::test]
    async fn callers_stay_on_one_replica_and_move_when_it_is_gone() {
        let urls = vec![
            named("one").await,
            named("two").await,
            "http://127.0.0.1:9".to_owned(),
        ];
        let set = replicas("syncapi", &urls);
        let router = router(
            vec![Upstream {
                name: "syncapi",
                replicas: set.clone(),
                routing: Routing::ByUser,
                paths: vec!["/_matrix/client/v3/sync".to_owned()],
                max_body_bytes: 1024,
                streams_bodies: false,
            }],
            tokens(),
        )
        .expect("router");
        let mut seen = std::collections::HashSet::new();
        for caller in 0..40 {
            let token = format!("token{caller}");
            let (status, first) = get(&router, Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{first}");
            for _ in 0..3 {
                assert_eq!(get(&router, Some(&token)).await.1, first, "{token} moved");
            }
            seen.insert(first);
        }
        assert_eq!(seen.len(), 2, "callers are spread: {seen:?}");
        // The closed port was found down on the way and gets nobody now.
        assert_eq!(set.ready().len(), 2);
        // Without a token: any replica.
        assert_eq!(get(&router, None).await.0, StatusCode::OK);
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
        let router = router(
            vec![Upstream {
                name: "syncapi",
                replicas: replicas("syncapi", &[format!("http://{address}")]),
                routing: Routing::Spread,
                paths: vec!["/_matrix/client/v3/sync".to_owned()],
                max_body_bytes: 1024,
                streams_bodies: false,
            }],
            tokens(),
        )
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
        let result = router(
            vec![
                upstream("clientapi", &["/_matrix/client/v3/sync"]),
                upstream("syncapi", &["/_matrix/client/v3/sync"]),
            ],
            tokens(),
        );
        assert!(matches!(result, Err(GatewayError::Route { .. })));
    }

    #[tokio::test]
    async fn unexported_and_traversal_paths_are_refused_without_forwarding() {
        use tower::ServiceExt;
        // The upstream address is a closed port: a forwarded request would
        // answer 502, a refused one 404.
        let router = router(
            vec![upstream(
                "federationapi",
                &["/_matrix/federation/v1/send/{txn_id}"],
            )],
            tokens(),
        )
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
