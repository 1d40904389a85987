//! Requests to other servers as this one: discovered destinations, TLS,
//! and an `X-Matrix` signature on every authenticated request.

use ganglion_base::bounded::Bounded;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ganglion_base::keys::SigningKey;
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use ruma::{OwnedServerName, ServerName};
use serde_json::Value;

use crate::discovery::{AllowedAddresses, Discovery, DiscoveryError, IpRanges};
use crate::{BuildError, CappedError, read_capped};

/// Signs this server's requests: the `Authorization: X-Matrix` header for
/// a request to `destination` with this method, URI and body.
#[async_trait]
pub trait Signer: Send + Sync {
    async fn authorization(
        &self,
        destination: &ServerName,
        method: &http::Method,
        uri: &str,
        body: &[u8],
    ) -> Result<http::HeaderValue, String>;
}

/// Signs with the server's own key (the services that hold it).
pub struct KeySigner {
    pub server_name: OwnedServerName,
    pub key: Arc<SigningKey>,
}

#[async_trait]
impl Signer for KeySigner {
    async fn authorization(
        &self,
        destination: &ServerName,
        method: &http::Method,
        uri: &str,
        body: &[u8],
    ) -> Result<http::HeaderValue, String> {
        let request = http::Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(body)
            .map_err(|e| e.to_string())?;
        let authorization = XMatrix::sign_http_request(
            &request,
            XMatrixSigningInput::new(
                self.server_name.clone(),
                destination.to_owned(),
                &self.key.key_pair,
            ),
        )
        .map_err(|e| e.to_string())?;
        Ok(http::HeaderValue::from(&authorization))
    }
}

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
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
    pub fn errcode(&self) -> Option<&str> {
        match self {
            FederationError::Remote { body, .. } => body["errcode"].as_str(),
            _ => None,
        }
    }
}

impl From<FederationError> for ganglion_api::ApiError {
    fn from(error: FederationError) -> Self {
        use ganglion_api::ApiError;
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
pub struct FederationClient {
    server_name: OwnedServerName,
    signer: Arc<dyn Signer>,
    discovery: Discovery,
    http: reqwest::Client,
    /// Shared with the resolver `http` connects through.
    targets: Arc<Mutex<Bounded<String, String>>>,
}

/// The longest a response body may be.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl FederationClient {
    /// A client for `config`'s federation settings, signing with `signer`.
    pub fn new(
        config: &ganglion_base::Config,
        signer: Arc<dyn Signer>,
    ) -> Result<FederationClient, BuildError> {
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
                .map_err(|e| BuildError::Http(e.to_string()))
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
            .map_err(|_| BuildError::ServerName(config.server_name.clone()))?;
        Ok(FederationClient {
            server_name,
            signer,
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

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// An `X-Matrix`-signed request to `destination`; the JSON answer.
    pub async fn send(
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
    pub async fn send_raw(
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
        let authorization = self
            .signer
            .authorization(&destination_name, &method, path_and_query, &bytes)
            .await
            .map_err(FederationError::Signing)?;
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
    pub async fn get_unsigned(
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
    pub async fn post_unsigned(
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
        let response = self
            .respond(
                destination,
                method,
                path_and_query,
                body,
                authorization,
                None,
            )
            .await?;
        read_capped(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| capped_error(destination, e))
    }

    /// A signed GET whose successful answer is left unread, to stream
    /// (media), with its own `timeout` for the whole exchange.
    pub async fn get_stream(
        &self,
        destination: &str,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, FederationError> {
        let destination_name = OwnedServerName::try_from(destination)
            .map_err(|_| DiscoveryError::BadName(destination.to_owned()))?;
        let authorization = self
            .signer
            .authorization(&destination_name, &http::Method::GET, path_and_query, &[])
            .await
            .map_err(FederationError::Signing)?;
        self.respond(
            destination,
            http::Method::GET,
            path_and_query,
            Vec::new(),
            Some(authorization),
            Some(timeout),
        )
        .await
    }

    /// An unauthenticated GET whose successful answer is left unread (the
    /// deprecated media download, for servers without the federation one).
    pub async fn get_unsigned_stream(
        &self,
        destination: &str,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, FederationError> {
        self.respond(
            destination,
            http::Method::GET,
            path_and_query,
            Vec::new(),
            None,
            Some(timeout),
        )
        .await
    }

    /// One request to `destination`; a successful (2xx) answer with its
    /// body unread. An unsuccessful one is [`FederationError::Remote`] with
    /// its JSON body (`null` when it has none).
    async fn respond(
        &self,
        destination: &str,
        method: http::Method,
        path_and_query: &str,
        body: Vec<u8>,
        authorization: Option<http::HeaderValue>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, FederationError> {
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
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(authorization) = authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        if !body.is_empty() {
            request = request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| FederationError::Request(destination.to_owned(), e.to_string()))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let bytes = read_capped(response, MAX_ERROR_BYTES)
            .await
            .map_err(|e| capped_error(destination, e))?;
        Err(FederationError::Remote {
            server: destination.to_owned(),
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }
}

/// The longest error body read.
const MAX_ERROR_BYTES: usize = 64 * 1024;

fn capped_error(destination: &str, error: CappedError) -> FederationError {
    match error {
        CappedError::TooLarge => {
            FederationError::BadResponse(destination.to_owned(), "response too large".into())
        }
        CappedError::Http(e) => FederationError::Request(destination.to_owned(), e.to_string()),
    }
}

/// A successful answer's body as JSON.
pub fn json_answer(destination: &str, raw: &[u8]) -> Result<Value, FederationError> {
    serde_json::from_slice(raw)
        .map_err(|_| FederationError::BadResponse(destination.to_owned(), "not JSON".into()))
}
