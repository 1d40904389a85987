//! Discovery: `/versions`, `/.well-known/matrix/client`, `/capabilities`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use ganglion_api::users::UserOrGuest;
use ganglion_base::http::{MatrixResult, respond};
use serde_json::json;

use crate::ClientApi;

pub(crate) async fn versions() -> MatrixResult {
    respond(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"],
        // Simplified sliding sync (MSC4186), served by the syncapi.
        "unstable_features": { "org.matrix.simplified_msc3575": true }
    }))
}

pub(crate) async fn well_known(
    State(api): State<Arc<ClientApi>>,
    headers: HeaderMap,
) -> MatrixResult {
    let base_url = match headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(host) => format!("http://{host}"),
        None => format!("https://{}", api.server_name),
    };
    respond(json!({ "m.homeserver": { "base_url": base_url } }))
}

pub(crate) async fn capabilities(UserOrGuest(_): UserOrGuest) -> MatrixResult {
    let available: serde_json::Map<String, serde_json::Value> =
        (3..=12).map(|v| (v.to_string(), json!("stable"))).collect();
    respond(json!({
        "capabilities": {
            "m.room_versions": { "default": crate::routes::rooms::DEFAULT_ROOM_VERSION, "available": available },
            "m.change_password": { "enabled": false },
        }
    }))
}
