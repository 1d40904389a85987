//! Federation HTTP routes.

mod keys;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use ganglion_base::keys::SigningKey;

#[derive(Clone)]
pub(crate) struct FederationState {
    pub(crate) server_name: String,
    pub(crate) key: Arc<SigningKey>,
}

pub(crate) fn router(server_name: String, key: Arc<SigningKey>) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::server_keys))
        .route("/_matrix/federation/v1/version", get(keys::version))
        .with_state(FederationState { server_name, key })
}
