//! A failed message is never skipped silently. Under the default decision (`Stop`) the failing
//! partition is never committed past the failed offset while the other partitions go on, and
//! the consumer reports `PartitionStopped` at shutdown; decided `Retry` the same message comes
//! back until it succeeds, each retry counted.

mod kafka_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::classify::{Classifier, Decision};
use eventscope::consume::ConsumeError;
use eventscope::kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};
use eventscope::metrics::{label, name, Metrics};
use kafka_support::*;
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceExt};

#[derive(Debug)]
struct PaymentDeclined;

impl std::fmt::Display for PaymentDeclined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("payment declined")
    }
}

impl std::error::Error for PaymentDeclined {}

type Calls = Arc<Mutex<Vec<(i32, i64)>>>;

async fn publish(topic: &str, per_partition: &[(i32, usize)]) {
    let mut publisher = KafkaPublisher::new(producer());
    for &(partition, count) in per_partition {
        for i in 0..count {
            let record = KafkaRecord::new(topic, format!("{i}").into_bytes()).partition(partition);
            publisher.ready().await.unwrap().call(record).await.unwrap();
        }
    }
}

fn stopper() -> (
    watch::Sender<bool>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop, mut stopped) = watch::channel(false);
    (stop, async move {
        let _ = stopped.wait_for(|s| *s).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_partition_never_commits_past_the_failed_offset() {
    let topic = unique("fail-stop");
    let group = unique("fail-stop-group");
    create_topic(&topic, 2).await;
    publish(&topic, &[(0, 10), (1, 10)]).await;

    let metrics = Metrics::new();
    let consumer = consumer(&config(&group));
    assign(&consumer, &topic, 2);
    let calls: Calls = Arc::default();
    let driver = KafkaConsumer::new(consumer)
        .metrics(metrics.clone())
        .commit_interval(Duration::from_millis(100));
    let handler = service_fn({
        let calls = calls.clone();
        move |m: KafkaMessage| {
            calls
                .lock()
                .unwrap()
                .push((m.partition().unwrap_or_default(), m.offset()));
            let failed = m.partition() == Some(0) && m.offset() == 3;
            async move {
                if failed {
                    Err(PaymentDeclined)
                } else {
                    Ok(())
                }
            }
        }
    });
    let (stop, shutdown) = stopper();
    let driver = tokio::spawn(driver.run(handler, shutdown));

    // Partition 1 goes on to the end and is committed; partition 0 stops at offset 3.
    eventually(
        "partition 1 committed to its end",
        Duration::from_secs(30),
        || committed(&group, &topic, 2)[&1] == Some(10),
    )
    .await;
    eventually(
        "partition 0 committed up to the failure",
        Duration::from_secs(30),
        || committed(&group, &topic, 2)[&0] == Some(3),
    )
    .await;
    stop.send(true).unwrap();
    let outcome = driver.await.unwrap();
    match outcome {
        Err(ConsumeError::PartitionStopped {
            destination,
            partition,
            offset,
            error_type,
            source,
        }) => {
            assert_eq!(error_type, "PaymentDeclined");
            assert_eq!(
                (destination.as_str(), partition, offset),
                (topic.as_str(), 0, 3)
            );
            assert_eq!(source.to_string(), "payment declined");
        }
        other => panic!("expected PartitionStopped, got {other:?}"),
    }

    // Never past the failed offset: not committed, and nothing after it handed out.
    assert_eq!(
        committed(&group, &topic, 2),
        BTreeMap::from([(0, Some(3)), (1, Some(10))])
    );
    let calls = calls.lock().unwrap().clone();
    let p0: Vec<i64> = calls
        .iter()
        .filter(|(p, _)| *p == 0)
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(
        p0,
        vec![0, 1, 2, 3],
        "partition 0 stops at the failed message"
    );
    let p1 = calls.iter().filter(|(p, _)| *p == 1).count();
    assert_eq!(p1, 10);

    // The failure is visible in the process metrics.
    let text = metrics.encode();
    let failed = samples(
        &text,
        &format!("{}_count", name::PROCESS_DURATION),
        &[
            (label::DESTINATION, &topic),
            (label::ERROR_TYPE, "PaymentDeclined"),
        ],
    );
    assert_eq!(failed.iter().map(|(_, v)| v).sum::<f64>(), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_retries_until_success_and_counts_retries() {
    let topic = unique("fail-redeliver");
    let group = unique("fail-redeliver-group");
    create_topic(&topic, 1).await;
    publish(&topic, &[(0, 5)]).await;

    let metrics = Metrics::new();
    let consumer = consumer(&config(&group));
    assign(&consumer, &topic, 1);
    let calls: Calls = Arc::default();
    let driver = KafkaConsumer::new(consumer)
        .metrics(metrics.clone())
        .classify_errors(Classifier::new().decision(
            "PaymentDeclined",
            Decision::retry(Duration::from_millis(20)),
        ))
        .commit_interval(Duration::from_millis(100));
    let handler = service_fn({
        let calls = calls.clone();
        move |m: KafkaMessage| {
            let mut calls = calls.lock().unwrap();
            calls.push((m.partition().unwrap_or_default(), m.offset()));
            // Offset 2 fails on its first two deliveries.
            let attempts = calls.iter().filter(|(_, o)| *o == 2).count();
            let result = if m.offset() == 2 && attempts <= 2 {
                Err(PaymentDeclined)
            } else {
                Ok(())
            };
            std::future::ready(result)
        }
    });
    let (stop, shutdown) = stopper();
    let driver = tokio::spawn(driver.run(handler, shutdown));
    eventually("everything committed", Duration::from_secs(30), || {
        committed(&group, &topic, 1)[&0] == Some(5)
    })
    .await;
    stop.send(true).unwrap();
    driver.await.unwrap().expect("no partition stopped");

    let offsets: Vec<i64> = calls.lock().unwrap().iter().map(|(_, o)| *o).collect();
    assert_eq!(
        offsets,
        vec![0, 1, 2, 2, 2, 3, 4],
        "same message again, in order"
    );
    let retries = samples(
        &metrics.encode(),
        name::RETRIES,
        &[
            (label::DESTINATION, &topic),
            (label::ERROR_TYPE, "PaymentDeclined"),
        ],
    );
    assert_eq!(retries.iter().map(|(_, v)| v).sum::<f64>(), 2.0);
}

#[tokio::test]
async fn auto_offset_store_is_refused() {
    let group = unique("fail-config-group");
    require_broker();
    let mut config = config(&group);
    config.set("enable.auto.offset.store", "true");
    let consumer = consumer(&config);
    let handler = service_fn(|_m: KafkaMessage| std::future::ready(Ok::<_, std::io::Error>(())));
    let outcome = KafkaConsumer::new(consumer)
        .metrics(Metrics::new())
        .run(handler, std::future::pending())
        .await;
    assert!(
        matches!(&outcome, Err(ConsumeError::Broker(e)) if e.to_string().contains("enable.auto.offset.store")),
        "{outcome:?}"
    );
}
