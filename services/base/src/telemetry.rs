//! Logs, traces and the W3C trace context that ties one request together
//! across processes: injected into gRPC metadata and log record headers by
//! the sender, extracted by the receiver, so clientapi → roomserver → log →
//! syncapi is one trace.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

/// Whether an OpenTelemetry layer is installed (some process of this
/// binary exports spans): trace context is read and passed on only then.
static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn tracing_on() -> bool {
    TRACING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Keeps the tracer provider alive; flushes spans when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `telemetry.log_filter` is not a valid filter.
    #[error("telemetry.log_filter: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built.
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(String),
}

/// Installs the global subscriber. With `otlp_endpoint` set, spans get
/// OpenTelemetry contexts, continue the trace a request or record names and
/// pass it on, and are exported. Without it no OpenTelemetry layer is
/// installed: a span costs what the log filter lets through, nothing more,
/// and trace context is neither read nor passed on.
pub fn init(config: &TelemetryConfig, service: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let mut builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(format!("ganglion-{service}"))
            .build(),
    );
    if let Some(endpoint) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let exporting = config.otlp_endpoint.is_some();
    if exporting {
        TRACING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let provider = builder.build();
    let tracer = provider.tracer("ganglion");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = exporting.then(|| tracing_opentelemetry::layer().with_tracer(tracer));
    let fmt = match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed(),
    };
    // A second init (tests running several servers in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt)
        .try_init();
    Ok(TelemetryGuard { provider })
}

struct HeaderListInjector<'a>(&'a mut Vec<(String, Vec<u8>)>);

impl Injector for HeaderListInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value.into_bytes()));
    }
}

struct HeaderListExtractor<'a>(HashMap<&'a str, &'a str>);

impl Extractor for HeaderListExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).copied()
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().copied().collect()
    }
}

/// Adds the current span's `traceparent` (and `tracestate`) to record headers.
pub fn inject_into_headers(headers: &mut Vec<(String, Vec<u8>)>) {
    if !tracing_on() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderListInjector(headers));
}

/// Makes `span` a child of the trace named in record headers, if any.
pub fn continue_from_headers(span: &tracing::Span, headers: &[(String, Vec<u8>)]) {
    if !tracing_on() {
        return;
    }
    let map = headers
        .iter()
        .filter_map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (k.as_str(), v)))
        .collect();
    let cx = TraceContextPropagator::new().extract(&HeaderListExtractor(map));
    let _ = span.set_parent(cx);
}

struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Adds the current span's trace context to HTTP/gRPC headers.
pub fn inject_into_http(headers: &mut http::HeaderMap) {
    if !tracing_on() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HttpInjector(headers));
}

/// Makes `span` a child of the trace named in HTTP/gRPC headers, if any.
pub fn continue_from_http(span: &tracing::Span, headers: &http::HeaderMap) {
    if !tracing_on() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HttpExtractor(headers));
    let _ = span.set_parent(cx);
}

/// The current span's trace ID in hex, for logs and tests.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
