//! Downloads: authenticated (`/_matrix/client/v1/media/download`) and the
//! deprecated unauthenticated ones (`/_matrix/media/v3/download`), which
//! serve only media from before the freeze.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, query_values};

use super::{Access, MediaPath, database_error, not_found, store_error};
use crate::MediaApi;
use crate::content;
use crate::storage::Media;
use crate::store::BlobHash;

/// How long a download waits for bytes not uploaded yet unless the client
/// says (`timeout_ms`), as the spec gives it.
const DEFAULT_WAIT: Duration = Duration::from_millis(20_000);
/// How often a waiting download looks again (an upload through another
/// replica is seen this way; one through this process wakes it at once).
const WAIT_POLL: Duration = Duration::from_millis(500);

/// A download's answer, before it is framed (as itself, or as the file
/// part of a federation answer).
pub(crate) struct File {
    pub(crate) blob: crate::store::Blob,
    pub(crate) content_type: String,
    pub(crate) disposition: axum::http::HeaderValue,
}

impl MediaApi {
    /// How long this request may wait for an upload to arrive.
    pub(crate) fn wait_for(&self, uri: &Uri) -> Duration {
        let asked = query_values(uri, "timeout_ms")
            .first()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(DEFAULT_WAIT, Duration::from_millis);
        asked.min(Duration::from_millis(self.config.max_download_wait_ms))
    }

    /// The row of a local media ID once it holds its bytes, waiting up to
    /// `wait` for an upload still to come (then 504 `M_NOT_YET_UPLOADED`).
    pub(crate) async fn uploaded(
        &self,
        media_id: &str,
        wait: Duration,
    ) -> Result<Media, MatrixError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut filled = self.filled.subscribe();
        loop {
            let media = self
                .storage
                .media(&self.server_name, media_id)
                .await
                .map_err(database_error)?
                .ok_or_else(not_found)?;
            if media.quarantined {
                return Err(not_found());
            }
            if media.uploaded_ts.is_some() {
                return Ok(media);
            }
            let now = ganglion_base::clock::now_ms();
            if media.expires_ts.is_some_and(|at| at <= now) {
                return Err(not_found());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MatrixError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "M_NOT_YET_UPLOADED",
                    "The media has not been uploaded yet",
                ));
            }
            let next = deadline.min(tokio::time::Instant::now() + WAIT_POLL);
            let _ = tokio::time::timeout_at(next, filled.changed()).await;
        }
    }

    /// The row of the media a path names, once it holds its bytes, if this
    /// endpoint serves it: local media, or another server's, fetched if
    /// it is not kept here yet (the authenticated endpoints only).
    pub(crate) async fn media_of(
        &self,
        path: &MediaPath,
        uri: &Uri,
        access: Access,
    ) -> Result<Media, MatrixError> {
        // Nothing is served unauthenticated without a freeze moment: no
        // need to look (or wait).
        if let Access::Unauthenticated(None) = access {
            return Err(not_found());
        }
        let media = if path.server_name == self.server_name {
            self.uploaded(&path.media_id, self.wait_for(uri)).await?
        } else if let Access::Unauthenticated(_) = access {
            // The deprecated endpoints never fetch (so `allow_remote` is
            // always honoured): they serve what was fetched before the
            // freeze.
            self.storage
                .media(&path.server_name, &path.media_id)
                .await
                .map_err(database_error)?
                .filter(|media| !media.quarantined && media.uploaded_ts.is_some())
                .ok_or_else(not_found)?
        } else {
            self.remote_media(&path.server_name, &path.media_id, self.wait_for(uri))
                .await?
        };
        // Media fetched from another server counts from when it came.
        if let Access::Unauthenticated(before) = access
            && before.is_none_or(|before| (media.created_ts as u64) >= before)
        {
            return Err(not_found());
        }
        Ok(media)
    }

    async fn serve(&self, path: MediaPath, uri: &Uri, access: Access) -> MatrixResult {
        let media = self.media_of(&path, uri, access).await?;
        let file = self
            .file_of(&path.media_id, &media, path.file_name.as_deref())
            .await?;
        Ok(content::answer(
            Body::from_stream(file.blob.bytes),
            file.blob.size,
            &file.content_type,
            file.disposition,
        ))
    }

    /// What a download of `media` answers with: its bytes, its type, and
    /// its disposition (named `file_name` when the path gives one).
    pub(crate) async fn file_of(
        &self,
        media_id: &str,
        media: &Media,
        file_name: Option<&str>,
    ) -> Result<File, MatrixError> {
        let hash = media
            .sha256
            .as_deref()
            .and_then(BlobHash::parse)
            .ok_or_else(not_found)?;
        let Some(blob) = self.store.get(&hash).await.map_err(store_error)? else {
            tracing::error!(media_id, "media without its blob in the store");
            return Err(not_found());
        };
        if media.size.is_some_and(|size| size as u64 != blob.size) {
            tracing::error!(media_id, "a blob's size differs from its record");
        }
        let content_type = media
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let inline = content::inline(Some(&content_type), media.sniffed_type.as_deref());
        let name = file_name
            .and_then(content::file_name)
            .or(media.upload_name.clone());
        Ok(File {
            blob,
            disposition: content::disposition(inline, name.as_deref()),
            content_type,
        })
    }
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`
/// (guests too, since Matrix 1.12).
pub(crate) async fn download(
    State(api): State<Arc<MediaApi>>,
    UserOrGuest(_device): UserOrGuest,
    path: MediaPath,
    uri: Uri,
) -> MatrixResult {
    api.serve(path, &uri, Access::Authenticated).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}]`,
/// deprecated and unauthenticated: only media from before the freeze.
pub(crate) async fn legacy_download(
    State(api): State<Arc<MediaApi>>,
    path: MediaPath,
    uri: Uri,
) -> MatrixResult {
    let before = api.config.unauthenticated_before_ms;
    api.serve(path, &uri, Access::Unauthenticated(before)).await
}
