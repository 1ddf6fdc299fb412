//! One trace from a publish through the embedded broker to every consumer and its follow-up
//! publish, with the SPEC §3 span shape and the §2 correlation headers.

mod common;

use opentelemetry_semantic_conventions::attribute as semconv;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::Metrics;
use eventscope::process::{ParentPolicy, ProcessLayer};
use eventscope::publish::{Publish, PublishLayer};
use opentelemetry::trace::SpanKind;
use tower::{service_fn, Layer, ServiceExt};

type Seen = Arc<Mutex<Vec<MemoryMessage>>>;

/// A handler that keeps every message it gets.
fn collector(
    seen: Seen,
) -> impl tower::Service<
    MemoryMessage,
    Response = (),
    Error = eventscope::BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |m: MemoryMessage| {
        seen.lock().unwrap().push(m);
        std::future::ready(Ok(()))
    })
}

/// Reads the first message of `topic` with a consumer whose spans go nowhere.
async fn read_one(broker: &MemoryBroker, topic: &str, metrics: &Metrics) -> MemoryMessage {
    let seen: Seen = Arc::default();
    let consumer = broker
        .consumer("reader")
        .subscribe([topic])
        .metrics(metrics.clone())
        .tracer_provider(&opentelemetry_sdk::trace::SdkTracerProvider::builder().build());
    consume_until(consumer, 1, collector(seen.clone()), seen.clone()).await;
    let message = seen.lock().unwrap()[0].clone();
    message
}

/// Runs a consumer until `count` messages were seen.
async fn consume_until(
    consumer: eventscope::memory::MemoryConsumer,
    count: usize,
    handler: impl tower::Service<
            MemoryMessage,
            Response = (),
            Error = eventscope::BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    seen: Seen,
) {
    let done = {
        let seen = seen.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while seen.lock().unwrap().len() < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out waiting for messages"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    consumer.run(handler, done).await.expect("consumer run");
}

#[tokio::test]
async fn one_trace_runs_from_publish_through_consumers_and_follow_ups() {
    let capture = capture();
    let broker = MemoryBroker::new();
    let metrics = Metrics::new();
    let publisher: Publish<_> = PublishLayer::new(metrics.clone())
        .tracer_provider(&capture.provider)
        .layer(broker.publisher());

    // The order service: a root publish.
    publisher
        .clone()
        .oneshot(MemoryRecord::new("orders", br#"{"order":1}"#.to_vec()).key("order-1"))
        .await
        .unwrap();

    // The payment service: processes the order, publishes a follow-up from inside the handler.
    let seen: Seen = Arc::default();
    let handler = {
        let (seen, publisher) = (seen.clone(), publisher.clone());
        service_fn(move |m: MemoryMessage| {
            let (seen, publisher) = (seen.clone(), publisher.clone());
            async move {
                seen.lock().unwrap().push(m);
                publisher
                    .oneshot(MemoryRecord::new("payments", b"{}".to_vec()))
                    .await?;
                Ok::<_, eventscope::BoxError>(())
            }
        })
    };
    let consumer = broker
        .consumer("payment-service")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .tracer_provider(&capture.provider);
    consume_until(consumer, 1, handler, seen.clone()).await;
    let order = seen.lock().unwrap()[0].clone();

    // The notification service: processes the follow-up.
    let seen_payments: Seen = Arc::default();
    let handler = {
        let seen = seen_payments.clone();
        service_fn(move |m: MemoryMessage| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(m);
                Ok::<_, eventscope::BoxError>(())
            }
        })
    };
    let consumer = broker
        .consumer("notification-service")
        .subscribe(["payments"])
        .metrics(metrics.clone())
        .tracer_provider(&capture.provider);
    consume_until(consumer, 1, handler, seen_payments.clone()).await;
    let payment = seen_payments.lock().unwrap()[0].clone();

    let spans = capture.spans();
    let send_orders = one(&spans, "send orders");
    let process_orders = one(&spans, "process orders");
    let send_payments = one(&spans, "send payments");
    let process_payments = one(&spans, "process payments");

    // Kinds and the parent chain.
    assert_eq!(send_orders.span_kind, SpanKind::Producer);
    assert_eq!(process_orders.span_kind, SpanKind::Consumer);
    assert!(is_root(send_orders));
    let trace = send_orders.span_context.trace_id();
    for span in [process_orders, send_payments, process_payments] {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "{} left the trace",
            span.name
        );
    }
    assert_eq!(
        process_orders.parent_span_id,
        send_orders.span_context.span_id()
    );
    assert_eq!(
        send_payments.parent_span_id,
        process_orders.span_context.span_id()
    );
    assert_eq!(
        process_payments.parent_span_id,
        send_payments.span_context.span_id()
    );

    // Each process span links to its message's creation context.
    let links: Vec<_> = process_orders
        .links
        .iter()
        .map(|l| l.span_context.span_id())
        .collect();
    assert_eq!(links, vec![send_orders.span_context.span_id()]);

    // Attributes at the SPEC's names.
    for (key, want) in [
        (semconv::MESSAGING_SYSTEM, "memory"),
        (semconv::MESSAGING_DESTINATION_NAME, "orders"),
        (semconv::MESSAGING_OPERATION_TYPE, "process"),
        (semconv::MESSAGING_OPERATION_NAME, "process"),
        (semconv::MESSAGING_CONSUMER_GROUP_NAME, "payment-service"),
    ] {
        assert_eq!(
            attr_str(process_orders, key).as_deref(),
            Some(want),
            "{key}"
        );
    }
    assert_eq!(
        attr_str(process_orders, semconv::MESSAGING_DESTINATION_PARTITION_ID),
        order.partition().map(|p| p.to_string())
    );
    assert_eq!(
        attr_str(send_orders, semconv::MESSAGING_OPERATION_TYPE).as_deref(),
        Some("send")
    );
    assert_eq!(
        attr_str(send_orders, semconv::MESSAGING_DESTINATION_PARTITION_ID),
        order.partition().map(|p| p.to_string()),
        "the send span learns the partition from the broker's acknowledgement"
    );
    assert!(attr(send_orders, semconv::MESSAGING_MESSAGE_BODY_SIZE).is_some());

    // Correlation and causation ids on every hop.
    let header = |m: &MemoryMessage, name: &str| {
        m.headers()
            .get(name)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    let correlation = header(&order, "correlation-id").expect("order has a correlation id");
    let order_id = header(&order, "message-id").expect("order has a message id");
    assert_eq!(
        header(&order, "causation-id"),
        None,
        "a root publish has no cause"
    );
    assert_eq!(
        header(&payment, "correlation-id").as_deref(),
        Some(correlation.as_str())
    );
    assert_eq!(
        header(&payment, "causation-id").as_deref(),
        Some(order_id.as_str())
    );
    assert_ne!(
        header(&payment, "message-id").as_deref(),
        Some(order_id.as_str())
    );
    assert_eq!(
        attr_str(process_orders, semconv::MESSAGING_MESSAGE_CONVERSATION_ID).as_deref(),
        Some(correlation.as_str())
    );
    assert_eq!(
        attr_str(process_orders, semconv::MESSAGING_MESSAGE_ID).as_deref(),
        Some(order_id.as_str())
    );

    // The injected context is the send span's own.
    let traceparent = header(&order, "traceparent").unwrap();
    assert!(traceparent.contains(&send_orders.span_context.span_id().to_string()));
}

#[tokio::test]
async fn link_policy_keeps_the_ambient_parent_and_links_the_creation_context() {
    let capture = capture();
    let broker = MemoryBroker::new();
    let metrics = Metrics::new();
    PublishLayer::new(metrics.clone())
        .tracer_provider(&capture.provider)
        .layer(broker.publisher())
        .oneshot(MemoryRecord::new("audit", b"x".to_vec()).partition(0))
        .await
        .unwrap();
    let topic = broker.partitions("audit").unwrap();
    assert!(topic >= 1);

    // Read the message with a plain consumer, then process it under an ambient span.
    let message = read_one(&broker, "audit", &metrics).await;

    for policy in [ParentPolicy::Link, ParentPolicy::Auto] {
        let ambient = tracing::info_span!("poll loop");
        let handler = ProcessLayer::new(metrics.clone())
            .tracer_provider(&capture.provider)
            .parent_policy(policy)
            .layer(service_fn(|_m: MemoryMessage| async {
                Ok::<_, std::io::Error>(())
            }));
        let _entered = ambient.enter();
        handler.oneshot(message.clone()).await.unwrap();
    }

    let spans = capture.spans();
    let send = one(&spans, "send audit");
    let ambient: Vec<_> = named(&spans, "poll loop");
    let processed = named(&spans, "process audit");
    assert_eq!((processed.len(), ambient.len()), (2, 2));
    for (process, ambient) in processed.into_iter().zip(ambient) {
        assert_eq!(process.parent_span_id, ambient.span_context.span_id());
        assert_ne!(
            process.span_context.trace_id(),
            send.span_context.trace_id()
        );
        assert_eq!(process.links.len(), 1);
        assert_eq!(
            process.links[0].span_context.span_id(),
            send.span_context.span_id()
        );
    }
}

#[tokio::test]
async fn injection_can_be_switched_off_without_losing_ids_or_spans() {
    let capture = capture();
    let broker = MemoryBroker::new();
    broker.create_topic("legacy", 1).unwrap();
    let metrics = Metrics::new();
    PublishLayer::new(metrics.clone())
        .tracer_provider(&capture.provider)
        .inject_context(false)
        .layer(broker.publisher())
        .oneshot(MemoryRecord::new("legacy", b"x".to_vec()))
        .await
        .unwrap();
    let message = read_one(&broker, "legacy", &metrics).await;
    assert!(message.headers().get("traceparent").is_none());
    assert!(message.headers().get("correlation-id").is_some());
    assert!(message.headers().get("message-id").is_some());
    one(&capture.spans(), "send legacy");
}
