//! No loss when a consumer's connection dies mid-flight: 2 000 messages; twice, the handlers
//! are held until a whole prefetch window (`max_concurrency` messages) is in them, and then:
//!
//! 1. the broker closes the consumer's connection (`rabbitmqctl close_connection`, by the
//!    connection's name): the held handlers finish, their acks cannot be sent, and the consumer
//!    reconnects by itself and goes on;
//! 2. the consumer is killed outright (its future dropped, no shutdown), and a second consumer
//!    finishes the queue.
//!
//! What is asserted: every message is processed and the queue ends empty; the messages
//! processed twice are exactly the ones in the handlers at the two kills, and only those are
//! flagged `redelivered`; the forced close counts in `messaging_consumer_reconnects_total`.

mod rabbitmq_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::metrics::Metrics;
use eventscope::rabbitmq::{RabbitConsumer, RabbitMessage, RabbitRecord};
use futures_util::future::try_join_all;
use rabbitmq_support::*;
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceExt};

const MESSAGES: usize = 2_000;
const WINDOW: usize = 16;

/// What the handlers saw, and the gate that holds them.
#[derive(Clone)]
struct Handlers {
    /// Each message a handler was given: (number, redelivered).
    seen: Arc<Mutex<Vec<(usize, bool)>>>,
    /// The messages in a handler now.
    inside: Arc<Mutex<BTreeSet<usize>>>,
    /// Handler calls waiting at the gate now (two calls of one message count twice).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// The gate: the call that is the n-th delivery seen goes on when n is at most this. Set
    /// ahead of the consumer, so a window is held after a given number of deliveries however
    /// fast the consumer runs (it once drained the queue before a gate closed by a poll).
    pass_up_to: watch::Sender<usize>,
}

impl Handlers {
    fn new() -> Self {
        Self {
            seen: Arc::default(),
            inside: Arc::default(),
            waiting: Arc::default(),
            pass_up_to: watch::channel(usize::MAX).0,
        }
    }

    /// The next `deliveries` calls go on; the ones after wait at the gate. The calls waiting
    /// now are among those that go on.
    fn hold_after(&self, deliveries: usize) {
        self.pass_up_to.send_replace(self.seen() + deliveries);
    }

    /// Every call goes on.
    fn release(&self) {
        self.pass_up_to.send_replace(usize::MAX);
    }

    fn seen(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn service(
        &self,
    ) -> impl Service<RabbitMessage, Response = (), Error = std::io::Error, Future: Send>
           + Clone
           + Send
           + 'static {
        let handlers = self.clone();
        service_fn(move |m: RabbitMessage| {
            let handlers = handlers.clone();
            async move {
                let number: usize = std::str::from_utf8(m.payload()).unwrap().parse().unwrap();
                let delivery = {
                    let mut seen = handlers.seen.lock().unwrap();
                    seen.push((number, m.redelivered()));
                    seen.len()
                };
                handlers.inside.lock().unwrap().insert(number);
                let mut gate = handlers.pass_up_to.subscribe();
                handlers
                    .waiting
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = gate.wait_for(|up_to| delivery <= *up_to).await;
                handlers
                    .waiting
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                handlers.inside.lock().unwrap().remove(&number);
                Ok::<_, std::io::Error>(())
            }
        })
    }

    /// Waits until a whole window is held inside the handlers (after `hold_after`), and
    /// returns it. On a timeout the panic says what was inside and what the consumer's series
    /// said.
    async fn held_window(&self, metrics: &Metrics) -> BTreeSet<usize> {
        eventually_or_report(
            "a full window in the handlers",
            Duration::from_secs(60),
            || self.inside.lock().unwrap().len() == WINDOW,
            || {
                let inside = self.inside.lock().unwrap().clone();
                let seen = self.seen.lock().unwrap();
                let series: Vec<String> = metrics
                    .encode()
                    .lines()
                    .filter(|l| {
                        !l.starts_with('#')
                            && !l.contains("_bucket")
                            && ["in_flight", "reconnects", "connected", "settle"]
                                .iter()
                                .any(|k| l.contains(k))
                    })
                    .map(str::to_owned)
                    .collect();
                format!(
                    "{} distinct inside {inside:?}, {} calls waiting, {} seen (last 20: {:?}); {series:?}",
                    inside.len(),
                    self.waiting.load(std::sync::atomic::Ordering::SeqCst),
                    seen.len(),
                    &seen[seen.len().saturating_sub(20)..],
                )
            },
        )
        .await;
        // Acks of the messages before the window are on their way: let the broker take them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.inside.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_redelivers_only_what_was_in_flight() {
    let (setup, channel, queue) = queue_for_test("eventscope-no-loss-setup", "no-loss").await;
    let mut publisher = publisher(&setup).await;
    let mut confirms = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let record = RabbitRecord::to_queue(&queue, i.to_string().into_bytes());
        confirms.push(publisher.ready().await.unwrap().call(record));
    }
    try_join_all(confirms).await.expect("all confirmed");

    let metrics = Metrics::new();
    let consumer_name = unique("no-loss-consumer");
    let handlers = Handlers::new();
    handlers.hold_after(300);
    let first = tokio::spawn(
        RabbitConsumer::new(URI, &queue)
            .expect("consumer")
            .connection_properties(properties(&consumer_name))
            .max_concurrency(WINDOW)
            .max_reconnect_delay(Duration::from_millis(500))
            .metrics(metrics.clone())
            .run(handlers.service(), std::future::pending()),
    );

    // Kill 1: the broker closes the consumer's connection while a window is in the handlers
    // (after 300 deliveries). The window goes on, and the gate closes again 300 deliveries
    // later, for kill 2.
    let first_window = handlers.held_window(&metrics).await;
    let closed = close_shared_connections_named(&consumer_name).await;
    assert_eq!(closed, 1, "one connection of that name");
    handlers.hold_after(300);
    let reconnects = || reconnects(&metrics, &queue);
    eventually("the consumer to reconnect", Duration::from_secs(30), || {
        reconnects() == Some(1.0)
    })
    .await;

    // Kill 2: with a window in the handlers, the consumer dies (its future dropped).
    let second_window = handlers.held_window(&metrics).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    handlers.release();

    let (stop, stopped) = watch::channel(false);
    let second = tokio::spawn(
        RabbitConsumer::new(URI, &queue)
            .expect("consumer")
            .max_concurrency(WINDOW)
            .metrics(metrics.clone())
            .run(handlers.service(), async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    let distinct = || {
        let seen = handlers.seen.lock().unwrap();
        seen.iter().map(|(n, _)| *n).collect::<BTreeSet<_>>().len()
    };
    eventually("every message handled", Duration::from_secs(120), || {
        distinct() == MESSAGES
    })
    .await;
    stop.send(true).unwrap();
    second.await.unwrap().expect("graceful shutdown");
    eventually("the queue to be empty", Duration::from_secs(30), || {
        queue_counts(&queue) == Some((0, 0))
    })
    .await;

    let seen = handlers.seen.lock().unwrap().clone();
    let mut times: BTreeMap<usize, usize> = BTreeMap::new();
    for (number, _) in &seen {
        *times.entry(*number).or_default() += 1;
    }
    assert_eq!(times.len(), MESSAGES, "nothing lost");
    let twice: BTreeSet<usize> = times
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, _)| *m)
        .collect();
    let in_flight: BTreeSet<usize> = first_window.union(&second_window).copied().collect();
    assert_eq!(
        twice, in_flight,
        "handled again: exactly the in-flight messages"
    );
    assert!(times.values().all(|n| *n <= 2));
    let redelivered: BTreeSet<usize> = seen
        .iter()
        .filter(|(_, redelivered)| *redelivered)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        redelivered, in_flight,
        "flagged redelivered: the in-flight ones"
    );
    println!(
        "{} deliveries for {MESSAGES} messages; again: {} (windows of {WINDOW} at each kill)",
        seen.len(),
        twice.len()
    );

    delete_queue(&channel, &queue).await;
    let _ = setup.close(200, "OK".into()).await;
}
