//! The media routes and what they share: the MXC URI in a path, the
//! upload allowance, errors of the content repository.

mod config;
mod download;
mod federation;
pub(crate) mod thumbnail;
mod upload;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use ganglion_base::MatrixError;
use ganglion_base::http::Routes;

use crate::MediaApi;

pub(crate) fn router(api: Arc<MediaApi>) -> Router {
    table()
        .with_state(api)
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                crate::content::secure(response.headers_mut());
                response
            },
        ))
}

/// Every route this service serves (the gateway forwards exactly these).
pub(crate) fn table() -> Routes<Arc<MediaApi>> {
    let mut routes = Routes::default()
        .route("/_matrix/media/v1/create", post(upload::create))
        .route(
            "/_matrix/media/v3/upload/{server_name}/{media_id}",
            put(upload::upload_to),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}",
            get(download::download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
            get(download::download),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
            get(thumbnail::thumbnail),
        )
        .route("/_matrix/client/v1/media/config", get(config::config))
        .route(
            "/_matrix/client/v1/media/preview_url",
            get(crate::preview::preview_url),
        )
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(federation::download),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(federation::thumbnail),
        );
    // The legacy prefix too: older clients still upload with r0.
    for prefix in ["/_matrix/media/v3", "/_matrix/media/r0"] {
        routes = routes
            .route(&format!("{prefix}/upload"), post(upload::upload))
            .route(&format!("{prefix}/config"), get(config::legacy_config))
            .route(
                &format!("{prefix}/preview_url"),
                get(crate::preview::preview_url),
            )
            .route(
                &format!("{prefix}/download/{{server_name}}/{{media_id}}"),
                get(download::legacy_download),
            )
            .route(
                &format!("{prefix}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
                get(download::legacy_download),
            )
            .route(
                &format!("{prefix}/thumbnail/{{server_name}}/{{media_id}}"),
                get(thumbnail::legacy_thumbnail),
            );
    }
    routes
}

/// The MXC URI a path names (and the file name it may add). A server
/// name that is not one, or a media ID with other characters than
/// `A-Za-z0-9_-`, names nothing here: 404 `M_NOT_FOUND`, before any
/// storage is touched.
pub(crate) struct MediaPath {
    pub(crate) server_name: String,
    pub(crate) media_id: String,
    pub(crate) file_name: Option<String>,
}

/// Which media an endpoint serves.
#[derive(Clone, Copy)]
pub(crate) enum Access {
    /// The authenticated endpoints: all of it.
    Authenticated,
    /// The deprecated unauthenticated ones: media created before this
    /// moment (none when unset).
    Unauthenticated(Option<u64>),
}

/// The longest media ID taken.
const MAX_MEDIA_ID: usize = 255;

pub(crate) fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MEDIA_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl<S: Send + Sync> FromRequestParts<S> for MediaPath {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(params) = axum::extract::Path::<
            std::collections::HashMap<String, String>,
        >::from_request_parts(parts, state)
        .await
        .map_err(|_| not_found())?;
        let server_name = params.get("server_name").cloned().unwrap_or_default();
        let media_id = params.get("media_id").cloned().unwrap_or_default();
        if ganglion_base::limits::server_name(&server_name).is_err() || !valid_media_id(&media_id) {
            return Err(not_found());
        }
        Ok(MediaPath {
            server_name,
            media_id,
            file_name: params.get("file_name").cloned(),
        })
    }
}

pub(crate) fn not_found() -> MatrixError {
    MatrixError::not_found("Media not found")
}

pub(crate) fn database_error(error: sqlx::Error) -> MatrixError {
    ganglion_base::database::matrix_error("mediaapi", &error)
}

pub(crate) fn store_error(error: crate::store::StoreError) -> MatrixError {
    tracing::error!(%error, "the media store failed");
    MatrixError::unknown("The media store failed")
}

/// 403 `M_RESOURCE_LIMIT_EXCEEDED`: the user's media quota is used up.
fn quota_exceeded() -> MatrixError {
    MatrixError::new(
        StatusCode::FORBIDDEN,
        "M_RESOURCE_LIMIT_EXCEEDED",
        "You have used up your media quota",
    )
}

/// A new media ID: 24 random letters and digits.
pub(crate) fn new_media_id() -> String {
    ganglion_base::random::alphanumeric(24)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_under_a_media_prefix() {
        for path in super::table().into_paths() {
            assert!(crate::serves(&path), "{path}");
        }
    }

    #[test]
    fn media_ids_are_url_safe_base64_characters() {
        assert!(super::valid_media_id("AQwafuaFswefuhsfAFAgsw_-9"));
        for bad in ["", "..", "a/b", "a.b", "a b", "%2e", &"a".repeat(256)] {
            assert!(!super::valid_media_id(bad), "{bad:?}");
        }
    }
}
