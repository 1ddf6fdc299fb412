//! One trace runs from a publish through a real Kafka-compatible broker to the process span:
//! the process span is a child of the send span (no ambient span: `ParentPolicy::Auto`), links
//! to it, and both carry the messaging and Kafka semconv attributes. A message from a producer
//! that sets no headers still gives its follow-ups a `causation-id`: its position.

mod kafka_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::header;
use eventscope::kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};
use eventscope::metrics::{label, name, Metrics};
use eventscope::publish::PublishLayer;
use kafka_support::*;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as semconv;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tower::{service_fn, Layer, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

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

#[tokio::test]
async fn publish_and_process_share_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kafka_trace")));
    // A current-thread runtime: the driver's tasks run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let topic = unique("trace");
    let group = unique("trace-group");
    create_topic(&topic, 1).await;
    let metrics = Metrics::new();

    let publisher = PublishLayer::new(metrics.clone())
        .tracer_provider(&provider)
        .layer(KafkaPublisher::new(producer()));
    let delivery = publisher
        .oneshot(KafkaRecord::new(&topic, b"{\"order\":7}".to_vec()).key("customer-7"))
        .await
        .expect("delivered");
    assert_eq!(delivery.partition, 0);

    let config = config(&group);
    let consumer = consumer(&config);
    assign(&consumer, &topic, 1);
    let received: Arc<Mutex<Vec<KafkaMessage>>> = Arc::default();
    let got_one = Arc::new(Notify::new());
    let handler = service_fn({
        let (received, got_one) = (received.clone(), got_one.clone());
        move |m: KafkaMessage| {
            received.lock().unwrap().push(m);
            got_one.notify_one();
            std::future::ready(Ok::<_, std::io::Error>(()))
        }
    });
    let shutdown = async {
        tokio::time::timeout(Duration::from_secs(30), got_one.notified())
            .await
            .expect("the message was not consumed within 30 s");
    };
    KafkaConsumer::new(consumer)
        .metrics(metrics.clone())
        .tracer_provider(&provider)
        .run(handler, shutdown)
        .await
        .expect("consumer ran");

    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let send = spans
        .iter()
        .find(|s| s.name == format!("send {topic}"))
        .expect("a send span");
    let process = spans
        .iter()
        .find(|s| s.name == format!("process {topic}"))
        .expect("a process span");

    // One trace: publish → broker → process.
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        process.span_context.trace_id(),
        send.span_context.trace_id()
    );
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    let link = process
        .links
        .links
        .first()
        .expect("a link to the creation context");
    assert_eq!(link.span_context.span_id(), send.span_context.span_id());
    assert_eq!(link.span_context.trace_id(), send.span_context.trace_id());

    // The message carried the send span's context and ids.
    let message = received.lock().unwrap().pop().expect("received");
    let traceparent = message.header("traceparent").expect("traceparent header");
    let traceparent = std::str::from_utf8(traceparent).unwrap();
    assert!(traceparent.contains(&send.span_context.span_id().to_string()));
    assert_eq!(message.key(), Some(&b"customer-7"[..]));

    // Semconv attributes on both sides.
    for (span, operation) in [(send, "send"), (process, "process")] {
        assert_eq!(text(span, semconv::MESSAGING_SYSTEM), "kafka");
        assert_eq!(text(span, semconv::MESSAGING_OPERATION_NAME), operation);
        assert_eq!(text(span, semconv::MESSAGING_DESTINATION_NAME), topic);
        assert_eq!(text(span, semconv::MESSAGING_DESTINATION_PARTITION_ID), "0");
        assert_eq!(
            text(span, semconv::MESSAGING_KAFKA_MESSAGE_KEY),
            "customer-7"
        );
        assert_eq!(
            attr(span, semconv::MESSAGING_KAFKA_OFFSET),
            Some(&Value::I64(delivery.offset)),
            "{operation} span offset"
        );
        assert!(attr(span, semconv::MESSAGING_KAFKA_MESSAGE_TOMBSTONE).is_none());
    }
    assert_eq!(
        text(send, semconv::MESSAGING_MESSAGE_ID),
        text(process, semconv::MESSAGING_MESSAGE_ID)
    );
    assert_eq!(
        text(send, semconv::MESSAGING_MESSAGE_CONVERSATION_ID),
        text(process, semconv::MESSAGING_MESSAGE_CONVERSATION_ID)
    );
    assert_eq!(text(process, semconv::MESSAGING_CONSUMER_GROUP_NAME), group);
    // Both ends name the broker and the client (librdkafka's default client id).
    for span in [send, process] {
        assert_eq!(text(span, semconv::SERVER_ADDRESS), "127.0.0.1");
        assert_eq!(attr(span, semconv::SERVER_PORT), Some(&Value::I64(9092)));
        assert_eq!(text(span, semconv::MESSAGING_CLIENT_ID), "rdkafka");
    }
    assert_eq!(
        attr(process, semconv::MESSAGING_MESSAGE_BODY_SIZE),
        Some(&Value::I64(11))
    );
}

/// The value of header `name` of the first record of `topic` (partition 0), read with a plain
/// `rdkafka` consumer.
fn first_record_header(topic: &str, name: &str) -> Option<String> {
    let reader: BaseConsumer = kafka_support::config(&unique("reader"))
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&list).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "no record on {topic}");
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let headers = message.headers()?;
                return headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned());
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
}

#[tokio::test]
async fn a_message_without_headers_is_the_cause_of_its_follow_ups() {
    // Every test of this file runs under a subscriber of its own: a span callsite first hit on
    // a thread without one could be cached as uninteresting for the others.
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    let source = unique("foreign-source");
    let follow_up = unique("follow-up");
    let group = unique("follow-up-group");
    create_topic(&source, 1).await;
    create_topic(&follow_up, 1).await;

    // A producer that knows nothing of eventscope: no headers at all.
    let delivered = producer()
        .send(
            FutureRecord::to(&source).key("k").payload(&b"{}"[..]),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");

    // Its handler publishes a follow-up through the publish layer.
    let metrics = Metrics::new();
    let publisher = PublishLayer::new(metrics.clone()).layer(KafkaPublisher::new(producer()));
    let published = Arc::new(Notify::new());
    let handler = service_fn({
        let (publisher, published, follow_up) =
            (publisher.clone(), published.clone(), follow_up.clone());
        move |_m: KafkaMessage| {
            let (publisher, published) = (publisher.clone(), published.clone());
            let record = KafkaRecord::new(&follow_up, b"{}".to_vec());
            async move {
                publisher.oneshot(record).await?;
                published.notify_one();
                Ok::<_, eventscope::kafka::PublishError>(())
            }
        }
    });
    let consumer = consumer(&config(&group));
    assign(&consumer, &source, 1);
    let shutdown = async {
        tokio::time::timeout(Duration::from_secs(30), published.notified())
            .await
            .expect("the follow-up was not published within 30 s");
    };
    KafkaConsumer::new(consumer)
        .metrics(metrics.clone())
        .run(handler, shutdown)
        .await
        .expect("consumer ran");

    assert_eq!(
        first_record_header(&follow_up, header::CAUSATION_ID),
        Some(format!(
            "{source}/{}/{}",
            delivered.partition, delivered.offset
        )),
        "the follow-up names the record it was caused by"
    );
}

#[tokio::test]
async fn a_failed_publish_is_named_by_its_librdkafka_code() {
    // Every test of this file runs under a subscriber of its own: a span callsite first hit on
    // a thread without one could be cached as uninteresting for the others.
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    let topic = unique("too-large");
    create_topic(&topic, 1).await;
    let metrics = Metrics::new();
    let producer: FutureProducer = eventscope::kafka::producer_config(BOOTSTRAP)
        .set("message.max.bytes", "1000")
        .create()
        .expect("producer");
    let publisher =
        eventscope::kafka::publish_layer(metrics.clone()).layer(KafkaPublisher::new(producer));
    let error = publisher
        .oneshot(KafkaRecord::new(&topic, vec![b'x'; 4000]))
        .await
        .expect_err("a record above message.max.bytes is refused");
    let code = format!("{:?}", RDKafkaErrorCode::MessageSizeTooLarge);
    assert_eq!(error.error_type(), code);
    let failed = samples(
        &metrics.encode(),
        name::SENT_MESSAGES,
        &[(label::DESTINATION, &topic), (label::ERROR_TYPE, &code)],
    );
    assert_eq!(failed.len(), 1, "one series, error_type={code}");
    assert_eq!(failed[0].1, 1.0);
}
