//! The embedded broker's consumer driver: groups share partitions, order holds per partition,
//! concurrency is bounded, and the lag gauges follow SPEC §5.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sample;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::Metrics;
use tower::{service_fn, ServiceExt};

async fn publish(broker: &MemoryBroker, topic: &str, n: usize) {
    for i in 0..n {
        broker
            .publisher()
            .oneshot(
                MemoryRecord::new(topic, i.to_string().into_bytes()).key(format!("k{}", i % 7)),
            )
            .await
            .unwrap();
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Log = Arc<Mutex<Vec<(String, i32, i64)>>>;

fn recorder(
    log: Log,
    who: &'static str,
) -> impl tower::Service<MemoryMessage, Response = (), Error = std::io::Error, Future = impl Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |m: MemoryMessage| {
        log.lock().unwrap().push((
            who.to_owned(),
            m.partition().unwrap_or_default(),
            m.offset(),
        ));
        async { Ok(()) }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_partitions_and_every_message_is_processed_in_order() {
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 4).unwrap();
    publish(&broker, "orders", 400).await;

    let log: Log = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let member = |who: &'static str| {
        let mut stop = stop_rx.clone();
        tokio::spawn(broker.consumer("billing").subscribe(["orders"]).run(
            recorder(log.clone(), who),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    };
    let (a, b) = (member("a"), member("b"));
    // Redeliveries after the rebalance count once: wait for every distinct message.
    until("all 400 processed", || {
        let log = log.lock().unwrap();
        log.iter()
            .map(|(_, p, o)| (*p, *o))
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 400
    })
    .await;
    let _ = stop_tx.send(true);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();

    let log = log.lock().unwrap();
    // Order per partition: offsets strictly increase, per partition, in processing order.
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut distinct = std::collections::HashSet::new();
    for (_, partition, offset) in log.iter() {
        if let Some(previous) = last.insert(*partition, *offset) {
            assert!(
                *offset > previous || distinct.contains(&(*partition, *offset)),
                "order broken on {partition}"
            );
        }
        distinct.insert((*partition, *offset));
    }
    assert_eq!(distinct.len(), 400, "every message at least once");
    for p in 0..4 {
        assert_eq!(
            broker.committed("billing", "orders", p),
            broker.high_watermark("orders", p)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_handlers_run_at_once_than_allowed() {
    let broker = MemoryBroker::new();
    broker.create_topic("work", 6).unwrap();
    publish(&broker, "work", 120).await;

    let running = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicI64::new(0));
    let handler = {
        let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
        service_fn(move |_m: MemoryMessage| {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let finished = {
        let done = done.clone();
        async move { until("120 processed", || done.load(Ordering::SeqCst) >= 120).await }
    };
    broker
        .consumer("g")
        .subscribe(["work"])
        .max_concurrency(2)
        .run(handler, finished)
        .await
        .unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 2, "peak concurrency {peak}");
    assert!(peak >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_the_backlog_grows_while_stalled_and_returns_to_zero() {
    let broker = MemoryBroker::new();
    broker.create_topic("events", 2).unwrap();
    let metrics = Metrics::new();
    publish(&broker, "events", 100).await;

    // The handler stalls until released.
    let release = Arc::new(AtomicBool::new(false));
    let handler = {
        let release = release.clone();
        service_fn(move |_m: MemoryMessage| {
            let release = release.clone();
            async move {
                while !release.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(
        broker
            .consumer("slow")
            .subscribe(["events"])
            .metrics(metrics.clone())
            .lag_interval(Duration::from_millis(50))
            .run(handler, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            }),
    );
    let lag = |name: &str| {
        sample(
            &metrics.encode(),
            name,
            &[("messaging_consumer_group_name", "slow")],
        )
    };

    until("lag reported", || {
        lag("messaging_consumer_lag_messages") == Some(100.0)
    })
    .await;
    let first = lag("messaging_consumer_lag_seconds").unwrap();
    until("lag_seconds grows while stalled", || {
        lag("messaging_consumer_lag_seconds").unwrap() > first + 0.3
    })
    .await;

    release.store(true, Ordering::SeqCst);
    until("caught up", || {
        lag("messaging_consumer_lag_messages") == Some(0.0)
    })
    .await;
    until("lag_seconds back to 0", || {
        lag("messaging_consumer_lag_seconds") == Some(0.0)
    })
    .await;
    for line in metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("messaging_consumer_lag_seconds{"))
    {
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value.is_finite() && value >= 0.0, "{line}");
    }

    let _ = stop_tx.send(true);
    consumer.await.unwrap().unwrap();
    assert_eq!(
        lag("messaging_consumer_lag_messages"),
        None,
        "a consumer that left has no lag series"
    );
}
