//! Requests that leave the deployment: to other Matrix servers (found by
//! server discovery, signed with `X-Matrix`) and, through the same guarded
//! connections, to anything else a service fetches on a user's behalf.
//!
//! - `discovery.rs`: where a server name's requests go (well-known files,
//!   SRV records, port 8448), and the IP deny list every outbound
//!   connection passes: addresses are checked after DNS resolution, and
//!   redirects are checked again ([`IpRanges`], [`checked_redirects`]).
//! - `federation.rs`: the [`FederationClient`] the federationapi and the
//!   mediaapi send with; how a request is signed is a [`Signer`] (the
//!   server's key where a service holds it, or a service that holds it).
//!
//! A library shared by services, not a service: it owns no data.
#![forbid(unsafe_code)]

pub mod discovery;
pub mod federation;

pub use discovery::{BadRange, DiscoveryError, IpRanges, checked_redirects};
pub use federation::{FederationClient, FederationError, KeySigner, Signer, json_answer};

/// Why an outbound client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("federation.ip_range_*: {0}")]
    Ranges(#[from] BadRange),
    #[error("the outbound HTTP client: {0}")]
    Http(String),
    #[error("server_name {0} is not a valid server name")]
    ServerName(String),
}

/// Why a body was not read whole.
#[derive(Debug)]
pub enum CappedError {
    /// It is longer than allowed (said so, or found so while reading).
    TooLarge,
    Http(reqwest::Error),
}

/// A response body of at most `limit` bytes, read chunk by chunk so a
/// body that lies about (or omits) its length cannot grow past it.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, CappedError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(CappedError::TooLarge);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(CappedError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(CappedError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A client for URLs other than servers' federation APIs (a file a
/// federation answer points to, a page to preview): it connects only to
/// addresses the configured ranges allow, checked after DNS resolution
/// (and before, for an IP literal), over HTTP(S), following at most five
/// redirects, each checked again.
pub struct GuardedClient {
    http: reqwest::Client,
    ranges: IpRanges,
}

/// Why a guarded request was not made or failed.
#[derive(Debug, thiserror::Error)]
pub enum GuardedError {
    #[error("not an http(s) URL: {0}")]
    BadUrl(String),
    #[error("{0} is an address outbound requests may not go to")]
    Denied(String),
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
}

impl GuardedClient {
    pub fn new(config: &ganglion_base::Config) -> Result<GuardedClient, BuildError> {
        let federation = &config.federation;
        let ranges = IpRanges::new(
            &federation.ip_range_denylist,
            &federation.ip_range_allowlist,
        )?;
        let http = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(discovery::AllowedAddresses {
                ranges: ranges.clone(),
                targets: std::sync::Arc::new(std::sync::Mutex::new(
                    ganglion_base::bounded::Bounded::new(1),
                )),
            }))
            .redirect(discovery::checked_redirects_for(
                ranges.clone(),
                &["https", "http"],
            ))
            .danger_accept_invalid_certs(!federation.verify_certificates)
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("Ganglion/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Http(e.to_string()))?;
        Ok(GuardedClient { http, ranges })
    }

    /// A GET of `url` that may take `timeout` in all (its body too); the
    /// answer, whatever its status, its body unread.
    pub async fn get(
        &self,
        url: &str,
        timeout: std::time::Duration,
    ) -> Result<reqwest::Response, GuardedError> {
        let parsed = self.allowed(url)?;
        Ok(self.http.get(parsed).timeout(timeout).send().await?)
    }

    /// A POST of `body` as JSON to `url` (a push gateway), as [`get`](Self::get).
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: std::time::Duration,
    ) -> Result<reqwest::Response, GuardedError> {
        let parsed = self.allowed(url)?;
        Ok(self
            .http
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(timeout)
            .send()
            .await?)
    }

    /// The URL, if it is http(s) and not an IP literal the ranges deny.
    fn allowed(&self, url: &str) -> Result<reqwest::Url, GuardedError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| GuardedError::BadUrl(url.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(GuardedError::BadUrl(url.to_owned()));
        }
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(GuardedError::BadUrl(url.to_owned())),
        };
        if literal.is_some_and(|ip| !self.ranges.allows(ip)) {
            return Err(GuardedError::Denied(url.to_owned()));
        }
        Ok(parsed)
    }
}
