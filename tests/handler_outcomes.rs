//! What the process layer records when a handler fails, is cancelled, or takes a batch; and
//! that a failed message is never settled.

use opentelemetry_semantic_conventions::attribute as semconv;
use std::time::Duration;

use eventscope::classify::{Classifier, Decision, TypeNameClassifier};
use eventscope::consume::ConsumeError;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::{label, name, Metrics};
use eventscope::process::BatchProcessLayer;
use eventscope::publish::PublishLayer;
use eventscope::testing::{run_until_settled, MetricsSnapshot, SpanCapture};
use tower::{service_fn, Layer, ServiceExt};

#[derive(Debug)]
struct CardDeclined;

impl std::fmt::Display for CardDeclined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("card declined")
    }
}

impl std::error::Error for CardDeclined {}

async fn publish(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
    broker: &MemoryBroker,
    metrics: &Metrics,
    topic: &str,
    n: usize,
) {
    let publisher = PublishLayer::new(metrics.clone())
        .tracer_provider(provider)
        .layer(broker.publisher());
    for i in 0..n {
        publisher
            .clone()
            .oneshot(MemoryRecord::new(topic, format!("{i}").into_bytes()).partition(0))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_failing_handler_gets_error_type_and_its_message_is_not_committed() {
    let capture = SpanCapture::new();
    let broker = MemoryBroker::new();
    broker.create_topic("charges", 1).unwrap();
    let metrics = Metrics::new();
    publish(capture.provider(), &broker, &metrics, "charges", 3).await;

    // Offset 1 always fails.
    let handler = service_fn(|m: MemoryMessage| async move {
        if m.offset() == 1 {
            Err(CardDeclined)
        } else {
            Ok(())
        }
    });
    // Offsets 1 and 2 wait behind the stopped partition for good: the run ends there.
    let consumer = broker
        .consumer("billing")
        .subscribe(["charges"])
        .metrics(metrics.clone())
        .tracer_provider(capture.provider())
        .classify_errors(TypeNameClassifier);
    let result = run_until_settled(consumer, handler, 3).await;

    match result {
        Err(ConsumeError::PartitionStopped {
            offset, partition, ..
        }) => {
            assert_eq!((partition, offset), (0, 1));
        }
        other => panic!("expected the partition to stop, got {other:?}"),
    }
    assert_eq!(
        broker.committed("billing", "charges", 0),
        Some(1),
        "never committed past the failure"
    );

    let spans = capture.spans();
    let failed: Vec<_> = spans
        .named("process charges")
        .into_iter()
        .filter(|s| s.attribute(semconv::ERROR_TYPE).is_some())
        .collect();
    assert_eq!(failed.len(), 1, "{spans}");
    failed[0].assert_attribute(semconv::ERROR_TYPE, "CardDeclined");
    assert!(failed[0].is_error());

    let read = MetricsSnapshot::of(&metrics);
    let labels = [
        (label::GROUP, "billing"),
        (label::ERROR_TYPE, "CardDeclined"),
    ];
    assert_eq!(
        read.histogram_count(name::PROCESS_DURATION, &labels),
        Some(1)
    );
    let ok = [(label::GROUP, "billing"), (label::ERROR_TYPE, "")];
    assert_eq!(read.histogram_count(name::PROCESS_DURATION, &ok), Some(1));
}

#[tokio::test]
async fn redelivery_retries_the_same_message_and_counts_retries() {
    let broker = MemoryBroker::new();
    broker.create_topic("flaky", 1).unwrap();
    let metrics = Metrics::new();
    publish(
        &opentelemetry_sdk::trace::SdkTracerProvider::builder().build(),
        &broker,
        &metrics,
        "flaky",
        1,
    )
    .await;

    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = {
        let attempts = attempts.clone();
        service_fn(move |_m: MemoryMessage| {
            let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(CardDeclined)
                } else {
                    Ok(())
                }
            }
        })
    };
    let consumer = broker
        .consumer("g")
        .subscribe(["flaky"])
        .metrics(metrics.clone())
        .classify_errors(
            Classifier::new()
                .on::<CardDeclined>("CardDeclined")
                .decision("CardDeclined", Decision::retry(Duration::from_millis(10))),
        );
    run_until_settled(consumer, handler, 1).await.unwrap();
    assert_eq!(broker.committed("g", "flaky", 0), Some(1));
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    let read = MetricsSnapshot::of(&metrics);
    assert_eq!(
        read.counter(name::RETRIES, &[(label::ERROR_TYPE, "CardDeclined")]),
        Some(2)
    );
}

#[tokio::test]
async fn a_cancelled_handler_still_ends_its_span_and_leaves_no_message_in_flight() {
    let capture = SpanCapture::new();
    let broker = MemoryBroker::new();
    let metrics = Metrics::new();
    publish(capture.provider(), &broker, &metrics, "slow", 1).await;

    let handler = service_fn(|_m: MemoryMessage| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, std::io::Error>(())
    });
    let in_flight = |metrics: &Metrics| MetricsSnapshot::of(metrics).gauge(name::IN_FLIGHT, &[]);
    let started = {
        let metrics = metrics.clone();
        async move {
            while in_flight(&metrics) != Some(1.0) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // Drop the consumer mid-handler: no graceful shutdown.
    let run = broker
        .consumer("g")
        .subscribe(["slow"])
        .metrics(metrics.clone())
        .tracer_provider(capture.provider())
        .run(handler, std::future::pending());
    tokio::select! {
        _ = run => panic!("consumer ended on its own"),
        () = started => {}
    }

    // Aborted tasks are dropped when the runtime next runs them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_flight(&metrics) != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "in-flight never returned to 0"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        broker.committed("g", "slow", 0).unwrap_or(0),
        0,
        "nothing was committed"
    );
    capture
        .spans()
        .one("process slow")
        .assert_attribute(semconv::ERROR_TYPE, "cancelled");
}

#[tokio::test]
async fn a_batch_span_counts_its_messages_and_links_each_with_its_attributes() {
    let capture = SpanCapture::new();
    let broker = MemoryBroker::new();
    let metrics = Metrics::new();
    publish(capture.provider(), &broker, &metrics, "events", 3).await;

    let mut messages = Vec::new();
    let collect = service_fn(|m: MemoryMessage| async move { Ok::<_, std::io::Error>(m) });
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        collect.map_response(move |m| seen.lock().unwrap().push(m))
    };
    run_until_settled(broker.consumer("reader").subscribe(["events"]), handler, 3)
        .await
        .unwrap();
    messages.extend(seen.lock().unwrap().drain(..));

    let batch_handler = BatchProcessLayer::new(metrics.clone())
        .tracer_provider(capture.provider())
        .layer(service_fn(|batch: Vec<MemoryMessage>| async move {
            Ok::<_, std::io::Error>(batch.len())
        }));
    assert_eq!(batch_handler.oneshot(messages.clone()).await.unwrap(), 3);

    let spans = capture.spans();
    let batch = spans.one("process events");
    batch.assert_attribute(semconv::MESSAGING_BATCH_MESSAGE_COUNT, 3);
    let links = batch.links();
    assert_eq!(links.len(), 3);
    for (link, message) in links.iter().zip(&messages) {
        let target = link.target().expect("links a captured span");
        assert_eq!(target.name(), "send events");
        let id = String::from_utf8(message.headers().get("message-id").unwrap().to_vec()).unwrap();
        assert_eq!(link.attribute(semconv::MESSAGING_MESSAGE_ID), Some(id));
    }
    let read = MetricsSnapshot::of(&metrics);
    assert_eq!(
        read.counter(name::CONSUMED_MESSAGES, &[(label::DESTINATION, "events")]),
        Some(3)
    );
}
