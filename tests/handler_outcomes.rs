//! What the process layer records when a handler fails, is cancelled, or takes a batch; and
//! that a failed message is never settled.

mod common;

use opentelemetry_semantic_conventions::attribute as semconv;
use std::time::Duration;

use common::*;
use eventscope::classify::{Classifier, Decision, TypeNameClassifier};
use eventscope::consume::ConsumeError;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::{label, name, Metrics};
use eventscope::process::BatchProcessLayer;
use eventscope::publish::PublishLayer;
use opentelemetry::trace::Status;
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
    let capture = capture();
    let broker = MemoryBroker::new();
    broker.create_topic("charges", 1).unwrap();
    let metrics = Metrics::new();
    publish(&capture.provider, &broker, &metrics, "charges", 3).await;

    // Offset 1 always fails.
    let handler = service_fn(|m: MemoryMessage| async move {
        if m.offset() == 1 {
            Err(CardDeclined)
        } else {
            Ok(())
        }
    });
    let result = broker
        .consumer("billing")
        .subscribe(["charges"])
        .metrics(metrics.clone())
        .tracer_provider(&capture.provider)
        .classify_errors(TypeNameClassifier)
        .run(handler, tokio::time::sleep(Duration::from_millis(300)))
        .await;

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
    let failed: Vec<_> = named(&spans, "process charges")
        .into_iter()
        .filter(|s| attr_str(s, semconv::ERROR_TYPE).is_some())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        attr_str(failed[0], semconv::ERROR_TYPE).as_deref(),
        Some("CardDeclined")
    );
    assert!(matches!(failed[0].status, Status::Error { .. }));

    let text = metrics.encode();
    let labels = [
        (label::GROUP, "billing"),
        (label::ERROR_TYPE, "CardDeclined"),
    ];
    assert_eq!(
        sample(&text, &format!("{}_count", name::PROCESS_DURATION), &labels),
        Some(1.0)
    );
    let ok = [(label::GROUP, "billing"), (label::ERROR_TYPE, "")];
    assert_eq!(
        sample(&text, &format!("{}_count", name::PROCESS_DURATION), &ok),
        Some(1.0)
    );
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
    let committed = {
        let broker = broker.clone();
        async move {
            while broker.committed("g", "flaky", 0) != Some(1) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    broker
        .consumer("g")
        .subscribe(["flaky"])
        .metrics(metrics.clone())
        .classify_errors(
            Classifier::new()
                .on::<CardDeclined>("CardDeclined")
                .decision("CardDeclined", Decision::retry(Duration::from_millis(10))),
        )
        .run(handler, committed)
        .await
        .unwrap();
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    let text = metrics.encode();
    assert_eq!(
        sample(&text, name::RETRIES, &[(label::ERROR_TYPE, "CardDeclined")]),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_cancelled_handler_still_ends_its_span_and_leaves_no_message_in_flight() {
    let capture = capture();
    let broker = MemoryBroker::new();
    let metrics = Metrics::new();
    publish(&capture.provider, &broker, &metrics, "slow", 1).await;

    let handler = service_fn(|_m: MemoryMessage| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, std::io::Error>(())
    });
    let started = {
        let metrics = metrics.clone();
        async move {
            while sample(&metrics.encode(), name::IN_FLIGHT, &[]) != Some(1.0) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // Drop the consumer mid-handler: no graceful shutdown.
    let run = broker
        .consumer("g")
        .subscribe(["slow"])
        .metrics(metrics.clone())
        .tracer_provider(&capture.provider)
        .run(handler, std::future::pending());
    tokio::select! {
        _ = run => panic!("consumer ended on its own"),
        () = started => {}
    }

    // Aborted tasks are dropped when the runtime next runs them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sample(&metrics.encode(), name::IN_FLIGHT, &[]) != Some(0.0) {
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
    let spans = capture.spans();
    let process = one(&spans, "process slow");
    assert_eq!(
        attr_str(process, semconv::ERROR_TYPE).as_deref(),
        Some("cancelled")
    );
}

#[tokio::test]
async fn a_batch_span_counts_its_messages_and_links_each_with_its_attributes() {
    let capture = capture();
    let broker = MemoryBroker::new();
    let metrics = Metrics::new();
    publish(&capture.provider, &broker, &metrics, "events", 3).await;

    let mut messages = Vec::new();
    let collect = service_fn(|m: MemoryMessage| async move { Ok::<_, std::io::Error>(m) });
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        collect.map_response(move |m| seen.lock().unwrap().push(m))
    };
    let all = {
        let seen = seen.clone();
        async move {
            while seen.lock().unwrap().len() < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    broker
        .consumer("reader")
        .subscribe(["events"])
        .run(handler, all)
        .await
        .unwrap();
    messages.extend(seen.lock().unwrap().drain(..));

    let batch_handler = BatchProcessLayer::new(metrics.clone())
        .tracer_provider(&capture.provider)
        .layer(service_fn(|batch: Vec<MemoryMessage>| async move {
            Ok::<_, std::io::Error>(batch.len())
        }));
    assert_eq!(batch_handler.oneshot(messages.clone()).await.unwrap(), 3);

    let spans = capture.spans();
    let batch = one(&spans, "process events");
    assert_eq!(
        common::attr(batch, semconv::MESSAGING_BATCH_MESSAGE_COUNT).map(|v| v.to_string()),
        Some("3".into())
    );
    let sends = named(&spans, "send events");
    assert_eq!(batch.links.len(), 3);
    for (link, message) in batch.links.iter().zip(&messages) {
        assert!(sends
            .iter()
            .any(|s| s.span_context.span_id() == link.span_context.span_id()));
        let id = String::from_utf8(message.headers().get("message-id").unwrap().to_vec()).unwrap();
        assert!(link
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == semconv::MESSAGING_MESSAGE_ID && kv.value.as_str() == id));
    }
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            name::CONSUMED_MESSAGES,
            &[(label::DESTINATION, "events")]
        ),
        Some(3.0)
    );
}
