//! With no tracer provider installed (the global one is OpenTelemetry's no-op provider), the
//! layers start no span, and the trace still travels (src/span.rs, SPEC §2): the process layer
//! makes the message's creation context current in the handler, baggage included, and the
//! publish layer writes that context into a follow-up as it is. A publish outside any trace
//! writes ids but no trace headers.
//!
//! Its own test binary: nothing here may install a global provider.

mod common;

use std::sync::{Arc, Mutex};

use common::first_message;
use eventscope::header;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::Metrics;
use eventscope::publish::PublishLayer;
use eventscope::scope::MessageScope;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::TraceContextExt;
use tower::{service_fn, Layer, ServiceExt};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

/// What the handler saw of the current context and scope.
#[derive(Debug, Default)]
struct Seen {
    trace_id: String,
    span_id: String,
    remote: bool,
    baggage: Option<String>,
    correlation_id: Option<String>,
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_provider_the_creation_context_and_baggage_reach_the_follow_up() {
    let metrics = Metrics::new();
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    broker.create_topic("payments", 1).unwrap();
    let incoming = MemoryRecord::new("orders", b"{}".to_vec())
        .header(header::TRACEPARENT, format!("00-{TRACE_ID}-{SPAN_ID}-01"))
        .header(header::BAGGAGE, "tenant=acme")
        .header(header::CORRELATION_ID, "order-42")
        .header(header::MESSAGE_ID, "evt-1");
    broker.publisher().oneshot(incoming).await.unwrap();

    // Neither layer is given a provider: both use the global (no-op) one.
    let publisher = PublishLayer::new(metrics.clone()).layer(broker.publisher());
    let seen = Arc::new(Mutex::new(None::<Seen>));
    let handler = {
        let seen = seen.clone();
        service_fn(move |_m: MemoryMessage| {
            let (publisher, seen) = (publisher.clone(), seen.clone());
            async move {
                let cx = opentelemetry::Context::current();
                let sc = cx.span().span_context().clone();
                *seen.lock().unwrap() = Some(Seen {
                    trace_id: sc.trace_id().to_string(),
                    span_id: sc.span_id().to_string(),
                    remote: sc.is_remote(),
                    baggage: cx.baggage().get("tenant").map(|v| v.to_string()),
                    correlation_id: MessageScope::current().map(|s| s.correlation_id().into()),
                });
                publisher
                    .oneshot(MemoryRecord::new("payments", b"{}".to_vec()))
                    .await?;
                Ok::<_, eventscope::BoxError>(())
            }
        })
    };
    let done = seen.clone();
    broker
        .consumer("billing")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .run(handler, async move {
            while done.lock().unwrap().is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();

    let seen = seen.lock().unwrap().take().unwrap();
    // The creation context itself is current: no span of ours stands between.
    assert_eq!(seen.trace_id, TRACE_ID);
    assert_eq!(seen.span_id, SPAN_ID);
    assert!(seen.remote, "the extracted context is the remote one");
    assert_eq!(seen.baggage.as_deref(), Some("acme"));
    assert_eq!(seen.correlation_id.as_deref(), Some("order-42"));

    let follow_up = first_message(&broker, "payments").await.headers().clone();
    let text = |name: &str| {
        String::from_utf8(
            follow_up
                .get(name)
                .unwrap_or_else(|| panic!("{name}"))
                .to_vec(),
        )
        .unwrap()
    };
    assert_eq!(
        text(header::TRACEPARENT),
        format!("00-{TRACE_ID}-{SPAN_ID}-01")
    );
    assert_eq!(text(header::BAGGAGE), "tenant=acme");
    assert_eq!(text(header::CORRELATION_ID), "order-42");
    assert_eq!(text(header::CAUSATION_ID), "evt-1");
    assert_eq!(
        follow_up
            .iter()
            .filter(|(k, _)| *k == header::TRACEPARENT)
            .count(),
        1
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_provider_or_a_trace_a_publish_writes_ids_and_no_trace_headers() {
    let broker = MemoryBroker::new();
    broker.create_topic("audit", 1).unwrap();
    PublishLayer::new(Metrics::new())
        .layer(broker.publisher())
        .oneshot(MemoryRecord::new("audit", b"{}".to_vec()))
        .await
        .unwrap();

    let headers = first_message(&broker, "audit").await.headers().clone();
    let id = headers.get(header::MESSAGE_ID).expect("message-id");
    assert_eq!(id.len(), 36, "a UUID");
    assert_eq!(headers.get(header::CORRELATION_ID), Some(id), "a new flow");
    assert!(headers.get(header::TRACEPARENT).is_none());
    assert!(headers.get(header::TRACESTATE).is_none());
    assert!(headers.get(header::BAGGAGE).is_none());
}
