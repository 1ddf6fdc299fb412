//! A publish is confirmed by the broker, or fails with an `error.type` of its own, in the span
//! and in `messaging_client_sent_messages_total`: an unroutable mandatory message (`NO_ROUTE`,
//! which RabbitMQ confirms with an ack carrying the returned message), a nack (`nack`), a
//! missing exchange (`NOT_FOUND`, after which the channel is closed: `channel_closed`), a
//! connection the broker closed (`connection` / `channel_closed`, at once, no hang). A
//! publisher that owns its connection (`RabbitPublisher::connect`) replaces it, or only its
//! channel when the broker closed that, and publishing resumes by itself; so it does on a
//! connection with lapin's auto-recover.

mod rabbitmq_support;

use std::time::{Duration, Instant};

use eventscope::metrics::{label, name, Metrics};
use eventscope::rabbitmq::lapin::options::QueueDeclareOptions;
use eventscope::rabbitmq::lapin::types::AMQPValue;
use eventscope::rabbitmq::lapin::Connection;
use eventscope::rabbitmq::{self, PublishError, RabbitRecord};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use opentelemetry_semantic_conventions::attribute as semconv;
use rabbitmq_support::*;
use tower::{Layer, Service, ServiceExt};

fn failed_sends(metrics: &Metrics, destination: &str, error_type: &str) -> f64 {
    samples(
        &metrics.encode(),
        name::SENT_MESSAGES,
        &[
            (label::DESTINATION, destination),
            (label::ERROR_TYPE, error_type),
        ],
    )
    .iter()
    .map(|(_, v)| v)
    .sum()
}

#[tokio::test]
async fn each_refusal_has_its_error_type() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let connection = connect("eventscope-publish-errors").await;
    let metrics = Metrics::new();
    let layer = rabbitmq::publish_layer(metrics.clone()).tracer_provider(&provider);

    // Nobody is bound to receive it: the broker returns it (312) inside its ack.
    let nowhere = unique("no-such-queue");
    let error = layer
        .layer(publisher(&connection).await)
        .oneshot(RabbitRecord::to_queue(&nowhere, b"lost".to_vec()))
        .await
        .expect_err("an unroutable mandatory publish fails");
    assert!(error.is_returned());
    assert_eq!(error.error_type(), "NO_ROUTE");
    assert_eq!(error.reply_code(), Some(312));
    assert_eq!(failed_sends(&metrics, &nowhere, "NO_ROUTE"), 1.0);
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let span = spans
        .iter()
        .find(|s| s.name == format!("send {nowhere}"))
        .expect("a send span");
    assert!(span
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == semconv::ERROR_TYPE && kv.value.as_str() == "NO_ROUTE"));

    // Not mandatory: the broker drops it, and says yes.
    layer
        .layer(publisher(&connection).await)
        .oneshot(RabbitRecord::to_queue(&nowhere, b"dropped".to_vec()).mandatory(false))
        .await
        .expect("a non-mandatory publish is confirmed even when unroutable");

    // A full queue that refuses: the broker nacks.
    let full = unique("full");
    let channel = connection.create_channel().await.expect("channel");
    let mut arguments = expiring();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            full.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .expect("declare");
    let mut publisher = layer.layer(rabbitmq_support::publisher(&connection).await);
    publisher
        .ready()
        .await
        .unwrap()
        .call(RabbitRecord::to_queue(&full, b"1".to_vec()))
        .await
        .expect("room for one");
    let error = publisher
        .ready()
        .await
        .unwrap()
        .call(RabbitRecord::to_queue(&full, b"2".to_vec()))
        .await
        .expect_err("the broker nacks");
    assert!(error.is_nack());
    assert_eq!(failed_sends(&metrics, &full, "nack"), 1.0);

    // A missing exchange: the broker closes the channel (404), and the channel stays closed.
    let missing = unique("no-such-exchange");
    let mut publisher = layer.layer(rabbitmq_support::publisher(&connection).await);
    let error = publisher
        .ready()
        .await
        .unwrap()
        .call(RabbitRecord::new(&missing, "key", b"x".to_vec()))
        .await
        .expect_err("no such exchange");
    assert_eq!(error.error_type(), "NOT_FOUND");
    assert_eq!(
        failed_sends(&metrics, &format!("{missing}:key"), "NOT_FOUND"),
        1.0
    );
    let error = publisher
        .ready()
        .await
        .unwrap()
        .call(RabbitRecord::to_queue(&full, b"3".to_vec()))
        .await
        .expect_err("the channel is closed");
    assert_eq!(error.error_type(), "channel_closed");

    // Names AMQP cannot carry are refused before anything is sent.
    let error = layer
        .layer(rabbitmq_support::publisher(&connection).await)
        .oneshot(RabbitRecord::to_queue("q".repeat(256), Vec::new()))
        .await
        .expect_err("routing key over 255 bytes");
    assert_eq!(error.error_type(), "invalid_record");

    delete_queue(&channel, &full).await;
    let _ = connection.close(200, "OK".into()).await;
}

async fn publish_once(
    publisher: &mut rabbitmq::RabbitPublisher,
    queue: &str,
) -> Result<(), PublishError> {
    publisher
        .ready()
        .await?
        .call(RabbitRecord::to_queue(queue, b"x".to_vec()))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_fails_at_once_or_resumes_with_auto_recover() {
    let (setup, channel, queue) =
        queue_for_test("eventscope-publish-setup", "publish-after-close").await;

    // Without auto-recover: the broker closes the connection, and every publish fails at once.
    let plain_name = unique("plain-publisher");
    let plain = connect(&plain_name).await;
    let mut publisher = rabbitmq_support::publisher(&plain).await;
    publish_once(&mut publisher, &queue).await.expect("before");
    assert_eq!(close_shared_connections_named(&plain_name).await, 1);
    let started = Instant::now();
    let mut failures = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(error) = publish_once(&mut publisher, &queue).await {
            assert!(error.is_connection(), "{error}: {}", error.error_type());
            failures.push(error.error_type());
        }
    }
    assert_eq!(failures.len(), 3, "a closed connection does not come back");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");

    // With lapin's auto-recover, the channel comes back and publishing resumes.
    let recovering_name = unique("recovering-publisher");
    let recovering = Connection::connect(URI, properties(&recovering_name).enable_auto_recover())
        .await
        .expect("connect");
    let mut publisher = rabbitmq_support::publisher(&recovering).await;
    publish_once(&mut publisher, &queue).await.expect("before");
    close_shared_connections_named(&recovering_name).await;
    let mut confirmed = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while confirmed < 3 {
        assert!(Instant::now() < deadline, "publishing did not resume");
        match publish_once(&mut publisher, &queue).await {
            Ok(()) => confirmed += 1,
            Err(error) => assert!(error.is_connection(), "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    delete_queue(&channel, &queue).await;
    let _ = recovering.close(200, "OK".into()).await;
    let _ = setup.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_with_its_own_connection_replaces_it_and_its_channel() {
    let (setup, channel, queue) =
        queue_for_test("eventscope-publish-setup", "own-connection").await;

    let name = unique("owning-publisher");
    let mut publisher = rabbitmq::RabbitPublisher::connect_with(URI, properties(&name))
        .await
        .expect("connect")
        .timeout(Duration::from_secs(10))
        .max_reconnect_delay(Duration::from_millis(200));
    publish_once(&mut publisher, &queue).await.expect("before");
    let first_channel = publisher.channel();

    // The broker closes the connection: the next publishes wait for a new one and go out.
    assert_eq!(close_shared_connections_named(&name).await, 1);
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(publish_once(&mut publisher, &queue).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A publish already on its way when the connection closed may fail; every later one is
    // sent on the new connection.
    assert!(
        outcomes.iter().skip(1).all(Result::is_ok),
        "{:?}",
        outcomes
            .iter()
            .map(|o| o.as_ref().map_err(|e| e.error_type()))
            .collect::<Vec<_>>()
    );
    assert!(publisher.channel().status().connected());
    assert!(
        !first_channel.status().connected(),
        "the old channel is gone"
    );
    assert_eq!(
        count_connections_named(&name),
        1,
        "one connection of its own, the replacement"
    );

    // A missing exchange: the broker closes the channel over it (`NOT_FOUND`); the next
    // publish goes out on a new channel of the same connection.
    let missing = RabbitRecord::new(unique("no-such-exchange"), "k", b"x".to_vec());
    let refused = publisher.ready().await.unwrap().call(missing).await;
    assert_eq!(refused.unwrap_err().error_type(), "NOT_FOUND");
    let before = publisher.channel();
    publish_once(&mut publisher, &queue)
        .await
        .expect("a new channel after NOT_FOUND");
    assert_ne!(publisher.channel().id(), before.id(), "a new channel");
    assert_eq!(
        count_connections_named(&name),
        1,
        "still the same connection"
    );

    delete_queue(&channel, &queue).await;
    let _ = setup.close(200, "OK".into()).await;
}
