//! Thumbnails: `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
//! and the deprecated unauthenticated one (frozen like downloads). Sizes
//! asked for are met by the configured sizes (`media.thumbnail_sizes`,
//! made when an image is uploaded and kept): the smallest that is at least
//! as large; a larger request than any of them is made on the spot and not
//! kept, so no client can fill the store with sizes of its choosing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use ganglion_api::users::UserOrGuest;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, query_values};

use super::{Access, MediaPath, database_error, store_error};
use crate::MediaApi;
use crate::storage::Media;
use crate::store::BlobHash;
use crate::thumbnail::{self, Method, Size, Thumbnail, ThumbnailError};

/// What a thumbnail request asks for.
pub(crate) struct Asked {
    size: Size,
    animated: bool,
}

fn dimension(uri: &Uri, name: &str) -> Result<u32, MatrixError> {
    let value = query_values(uri, name)
        .into_iter()
        .next()
        .ok_or_else(|| MatrixError::missing_param(format!("{name} is required")))?;
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(MatrixError::invalid_param(format!(
            "{name} must be a positive integer"
        ))),
    }
}

pub(crate) fn asked(uri: &Uri) -> Result<Asked, MatrixError> {
    let width = dimension(uri, "width")?;
    let height = dimension(uri, "height")?;
    let method = match query_values(uri, "method").into_iter().next() {
        None => Method::Scale,
        Some(method) => Method::parse(&method)
            .ok_or_else(|| MatrixError::invalid_param("method is crop or scale"))?,
    };
    let animated = query_values(uri, "animated")
        .into_iter()
        .next()
        .is_some_and(|v| v == "true");
    Ok(Asked {
        size: Size {
            width,
            height,
            method,
        },
        animated,
    })
}

/// The configured size that meets `asked` (the smallest of its method at
/// least as large in both directions), if one does.
pub(crate) fn configured_for(sizes: &[Size], asked: Size) -> Option<Size> {
    sizes
        .iter()
        .filter(|s| s.method == asked.method && s.width >= asked.width && s.height >= asked.height)
        .min_by_key(|s| u64::from(s.width) * u64::from(s.height))
        .copied()
}

fn thumbnail_error(error: ThumbnailError) -> MatrixError {
    match error {
        ThumbnailError::TooLarge => MatrixError::too_large("The image is too large to thumbnail"),
        ThumbnailError::Unsupported | ThumbnailError::Broken(_) => MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Cannot generate thumbnails for the requested content",
        ),
    }
}

/// A thumbnail's answer: always inline, named for its type.
fn image_response(bytes: Body, length: u64, content_type: &str) -> Response {
    let extension = content_type.rsplit('/').next().unwrap_or("png");
    crate::content::answer(
        bytes,
        length,
        content_type,
        crate::content::disposition(true, Some(&format!("thumbnail.{extension}"))),
    )
}

impl MediaApi {
    /// A blob's bytes, whole (images to thumbnail, bounded by the upload
    /// limit).
    pub(crate) async fn read_blob(&self, hash: &BlobHash) -> Result<Option<Bytes>, MatrixError> {
        use futures::StreamExt;
        let Some(mut blob) = self.store.get(hash).await.map_err(store_error)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
        while let Some(chunk) = blob.bytes.next().await {
            let chunk = chunk.map_err(|e| store_error(crate::store::StoreError::Body(e)))?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(Bytes::from(bytes)))
    }

    /// A turn to thumbnail: held from reading the original to the last
    /// thumbnail made of it, so at most `media.thumbnail_workers` originals
    /// and their decoded pixels are in memory at once.
    async fn thumbnail_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, MatrixError> {
        self.thumbnailing
            .acquire()
            .await
            .map_err(|_| MatrixError::unknown("shutting down"))
    }

    /// Makes a thumbnail off the async runtime (the caller holds a
    /// [`MediaApi::thumbnail_turn`]).
    async fn make_thumbnail(
        &self,
        original: Bytes,
        size: Size,
        animated: bool,
    ) -> Result<Option<Thumbnail>, MatrixError> {
        let max_pixels = self.config.max_thumbnail_pixels;
        tokio::task::spawn_blocking(move || thumbnail::make(&original, size, animated, max_pixels))
            .await
            .map_err(|_| MatrixError::unknown("thumbnailing failed"))?
            .map_err(thumbnail_error)
    }

    /// Makes and keeps the configured thumbnails of a new image (after
    /// its upload is answered).
    pub(crate) fn pregenerate(
        &self,
        origin: String,
        media_id: String,
        sniffed: Option<&str>,
        hash: BlobHash,
    ) {
        if !thumbnail::can_thumbnail(sniffed) || self.thumbnail_sizes.is_empty() {
            return;
        }
        let Some(api) = self.this.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let Ok(_turn) = api.thumbnail_turn().await else {
                return;
            };
            let Ok(Some(original)) = api.read_blob(&hash).await else {
                return;
            };
            for size in api.thumbnail_sizes.clone() {
                if let Err(error) = api
                    .keep_thumbnail((&origin, &media_id), original.clone(), size, false)
                    .await
                {
                    tracing::debug!(media_id, ?error, "no thumbnail made");
                    return;
                }
            }
        });
    }

    /// Makes a configured thumbnail and keeps it; `None` when the image is
    /// its own thumbnail at that size.
    async fn keep_thumbnail(
        &self,
        (origin, media_id): (&str, &str),
        original: Bytes,
        size: Size,
        animated: bool,
    ) -> Result<Option<Thumbnail>, MatrixError> {
        let Some(made) = self.make_thumbnail(original, size, animated).await? else {
            return Ok(None);
        };
        let stored = self
            .store
            .put(
                Box::pin(futures::stream::once(futures::future::ready(Ok::<
                    Bytes,
                    std::io::Error,
                >(
                    Bytes::from(made.bytes.clone()),
                )))),
                u64::MAX,
            )
            .await
            .map_err(store_error)?;
        self.storage
            .insert_thumbnail(
                (origin, media_id),
                (size, animated),
                made.content_type,
                stored.size,
                stored.hash.as_str(),
            )
            .await
            .map_err(database_error)?;
        Ok(Some(made))
    }

    async fn serve_thumbnail(&self, path: MediaPath, uri: &Uri, access: Access) -> MatrixResult {
        let asked = asked(uri)?;
        let media: Media = self.media_of(&path, uri, access).await?;
        let (bytes, length, content_type) = self
            .thumbnail_of((&path.server_name, &path.media_id), &media, asked)
            .await?;
        Ok(image_response(bytes, length, &content_type))
    }

    /// The thumbnail `asked` of `media` (which holds its bytes): kept, made
    /// and kept, or made to measure; its bytes, length and type.
    pub(crate) async fn thumbnail_of(
        &self,
        (origin, media_id): (&str, &str),
        media: &Media,
        asked: Asked,
    ) -> Result<(Body, u64, String), MatrixError> {
        let sniffed = media.sniffed_type.as_deref();
        if !thumbnail::can_thumbnail(sniffed) {
            return Err(thumbnail_error(ThumbnailError::Unsupported));
        }
        // Only a GIF or a WebP can be animated (a still WebP asked
        // animated is made still, and kept as such).
        let animated = asked.animated && matches!(sniffed, Some("image/gif" | "image/webp"));
        let configured = configured_for(&self.thumbnail_sizes, asked.size);
        if let Some(size) = configured
            && let Some((content_type, sha256)) = self
                .storage
                .thumbnail((origin, media_id), (size, animated))
                .await
                .map_err(database_error)?
            && let Some(hash) = BlobHash::parse(&sha256)
            && let Some(blob) = self.store.get(&hash).await.map_err(store_error)?
        {
            return Ok((Body::from_stream(blob.bytes), blob.size, content_type));
        }
        let hash = media
            .sha256
            .as_deref()
            .and_then(BlobHash::parse)
            .ok_or_else(super::not_found)?;
        let _turn = self.thumbnail_turn().await?;
        let original = self.read_blob(&hash).await?.ok_or_else(super::not_found)?;
        let made = match configured {
            Some(size) => {
                self.keep_thumbnail((origin, media_id), original.clone(), size, animated)
                    .await?
            }
            None => {
                self.make_thumbnail(original.clone(), asked.size, animated)
                    .await?
            }
        };
        Ok(match made {
            Some(made) => {
                let length = made.bytes.len() as u64;
                (Body::from(made.bytes), length, made.content_type.to_owned())
            }
            // Smaller than asked: the original, as the image it is.
            None => {
                let length = original.len() as u64;
                (
                    Body::from(original),
                    length,
                    sniffed.unwrap_or("application/octet-stream").to_owned(),
                )
            }
        })
    }
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
pub(crate) async fn thumbnail(
    State(api): State<Arc<MediaApi>>,
    UserOrGuest(_device): UserOrGuest,
    path: MediaPath,
    uri: Uri,
) -> MatrixResult {
    api.serve_thumbnail(path, &uri, Access::Authenticated).await
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}`, deprecated
/// and unauthenticated: only media from before the freeze.
pub(crate) async fn legacy_thumbnail(
    State(api): State<Arc<MediaApi>>,
    path: MediaPath,
    uri: Uri,
) -> MatrixResult {
    let before = api.config.unauthenticated_before_ms;
    api.serve_thumbnail(path, &uri, Access::Unauthenticated(before))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_sizes_meet_the_smallest_configured_one_that_is_as_large() {
        let sizes = crate::default_thumbnail_sizes();
        let crop = |w, h| Size {
            width: w,
            height: h,
            method: Method::Crop,
        };
        let scale = |w, h| Size {
            width: w,
            height: h,
            method: Method::Scale,
        };
        assert_eq!(configured_for(&sizes, crop(20, 20)), Some(crop(32, 32)));
        assert_eq!(configured_for(&sizes, crop(50, 40)), Some(crop(96, 96)));
        assert_eq!(
            configured_for(&sizes, scale(100, 100)),
            Some(scale(320, 240))
        );
        assert_eq!(
            configured_for(&sizes, scale(700, 300)),
            Some(scale(800, 600))
        );
        // Larger than any: made on the spot, not kept.
        assert_eq!(configured_for(&sizes, scale(2000, 10)), None);
        assert_eq!(configured_for(&sizes, crop(100, 100)), None);
    }
}
