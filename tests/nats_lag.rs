//! Consumer lag on JetStream (SPEC §5) is the pull consumer's real pending count, and
//! `messaging_consumer_unacked_messages` its `num_ack_pending`, read from the exposition with
//! the catalogue's names: N messages waiting behind a handler that holds one, then none once
//! it lets go; `lag_seconds` grows while behind and is 0 when caught up.

mod nats_support;

use std::sync::Arc;
use std::time::Duration;

use eventscope::metrics::{label, name};
use eventscope::nats::{JetStreamConsumer, JetStreamMessage, JetStreamPublisher, NatsRecord};
use eventscope::Metrics;
use futures_util::future::join_all;
use nats_support::{sample, TestStream};
use tokio::sync::Semaphore;
use tower::{service_fn, ServiceExt};

const N: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_the_consumers_pending_count() {
    let js = nats_support::js().await;
    let stream = TestStream::new(&js, "lag").await;
    let group = nats_support::unique("lag");
    let pull = stream.consumer(&group, Duration::from_secs(30), 5).await;
    let publisher = JetStreamPublisher::new(js.clone());
    for r in join_all((0..N).map(|i| {
        publisher
            .clone()
            .oneshot(NatsRecord::new(stream.subject.clone(), i.to_string()))
    }))
    .await
    {
        r.expect("published");
    }
    assert_eq!(
        stream.pending(&group).await,
        (N as u64, 0),
        "N waiting, no consumer yet"
    );

    // One handler, one message pulled at a time, held until the gate opens.
    let gate = Arc::new(Semaphore::new(0));
    let handler = service_fn({
        let gate = gate.clone();
        move |_m: JetStreamMessage| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await.unwrap();
                Ok::<_, std::io::Error>(())
            }
        }
    });
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        JetStreamConsumer::new(js.clone(), pull)
            .unwrap()
            .metrics(metrics.clone())
            .max_concurrency(1)
            .pull_batch(1)
            .lag_interval(Duration::from_millis(100))
            .run(handler, async move {
                let _ = stop_rx.await;
            }),
    );
    let series = [
        (label::SYSTEM, "nats"),
        (label::DESTINATION, stream.subject.as_str()),
        (label::GROUP, group.as_str()),
        (label::PARTITION, ""),
    ];
    let read = |family: &str| {
        sample(
            &metrics.encode(),
            family,
            &series[..if family == name::UNACKED_MESSAGES {
                3
            } else {
                4
            }],
        )
    };

    // Behind: the exported lag is what the server counts, while nothing moves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (pending, ack_pending) = stream.pending(&group).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let exported = (read(name::LAG_MESSAGES), read(name::UNACKED_MESSAGES));
        if exported == (Some(pending as f64), Some(ack_pending as f64))
            && stream.pending(&group).await == (pending, ack_pending)
        {
            assert!(pending >= (N - 3) as u64, "most still pending: {pending}");
            assert!(ack_pending >= 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "exported {exported:?}, server ({pending}, {ack_pending})"
        );
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        read(name::LAG_SECONDS).is_some_and(|s| s >= 1.0),
        "lag_seconds grows while the consumer is stalled"
    );

    // Caught up.
    gate.add_permits(N * 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(read(name::LAG_MESSAGES) == Some(0.0) && read(name::UNACKED_MESSAGES) == Some(0.0)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag never reached 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stream.pending(&group).await, (0, 0));
    assert_eq!(read(name::LAG_SECONDS), Some(0.0));
    let _ = stop_tx.send(());
    running.await.unwrap().expect("clean run");
    assert_eq!(
        read(name::LAG_MESSAGES),
        None,
        "a consumer that returned has no lag series"
    );
    assert_eq!(read(name::UNACKED_MESSAGES), None);
}
