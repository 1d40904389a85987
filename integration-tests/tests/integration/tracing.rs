//! One client request is one trace: the `traceparent` a client sends is
//! continued by clientapi, carried through `roomserver.input` to the
//! roomserver, and through `roomserver.output` to the syncapi. Spans are
//! exported over OTLP/gRPC to a collector this test runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ganglion_integration_tests::client::{Client, encode};
use ganglion_integration_tests::process::{Monolith, POLYLITH_SERVICES, Polylith, free_port};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

fn start_collector() -> (Collector, Vec<(String, String)>) {
    let collector = Collector::default();
    let port = free_port();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve(([127, 0, 0, 1], port).into());
    tokio::spawn(server);
    let env = vec![
        (
            "GANGLION_TELEMETRY__OTLP_ENDPOINT".into(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ];
    (collector, env)
}

#[tokio::test]
async fn a_send_is_one_trace_from_client_to_sync() {
    let (collector, otlp_env) = start_collector();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Monolith::default_env(dir.path());
    env.extend(otlp_env);
    let monolith = Monolith::start_with(dir.path(), env).await;
    send_traced_and_follow(&collector, &monolith.base_url, false, &|| {
        monolith.process.log_tail()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_is_one_trace_across_the_polylith() {
    let (collector, otlp_env) = start_collector();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut urls = Vec::new();
    for service in POLYLITH_SERVICES {
        urls.push((
            service,
            ganglion_base::testing::scratch_postgres(&format!("trace_{service}")).await,
        ));
    }
    let polylith = Polylith::start_with(dir.path(), &urls, otlp_env).await;
    send_traced_and_follow(&collector, &polylith.base_url, true, &|| polylith.logs()).await;
}

/// Sends one message under a client-chosen trace and waits until the
/// collector holds its whole journey: the HTTP request, (in the polylith) the
/// gRPC call into the roomserver, and both consumers.
async fn send_traced_and_follow(
    collector: &Collector,
    base_url: &str,
    expect_grpc: bool,
    logs: &dyn Fn() -> String,
) {
    let alice = Client::register(base_url, "alice", "pw").await;
    let room_id = alice.create_room(json!({"preset": "private_chat"})).await;

    // The client starts the trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let url = format!(
        "{base_url}/_matrix/client/v3/rooms/{}/send/m.room.message/traced",
        encode(&room_id)
    );
    let reply = alice
        .http
        .put(&url)
        .bearer_auth(&alice.access_token)
        .header("traceparent", &traceparent)
        .json(&json!({"msgtype": "m.text", "body": "traced"}))
        .send()
        .await
        .expect("send");
    assert_eq!(reply.status(), 200);

    // Wait (bounded) until the collector holds the whole journey.
    let expected_trace = hex_to_bytes(trace_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let groups: Vec<String> = {
            let spans = collector.spans.lock().expect("lock");
            spans
                .iter()
                .filter(|s| s.trace_id == expected_trace && s.name == "consume")
                .filter_map(|s| attribute(s, "group"))
                .collect()
        };
        let in_roomserver = groups.iter().any(|g| g == "roomserver");
        let in_syncapi = groups.iter().any(|g| g.starts_with("syncapi"));
        let (http, grpc) = {
            let spans = collector.spans.lock().expect("lock");
            let ours: Vec<&Span> = spans
                .iter()
                .filter(|s| s.trace_id == expected_trace)
                .collect();
            (
                ours.iter().any(|s| s.name == "http"),
                ours.iter().any(|s| {
                    s.name == "grpc" && attribute(s, "method").as_deref() == Some("input")
                }),
            )
        };
        if in_roomserver && in_syncapi && http && (grpc || !expect_grpc) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trace incomplete: http={http} grpc={grpc} consume groups={groups:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}
