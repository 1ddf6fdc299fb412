//! One trace from a publish through the NATS server to the process span and on to the
//! follow-up publish made inside the handler, on JetStream and on core NATS: the process span
//! is a child of the send span (no ambient span: `ParentPolicy::Auto`) and links to it, the
//! follow-up's send span is a child of the process span, and the spans carry the messaging
//! semconv attributes and eventscope's NATS ones.

mod nats_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::nats::{
    self, attribute, JetStreamConsumer, JetStreamMessage, JetStreamPublisher, NatsConsumer,
    NatsMessage, NatsPublisher, NatsRecord,
};
use eventscope::{header, IncomingMessage, Metrics};
use nats_support::TestStream;
use opentelemetry::trace::SpanKind;
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as semconv;
use tokio::sync::Notify;
use tower::{service_fn, Layer, ServiceExt};

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn text(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_else(|| panic!("span {:?} has no {key}", span.name))
}

fn provider() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (exporter, provider)
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one {name:?} in {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// The three spans of publish → process → follow-up publish, related as SPEC §3 says.
fn check_chain(spans: &[SpanData], subject: &str, follow_up: &str, group: &str) {
    let send = one(spans, &format!("send {subject}"));
    let process = one(spans, &format!("process {subject}"));
    let next = one(spans, &format!("send {follow_up}"));
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(next.span_kind, SpanKind::Producer);
    let trace = send.span_context.trace_id();
    assert_eq!(process.span_context.trace_id(), trace);
    assert_eq!(
        next.span_context.trace_id(),
        trace,
        "one trace to the follow-up"
    );
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert_eq!(next.parent_span_id, process.span_context.span_id());
    let link = process
        .links
        .links
        .first()
        .expect("a link to the creation context");
    assert_eq!(link.span_context.span_id(), send.span_context.span_id());

    for (span, operation, destination) in [
        (send, "send", subject),
        (process, "process", subject),
        (next, "send", follow_up),
    ] {
        assert_eq!(text(span, semconv::MESSAGING_SYSTEM), "nats");
        assert_eq!(text(span, semconv::MESSAGING_OPERATION_NAME), operation);
        assert_eq!(text(span, semconv::MESSAGING_DESTINATION_NAME), destination);
        assert!(
            attr(span, semconv::MESSAGING_DESTINATION_PARTITION_ID).is_none(),
            "NATS has no partitions"
        );
    }
    assert_eq!(
        text(send, semconv::MESSAGING_MESSAGE_ID),
        text(process, semconv::MESSAGING_MESSAGE_ID)
    );
    assert_eq!(
        text(send, semconv::MESSAGING_MESSAGE_CONVERSATION_ID),
        text(next, semconv::MESSAGING_MESSAGE_CONVERSATION_ID),
        "the follow-up keeps the flow's correlation id"
    );
    assert_eq!(text(process, semconv::MESSAGING_CONSUMER_GROUP_NAME), group);
    assert_eq!(text(process, semconv::SERVER_ADDRESS), "127.0.0.1");
    assert!(matches!(
        attr(process, semconv::SERVER_PORT),
        Some(Value::I64(_))
    ));
    assert_eq!(
        attr(process, semconv::MESSAGING_MESSAGE_BODY_SIZE),
        Some(&Value::I64(11))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_publish_process_and_follow_up_share_one_trace() {
    let (exporter, provider) = provider();
    let js = nats_support::js().await;
    let orders = TestStream::new(&js, "trace").await;
    let payments = TestStream::new(&js, "trace_follow").await;
    let group = nats_support::unique("billing");
    let metrics = Metrics::new();
    let publisher = nats::publish_layer(metrics.clone())
        .tracer_provider(&provider)
        .layer(JetStreamPublisher::new(js.clone()));

    let receipt = publisher
        .clone()
        .oneshot(NatsRecord::new(orders.subject.clone(), "{\"order\":7}"))
        .await
        .expect("acknowledged");
    assert!(!receipt.duplicate);

    let received: Arc<Mutex<Vec<JetStreamMessage>>> = Arc::default();
    let done = Arc::new(Notify::new());
    let handler = service_fn({
        let (received, done, publisher) = (received.clone(), done.clone(), publisher.clone());
        let follow_up = payments.subject.clone();
        move |m: JetStreamMessage| {
            received.lock().unwrap().push(m);
            let (done, publisher, follow_up) = (done.clone(), publisher.clone(), follow_up.clone());
            async move {
                publisher.oneshot(NatsRecord::new(follow_up, "{}")).await?;
                done.notify_one();
                Ok::<_, nats::PublishError>(())
            }
        }
    });
    let pull = orders.consumer(&group, Duration::from_secs(30), 5).await;
    let shutdown = async {
        tokio::time::timeout(Duration::from_secs(30), done.notified())
            .await
            .expect("processed within 30 s");
    };
    JetStreamConsumer::new(js.clone(), pull)
        .unwrap()
        .metrics(metrics.clone())
        .tracer_provider(&provider)
        .run(handler, shutdown)
        .await
        .expect("consumer ran");

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    check_chain(&spans, &orders.subject, &payments.subject, &group);
    let send = one(&spans, &format!("send {}", orders.subject));
    let process = one(&spans, &format!("process {}", orders.subject));
    for span in [send, process] {
        assert_eq!(text(span, attribute::STREAM_NAME), orders.name);
        assert_eq!(
            attr(span, attribute::STREAM_SEQUENCE),
            Some(&Value::I64(receipt.sequence as i64))
        );
    }
    assert_eq!(attr(send, attribute::DUPLICATE), Some(&Value::Bool(false)));

    // The message's id travelled as Nats-Msg-Id; the follow-up names it as its cause.
    let message = received.lock().unwrap().pop().expect("received");
    let id = message
        .header("Nats-Msg-Id")
        .expect("the id went as Nats-Msg-Id")
        .to_owned();
    assert_eq!(message.message_id().as_deref(), Some(id.as_str()));
    assert_eq!(message.delivery_attempt(), Some(1));
    assert!(message.header(header::TRACEPARENT).is_some());

    // Publishing the same id again is a duplicate, not an error.
    let again = JetStreamPublisher::new(js.clone())
        .oneshot(NatsRecord::new(orders.subject.clone(), "{\"order\":7}").id(id))
        .await
        .expect("a duplicate is no error");
    assert!(again.duplicate);
    assert_eq!(again.sequence, receipt.sequence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_publish_process_and_follow_up_share_one_trace() {
    let (exporter, provider) = provider();
    let client = nats_support::client().await;
    let subject = format!("trace.core.{}", nats_support::unique("orders"));
    let follow_up = format!("{subject}.payments");
    let group = "billing";
    let metrics = Metrics::new();
    let publisher = nats::publish_layer(metrics.clone())
        .tracer_provider(&provider)
        .layer(NatsPublisher::new(client.clone()));

    let done = Arc::new(Notify::new());
    let handler = service_fn({
        let (done, publisher, follow_up) = (done.clone(), publisher.clone(), follow_up.clone());
        move |_m: NatsMessage| {
            let (done, publisher, follow_up) = (done.clone(), publisher.clone(), follow_up.clone());
            async move {
                publisher.oneshot(NatsRecord::new(follow_up, "{}")).await?;
                done.notify_one();
                Ok::<_, nats::PublishError>(())
            }
        }
    });
    let consumer = NatsConsumer::queue_subscribe(client.clone(), subject.clone(), group)
        .metrics(metrics.clone())
        .tracer_provider(&provider);
    let running = tokio::spawn(consumer.run(handler, async move {
        tokio::time::timeout(Duration::from_secs(30), done.notified())
            .await
            .expect("processed within 30 s");
    }));
    // The subscription is made when the consumer starts: publish until it is there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publisher
        .clone()
        .oneshot(NatsRecord::new(subject.clone(), "{\"order\":7}"))
        .await
        .expect("flushed");
    running.await.unwrap().expect("consumer ran");

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    check_chain(&spans, &subject, &follow_up, group);
}
