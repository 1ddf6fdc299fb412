//! The demo's traces arrive at a real OTLP/gRPC receiver through the real exporter: one trace
//! per order, from the order publish through all three consumers and their follow-ups.

mod common;

use opentelemetry_semantic_conventions::attribute as semconv;
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{demo_binary, free_port};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

/// Runs the demo for `orders` orders with `env`, returning its stdout.
async fn run_demo(orders: usize, env: Vec<(&'static str, String)>) -> String {
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(demo_binary());
        command
            .args(["--orders", &orders.to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_SDK_DISABLED")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("the demo runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
async fn http_receiver() -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
    use prost::Message;
    let spans = Arc::new(Mutex::new(0usize));
    let counted = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                let request =
                    ExportTraceServiceRequest::decode(body).expect("a protobuf export request");
                let n: usize = request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                *counted.lock().unwrap() += n;
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, spans)
}

async fn received(spans: &Arc<Mutex<usize>>, at_least: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while *spans.lock().unwrap() < at_least && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = *spans.lock().unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_is_the_default_protocol() {
    let (addr, spans) = http_receiver().await;
    run_demo(
        2,
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))],
    )
    .await;
    assert_eq!(
        received(&spans, 16).await,
        16,
        "2 orders x 8 spans over OTLP/HTTP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_and_sdk_switch_are_honoured() {
    let (addr, spans) = http_receiver().await;
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
    run_demo(
        2,
        vec![
            endpoint.clone(),
            ("OTEL_TRACES_SAMPLER", "always_off".into()),
        ],
    )
    .await;
    run_demo(
        2,
        vec![endpoint.clone(), ("OTEL_SDK_DISABLED", "true".into())],
    )
    .await;
    // A last run that does export proves the receiver was listening all along.
    run_demo(1, vec![endpoint]).await;
    assert_eq!(
        received(&spans, 8).await,
        8,
        "only the last run's 8 spans arrive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traces_reach_a_real_otlp_grpc_receiver() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    const ORDERS: usize = 3;
    let output = tokio::task::spawn_blocking(move || {
        Command::new(demo_binary())
            .args(["--orders", &ORDERS.to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_SDK_DISABLED")
            .env_remove("OTEL_TRACES_SAMPLER")
            .output()
            .expect("the demo runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Shutdown flushed the exporters before the process exited; allow for in-flight requests.
    let expected_spans = ORDERS * 8;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.0.lock().unwrap().len() < expected_spans
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.abort();
    let spans = receiver.0.lock().unwrap().clone();

    let mut traces: HashMap<Vec<u8>, Vec<(String, Span)>> = HashMap::new();
    for (service, span) in spans {
        traces
            .entry(span.trace_id.clone())
            .or_default()
            .push((service, span));
    }
    assert_eq!(traces.len(), ORDERS, "one trace per order");

    for (trace_id, spans) in &traces {
        let hex: String = trace_id.iter().map(|b| format!("{b:02x}")).collect();
        assert!(stdout.contains(&hex), "the demo prints the trace id {hex}");
        let find = |service: &str, name: &str| -> &Span {
            let found: Vec<_> = spans
                .iter()
                .filter(|(s, sp)| s == service && sp.name == name)
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{service} / {name} in trace {hex}: {:?}",
                spans
                    .iter()
                    .map(|(s, sp)| format!("{s}:{}", sp.name))
                    .collect::<Vec<_>>()
            );
            &found[0].1
        };
        assert_eq!(spans.len(), 8, "place, send, 3 process, 3 follow-up sends");
        let send = find("order-service", "send orders");
        assert_eq!(send.kind, SpanKind::Producer as i32);
        let correlation = string_attr(&send.attributes, semconv::MESSAGING_MESSAGE_CONVERSATION_ID)
            .expect("correlation id");
        let message_id =
            string_attr(&send.attributes, semconv::MESSAGING_MESSAGE_ID).expect("message id");
        assert_eq!(
            string_attr(&send.attributes, semconv::MESSAGING_SYSTEM).as_deref(),
            Some("memory")
        );
        assert_eq!(
            string_attr(&send.attributes, semconv::MESSAGING_DESTINATION_NAME).as_deref(),
            Some("orders")
        );
        assert!(string_attr(
            &send.attributes,
            semconv::MESSAGING_DESTINATION_PARTITION_ID
        )
        .is_some());

        for (service, follow_up) in [
            ("payment-service", "send payments"),
            ("inventory-service", "send inventory"),
            ("notification-service", "send notifications"),
        ] {
            let process = find(service, "process orders");
            assert_eq!(process.kind, SpanKind::Consumer as i32);
            assert_eq!(
                process.parent_span_id, send.span_id,
                "{service} continues the publisher's trace"
            );
            assert_eq!(process.links.len(), 1);
            assert_eq!(
                process.links[0].span_id, send.span_id,
                "{service} links the creation context"
            );
            assert_eq!(
                string_attr(&process.attributes, semconv::MESSAGING_OPERATION_TYPE).as_deref(),
                Some("process")
            );
            assert_eq!(
                string_attr(&process.attributes, semconv::MESSAGING_CONSUMER_GROUP_NAME).as_deref(),
                Some(service)
            );
            assert_eq!(
                string_attr(&process.attributes, semconv::MESSAGING_MESSAGE_ID),
                Some(message_id.clone())
            );
            assert_eq!(
                string_attr(
                    &process.attributes,
                    semconv::MESSAGING_MESSAGE_CONVERSATION_ID
                ),
                Some(correlation.clone())
            );

            let next = find(service, follow_up);
            assert_eq!(next.kind, SpanKind::Producer as i32);
            assert_eq!(next.parent_span_id, process.span_id);
            assert_eq!(
                string_attr(&next.attributes, semconv::MESSAGING_MESSAGE_CONVERSATION_ID),
                Some(correlation.clone()),
                "the follow-up keeps the flow's correlation id"
            );
            assert_ne!(
                string_attr(&next.attributes, semconv::MESSAGING_MESSAGE_ID),
                Some(message_id.clone())
            );
        }
    }
}
