//! One trace from a publish through the embedded broker to every consumer and its follow-up
//! publish, with the SPEC §3 span shape and the §2 correlation headers.

use opentelemetry_semantic_conventions::attribute as semconv;
use std::sync::{Arc, Mutex};

use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::Metrics;
use eventscope::process::{ParentPolicy, ProcessLayer};
use eventscope::publish::{Publish, PublishLayer};
use eventscope::testing::{run_until_settled, SpanCapture, SpanKind};
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
    run_until_settled(consumer, collector(seen.clone()), 1)
        .await
        .expect("consumer run");
    let message = seen.lock().unwrap()[0].clone();
    message
}

#[tokio::test]
async fn one_trace_runs_from_publish_through_consumers_and_follow_ups() {
    let capture = SpanCapture::new();
    let broker = MemoryBroker::new();
    let metrics = Metrics::new();
    let publisher: Publish<_> = PublishLayer::new(metrics.clone())
        .tracer_provider(capture.provider())
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
        .tracer_provider(capture.provider());
    run_until_settled(consumer, handler, 1).await.unwrap();
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
        .tracer_provider(capture.provider());
    run_until_settled(consumer, handler, 1).await.unwrap();
    let payment = seen_payments.lock().unwrap()[0].clone();

    // One trace, each hop the parent of the next, and nothing else.
    let spans = capture.spans();
    let [send_orders, process_orders, _send_payments, _process_payments] = spans.assert_chain([
        "send orders",
        "process orders",
        "send payments",
        "process payments",
    ]);
    assert_eq!(spans.len(), 4, "{spans}");
    assert!(send_orders.is_root());
    assert_eq!(send_orders.kind(), SpanKind::Producer);
    assert_eq!(process_orders.kind(), SpanKind::Consumer);

    // Each process span links to its message's creation context.
    assert_eq!(process_orders.links().len(), 1);
    assert!(process_orders.links_to(&send_orders));

    // Attributes at the SPEC's names.
    let partition = order.partition().expect("a partition");
    for (key, want) in [
        (semconv::MESSAGING_SYSTEM, "memory"),
        (semconv::MESSAGING_DESTINATION_NAME, "orders"),
        (semconv::MESSAGING_OPERATION_TYPE, "process"),
        (semconv::MESSAGING_OPERATION_NAME, "process"),
        (semconv::MESSAGING_CONSUMER_GROUP_NAME, "payment-service"),
    ] {
        process_orders.assert_attribute(key, want);
    }
    process_orders.assert_attribute(semconv::MESSAGING_DESTINATION_PARTITION_ID, partition);
    send_orders.assert_attribute(semconv::MESSAGING_OPERATION_TYPE, "send");
    // The send span learns the partition from the broker's acknowledgement.
    send_orders.assert_attribute(semconv::MESSAGING_DESTINATION_PARTITION_ID, partition);
    assert!(send_orders
        .attribute(semconv::MESSAGING_MESSAGE_BODY_SIZE)
        .is_some());

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
    process_orders.assert_attribute(semconv::MESSAGING_MESSAGE_CONVERSATION_ID, &correlation);
    process_orders.assert_attribute(semconv::MESSAGING_MESSAGE_ID, &order_id);

    // The injected context is the send span's own.
    let traceparent = header(&order, "traceparent").unwrap();
    assert!(traceparent.contains(&send_orders.span_id()));
}

#[tokio::test]
async fn link_policy_keeps_the_ambient_parent_and_links_the_creation_context() {
    let capture = SpanCapture::new();
    let _tracing = capture.set_tracing_default();
    let broker = MemoryBroker::new();
    let metrics = Metrics::new();
    PublishLayer::new(metrics.clone())
        .tracer_provider(capture.provider())
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
            .tracer_provider(capture.provider())
            .parent_policy(policy)
            .layer(service_fn(|_m: MemoryMessage| async {
                Ok::<_, std::io::Error>(())
            }));
        let _entered = ambient.enter();
        handler.oneshot(message.clone()).await.unwrap();
    }

    let spans = capture.spans();
    let send = spans.one("send audit");
    let ambient = spans.named("poll loop");
    let processed = spans.named("process audit");
    assert_eq!((processed.len(), ambient.len()), (2, 2), "{spans}");
    for (process, ambient) in processed.into_iter().zip(ambient) {
        assert_eq!(process.parent(), Some(ambient), "{spans}");
        assert_ne!(process.trace_id(), send.trace_id());
        assert_eq!(process.links().len(), 1);
        assert!(process.links_to(&send), "{spans}");
    }
}

#[tokio::test]
async fn injection_can_be_switched_off_without_losing_ids_or_spans() {
    let capture = SpanCapture::new();
    let broker = MemoryBroker::new();
    broker.create_topic("legacy", 1).unwrap();
    let metrics = Metrics::new();
    PublishLayer::new(metrics.clone())
        .tracer_provider(capture.provider())
        .inject_context(false)
        .layer(broker.publisher())
        .oneshot(MemoryRecord::new("legacy", b"x".to_vec()))
        .await
        .unwrap();
    let message = read_one(&broker, "legacy", &metrics).await;
    assert!(message.headers().get("traceparent").is_none());
    assert!(message.headers().get("correlation-id").is_some());
    assert!(message.headers().get("message-id").is_some());
    capture.spans().one("send legacy");
}
