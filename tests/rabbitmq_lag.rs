//! Lag you can trust, read from the real exposition text: a backlog published before the
//! consumer runs shows as `messaging_consumer_lag_messages` equal to the queue's ready count
//! as the broker reports it (the messages in the handlers are delivered, not ready), with an
//! empty partition label; a stalled handler makes `lag_seconds` grow; once the queue is drained
//! both read 0. A deleted queue is a logged error and no lag series, never a dead consumer: when
//! the queue is back, the consumer consumes it again and its lag is reported again.

mod rabbitmq_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventscope::metrics::{label, name, Metrics};
use eventscope::rabbitmq::lapin::options::QueueDeclareOptions;
use eventscope::rabbitmq::lapin::types::FieldTable;
use eventscope::rabbitmq::lapin::Channel;
use eventscope::rabbitmq::{RabbitConsumer, RabbitMessage, RabbitPublisher, RabbitRecord};
use futures_util::future::try_join_all;
use rabbitmq_support::*;
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceExt};

const BACKLOG: usize = 500;
const CONCURRENCY: usize = 4;

fn gauge(metrics: &Metrics, family: &str, queue: &str) -> Option<f64> {
    let series = samples(
        &metrics.encode(),
        family,
        &[
            (label::SYSTEM, "rabbitmq"),
            (label::DESTINATION, queue),
            (label::GROUP, queue),
            (label::PARTITION, ""),
        ],
    );
    assert!(series.len() <= 1, "one series: {series:?}");
    series.first().map(|(_, v)| *v)
}

/// The ready count as a passive declare reads it.
async fn ready(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}

async fn publish(publisher: &mut RabbitPublisher, queue: &str, n: usize) {
    let mut confirms = Vec::with_capacity(n);
    for i in 0..n {
        let record = RabbitRecord::to_queue(queue, format!("m-{i}").into_bytes());
        confirms.push(publisher.ready().await.unwrap().call(record));
    }
    try_join_all(confirms).await.expect("confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_the_queue_depth_and_survives_a_deleted_queue() {
    let (setup, channel, queue) = queue_for_test("eventscope-lag-setup", "lag").await;
    let mut publisher = publisher(&setup).await;
    publish(&mut publisher, &queue, BACKLOG).await;

    // A consumer whose handlers are stalled until released.
    let metrics = Metrics::new();
    let (release, released) = watch::channel(false);
    let processed = Arc::new(AtomicUsize::new(0));
    let handler = service_fn({
        let processed = processed.clone();
        move |_m: RabbitMessage| {
            let mut released = released.clone();
            let processed = processed.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                processed.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        }
    });
    let (stop, stopped) = watch::channel(false);
    let consumer = tokio::spawn(
        RabbitConsumer::new(URI, &queue)
            .expect("consumer")
            .metrics(metrics.clone())
            .max_concurrency(CONCURRENCY)
            .lag_interval(Duration::from_millis(200))
            .max_reconnect_delay(Duration::from_millis(300))
            .run(handler, async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );

    // The backlog, less the window in the handlers, is ready: the gauge says what the broker
    // says.
    let expected = (BACKLOG - CONCURRENCY) as f64;
    eventually(
        "lag_messages to read the ready count",
        Duration::from_secs(30),
        || gauge(&metrics, name::LAG_MESSAGES, &queue) == Some(expected),
    )
    .await;
    assert_eq!(f64::from(ready(&channel, &queue).await), expected);
    let (broker_ready, unacked) = tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || queue_counts(&queue).expect("the queue")
    })
    .await
    .unwrap();
    assert_eq!(
        (broker_ready as f64, unacked as usize),
        (expected, CONCURRENCY)
    );

    // Stalled: lag_seconds grows with wall time.
    let mut first = 0.0;
    eventually("lag_seconds above 0", Duration::from_secs(30), || {
        first = gauge(&metrics, name::LAG_SECONDS, &queue).unwrap_or(0.0);
        first > 0.0
    })
    .await;
    eventually(
        "lag_seconds to grow while stalled",
        Duration::from_secs(30),
        || gauge(&metrics, name::LAG_SECONDS, &queue).is_some_and(|now| now > first),
    )
    .await;

    // Released: the queue drains and both gauges read 0.
    release.send(true).unwrap();
    eventually("the backlog processed", Duration::from_secs(60), || {
        processed.load(Ordering::SeqCst) == BACKLOG
    })
    .await;
    eventually("lag back to 0", Duration::from_secs(30), || {
        gauge(&metrics, name::LAG_MESSAGES, &queue) == Some(0.0)
            && gauge(&metrics, name::LAG_SECONDS, &queue) == Some(0.0)
    })
    .await;
    assert_eq!(ready(&channel, &queue).await, 0);

    // The queue is deleted under the consumer: no lag series, and the consumer keeps trying.
    delete_queue(&channel, &queue).await;
    eventually("the lag series gone", Duration::from_secs(30), || {
        gauge(&metrics, name::LAG_MESSAGES, &queue).is_none()
            && gauge(&metrics, name::LAG_SECONDS, &queue).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !consumer.is_finished(),
        "a deleted queue does not end the consumer"
    );

    // Back: the consumer subscribes again by itself and reports again.
    declare_queue(&channel, &queue).await;
    publish(&mut publisher, &queue, 10).await;
    eventually(
        "the new messages processed",
        Duration::from_secs(60),
        || processed.load(Ordering::SeqCst) == BACKLOG + 10,
    )
    .await;
    eventually("lag reported again", Duration::from_secs(30), || {
        gauge(&metrics, name::LAG_MESSAGES, &queue) == Some(0.0)
    })
    .await;

    stop.send(true).unwrap();
    consumer.await.unwrap().expect("graceful shutdown");
    assert_eq!(
        gauge(&metrics, name::LAG_MESSAGES, &queue),
        None,
        "a consumer that returned reports no lag"
    );
    delete_queue(&channel, &queue).await;
    let _ = setup.close(200, "OK".into()).await;
}
