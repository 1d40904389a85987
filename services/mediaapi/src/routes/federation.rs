//! The federation media API: this server's media for other servers
//! (`GET /_matrix/federation/v1/media/download/{mediaId}` and
//! `.../thumbnail/{mediaId}`), each answered as `multipart/mixed` with two
//! parts: the metadata (`{}`), then the file with its type and
//! disposition. Requests are signed by their origin (the signature checked
//! by the federationapi); only local media is served, and quarantined or
//! unknown media is not found, as for clients.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ganglion_api::proto::federationapi as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::MatrixResult;

use super::{not_found, valid_media_id};
use crate::MediaApi;
use crate::multipart;

/// The server that signed a request (its `X-Matrix` signature checked
/// through the federationapi); else 401 `M_UNAUTHORIZED`.
pub(crate) struct Origin;

impl FromRequestParts<Arc<MediaApi>> for Origin {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        api: &Arc<MediaApi>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized =
            |why: String| MatrixError::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", why);
        let Some(authorization) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(unauthorized("no X-Matrix authorization".into()));
        };
        let uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        let checked = api
            .federation
            .authenticate_request(pb::AuthenticateRequestRequest {
                method: parts.method.to_string(),
                uri,
                authorization: authorization.to_owned(),
                content: Vec::new(),
            })
            .await
            .map_err(MatrixError::from)?;
        match checked.origin {
            Some(origin) => {
                tracing::debug!(origin, "federation media request");
                Ok(Origin)
            }
            None => Err(unauthorized(checked.refusal)),
        }
    }
}

/// The media ID of a federation media path (no server name: ours).
pub(crate) struct FederationMediaId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for FederationMediaId {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(media_id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| not_found())?;
        if !valid_media_id(&media_id) {
            return Err(not_found());
        }
        Ok(FederationMediaId(media_id))
    }
}

/// A federation media answer around a file's `bytes` (`length` of them)
/// with these part headers, streamed.
fn multipart_answer(bytes: Body, length: u64, part_headers: &[(&str, &str)]) -> Response {
    let boundary = multipart::boundary();
    let head = multipart::head(&boundary, part_headers);
    let tail = multipart::tail(&boundary);
    let total = head.len() as u64 + length + tail.len() as u64;
    let stream = futures::stream::once(futures::future::ready(Ok::<_, axum::Error>(head)))
        .chain(bytes.into_data_stream())
        .chain(futures::stream::once(futures::future::ready(Ok(tail))));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    response
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`.
pub(crate) async fn download(
    State(api): State<Arc<MediaApi>>,
    _origin: Origin,
    FederationMediaId(media_id): FederationMediaId,
    uri: Uri,
) -> MatrixResult {
    let media = api.uploaded(&media_id, api.wait_for(&uri)).await?;
    let file = api.file_of(&media_id, &media, None).await?;
    let disposition = file.disposition.to_str().unwrap_or("attachment").to_owned();
    Ok(multipart_answer(
        Body::from_stream(file.blob.bytes),
        file.blob.size,
        &[
            ("Content-Type", &file.content_type),
            ("Content-Disposition", &disposition),
        ],
    ))
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`.
pub(crate) async fn thumbnail(
    State(api): State<Arc<MediaApi>>,
    _origin: Origin,
    FederationMediaId(media_id): FederationMediaId,
    uri: Uri,
) -> MatrixResult {
    let asked = super::thumbnail::asked(&uri)?;
    let media = api.uploaded(&media_id, api.wait_for(&uri)).await?;
    let (bytes, length, content_type) = api
        .thumbnail_of((&api.server_name, &media_id), &media, asked)
        .await?;
    let extension = content_type.rsplit('/').next().unwrap_or("png");
    let disposition = crate::content::disposition(true, Some(&format!("thumbnail.{extension}")));
    Ok(multipart_answer(
        bytes,
        length,
        &[
            ("Content-Type", &content_type),
            (
                "Content-Disposition",
                disposition.to_str().unwrap_or("inline"),
            ),
        ],
    ))
}
