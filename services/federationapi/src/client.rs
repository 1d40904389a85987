//! Outbound federation requests: discovered destinations, TLS, and an
//! `X-Matrix` signature on every authenticated request.

use ganglion_base::bounded::Bounded;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_api::ApiError;
use ganglion_base::keys::SigningKey;
use ruma::OwnedServerName;
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use serde_json::Value;

use crate::discovery::{AllowedAddresses, Discovery, DiscoveryError, IpRanges};

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FederationError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Connecting, TLS, or the response did not arrive in time.
    #[error("request to {0} failed: {1}")]
    Request(String, String),
    /// The remote server answered with an error.
    #[error("{server} answered {status}: {body}")]
    Remote {
        server: String,
        status: u16,
        body: Value,
    },
    /// The remote server answered with something that is not its API.
    #[error("{0}: unexpected response: {1}")]
    BadResponse(String, String),
    /// This server's request could not be built or signed.
    #[error("signing the request: {0}")]
    Signing(String),
}

impl FederationError {
    /// The remote server's Matrix error code, if it answered with one.
    pub(crate) fn errcode(&self) -> Option<&str> {
        match self {
            FederationError::Remote { body, .. } => body["errcode"].as_str(),
            _ => None,
        }
    }
}

impl From<FederationError> for ApiError {
    fn from(error: FederationError) -> Self {
        match &error {
            FederationError::Remote { status: 404, .. } => ApiError::NotFound(error.to_string()),
            FederationError::Discovery(DiscoveryError::BadName(_)) => {
                ApiError::InvalidInput(error.to_string())
            }
            _ => ApiError::Unavailable(error.to_string()),
        }
    }
}

/// Sends requests to other servers as this one.
pub(crate) struct FederationClient {
    server_name: OwnedServerName,
    key: Arc<SigningKey>,
    discovery: Discovery,
    http: reqwest::Client,
    /// Shared with the resolver `http` connects through.
    targets: Arc<Mutex<Bounded<String, String>>>,
}

/// The longest a response body may be.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl FederationClient {
    pub(crate) fn new(
        config: &ganglion_base::Config,
        key: Arc<SigningKey>,
    ) -> Result<FederationClient, crate::StartError> {
        let federation = &config.federation;
        let ranges = IpRanges::new(
            &federation.ip_range_denylist,
            &federation.ip_range_allowlist,
        )?;
        let targets = Arc::new(Mutex::new(Bounded::new(config.caches.destinations)));
        let resolver = AllowedAddresses {
            ranges: ranges.clone(),
            targets: targets.clone(),
        };
        let timeout = Duration::from_millis(federation.request_timeout_ms);
        let client = |resolver: AllowedAddresses, redirect: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .dns_resolver(Arc::new(resolver))
                .redirect(redirect)
                .danger_accept_invalid_certs(!federation.verify_certificates)
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .pool_idle_timeout(Duration::from_secs(90))
                .user_agent(concat!("Ganglion/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| crate::StartError::Http(e.to_string()))
        };
        // Well-known files are fetched from the host itself, never from an
        // SRV target: a resolver of their own.
        // Only well-known files follow redirects (the spec asks it), each
        // target checked as the first was.
        let well_known = client(
            AllowedAddresses {
                ranges: ranges.clone(),
                targets: Arc::new(Mutex::new(Bounded::new(1))),
            },
            crate::discovery::checked_redirects(ranges.clone()),
        )?;
        let server_name = OwnedServerName::try_from(config.server_name.as_str())
            .map_err(|_| crate::StartError::ServerName(config.server_name.clone()))?;
        Ok(FederationClient {
            server_name,
            key,
            discovery: Discovery::new(
                ranges,
                well_known,
                &federation.dns_nameservers,
                config.caches.destinations,
            ),
            http: client(resolver, reqwest::redirect::Policy::none())?,
            targets,
        })
    }

    pub(crate) fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// An `X-Matrix`-signed request to `destination`; the JSON answer.
    pub(crate) async fn send(
        &self,
        destination: &str,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, FederationError> {
        let raw = self
            .send_raw(destination, method, path_and_query, body)
            .await?;
        json_answer(destination, &raw)
    }

    /// [`send`](Self::send), the successful answer's body left unparsed
    /// (for answers too large to hold as a JSON tree: a join's state).
    pub(crate) async fn send_raw(
        &self,
        destination: &str,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<bytes::Bytes, FederationError> {
        let destination_name = OwnedServerName::try_from(destination)
            .map_err(|_| DiscoveryError::BadName(destination.to_owned()))?;
        let bytes = match body {
            Some(body) => {
                serde_json::to_vec(body).map_err(|e| FederationError::Signing(e.to_string()))?
            }
            None => Vec::new(),
        };
        let request = http::Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .body(bytes.as_slice())
            .map_err(|e| FederationError::Signing(e.to_string()))?;
        let authorization = XMatrix::sign_http_request(
            &request,
            XMatrixSigningInput::new(
                self.server_name.clone(),
                destination_name,
                &self.key.key_pair,
            ),
        )
        .map_err(|e| FederationError::Signing(e.to_string()))?;
        let authorization = http::HeaderValue::from(&authorization);
        self.exchange_raw(
            destination,
            method,
            path_and_query,
            bytes,
            Some(authorization),
        )
        .await
    }

    /// An unauthenticated GET (the key API).
    pub(crate) async fn get_unsigned(
        &self,
        destination: &str,
        path_and_query: &str,
    ) -> Result<Value, FederationError> {
        let raw = self
            .exchange_raw(
                destination,
                http::Method::GET,
                path_and_query,
                Vec::new(),
                None,
            )
            .await?;
        json_answer(destination, &raw)
    }

    /// An unauthenticated POST (notary key queries).
    pub(crate) async fn post_unsigned(
        &self,
        destination: &str,
        path_and_query: &str,
        body: &Value,
    ) -> Result<Value, FederationError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| FederationError::Signing(e.to_string()))?;
        let raw = self
            .exchange_raw(destination, http::Method::POST, path_and_query, bytes, None)
            .await?;
        json_answer(destination, &raw)
    }

    /// One request; a successful answer's body. An unsuccessful one is
    /// [`FederationError::Remote`] with its JSON body.
    async fn exchange_raw(
        &self,
        destination: &str,
        method: http::Method,
        path_and_query: &str,
        body: Vec<u8>,
        authorization: Option<http::HeaderValue>,
    ) -> Result<bytes::Bytes, FederationError> {
        let target = self.discovery.destination(destination).await?;
        if let Some(connect_to) = &target.connect_to {
            self.targets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(target.host.clone(), connect_to.clone());
        }
        let url = format!("{}{path_and_query}", target.base_url());
        let mut request = self
            .http
            .request(method, &url)
            .header(http::header::HOST, &target.host_header);
        if let Some(authorization) = authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        if !body.is_empty() {
            request = request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let failed =
            |e: reqwest::Error| FederationError::Request(destination.to_owned(), e.to_string());
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let bytes = read_capped(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                CappedError::TooLarge => FederationError::BadResponse(
                    destination.to_owned(),
                    "response too large".into(),
                ),
                CappedError::Http(e) => failed(e),
            })?;
        if !(200..300).contains(&status) {
            let json: Value = serde_json::from_slice(&bytes).map_err(|_| {
                FederationError::BadResponse(destination.to_owned(), format!("{status}, not JSON"))
            })?;
            return Err(FederationError::Remote {
                server: destination.to_owned(),
                status,
                body: json,
            });
        }
        Ok(bytes)
    }
}

/// Why a body was not read whole.
pub(crate) enum CappedError {
    /// It is longer than allowed (said so, or found so while reading).
    TooLarge,
    Http(reqwest::Error),
}

/// A response body of at most `limit` bytes, read chunk by chunk so a
/// body that lies about (or omits) its length cannot grow past it.
pub(crate) async fn read_capped(
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

/// A successful answer's body as JSON.
pub(crate) fn json_answer(destination: &str, raw: &[u8]) -> Result<Value, FederationError> {
    serde_json::from_slice(raw)
        .map_err(|_| FederationError::BadResponse(destination.to_owned(), "not JSON".into()))
}
