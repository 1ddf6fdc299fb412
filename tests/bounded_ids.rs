//! SPEC §2: ids are bounded. An incoming `correlation-id`, `causation-id` or `message-id` over
//! 256 bytes (here 1 MB) or not UTF-8 is not propagated: the follow-up gets a fresh id, the
//! process span carries no more than the bound, and the message counts in
//! `eventscope_trace_context_invalid_total`.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use eventscope::header;
use eventscope::header::MAX_ID_BYTES;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::{label, name, Metrics};
use eventscope::publish::PublishLayer;
use opentelemetry_semantic_conventions::attribute as semconv;
use tower::{service_fn, Layer, ServiceExt};

const MB: usize = 1 << 20;

/// Publishes `incoming` raw, processes it with a handler that publishes a follow-up through
/// the layers, and returns the follow-up's headers.
async fn follow_up_of(
    capture: &Capture,
    metrics: &Metrics,
    incoming: MemoryRecord,
) -> eventscope::message::HeaderList {
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    broker.create_topic("payments", 1).unwrap();
    broker.publisher().oneshot(incoming).await.unwrap();

    let publisher = PublishLayer::new(metrics.clone())
        .tracer_provider(&capture.provider)
        .layer(broker.publisher());
    let handled = Arc::new(Mutex::new(0usize));
    let handler = {
        let handled = handled.clone();
        service_fn(move |_m: MemoryMessage| {
            let (publisher, handled) = (publisher.clone(), handled.clone());
            async move {
                publisher
                    .oneshot(MemoryRecord::new("payments", b"{}".to_vec()))
                    .await?;
                *handled.lock().unwrap() += 1;
                Ok::<_, eventscope::BoxError>(())
            }
        })
    };
    let consumer = broker
        .consumer("billing")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .tracer_provider(&capture.provider);
    let done = handled.clone();
    consumer
        .run(handler, async move {
            while *done.lock().unwrap() == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();

    first_message(&broker, "payments").await.headers().clone()
}

fn value(headers: &eventscope::message::HeaderList, name: &str) -> Vec<u8> {
    headers.get(name).expect(name).to_vec()
}

fn invalid_count(metrics: &Metrics) -> f64 {
    sample(
        &metrics.encode(),
        name::TRACE_CONTEXT_INVALID,
        &[(label::SYSTEM, "memory")],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "current_thread")]
async fn a_one_megabyte_correlation_and_message_id_are_not_propagated() {
    let capture = capture();
    let metrics = Metrics::new();
    let huge = "c".repeat(MB);
    let incoming = MemoryRecord::new("orders", b"{}".to_vec())
        .header(header::CORRELATION_ID, huge.clone())
        .header(header::MESSAGE_ID, "m".repeat(MB));
    let follow_up = follow_up_of(&capture, &metrics, incoming).await;

    let correlation = value(&follow_up, header::CORRELATION_ID);
    let causation = value(&follow_up, header::CAUSATION_ID);
    for (id, what) in [
        (&correlation, "correlation-id"),
        (&causation, "causation-id"),
    ] {
        assert!(
            !id.is_empty() && id.len() <= MAX_ID_BYTES,
            "{what} is {} bytes",
            id.len()
        );
        assert!(std::str::from_utf8(id).is_ok(), "{what} is UTF-8");
    }
    // The fallback of the embedded broker names the message by its position.
    assert_eq!(causation, b"orders/0/0");
    assert_eq!(invalid_count(&metrics), 1.0);

    // Nothing of the megabyte reached a span attribute either.
    let spans = capture.spans();
    let process = one(&spans, "process orders");
    for key in [
        semconv::MESSAGING_MESSAGE_CONVERSATION_ID,
        semconv::MESSAGING_MESSAGE_ID,
    ] {
        let value = attr_str(process, key).unwrap_or_default();
        assert!(
            value.len() <= MAX_ID_BYTES,
            "{key} is {} bytes",
            value.len()
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn ids_that_are_not_utf8_are_replaced_and_counted() {
    let capture = capture();
    let metrics = Metrics::new();
    let incoming = MemoryRecord::new("orders", b"{}".to_vec())
        .header_bytes(header::CORRELATION_ID, vec![0xff, 0xfe, b'x'])
        .header("message-id", "m-1");
    let follow_up = follow_up_of(&capture, &metrics, incoming).await;

    let correlation = value(&follow_up, header::CORRELATION_ID);
    assert!(std::str::from_utf8(&correlation).is_ok());
    assert_ne!(correlation, [0xff, 0xfe, b'x']);
    // A usable message id still names the cause.
    assert_eq!(value(&follow_up, header::CAUSATION_ID), b"m-1");
    assert_eq!(invalid_count(&metrics), 1.0);
}

#[tokio::test(flavor = "current_thread")]
async fn ids_at_the_bound_are_propagated_unchanged() {
    let capture = capture();
    let metrics = Metrics::new();
    let at_bound = "c".repeat(MAX_ID_BYTES);
    let incoming = MemoryRecord::new("orders", b"{}".to_vec())
        .header(header::CORRELATION_ID, at_bound.clone())
        .header(header::MESSAGE_ID, "m".repeat(MAX_ID_BYTES));
    let follow_up = follow_up_of(&capture, &metrics, incoming).await;
    assert_eq!(
        value(&follow_up, header::CORRELATION_ID),
        at_bound.as_bytes()
    );
    assert_eq!(
        value(&follow_up, header::CAUSATION_ID),
        "m".repeat(MAX_ID_BYTES).as_bytes()
    );
    assert_eq!(invalid_count(&metrics), 0.0);
}
