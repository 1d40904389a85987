//! Other servers' media, fetched when a local user asks for it: over the
//! federation media API (`/_matrix/federation/v1/media/download`, signed
//! through the federationapi, which holds the key), or, for a server that
//! does not know that endpoint (404 or 405 `M_UNRECOGNIZED`), its
//! deprecated `/_matrix/media/v3/download` with `allow_remote=false`. The
//! bytes stream into the blob store under the upload limit (past it: 502
//! `M_TOO_LARGE`) and the media is kept like local media, so it is served
//! from here afterwards and thumbnailed here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use futures::StreamExt;
use ganglion_api::federation::FederationHandle;
use ganglion_api::proto::federationapi as pb;
use ganglion_base::MatrixError;
use ganglion_base::http::percent_encode;
use ganglion_outbound::{FederationClient, FederationError, Signer};

use crate::MediaApi;
use crate::content;
use crate::multipart;
use crate::one_at_a_time::OneAtATime;
use crate::routes::{database_error, not_found, store_error};
use crate::storage::{Media, Upload};
use crate::store::StoreError;

/// How many fetches of other servers' media one process makes at once.
const FETCHES: usize = 32;
/// The longest a fetch may take once the remote has the bytes.
const TRANSFER_TIME: Duration = Duration::from_secs(300);

/// Signs through the federationapi: the mediaapi does not hold the key.
struct SignedByFederationApi(FederationHandle);

#[async_trait]
impl Signer for SignedByFederationApi {
    async fn authorization(
        &self,
        destination: &ruma::ServerName,
        method: &http::Method,
        uri: &str,
        _body: &[u8],
    ) -> Result<http::HeaderValue, String> {
        let signed = self
            .0
            .sign_request(pb::SignRequestRequest {
                destination: destination.to_string(),
                method: method.to_string(),
                uri: uri.to_owned(),
            })
            .await
            .map_err(|e| e.to_string())?;
        http::HeaderValue::from_str(&signed.authorization).map_err(|e| e.to_string())
    }
}

/// What the mediaapi needs to reach other servers.
pub(crate) struct Remote {
    federation: FederationClient,
    /// Fetches under way in this process, by MXC URI: a second request
    /// for the same media waits for the first.
    fetching: OneAtATime,
    turns: tokio::sync::Semaphore,
}

impl Remote {
    pub(crate) fn new(
        config: &ganglion_base::Config,
        federation: FederationHandle,
    ) -> Result<Remote, ganglion_outbound::BuildError> {
        Ok(Remote {
            federation: FederationClient::new(config, Arc::new(SignedByFederationApi(federation)))?,
            fetching: OneAtATime::default(),
            turns: tokio::sync::Semaphore::new(FETCHES),
        })
    }
}

/// What a fetch brings: the remote's type and file name, and the bytes.
struct Fetched {
    content_type: Option<String>,
    upload_name: Option<String>,
    bytes: crate::store::ByteStream,
    /// The length the answer declares, if it does.
    declared: Option<u64>,
}

/// 502 `M_TOO_LARGE`: the remote's media is larger than this server takes.
fn too_large() -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_GATEWAY,
        "M_TOO_LARGE",
        "The remote media is larger than this server takes",
    )
}

fn unreachable(origin: &str, why: impl std::fmt::Display) -> MatrixError {
    tracing::debug!(origin, %why, "remote media not fetched");
    MatrixError::new(
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        format!("Could not fetch the media from {origin}"),
    )
}

/// Whether a remote's answer says it does not know the endpoint: 404 or
/// 405 without a JSON error or with `M_UNRECOGNIZED`, or 400
/// `M_UNRECOGNIZED` (older servers).
fn unrecognized(error: &FederationError) -> bool {
    let FederationError::Remote { status, body, .. } = error else {
        return false;
    };
    let errcode = body.get("errcode").and_then(|e| e.as_str());
    match status {
        404 | 405 => errcode.is_none_or(|e| e == "M_UNRECOGNIZED"),
        400 => errcode == Some("M_UNRECOGNIZED"),
        _ => false,
    }
}

/// What a remote's error means for the client.
fn remote_error(origin: &str, error: FederationError) -> MatrixError {
    match &error {
        FederationError::Remote { status: 404, .. } => not_found(),
        FederationError::Remote {
            status: 504, body, ..
        } if body.get("errcode").and_then(|e| e.as_str()) == Some("M_NOT_YET_UPLOADED") => {
            MatrixError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "M_NOT_YET_UPLOADED",
                "The media has not been uploaded yet",
            )
        }
        _ => unreachable(origin, error),
    }
}

impl MediaApi {
    /// The row of another server's media, fetched first unless it is kept
    /// here already.
    pub(crate) async fn remote_media(
        &self,
        origin: &str,
        media_id: &str,
        wait: Duration,
    ) -> Result<Media, MatrixError> {
        if let Some(media) = self.kept_remote(origin, media_id).await? {
            return Ok(media);
        }
        let key = format!("{origin}/{media_id}");
        self.remote
            .fetching
            .run(&key, async {
                if let Some(media) = self.kept_remote(origin, media_id).await? {
                    return Ok(media);
                }
                let _turn = self
                    .remote
                    .turns
                    .acquire()
                    .await
                    .map_err(|_| MatrixError::unknown("shutting down"))?;
                self.fetch(origin, media_id, wait).await?;
                self.kept_remote(origin, media_id)
                    .await?
                    .ok_or_else(not_found)
            })
            .await
    }

    /// Another server's media kept here, if it is (quarantined: 404).
    async fn kept_remote(
        &self,
        origin: &str,
        media_id: &str,
    ) -> Result<Option<Media>, MatrixError> {
        let Some(media) = self
            .storage
            .media(origin, media_id)
            .await
            .map_err(database_error)?
        else {
            return Ok(None);
        };
        if media.quarantined {
            return Err(not_found());
        }
        Ok(media.uploaded_ts.is_some().then_some(media))
    }

    /// Fetches `mxc://origin/media_id` and keeps it.
    async fn fetch(&self, origin: &str, media_id: &str, wait: Duration) -> Result<(), MatrixError> {
        let limit = self.config.max_upload_bytes;
        let timeout = wait + TRANSFER_TIME;
        let wait_ms = wait.as_millis();
        let id = percent_encode(media_id);
        let path = format!("/_matrix/federation/v1/media/download/{id}?timeout_ms={wait_ms}");
        let fetched = match self
            .remote
            .federation
            .get_stream(origin, &path, timeout)
            .await
        {
            Ok(response) => self.file_of_multipart(origin, response).await?,
            Err(error) if unrecognized(&error) => {
                let origin_path = percent_encode(origin);
                let path = format!(
                    "/_matrix/media/v3/download/{origin_path}/{id}?allow_remote=false&timeout_ms={wait_ms}"
                );
                let response = self
                    .remote
                    .federation
                    .get_unsigned_stream(origin, &path, timeout)
                    .await
                    .map_err(|e| remote_error(origin, e))?;
                plain(response)
            }
            Err(error) => return Err(remote_error(origin, error)),
        };
        if fetched.declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let stored = self
            .store
            .put(fetched.bytes, limit)
            .await
            .map_err(|error| match error {
                StoreError::TooLarge(_) => too_large(),
                StoreError::Body(error) => unreachable(origin, error),
                error => store_error(error),
            })?;
        let sniffed_type = content::sniff(&stored.head);
        self.storage
            .insert_fetched(
                origin,
                media_id,
                &Upload {
                    user_id: None,
                    content_type: fetched.content_type.as_deref(),
                    sniffed_type,
                    upload_name: fetched.upload_name.as_deref(),
                    size: stored.size,
                    sha256: stored.hash.as_str(),
                },
                ganglion_base::clock::now_ms(),
            )
            .await
            .map_err(database_error)?;
        self.pregenerate(
            origin.to_owned(),
            media_id.to_owned(),
            sniffed_type,
            stored.hash,
        );
        Ok(())
    }

    /// The file of a federation media answer: its part's bytes, or those
    /// at the `Location` it gives.
    async fn file_of_multipart(
        &self,
        origin: &str,
        response: reqwest::Response,
    ) -> Result<Fetched, MatrixError> {
        let limit = self.config.max_upload_bytes;
        let boundary = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(multipart::boundary_of)
            .ok_or_else(|| unreachable(origin, "the answer is not multipart/mixed"))?;
        // The whole answer: the file, and room for the metadata and headers.
        if response
            .content_length()
            .is_some_and(|n| n > limit.saturating_add(multipart::MAX_METADATA as u64 * 2))
        {
            return Err(too_large());
        }
        let source = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        let (_metadata, part) = multipart::read(source.boxed(), &boundary)
            .await
            .map_err(|e| unreachable(origin, e))?;
        if let Some(location) = multipart::header(&part.headers, "location") {
            let response = self
                .guarded
                .get(location, TRANSFER_TIME)
                .await
                .map_err(|e| unreachable(origin, e))?;
            if !response.status().is_success() {
                return Err(unreachable(
                    origin,
                    format!("its Location answered {}", response.status()),
                ));
            }
            return Ok(plain(response));
        }
        Ok(Fetched {
            content_type: multipart::header(&part.headers, "content-type")
                .and_then(content::type_of),
            upload_name: multipart::header(&part.headers, "content-disposition")
                .and_then(content::file_name_in_disposition),
            bytes: part.bytes,
            declared: None,
        })
    }
}

/// The file of a plain answer (a `Location`'s, or the deprecated
/// download's): its body, type and file name.
fn plain(response: reqwest::Response) -> Fetched {
    let header = |name: http::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(http::header::CONTENT_TYPE)
        .as_deref()
        .and_then(content::type_of);
    let upload_name = header(http::header::CONTENT_DISPOSITION)
        .as_deref()
        .and_then(content::file_name_in_disposition);
    let declared = response.content_length();
    Fetched {
        content_type,
        upload_name,
        declared,
        bytes: response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn remote(status: u16, body: serde_json::Value) -> FederationError {
        FederationError::Remote {
            server: "remote.test".into(),
            status,
            body,
        }
    }

    /// The deprecated download is tried only when the remote does not know
    /// the federation endpoint, never when it does not know the media.
    #[test]
    fn only_an_unknown_endpoint_falls_back() {
        assert!(unrecognized(&remote(
            404,
            json!({"errcode": "M_UNRECOGNIZED"})
        )));
        assert!(unrecognized(&remote(
            405,
            json!({"errcode": "M_UNRECOGNIZED"})
        )));
        assert!(unrecognized(&remote(404, serde_json::Value::Null)));
        assert!(unrecognized(&remote(
            400,
            json!({"errcode": "M_UNRECOGNIZED"})
        )));
        assert!(!unrecognized(&remote(
            404,
            json!({"errcode": "M_NOT_FOUND"})
        )));
        assert!(!unrecognized(&remote(400, json!({"errcode": "M_UNKNOWN"}))));
        assert!(!unrecognized(&remote(
            500,
            json!({"errcode": "M_UNRECOGNIZED"})
        )));
        assert!(!unrecognized(&FederationError::Request(
            "remote.test".into(),
            "refused".into()
        )));
    }

    #[test]
    fn remote_errors_reach_the_client_as_the_spec_says() {
        let status = |e: FederationError| {
            let error = remote_error("remote.test", e);
            (error.status.as_u16(), error.errcode)
        };
        assert_eq!(
            status(remote(404, json!({"errcode": "M_NOT_FOUND"}))),
            (404, "M_NOT_FOUND")
        );
        assert_eq!(
            status(remote(504, json!({"errcode": "M_NOT_YET_UPLOADED"}))),
            (504, "M_NOT_YET_UPLOADED")
        );
        assert_eq!(status(remote(500, json!({}))), (502, "M_UNKNOWN"));
        assert_eq!(
            status(remote(429, json!({"errcode": "M_LIMIT_EXCEEDED"}))),
            (502, "M_UNKNOWN")
        );
    }
}
