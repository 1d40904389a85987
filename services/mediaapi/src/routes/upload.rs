//! Uploads: `POST /upload` (a new ID for new bytes), `POST /create` (an ID
//! now, its bytes later) and `PUT /upload/{serverName}/{mediaId}` (the
//! bytes of a created ID).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, ok_json, query_values};
use serde_json::json;

use super::{MediaPath, database_error, new_media_id, not_found, quota_exceeded, store_error};
use crate::MediaApi;
use crate::content;
use crate::storage::{CreateError, FillError, Upload};
use crate::store::{StoreError, Stored};

/// How many bytes this upload may bring, and whether that bound is the
/// user's quota (else the largest upload).
struct Allowance {
    bytes: u64,
    by_quota: bool,
}

impl Allowance {
    /// The error for an upload past the allowance.
    fn exceeded(&self) -> MatrixError {
        if self.by_quota {
            quota_exceeded()
        } else {
            MatrixError::too_large("The upload is larger than this server takes")
        }
    }
}

/// An upload taken into the store, with what it was declared as.
struct Received {
    stored: Stored,
    content_type: Option<String>,
    sniffed_type: Option<&'static str>,
    upload_name: Option<String>,
}

impl Received {
    fn upload<'a>(&'a self, user_id: &'a str) -> Upload<'a> {
        Upload {
            user_id: Some(user_id),
            content_type: self.content_type.as_deref(),
            sniffed_type: self.sniffed_type,
            upload_name: self.upload_name.as_deref(),
            size: self.stored.size,
            sha256: self.stored.hash.as_str(),
        }
    }
}

impl MediaApi {
    fn mxc(&self, media_id: &str) -> String {
        format!("mxc://{}/{media_id}", self.server_name)
    }

    /// What `user_id` may upload now: the largest upload, or less when the
    /// quota has less left (none left: 403 `M_RESOURCE_LIMIT_EXCEEDED`).
    async fn allowance(&self, user_id: &str) -> Result<Allowance, MatrixError> {
        let largest = self.config.max_upload_bytes;
        let quota = self.config.user_quota_bytes;
        if quota == 0 {
            return Ok(Allowance {
                bytes: largest,
                by_quota: false,
            });
        }
        let used = self.storage.usage(user_id).await.map_err(database_error)?;
        let left = quota.saturating_sub(used);
        if left == 0 {
            return Err(quota_exceeded());
        }
        Ok(Allowance {
            bytes: left.min(largest),
            by_quota: left < largest,
        })
    }

    /// Streams a request's body into the store within the user's allowance
    /// (a declared length past it is refused before anything is read).
    async fn receive(&self, user_id: &str, request: Request) -> Result<Received, MatrixError> {
        let (parts, body) = request.into_parts();
        let allowance = self.allowance(user_id).await?;
        if let Some(declared) = declared_length(&parts.headers)
            && declared > allowance.bytes
        {
            return Err(allowance.exceeded());
        }
        let content_type = content::declared_type(&parts.headers);
        let upload_name = query_values(&parts.uri, "filename")
            .first()
            .and_then(|name| content::file_name(name));
        let bytes = ganglion_base::http::limited_body(body, allowance.bytes).boxed();
        let stored = self
            .store
            .put(bytes, allowance.bytes)
            .await
            .map_err(|error| match error {
                StoreError::TooLarge(_) => allowance.exceeded(),
                StoreError::Body(error) if ganglion_base::http::is_body_too_large(&error) => {
                    allowance.exceeded()
                }
                StoreError::Body(error) => {
                    tracing::debug!(%error, "an upload was cut short");
                    MatrixError::new(
                        StatusCode::BAD_REQUEST,
                        "M_UNKNOWN",
                        "The upload was cut short",
                    )
                }
                error => store_error(error),
            })?;
        let sniffed_type = content::sniff(&stored.head);
        Ok(Received {
            stored,
            content_type,
            sniffed_type,
            upload_name,
        })
    }
}

/// The `Content-Length` a request declares, if any.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `POST /_matrix/media/v3/upload`.
pub(crate) async fn upload(
    State(api): State<Arc<MediaApi>>,
    User(device): User,
    request: Request,
) -> MatrixResult {
    api.uploads_limit.check(&device.user_id)?;
    let received = api.receive(&device.user_id, request).await?;
    let media_id = new_media_id();
    api.storage
        .insert_uploaded(
            &api.server_name,
            &media_id,
            &received.upload(&device.user_id),
            ganglion_base::clock::now_ms(),
        )
        .await
        .map_err(database_error)?;
    tracing::info!(media_id, size = received.stored.size, "media uploaded");
    let content_uri = api.mxc(&media_id);
    api.pregenerate(
        api.server_name.clone(),
        media_id,
        received.sniffed_type,
        received.stored.hash,
    );
    Ok(ok_json(json!({ "content_uri": content_uri })))
}

/// `POST /_matrix/media/v1/create`: an ID whose bytes come later, within
/// the configured expiry; a user holds a bounded number of them.
pub(crate) async fn create(
    State(api): State<Arc<MediaApi>>,
    User(device): User,
    request: Request,
) -> MatrixResult {
    api.uploads_limit.check(&device.user_id)?;
    // The body says nothing (`{}` at most); read so the connection stays
    // usable, within a small bound.
    let _ = axum::body::to_bytes(request.into_body(), 64 * 1024).await;
    let media_id = new_media_id();
    let now = ganglion_base::clock::now_ms();
    let expires = now.saturating_add(api.config.pending_upload_expiry_ms as i64);
    match api
        .storage
        .create_pending(
            (&api.server_name, &media_id),
            &device.user_id,
            (now, expires),
            api.config.max_pending_uploads,
        )
        .await
    {
        Ok(()) => Ok(ok_json(json!({
            "content_uri": api.mxc(&media_id),
            "unused_expires_at": expires,
        }))),
        Err(CreateError::TooMany { retry_after_ms }) => {
            Err(MatrixError::limit_exceeded(retry_after_ms))
        }
        Err(CreateError::Database(error)) => Err(database_error(error)),
    }
}

fn fill_error(error: FillError) -> MatrixError {
    match error {
        FillError::Unknown => MatrixError::not_found("Unknown or expired media ID"),
        FillError::NotYours => MatrixError::forbidden("Another user created this media ID"),
        FillError::Uploaded => MatrixError::new(
            StatusCode::CONFLICT,
            "M_CANNOT_OVERWRITE_MEDIA",
            "This media ID already has content",
        ),
        FillError::Database(error) => database_error(error),
    }
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: the bytes of an
/// ID made with `/create`, by the user who made it, once.
pub(crate) async fn upload_to(
    State(api): State<Arc<MediaApi>>,
    User(device): User,
    path: MediaPath,
    request: Request,
) -> MatrixResult {
    if path.server_name != api.server_name {
        return Err(not_found());
    }
    let id = (api.server_name.as_str(), path.media_id.as_str());
    let now = ganglion_base::clock::now_ms();
    api.storage
        .may_fill(id, &device.user_id, now)
        .await
        .map_err(fill_error)?;
    let received = api.receive(&device.user_id, request).await?;
    api.storage
        .fill_pending(
            id,
            &received.upload(&device.user_id),
            ganglion_base::clock::now_ms(),
        )
        .await
        .map_err(fill_error)?;
    api.filled.send_modify(|n| *n += 1);
    api.pregenerate(
        path.server_name,
        path.media_id,
        received.sniffed_type,
        received.stored.hash,
    );
    Ok(ok_json(json!({})))
}
