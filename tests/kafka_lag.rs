//! Lag you can trust, read from the real exposition text: a backlog published while no
//! consumer runs shows as `lag_messages` summing to the backlog; a stalled handler makes
//! `lag_seconds` grow with wall time; once caught up both are back to 0. A partition stopped
//! at a failed message (paused: librdkafka no longer fetches it) keeps reporting the backlog
//! that grows behind it.

mod kafka_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventscope::consume::ConsumeError;
use eventscope::kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};
use eventscope::metrics::{label, name, Metrics};
use futures_util::future::try_join_all;
use kafka_support::*;
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceExt};

const BACKLOG: usize = 1000;
const PARTITIONS: i32 = 3;

fn sum(metrics: &Metrics, family: &str, topic: &str, group: &str) -> (usize, f64) {
    let text = metrics.encode();
    let series = samples(
        &text,
        family,
        &[(label::DESTINATION, topic), (label::GROUP, group)],
    );
    (series.len(), series.iter().map(|(_, v)| v).sum())
}

fn lag_seconds(metrics: &Metrics, topic: &str, group: &str) -> Vec<f64> {
    samples(
        &metrics.encode(),
        name::LAG_SECONDS,
        &[(label::DESTINATION, topic), (label::GROUP, group)],
    )
    .into_iter()
    .map(|(_, v)| v)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_follows_backlog_stall_and_catch_up() {
    let topic = unique("lag");
    let group = unique("lag-group");
    create_topic(&topic, PARTITIONS).await;

    // A backlog, published while nothing consumes.
    let mut publisher = KafkaPublisher::new(producer());
    let mut deliveries = Vec::with_capacity(BACKLOG);
    for i in 0..BACKLOG {
        let record = KafkaRecord::new(&topic, vec![b'x'; 64]).key(format!("key-{i}"));
        deliveries.push(publisher.ready().await.unwrap().call(record));
    }
    let deliveries = try_join_all(deliveries).await.expect("backlog delivered");
    let per_partition = |p| deliveries.iter().filter(|d| d.partition == p).count();
    assert!(
        (0..PARTITIONS).filter(|p| per_partition(*p) > 0).count() > 1,
        "keys should spread over partitions"
    );

    // A consumer whose handler is stalled until released.
    let metrics = Metrics::new();
    let config = config(&group);
    let consumer = consumer(&config);
    assign(&consumer, &topic, PARTITIONS);
    let (release, released) = watch::channel(false);
    let processed = Arc::new(AtomicUsize::new(0));
    let handler = service_fn({
        let processed = processed.clone();
        move |_m: KafkaMessage| {
            let mut released = released.clone();
            let processed = processed.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                processed.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::io::Error>(())
            }
        }
    });
    let (stop, stopped) = watch::channel(false);
    let driver = tokio::spawn(
        KafkaConsumer::new(consumer)
            .metrics(metrics.clone())
            .commit_interval(Duration::from_millis(100))
            .run(handler, async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );

    // Nothing committed, nothing processed: the whole backlog is lag.
    eventually(
        "lag_messages to sum to the backlog",
        Duration::from_secs(30),
        || {
            sum(&metrics, name::LAG_MESSAGES, &topic, &group)
                == (PARTITIONS as usize, BACKLOG as f64)
        },
    )
    .await;

    // Stalled: lag_seconds grows with wall time on every partition behind.
    let mut first = Vec::new();
    eventually("lag_seconds above 0", Duration::from_secs(30), || {
        first = lag_seconds(&metrics, &topic, &group);
        first.len() == PARTITIONS as usize && first.iter().all(|s| *s > 0.0)
    })
    .await;
    eventually(
        "lag_seconds to grow while stalled",
        Duration::from_secs(30),
        || {
            let now = lag_seconds(&metrics, &topic, &group);
            now.len() == first.len() && now.iter().zip(&first).all(|(n, f)| n > f)
        },
    )
    .await;
    assert_eq!(processed.load(Ordering::Relaxed), 0);
    assert_eq!(
        sum(&metrics, name::LAG_MESSAGES, &topic, &group).1,
        BACKLOG as f64
    );

    // Released: everything is processed and committed, lag returns to 0.
    release.send(true).unwrap();
    eventually("every message processed", Duration::from_secs(60), || {
        processed.load(Ordering::Relaxed) >= BACKLOG
    })
    .await;
    eventually("lag back to 0", Duration::from_secs(30), || {
        sum(&metrics, name::LAG_MESSAGES, &topic, &group) == (PARTITIONS as usize, 0.0)
            && lag_seconds(&metrics, &topic, &group) == vec![0.0; PARTITIONS as usize]
    })
    .await;

    // No sentinel or phantom partition was ever exported.
    let text = metrics.encode();
    for family in [name::LAG_MESSAGES, name::LAG_SECONDS] {
        for (labels, value) in samples(&text, family, &[(label::DESTINATION, &topic)]) {
            assert!(
                value >= 0.0 && value.is_finite(),
                "{family}{labels} = {value}"
            );
            assert!(
                !labels.contains(&format!("{}=\"-1\"", label::PARTITION)),
                "{labels}"
            );
        }
    }

    stop.send(true).unwrap();
    driver.await.unwrap().expect("clean shutdown");
    assert_eq!(processed.load(Ordering::Relaxed), BACKLOG);
    let committed = committed(&group, &topic, PARTITIONS);
    for p in 0..PARTITIONS {
        assert_eq!(
            committed[&p],
            Some(per_partition(p) as i64),
            "partition {p}"
        );
    }
}

/// Publishes `count` records to partition 0, one at a time: one record per batch, because the
/// test broker (tansu) answers a ListOffsets for the latest offset with the last *batch's* base
/// offset + 1, where Kafka answers the last offset + 1.
async fn publish(publisher: &mut KafkaPublisher, topic: &str, count: usize) {
    for i in 0..count {
        let record = KafkaRecord::new(topic, format!("m-{i}").into_bytes()).partition(0);
        publisher
            .ready()
            .await
            .unwrap()
            .call(record)
            .await
            .expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_of_a_stopped_partition_follows_the_growing_backlog() {
    const BEFORE: usize = 5;
    const FAILING_OFFSET: i64 = 2;
    const AFTER: usize = 10;
    let topic = unique("lag-stopped");
    let group = unique("lag-stopped-group");
    create_topic(&topic, 1).await;
    let mut publisher = KafkaPublisher::new(producer());
    publish(&mut publisher, &topic, BEFORE).await;

    // The handler fails at one offset: the partition stops (paused) there, everything before
    // it is committed.
    let metrics = Metrics::new();
    let consumer = consumer(&config(&group));
    assign(&consumer, &topic, 1);
    let handler = service_fn(|m: KafkaMessage| {
        std::future::ready(if m.offset() == FAILING_OFFSET {
            Err(std::io::Error::other("poison message"))
        } else {
            Ok(())
        })
    });
    let (stop, stopped) = watch::channel(false);
    let driver = tokio::spawn(
        // Unclassified failures stop their partition (the default decision).
        KafkaConsumer::new(consumer)
            .metrics(metrics.clone())
            .commit_interval(Duration::from_millis(100))
            .run(handler, async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    let lag = |metrics: &Metrics| sum(metrics, name::LAG_MESSAGES, &topic, &group);
    let behind = BEFORE as f64 - FAILING_OFFSET as f64;
    eventually(
        "lag_messages of the stopped partition",
        Duration::from_secs(30),
        || lag(&metrics) == (1, behind),
    )
    .await;

    // More messages behind the stopped one, in rounds: the lag grows with each. (A fetch
    // already under way when the partition was paused may still report the first round; no
    // fetch reports the later ones.)
    for round in 1..=3 {
        publish(&mut publisher, &topic, AFTER).await;
        let expected = behind + (round * AFTER) as f64;
        eventually(
            &format!("lag_messages to follow the backlog of the stopped partition to {expected}"),
            Duration::from_secs(30),
            || lag(&metrics) == (1, expected),
        )
        .await;
    }

    stop.send(true).unwrap();
    let outcome = driver.await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(ConsumeError::PartitionStopped {
                offset: FAILING_OFFSET,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(
        committed(&group, &topic, 1)[&0],
        Some(FAILING_OFFSET),
        "nothing committed past the failed message"
    );
}
