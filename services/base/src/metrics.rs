//! Metrics shared by every process. Names follow `ganglion_<thing>_<unit>`;
//! service-specific metrics live in each service's `internal_events.rs` and
//! are made with the constructors here. All are registered in the default
//! Prometheus registry, rendered by `/metrics`.

use std::sync::LazyLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

/// A counter family registered in the default registry. Definitions are
/// constants of this program, so a failure is a programming error caught by
/// the tests below, not something input can cause.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric =
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

/// A gauge family registered in the default registry.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

/// A histogram family (seconds) registered in the default registry.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
    ]);
    let metric = HistogramVec::new(opts, labels).expect("static metric definition");
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

/// HTTP requests served, by service, method and status code.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_http_requests_total",
        "HTTP requests served",
        &["service", "method", "status"],
    )
});

/// HTTP request latency in seconds, by service and method.
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "ganglion_http_request_duration_seconds",
        "HTTP request latency",
        &["service", "method"],
    )
});

/// Records a consumer group still has to read, per topic-partition.
pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "ganglion_consumer_lag_records",
        "Records of a topic-partition not yet consumed by a group",
        &["group", "topic", "partition"],
    )
});

/// Records consumed and committed, per group and topic.
pub static CONSUMED_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_consumer_records_total",
        "Records consumed and committed",
        &["group", "topic"],
    )
});

/// gRPC calls, by API, method, direction (client/server) and outcome.
pub static GRPC_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ganglion_grpc_calls_total",
        "gRPC calls",
        &["api", "method", "direction", "outcome"],
    )
});

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_metrics_register_and_render() {
        super::HTTP_REQUESTS
            .with_label_values(&["t", "GET", "200"])
            .inc();
        super::HTTP_DURATION
            .with_label_values(&["t", "GET"])
            .observe(0.001);
        super::CONSUMER_LAG
            .with_label_values(&["g", "t", "0"])
            .set(3);
        super::CONSUMED_RECORDS.with_label_values(&["g", "t"]).inc();
        super::GRPC_CALLS
            .with_label_values(&["a", "m", "client", "ok"])
            .inc();
        let text = super::render();
        for name in [
            "ganglion_http_requests_total",
            "ganglion_http_request_duration_seconds",
            "ganglion_consumer_lag_records",
            "ganglion_consumer_records_total",
            "ganglion_grpc_calls_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
