//! URL previews: `GET /_matrix/client/v1/media/preview_url?url=…` (and the
//! deprecated `/_matrix/media/v3/preview_url`), when `media.url_previews`
//! is on. The page is fetched through the outbound guard (the deny list
//! checked after DNS and on every redirect, at most
//! `media.url_preview_max_bytes` read, `media.url_preview_timeout_ms`
//! for the whole fetch); its OpenGraph properties are read (`html.rs`),
//! and its image, fetched the same way, becomes media of this server. A
//! link to an image is previewed as that image. Previews are kept for a
//! day (shared by replicas), and one URL is fetched once at a time here.

pub(crate) mod html;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use futures::StreamExt;
use ganglion_api::users::User;
use ganglion_base::MatrixError;
use ganglion_base::http::{MatrixResult, ok_json, query_values};
use ganglion_outbound::GuardedError;
use serde_json::{Value, json};

use crate::MediaApi;
use crate::content;
use crate::one_at_a_time::OneAtATime;
use crate::routes::{database_error, store_error};
use crate::storage::Upload;
use crate::store::StoreError;

/// How long a preview is kept.
const KEEP_FOR_MS: i64 = 24 * 3600 * 1000;
/// The longest URL previewed.
const MAX_URL: usize = 2048;

/// What previews need beyond the media service's own.
pub(crate) struct Previews {
    /// URLs being fetched here: a second request for one waits.
    fetching: OneAtATime,
    /// The longest a page (or its image) may take.
    timeout: Duration,
}

impl Previews {
    pub(crate) fn new(config: &ganglion_base::Config) -> Previews {
        Previews {
            fetching: OneAtATime::default(),
            timeout: Duration::from_millis(config.media.url_preview_timeout_ms),
        }
    }
}

fn bad_url(why: &str) -> MatrixError {
    MatrixError::invalid_param(format!("url: {why}"))
}

fn not_fetched(why: impl std::fmt::Display) -> MatrixError {
    tracing::debug!(%why, "no preview");
    MatrixError::new(
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        "The page could not be fetched for a preview",
    )
}

fn guarded_error(error: GuardedError) -> MatrixError {
    match error {
        GuardedError::Denied(_) => MatrixError::forbidden("This address may not be previewed"),
        GuardedError::BadUrl(_) => bad_url("not an http(s) URL"),
        GuardedError::Request(error) => {
            // A resolver refusal (every address denied) is a denial too.
            let denied = std::iter::successors(std::error::Error::source(&error), |e| e.source())
                .any(|e| {
                    e.downcast_ref::<ganglion_outbound::DiscoveryError>()
                        .is_some()
                });
            if denied {
                MatrixError::forbidden("This address may not be previewed")
            } else {
                not_fetched(error)
            }
        }
    }
}

/// The URL a request asks to preview: http(s), with a host, no fragment.
fn asked_url(uri: &Uri) -> Result<url::Url, MatrixError> {
    let asked = query_values(uri, "url")
        .into_iter()
        .next()
        .ok_or_else(|| MatrixError::missing_param("url is required"))?;
    if asked.len() > MAX_URL {
        return Err(bad_url("too long"));
    }
    let mut url = url::Url::parse(&asked).map_err(|_| bad_url("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad_url("not an http(s) URL"));
    }
    url.set_fragment(None);
    Ok(url)
}

/// Reads at most `limit` bytes of a body; whether it had more.
async fn read_up_to(
    response: reqwest::Response,
    limit: u64,
) -> Result<(Vec<u8>, bool), MatrixError> {
    let mut bytes = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(not_fetched)?;
        let room = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(bytes.len());
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok((bytes, true));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, false))
}

fn essence_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(content::type_of)
        .map(|t| t.split(';').next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default()
}

impl MediaApi {
    /// The preview of `url`: kept, or made now (counted against `user_id`'s
    /// rate limit).
    async fn preview(&self, url: &url::Url, user_id: &str) -> Result<Value, MatrixError> {
        let key = url.as_str();
        let now = ganglion_base::clock::now_ms();
        if let Some(kept) = self
            .storage
            .preview(key, now)
            .await
            .map_err(database_error)?
        {
            return Ok(kept);
        }
        self.previews
            .fetching
            .run(key, async {
                if let Some(kept) = self
                    .storage
                    .preview(key, now)
                    .await
                    .map_err(database_error)?
                {
                    return Ok(kept);
                }
                self.previews_limit.check(user_id)?;
                let preview = self.make_preview(url).await?;
                self.storage
                    .keep_preview(key, &preview, now, now + KEEP_FOR_MS)
                    .await
                    .map_err(database_error)?;
                Ok(preview)
            })
            .await
    }

    async fn make_preview(&self, url: &url::Url) -> Result<Value, MatrixError> {
        let response = self
            .guarded
            .get(url.as_str(), self.previews.timeout)
            .await
            .map_err(guarded_error)?;
        if !response.status().is_success() {
            return Err(not_fetched(format!("{url} answered {}", response.status())));
        }
        let essence = essence_of(&response);
        if essence.starts_with("image/") {
            let mut og = BTreeMap::new();
            self.keep_image(response, &mut og).await?;
            return Ok(json!(og));
        }
        if essence != "text/html" && essence != "application/xhtml+xml" {
            return Ok(json!({}));
        }
        // The page's final URL (after redirects) is what its links are
        // relative to.
        let base = response.url().clone();
        let (page, _cut) = read_up_to(response, self.config.url_preview_max_bytes).await?;
        let mut og = html::open_graph(&page, &base);
        if let Some(image) = og.remove("og:image") {
            // A preview without its image is still a preview.
            match self.guarded.get(&image, self.previews.timeout).await {
                Ok(response)
                    if response.status().is_success()
                        && essence_of(&response).starts_with("image/") =>
                {
                    if let Err(error) = self.keep_image(response, &mut og).await {
                        tracing::debug!(image, ?error, "a preview's image not kept");
                    }
                }
                Ok(response) => {
                    tracing::debug!(image, status = %response.status(), "a preview's image not fetched")
                }
                Err(error) => tracing::debug!(image, %error, "a preview's image not fetched"),
            }
        }
        Ok(json!(og))
    }

    /// Keeps an image as media of this server (no uploader) and describes
    /// it in `og`: `og:image` (its MXC URI), its type, size and dimensions.
    async fn keep_image(
        &self,
        response: reqwest::Response,
        og: &mut BTreeMap<String, String>,
    ) -> Result<(), MatrixError> {
        let limit = self.config.max_upload_bytes;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(not_fetched("the image is larger than uploads may be"));
        }
        let content_type = essence_of(&response);
        let bytes = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed();
        let stored = self
            .store
            .put(bytes, limit)
            .await
            .map_err(|error| match error {
                StoreError::TooLarge(_) | StoreError::Body(_) => not_fetched(error),
                error => store_error(error),
            })?;
        let sniffed = content::sniff(&stored.head);
        let media_id = crate::routes::new_media_id();
        self.storage
            .insert_uploaded(
                &self.server_name,
                &media_id,
                &Upload {
                    user_id: None,
                    content_type: Some(&content_type),
                    sniffed_type: sniffed,
                    upload_name: None,
                    size: stored.size,
                    sha256: stored.hash.as_str(),
                },
                ganglion_base::clock::now_ms(),
            )
            .await
            .map_err(database_error)?;
        if let Some((width, height)) = crate::thumbnail::dimensions(&stored.head) {
            og.insert("og:image:width".into(), width.to_string());
            og.insert("og:image:height".into(), height.to_string());
        }
        og.insert(
            "og:image".into(),
            format!("mxc://{}/{media_id}", self.server_name),
        );
        og.insert("og:image:type".into(), content_type);
        og.insert("matrix:image:size".into(), stored.size.to_string());
        self.pregenerate(self.server_name.clone(), media_id, sniffed, stored.hash);
        Ok(())
    }
}

/// `GET /_matrix/client/v1/media/preview_url` (and the deprecated
/// `/_matrix/media/v3/preview_url`): the page's OpenGraph properties, with
/// `matrix:image:size` and `og:image` an MXC URI when it has an image.
pub(crate) async fn preview_url(
    State(api): State<Arc<MediaApi>>,
    User(device): User,
    uri: Uri,
) -> MatrixResult {
    if !api.config.url_previews {
        return Err(MatrixError::unrecognized());
    }
    let url = asked_url(&uri)?;
    let preview = api.preview(&url, &device.user_id).await?;
    // Numbers are numbers in the answer (the spec's `matrix:image:size`,
    // and OpenGraph's dimensions as clients read them).
    let mut answer = serde_json::Map::new();
    if let Value::Object(properties) = preview {
        for (key, value) in properties {
            let number = matches!(
                key.as_str(),
                "matrix:image:size" | "og:image:width" | "og:image:height"
            )
            .then(|| value.as_str().and_then(|v| v.parse::<u64>().ok()))
            .flatten();
            answer.insert(key, number.map_or(value, Value::from));
        }
    }
    Ok(ok_json(Value::Object(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_previewed() {
        let uri = |url: &str| -> Uri {
            format!(
                "/preview_url?url={}",
                ganglion_base::http::percent_encode(url)
            )
            .parse()
            .expect("uri")
        };
        let url = asked_url(&uri("https://example.org/a?b=c#frag")).expect("taken");
        assert_eq!(url.as_str(), "https://example.org/a?b=c");
        for bad in [
            "ftp://example.org/",
            "javascript:alert(1)",
            "not a url",
            "file:///etc/passwd",
            "http://",
        ] {
            let error = asked_url(&uri(bad)).expect_err(bad);
            assert_eq!(error.errcode, "M_INVALID_PARAM", "{bad}");
        }
        let error = asked_url(&"/preview_url".parse().expect("uri")).expect_err("missing");
        assert_eq!(error.errcode, "M_MISSING_PARAM");
        let long = format!("https://example.org/{}", "a".repeat(MAX_URL));
        assert!(asked_url(&uri(&long)).is_err());
    }
}
