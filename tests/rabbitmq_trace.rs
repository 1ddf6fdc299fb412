//! One trace runs from a publish through RabbitMQ to the process span and on to the follow-up
//! the handler publishes: the process span is a child of the send span (no ambient span:
//! `ParentPolicy::Auto`) and links to it, the follow-up's send span is a child of the process
//! span, and all three carry the messaging and RabbitMQ semconv attributes (destination
//! `{exchange}:{routing key}` and `{exchange}:{routing key}:{queue}`, routing key, delivery
//! tag, server address and port, ids). The ids travel where AMQP keeps them: `message_id` and
//! `correlation_id` properties, `causation-id` header. A message from a producer that sets no
//! id still gives its follow-up a `causation-id`: the id it got on receipt.

mod rabbitmq_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::header;
use eventscope::metrics::Metrics;
use eventscope::rabbitmq::lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions,
};
use eventscope::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use eventscope::rabbitmq::lapin::{BasicProperties, Channel, ExchangeKind};
use eventscope::rabbitmq::{self, RabbitConsumer, RabbitMessage, RabbitRecord};
use opentelemetry::trace::SpanKind;
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as semconv;
use rabbitmq_support::*;
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

/// The first message waiting in `queue`, read with `basic.get`: its properties and payload.
async fn first_message(channel: &Channel, queue: &str) -> (BasicProperties, Vec<u8>) {
    for _ in 0..100 {
        if let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            return (message.delivery.properties, message.delivery.data);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing arrived in {queue}");
}

fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("{name} is not a long string: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_process_and_follow_up_share_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let connection = connect("eventscope-trace").await;
    let channel = connection.create_channel().await.expect("channel");
    let exchange = unique("trace-exchange");
    let (queue, follow_up) = (unique("trace"), unique("trace-follow-up"));
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    declare_queue(&channel, &queue).await;
    declare_queue(&channel, &follow_up).await;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "created".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");

    let metrics = Metrics::new();
    let publisher = rabbitmq::publish_layer(metrics.clone())
        .tracer_provider(&provider)
        .layer(publisher(&connection).await);
    publisher
        .clone()
        .oneshot(RabbitRecord::new(
            &exchange,
            "created",
            b"{\"order\":7}".to_vec(),
        ))
        .await
        .expect("confirmed");

    let received: Arc<Mutex<Vec<RabbitMessage>>> = Arc::default();
    let followed = Arc::new(Notify::new());
    let handler = service_fn({
        let (received, followed, publisher, follow_up) = (
            received.clone(),
            followed.clone(),
            publisher.clone(),
            follow_up.clone(),
        );
        move |m: RabbitMessage| {
            received.lock().unwrap().push(m);
            let (followed, publisher) = (followed.clone(), publisher.clone());
            let record = RabbitRecord::to_queue(&follow_up, b"{\"paid\":7}".to_vec());
            async move {
                publisher.oneshot(record).await?;
                followed.notify_one();
                Ok::<_, eventscope::rabbitmq::PublishError>(())
            }
        }
    });
    let shutdown = async {
        tokio::time::timeout(Duration::from_secs(30), followed.notified())
            .await
            .expect("the follow-up was not published within 30 s");
    };
    RabbitConsumer::new(URI, &queue)
        .expect("consumer")
        .metrics(metrics.clone())
        .tracer_provider(&provider)
        .run(handler, shutdown)
        .await
        .expect("consumer ran");

    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let send = one(&spans, &format!("send {exchange}:created"));
    let process = one(&spans, &format!("process {exchange}:created:{queue}"));
    let follow = one(&spans, &format!("send {follow_up}"));

    // One trace: publish → broker → process → follow-up.
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(follow.span_kind, SpanKind::Producer);
    let trace = send.span_context.trace_id();
    assert_eq!(process.span_context.trace_id(), trace);
    assert_eq!(follow.span_context.trace_id(), trace);
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert_eq!(follow.parent_span_id, process.span_context.span_id());
    let link = process
        .links
        .links
        .first()
        .expect("a link to the creation context");
    assert_eq!(link.span_context.span_id(), send.span_context.span_id());
    for span in [send, process, follow] {
        assert_eq!(
            span.instrumentation_scope.schema_url(),
            Some("https://opentelemetry.io/schemas/1.44.0")
        );
    }

    // Semconv attributes on every span.
    for (span, operation, destination) in [
        (send, "send", format!("{exchange}:created")),
        (process, "process", format!("{exchange}:created:{queue}")),
        (follow, "send", follow_up.clone()),
    ] {
        assert_eq!(text(span, semconv::MESSAGING_SYSTEM), "rabbitmq");
        assert_eq!(text(span, semconv::MESSAGING_OPERATION_NAME), operation);
        assert_eq!(text(span, semconv::MESSAGING_OPERATION_TYPE), operation);
        assert_eq!(text(span, semconv::MESSAGING_DESTINATION_NAME), destination);
        assert_eq!(text(span, semconv::SERVER_ADDRESS), "127.0.0.1");
        assert_eq!(attr(span, semconv::SERVER_PORT), Some(&Value::I64(5672)));
        assert!(attr(span, semconv::MESSAGING_DESTINATION_PARTITION_ID).is_none());
        assert!(attr(span, semconv::MESSAGING_MESSAGE_ID).is_some());
        assert!(attr(span, semconv::ERROR_TYPE).is_none());
    }
    for span in [send, process] {
        assert_eq!(
            text(span, semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY),
            "created"
        );
        assert_eq!(
            attr(span, semconv::MESSAGING_MESSAGE_BODY_SIZE),
            Some(&Value::I64(11))
        );
    }
    assert_eq!(
        text(follow, semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY),
        follow_up
    );
    let message = received.lock().unwrap().pop().expect("received");
    assert_eq!(
        attr(process, semconv::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG),
        Some(&Value::I64(message.delivery_tag() as i64))
    );
    assert_eq!(text(process, semconv::MESSAGING_CONSUMER_GROUP_NAME), queue);
    assert_eq!(
        text(send, semconv::MESSAGING_MESSAGE_ID),
        text(process, semconv::MESSAGING_MESSAGE_ID)
    );
    let flow = text(send, semconv::MESSAGING_MESSAGE_CONVERSATION_ID);
    assert_eq!(
        text(process, semconv::MESSAGING_MESSAGE_CONVERSATION_ID),
        flow
    );
    assert_eq!(
        text(follow, semconv::MESSAGING_MESSAGE_CONVERSATION_ID),
        flow
    );

    // The ids travel as AMQP properties, the trace context and the cause as long strings.
    let properties = message.properties();
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.to_string()),
        Some(text(send, semconv::MESSAGING_MESSAGE_ID))
    );
    assert_eq!(
        properties
            .correlation_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(flow.clone())
    );
    let traceparent = header_text(properties, header::TRACEPARENT).expect("traceparent");
    assert!(traceparent.contains(&send.span_context.span_id().to_string()));
    assert!(header_text(properties, header::MESSAGE_ID).is_none());
    assert!(properties.timestamp().is_some());
    assert!(matches!(
        properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("timestamp_in_ms")),
        Some(AMQPValue::LongLongInt(_))
    ));

    let (followed_properties, _) = first_message(&channel, &follow_up).await;
    assert_eq!(
        header_text(&followed_properties, header::CAUSATION_ID),
        Some(text(process, semconv::MESSAGING_MESSAGE_ID)),
        "the follow-up names its cause"
    );
    assert_eq!(
        followed_properties
            .correlation_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(flow)
    );
    assert_eq!(
        followed_properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(text(follow, semconv::MESSAGING_MESSAGE_ID))
    );

    delete_queue(&channel, &queue).await;
    delete_queue(&channel, &follow_up).await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_ids_is_the_cause_of_its_follow_ups() {
    let connection = connect("eventscope-trace-foreign").await;
    let channel = connection.create_channel().await.expect("channel");
    let (source, follow_up) = (unique("foreign-source"), unique("foreign-follow-up"));
    declare_queue(&channel, &source).await;
    declare_queue(&channel, &follow_up).await;

    // A producer that knows nothing of eventscope: no headers, no properties.
    channel
        .basic_publish(
            "".into(),
            source.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
        .expect("published");

    let metrics = Metrics::new();
    let publisher = rabbitmq::publish_layer(metrics.clone()).layer(publisher(&connection).await);
    let seen_id = Arc::new(Mutex::new(None));
    let published = Arc::new(Notify::new());
    let handler = service_fn({
        let (publisher, published, follow_up, seen_id) = (
            publisher.clone(),
            published.clone(),
            follow_up.clone(),
            seen_id.clone(),
        );
        move |m: RabbitMessage| {
            use eventscope::IncomingMessage;
            *seen_id.lock().unwrap() = m.message_id().map(|id| id.into_owned());
            let (publisher, published) = (publisher.clone(), published.clone());
            let record = RabbitRecord::to_queue(&follow_up, b"{}".to_vec());
            async move {
                publisher.oneshot(record).await?;
                published.notify_one();
                Ok::<_, eventscope::rabbitmq::PublishError>(())
            }
        }
    });
    let shutdown = async {
        tokio::time::timeout(Duration::from_secs(30), published.notified())
            .await
            .expect("the follow-up was not published within 30 s");
    };
    RabbitConsumer::new(URI, &source)
        .expect("consumer")
        .metrics(metrics.clone())
        .run(handler, shutdown)
        .await
        .expect("consumer ran");

    let given = seen_id
        .lock()
        .unwrap()
        .clone()
        .expect("an id given on receipt");
    let (properties, _) = first_message(&channel, &follow_up).await;
    assert_eq!(
        header_text(&properties, header::CAUSATION_ID),
        Some(given),
        "the follow-up names the message it was caused by"
    );
    delete_queue(&channel, &source).await;
    delete_queue(&channel, &follow_up).await;
    let _ = connection.close(200, "OK".into()).await;
}
