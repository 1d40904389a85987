//! gateway: the polylith's HTTP edge. Stateless and replicable: it routes
//! each request to the service that owns its path, so clients and remote
//! servers see one address. Routing only; no Matrix logic.
#![forbid(unsafe_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use ganglion_base::MatrixError;

/// Where the gateway sends each family of paths (base URLs, `http://host:port`).
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub clientapi: String,
    pub syncapi: String,
    pub federationapi: String,
}

#[derive(Clone)]
struct Gateway {
    upstreams: Upstreams,
    client: reqwest::Client,
}

/// Paths served by the syncapi (the read side, presence, key changes).
fn is_sync_path(path: &str) -> bool {
    if path == "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync" {
        return true;
    }
    let Some(rest) = path
        .strip_prefix("/_matrix/client/v3/")
        .or_else(|| path.strip_prefix("/_matrix/client/r0/"))
        .or_else(|| path.strip_prefix("/_matrix/client/v1/"))
    else {
        return false;
    };
    let room_read = rest.strip_prefix("rooms/").is_some_and(|room| {
        let mut parts = room.splitn(3, '/');
        let _room_id = parts.next();
        matches!(
            parts.next(),
            Some("messages" | "event" | "context" | "relations" | "threads" | "members")
        )
    });
    let mut parts = rest.split('/');
    let (first, _, third) = (parts.next(), parts.next(), parts.next());
    let user_filter = first == Some("user") && third == Some("filter");
    let presence = first == Some("presence") && third == Some("status");
    rest == "sync" || rest == "keys/changes" || room_read || user_filter || presence
}

/// The gateway's router: every path is proxied.
pub fn router(upstreams: Upstreams) -> Router {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    Router::new()
        .fallback(proxy)
        .with_state(Gateway { upstreams, client })
}

async fn proxy(State(gateway): State<Gateway>, request: Request) -> Response {
    let path = request.uri().path();
    let base = if is_sync_path(path) {
        &gateway.upstreams.syncapi
    } else if path.starts_with("/_matrix/federation") || path.starts_with("/_matrix/key") {
        &gateway.upstreams.federationapi
    } else {
        &gateway.upstreams.clientapi
    };
    let url = format!(
        "{base}{}",
        request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return MatrixError::too_large("Request body too large").into_response(),
    };
    let mut upstream = gateway.client.request(parts.method, &url).body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(response) => {
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.unwrap_or_default();
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            for (name, value) in &headers {
                if !is_hop_by_hop(name) {
                    out.headers_mut().append(name.clone(), value.clone());
                }
            }
            out
        }
        Err(error) => {
            tracing::warn!(%url, %error, "upstream unavailable");
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
    #[test]
    fn read_side_paths_go_to_syncapi() {
        assert!(super::is_sync_path("/_matrix/client/v3/sync"));
        assert!(super::is_sync_path(
            "/_matrix/client/v3/rooms/!a:b/messages"
        ));
        assert!(super::is_sync_path("/_matrix/client/r0/user/@a:b/filter"));
        assert!(super::is_sync_path(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
        ));
        for read in ["event/$e", "context/$e", "relations/$e/m.thread", "threads"] {
            assert!(super::is_sync_path(&format!(
                "/_matrix/client/v1/rooms/!a:b/{read}"
            )));
        }
        assert!(!super::is_sync_path("/_matrix/client/v3/rooms/!a:b/state"));
        assert!(!super::is_sync_path(
            "/_matrix/client/v3/rooms/!a:b/send/m.room.message/1"
        ));
        assert!(!super::is_sync_path("/_matrix/client/v3/login"));
        assert!(super::is_sync_path("/_matrix/client/v3/keys/changes"));
        assert!(!super::is_sync_path("/_matrix/client/v3/keys/query"));
        assert!(super::is_sync_path(
            "/_matrix/client/v3/presence/@a:b/status"
        ));
        assert!(!super::is_sync_path(
            "/_matrix/client/v3/user/@a:b/rooms/!r:b/tags/filter"
        ));
        assert!(!super::is_sync_path(
            "/_matrix/client/v3/user/@a:b/account_data/m.direct"
        ));
    }
}
