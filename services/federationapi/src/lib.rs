//! federationapi: the federation and key APIs (`/_matrix/federation/*`,
//! `/_matrix/key/*`), served over TLS.
//!
//! - Serves: the server's signing keys (`/_matrix/key/v2/server`, signed
//!   with themselves) and `/_matrix/federation/v1/version`. Inbound and
//!   outbound federation come with the federation issue.
//! - Owns: nothing yet (fetched server keys will live in its database).
#![forbid(unsafe_code)]

mod routes;

use std::sync::Arc;

use axum::Router;
use ganglion_base::keys::SigningKey;

/// The federation routes for `server_name`, signing with `key`.
pub fn routes(server_name: &str, key: Arc<SigningKey>) -> Router {
    routes::router(server_name.to_owned(), key)
}
