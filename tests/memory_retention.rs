//! The embedded broker never loses a message silently when a consumer group falls a retention
//! behind: by default the publisher waits for the group, and with `Overflow::DropOldest` every
//! record the group never received is counted, and its lag shows it.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sample;
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryPublisher, MemoryRecord, Overflow};
use eventscope::metrics::{label, name, Metrics};
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceExt};

const RETENTION: usize = 1_000;
const MESSAGES: usize = 20_000;
const PARTITIONS: i32 = 3;
const TOPIC: &str = "events";
const GROUP: &str = "slow";

/// What the handler saw: (partition, offset, payload index), in processing order.
type Seen = Arc<Mutex<Vec<(i32, i64, usize)>>>;

fn broker(overflow: Overflow, metrics: &Metrics) -> MemoryBroker {
    let broker = MemoryBroker::builder()
        .retention(RETENTION)
        .overflow(overflow)
        .metrics(metrics.clone())
        .build();
    broker.create_topic(TOPIC, PARTITIONS).unwrap();
    broker
}

fn record(i: usize) -> MemoryRecord {
    MemoryRecord::new(TOPIC, i.to_string().into_bytes()).key(format!("k{}", i % 7))
}

/// A slow group: each message waits for `gate` to open, and yields before it returns.
fn start_group(
    broker: &MemoryBroker,
    metrics: &Metrics,
    gate: watch::Receiver<bool>,
    seen: Seen,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), eventscope::consume::ConsumeError>>,
) {
    let handler = service_fn(move |m: MemoryMessage| {
        let (mut gate, seen) = (gate.clone(), seen.clone());
        async move {
            let index: usize = std::str::from_utf8(m.payload()).unwrap().parse().unwrap();
            seen.lock()
                .unwrap()
                .push((m.partition().unwrap_or_default(), m.offset(), index));
            let _ = gate.wait_for(|open| *open).await;
            tokio::task::yield_now().await;
            Ok::<_, std::io::Error>(())
        }
    });
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let consumer = broker
        .consumer(GROUP)
        .subscribe([TOPIC])
        .metrics(metrics.clone())
        .lag_interval(Duration::from_millis(10))
        .run(handler, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    (stop_tx, tokio::spawn(consumer))
}

/// Publishes one record, counting (and calling `on_wait`) when it has to wait for room.
async fn publish(
    publisher: &mut MemoryPublisher,
    record: MemoryRecord,
    waits: &AtomicUsize,
    on_wait: impl Fn(),
) {
    let mut delivery = publisher.ready().await.unwrap().call(record);
    let mut waited = false;
    poll_fn(|cx| {
        let poll = Pin::new(&mut delivery).poll(cx);
        if poll.is_pending() && !waited {
            waited = true;
            waits.fetch_add(1, Ordering::SeqCst);
            on_wait();
        }
        poll
    })
    .await
    .unwrap();
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn all_committed(broker: &MemoryBroker) -> bool {
    (0..PARTITIONS).all(|p| broker.committed(GROUP, TOPIC, p) == broker.high_watermark(TOPIC, p))
}

fn dropped(metrics: &Metrics) -> f64 {
    sample(
        &metrics.encode(),
        name::DROPPED_MESSAGES,
        &[(label::GROUP, GROUP), (label::DESTINATION, TOPIC)],
    )
    .unwrap_or(0.0)
}

fn max_lag(metrics: &Metrics) -> f64 {
    let text = metrics.encode();
    (0..PARTITIONS)
        .filter_map(|p| {
            sample(
                &text,
                name::LAG_MESSAGES,
                &[(label::GROUP, GROUP), (label::PARTITION, &p.to_string())],
            )
        })
        .fold(0.0, f64::max)
}

/// Offsets strictly increase per partition, in processing order.
fn assert_in_order(seen: &[(i32, i64, usize)]) {
    let mut last: HashMap<i32, i64> = HashMap::new();
    for (partition, offset, _) in seen {
        if let Some(previous) = last.insert(*partition, *offset) {
            assert!(
                *offset > previous,
                "partition {partition}: {offset} after {previous}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_slow_group_receives_every_message_once_and_in_order() {
    let metrics = Metrics::new();
    let broker = broker(Overflow::default(), &metrics);
    let seen: Seen = Arc::default();
    let (gate_tx, gate) = watch::channel(false);
    let (stop, consumer) = start_group(&broker, &metrics, gate, seen.clone());

    // The group is subscribed once it holds the first message. It holds every message until
    // the publisher has had to wait (on a broker that drops instead, until all are published).
    let mut publisher = broker.publisher();
    let waits = AtomicUsize::new(0);
    let open = || {
        gate_tx.send_replace(true);
    };
    publish(&mut publisher, record(0), &waits, open).await;
    until("the group holds the first message", || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    for i in 1..MESSAGES {
        publish(&mut publisher, record(i), &waits, open).await;
    }
    open();
    until("the group committed everything", || all_committed(&broker)).await;
    stop.send_replace(true);
    consumer.await.unwrap().unwrap();

    assert!(
        waits.load(Ordering::SeqCst) > 0,
        "the publisher never waited for the group"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), MESSAGES, "each message delivered exactly once");
    let indexes: BTreeSet<usize> = seen.iter().map(|(_, _, i)| *i).collect();
    assert_eq!(indexes, (0..MESSAGES).collect(), "every message delivered");
    assert_in_order(&seen);
    let stored: i64 = (0..PARTITIONS)
        .map(|p| broker.high_watermark(TOPIC, p).unwrap())
        .sum();
    assert_eq!(stored, MESSAGES as i64);
    assert_eq!(dropped(&metrics), 0.0, "nothing counted as dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_counts_every_message_the_group_never_received() {
    let metrics = Metrics::new();
    let broker = broker(Overflow::DropOldest, &metrics);
    let seen: Seen = Arc::default();
    let (gate_tx, gate) = watch::channel(false);
    let (stop, consumer) = start_group(&broker, &metrics, gate, seen.clone());

    let mut publisher = broker.publisher();
    let waits = AtomicUsize::new(0);
    publish(&mut publisher, record(0), &waits, || {}).await;
    until("the group holds the first message", || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    for i in 1..MESSAGES {
        publish(&mut publisher, record(i), &waits, || {}).await;
    }
    assert_eq!(waits.load(Ordering::SeqCst), 0, "DropOldest never waits");

    // While the group holds its first messages, its lag counts every record it has not
    // received, including those already removed: more than the partition can hold.
    until("the lag gauge exceeds the retention", || {
        max_lag(&metrics) > RETENTION as f64
    })
    .await;
    gate_tx.send_replace(true);
    until("the group committed everything", || all_committed(&broker)).await;
    stop.send_replace(true);
    consumer.await.unwrap().unwrap();

    let seen = seen.lock().unwrap();
    assert_in_order(&seen);
    let received = seen.len();
    let distinct: BTreeSet<usize> = seen.iter().map(|(_, _, i)| *i).collect();
    assert_eq!(distinct.len(), received, "no message delivered twice");
    assert!(received < MESSAGES, "a retention behind, some were dropped");
    assert_eq!(
        dropped(&metrics),
        (MESSAGES - received) as f64,
        "every message the group never received is counted"
    );
}

/// Counts the warning events whose message is `message`.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
    }
}

/// A consumer that keeps falling behind a small retention warns once per interval and lane,
/// not once per fetch (the dropped counter has every record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_side_drop_warning_is_rate_limited() {
    use tracing::instrument::WithSubscriber;
    use tracing_subscriber::layer::SubscriberExt;

    let metrics = Metrics::new();
    let broker = MemoryBroker::builder()
        .retention(10)
        .overflow(Overflow::DropOldest)
        .metrics(metrics.clone())
        .build();
    broker.create_topic("bursty", 1).unwrap();
    let warnings = Warnings::default();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(warnings.clone()));

    let (gate_tx, gate) = watch::channel(false);
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let handled = Arc::clone(&handled);
        service_fn(move |_m: MemoryMessage| {
            let (mut gate, handled) = (gate.clone(), Arc::clone(&handled));
            async move {
                let _ = gate.wait_for(|open| *open).await;
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let (stop_tx, mut stop) = watch::channel(false);
    let consumer = tokio::spawn(
        broker
            .consumer("behind")
            .subscribe(["bursty"])
            .max_buffered(2)
            .run(handler, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .with_subscriber(dispatch),
    );
    // Bursts of 100 while the handler is held, each followed by a catch-up: every catch-up
    // fetches past records retention dropped.
    let publisher = broker.publisher();
    for burst in 0..4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for i in 0..100 {
            publisher
                .clone()
                .oneshot(MemoryRecord::new(
                    "bursty",
                    format!("{burst}-{i}").into_bytes(),
                ))
                .await
                .unwrap();
        }
        let before = handled.load(Ordering::SeqCst);
        gate_tx.send_replace(true);
        while handled.load(Ordering::SeqCst) < before + 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gate_tx.send_replace(false);
    }
    stop_tx.send_replace(true);
    gate_tx.send_replace(true);
    consumer.await.unwrap().unwrap();

    let dropped = warnings
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("records dropped by retention before they were consumed"))
        .count();
    assert_eq!(
        dropped, 1,
        "one warning in the interval, not one per catch-up"
    );
    let counted = sample(
        &metrics.encode(),
        name::DROPPED_MESSAGES,
        &[(label::GROUP, "behind")],
    )
    .unwrap_or_default();
    assert!(
        counted > 300.0,
        "every dropped record is counted: {counted}"
    );
}
