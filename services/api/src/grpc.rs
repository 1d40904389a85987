//! gRPC plumbing: one macro declares a service API as a Rust trait together
//! with its tonic client (polylith) and the adapter that serves any
//! implementation over tonic. Trace context rides in the metadata; errors
//! ride in the status details (see [`crate::error`]).

use ganglion_base::internal_auth::{self, InternalSecret};
use ganglion_base::metrics::GRPC_CALLS;
use ganglion_base::telemetry;

use crate::ApiError;

/// A request carrying the caller's internal secret and the current trace context.
pub fn outgoing<T>(message: T, secret: &InternalSecret) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(secret.header().as_bytes()) {
        request.metadata_mut().insert(internal_auth::HEADER, value);
    }
    let mut headers = Vec::new();
    telemetry::inject_into_headers(&mut headers);
    for (key, value) in headers {
        if let (Ok(key), Ok(value)) = (
            key.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            String::from_utf8(value)
                .ok()
                .and_then(|v| {
                    v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                        .ok()
                })
                .ok_or(()),
        ) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

/// A span for a served call, continuing the caller's trace.
pub fn incoming_span<T>(
    api: &'static str,
    method: &'static str,
    request: &tonic::Request<T>,
) -> tracing::Span {
    let span = tracing::info_span!("grpc", api, method);
    let headers = request.metadata().clone().into_headers();
    telemetry::continue_from_http(&span, &headers);
    span
}

/// Maps a client call's result and counts it.
pub fn finish_client<T>(
    api: &'static str,
    method: &'static str,
    result: Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, ApiError> {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    GRPC_CALLS
        .with_label_values(&[api, method, "client", outcome])
        .inc();
    result
        .map(tonic::Response::into_inner)
        .map_err(ApiError::from)
}

/// Maps a served call's result and counts it.
pub fn finish_server<T>(
    api: &'static str,
    method: &'static str,
    result: Result<T, ApiError>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    GRPC_CALLS
        .with_label_values(&[api, method, "server", outcome])
        .inc();
    result
        .map(tonic::Response::new)
        .map_err(tonic::Status::from)
}

/// A channel to `address` that connects on first use and reconnects after failures.
pub fn lazy_channel(address: &str) -> Result<tonic::transport::Channel, ApiError> {
    let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())
        .map_err(|e| ApiError::InvalidInput(format!("gRPC address {address}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// How a failed call may be tried on another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Safe to send twice (a query, or a write keyed so a second is a no-op).
    Idempotent,
    /// Sent at most once, except when it certainly never left (no connection).
    Once,
}

/// The retry of a method by its marker in [`service_api`]: `once` or none.
pub fn retry_of(markers: &[&str]) -> Retry {
    if markers.contains(&"once") {
        Retry::Once
    } else {
        Retry::Idempotent
    }
}

/// Whether a failed call should go to the next replica, and whether the
/// replica it went to is to be taken as down. Errors our services return
/// travel in the status details and are answers, not failures of the
/// replica; a transport failure has none.
pub fn replica_failed(status: &tonic::Status, retry: Retry) -> (bool, bool) {
    use prost::Message;
    let answered = crate::proto::common::ApiError::decode(status.details())
        .is_ok_and(|wire| wire.kind != crate::proto::common::ErrorKind::Unspecified as i32);
    if answered || status.code() != tonic::Code::Unavailable {
        return (false, false);
    }
    // tonic reports a refused or failed connection as UNAVAILABLE with the
    // connector's message; nothing was sent then.
    let never_sent = status.message().to_ascii_lowercase().contains("connect");
    (retry == Retry::Idempotent || never_sent, true)
}

/// Declares a service API: the trait, its tonic client and its tonic adapter.
/// A method marked `once` is not sent to a second replica after a transport
/// failure that may have come after the first replica took it.
macro_rules! service_api {
    (
        $(#[$doc:meta])*
        api $api:literal;
        trait $Trait:ident;
        client $Client:ident = $pb_client:ident;
        adapter $Adapter:ident: $pb_trait:path, $pb_server:ident;
        { $( $(#[$mdoc:meta])* fn $method:ident($Req:ty) -> $Resp:ty $(, $once:ident)?; )* }
    ) => {
        $(#[$doc])*
        #[async_trait::async_trait]
        pub trait $Trait: Send + Sync + 'static {
            $( $(#[$mdoc])* async fn $method(&self, request: $Req) -> Result<$Resp, $crate::ApiError>; )*
        }

        /// The API reached over gRPC (the polylith): calls are spread over
        /// the service's ready replicas, and go to the next one when a
        /// replica cannot be reached.
        #[derive(Clone)]
        pub struct $Client {
            replicas: std::sync::Arc<$crate::replicas::ReplicaSet>,
            inner: Vec<$pb_client<tonic::transport::Channel>>,
            secret: ganglion_base::internal_auth::InternalSecret,
        }

        impl $Client {
            /// A client of the one service at `address`, authenticating with `secret`.
            pub fn new(
                address: &str,
                secret: ganglion_base::internal_auth::InternalSecret,
            ) -> Result<Self, $crate::ApiError> {
                let replicas = $crate::replicas::ReplicaSet::new(
                    $api,
                    vec![ganglion_base::config::ReplicaConfig {
                        address: address.to_owned(),
                        ..Default::default()
                    }],
                );
                Self::replicated(replicas, secret)
            }

            /// A client of every replica in `replicas`.
            pub fn replicated(
                replicas: std::sync::Arc<$crate::replicas::ReplicaSet>,
                secret: ganglion_base::internal_auth::InternalSecret,
            ) -> Result<Self, $crate::ApiError> {
                let inner = (0..replicas.len())
                    .filter_map(|i| replicas.get(i))
                    .map(|replica| {
                        $crate::grpc::lazy_channel(&replica.config.address)
                            .map(<$pb_client<tonic::transport::Channel>>::new)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Self { replicas, inner, secret })
            }

            /// The client of one replica (calls that must reach a given one).
            pub fn replica(&self, index: usize) -> Option<Self> {
                let replica = self.replicas.get(index)?;
                Self::new(&replica.config.address, self.secret.clone()).ok()
            }
        }

        #[async_trait::async_trait]
        impl $Trait for $Client {
            $(
                async fn $method(&self, request: $Req) -> Result<$Resp, $crate::ApiError> {
                    let retry = $crate::grpc::retry_of(&[$(stringify!($once))?]);
                    let mut last = None;
                    let order = self.replicas.spread();
                    // Cloned only while another replica may still be tried.
                    let mut request = Some(request);
                    for (turn, &index) in order.iter().enumerate() {
                        let Some(client) = self.inner.get(index) else { continue };
                        let message = if turn + 1 == order.len() { request.take() } else { request.clone() };
                        let Some(message) = message else { break };
                        let result = client.clone().$method($crate::grpc::outgoing(message, &self.secret)).await;
                        if let Err(status) = &result {
                            let (next, down) = $crate::grpc::replica_failed(status, retry);
                            if down {
                                self.replicas.mark_down(index);
                            }
                            if next {
                                last = Some(result);
                                continue;
                            }
                        }
                        return $crate::grpc::finish_client($api, stringify!($method), result);
                    }
                    $crate::grpc::finish_client(
                        $api,
                        stringify!($method),
                        last.unwrap_or_else(|| Err(tonic::Status::unavailable("no replica"))),
                    )
                }
            )*
        }

        /// Serves any implementation of the API over gRPC.
        pub struct $Adapter(pub std::sync::Arc<dyn $Trait>);

        impl $Adapter {
            pub fn service(api: std::sync::Arc<dyn $Trait>) -> $pb_server<$Adapter> {
                $pb_server::new($Adapter(api))
                    .max_decoding_message_size(64 * 1024 * 1024)
            }
        }

        #[tonic::async_trait]
        impl $pb_trait for $Adapter {
            $(
                async fn $method(&self, request: tonic::Request<$Req>) -> Result<tonic::Response<$Resp>, tonic::Status> {
                    let span = $crate::grpc::incoming_span($api, stringify!($method), &request);
                    let api = self.0.clone();
                    let result = tracing::Instrument::instrument(
                        async move { api.$method(request.into_inner()).await },
                        span,
                    ).await;
                    $crate::grpc::finish_server($api, stringify!($method), result)
                }
            )*
        }
    };
}

pub(crate) use service_api;
