//! The consumer contract every broker adapter keeps (SPEC §7), written once over a
//! [`Harness`]: an adapter's test file implements the harness and instantiates the suite with
//! [`conformance_suite!`].
//!
//! Ordered brokers (partitions and committed offsets: Kafka, the embedded broker) and unordered
//! ones (queues that settle each message: RabbitMQ, JetStream) keep the same contract where it
//! applies. For an unordered harness ([`Harness::ordered`] is `false`) a "topic" is a queue or
//! stream, partitions are ignored, "committed to the end" reads "nothing left unsettled"
//! ([`Harness::unsettled`]), a `Stop` stops the consumer instead of a partition, and the cases
//! about order per partition and partition rebalances check what an unordered broker can keep
//! (the concurrency bound) or say why they do not apply.
#![allow(dead_code, unreachable_pub)]

// Also included by the brokers' support modules a conformance binary may have beside this one:
// a second copy of a few helpers in that binary, not a second definition anyone sees.
#[allow(clippy::duplicate_mod)]
#[path = "../shared/mod.rs"]
mod shared;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::classify::{Classifier, Decision, RetryPolicy, CANCELLED, PANIC};
use eventscope::consume::ConsumeError;
use eventscope::consume::Consumer;
use eventscope::header;
use eventscope::message::{Headers, IncomingMessage};
use eventscope::metrics::{label, name, Metrics, OPERATION_SETTLE};
use eventscope::publish::PublishLayer;
use eventscope::scope::MessageScope;
use eventscope::BoxError;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tokio::sync::Notify;
use tower::service_fn;
use tower::util::BoxCloneSyncService;

/// A handler of one message.
pub type Handler<M> = BoxCloneSyncService<M, (), BoxError>;
/// A handler of a batch.
pub type BatchHandler<M> = BoxCloneSyncService<Vec<M>, (), BoxError>;
/// Resolves when the consumer is to shut down.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;
/// A running consumer.
pub type Running = Pin<Box<dyn Future<Output = Result<(), ConsumeError>> + Send>>;

/// How to build the consumer under test.
#[derive(Clone)]
pub struct Spec {
    pub group: String,
    pub topic: String,
    pub partitions: i32,
    pub metrics: Metrics,
    pub classifier: Classifier,
    pub max_concurrency: usize,
    pub drain_deadline: Duration,
    /// Join the group (rebalances) instead of taking every partition directly.
    pub join_group: bool,
    /// The consumer's tracer provider (its process layer's and settle spans'), if not global.
    pub tracer: Option<SdkTracerProvider>,
    /// Whether settles are spans.
    pub settle_spans: bool,
    /// Give the consumer a dead-letter publisher (the adapter's default destination).
    pub dead_letter: bool,
}

impl Spec {
    /// Applies the span settings of the spec to an adapter's consumer.
    pub fn spans<A, C>(&self, consumer: Consumer<A, C>) -> Consumer<A, C> {
        let consumer = consumer.settle_spans(self.settle_spans);
        match &self.tracer {
            Some(provider) => consumer.tracer_provider(provider),
            None => consumer,
        }
    }
}

/// What the suite needs from an adapter: "start a topic, publish, consume with this stack,
/// kill, inspect".
pub trait Harness: Send + Sync + 'static {
    type Message: IncomingMessage + Clone + Send + Sync + 'static;

    /// `messaging_system` of the adapter.
    fn system(&self) -> &'static str;
    /// A fresh topic with `partitions` partitions.
    fn topic(&self, partitions: i32) -> impl Future<Output = String> + Send;
    /// A fresh group name.
    fn group(&self) -> String;
    /// Publishes `payload` to `partition` of `topic`, acknowledged by the broker.
    fn publish(
        &self,
        topic: &str,
        partition: i32,
        payload: &str,
    ) -> impl Future<Output = ()> + Send;
    /// Publishes like [`publish`](Self::publish), through `layer` (trace context and ids in
    /// the headers).
    fn publish_through(
        &self,
        layer: PublishLayer,
        topic: &str,
        partition: i32,
        payload: &str,
    ) -> impl Future<Output = ()> + Send;
    fn payload(message: &Self::Message) -> String;
    fn position(message: &Self::Message) -> (i32, i64);
    /// Runs a consumer built from `spec`, the handler wrapped in the consumer's own
    /// process layer.
    fn consume(&self, spec: Spec, handler: Handler<Self::Message>, shutdown: Shutdown) -> Running;
    /// Like `consume`, in batch mode, wrapped in the consumer's batch process layer.
    fn consume_batch(
        &self,
        spec: Spec,
        handler: BatchHandler<Self::Message>,
        shutdown: Shutdown,
    ) -> Running;
    /// The group's committed next offset of a partition (ordered brokers).
    fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Option<i64>> + Send;

    /// `true` (the default) for brokers with partitions and offsets; `false` for queues that
    /// settle each message on their own.
    fn ordered(&self) -> bool {
        true
    }

    /// Unordered brokers: how many messages of `topic` the group has not settled yet (ready
    /// and delivered-but-unacked), as the broker counts them.
    fn unsettled(&self, group: &str, topic: &str) -> impl Future<Output = Option<u64>> + Send {
        let _ = (group, topic);
        async { None }
    }

    /// The `messaging.destination.name` a consumer of `topic` reports (spans and metric
    /// labels); the topic itself by default.
    fn destination(&self, topic: &str) -> String {
        topic.to_owned()
    }

    /// The `messaging.destination.name` a publish to `topic` reports; the topic by default.
    fn send_destination(&self, topic: &str) -> String {
        topic.to_owned()
    }

    /// Where a consumer of `topic` dead-letters by default (`{topic}.dlq`); [`topic`](Self::topic)
    /// makes it exist wherever the broker needs that.
    fn dead_letter_destination(&self, topic: &str) -> String {
        format!("{topic}.dlq")
    }

    /// The consumer group a consumer built from `spec` reports (`dlq-consumer-group`).
    fn consumer_group(&self, spec: &Spec) -> String {
        spec.group.clone()
    }

    /// The first `n` messages of `destination`, read by a consumer of its own (to inspect what
    /// another consumer published there).
    fn read(&self, destination: &str, n: usize) -> impl Future<Output = Vec<Self::Message>> + Send;
}

/// Waits until the group has settled everything: each partition committed to `per_partition`
/// (ordered), or nothing left unsettled (unordered).
async fn settled_to_the_end<H: Harness>(
    h: &H,
    group: &str,
    topic: &str,
    partitions: i32,
    per_partition: i64,
) {
    if h.ordered() {
        for p in 0..partitions {
            eventually_async(
                &format!("partition {p} committed to {per_partition}"),
                || {
                    let (g, t) = (group.to_owned(), topic.to_owned());
                    async move { h.committed(&g, &t, p).await == Some(per_partition) }
                },
            )
            .await;
        }
    } else {
        eventually_async("nothing left unsettled", || {
            let (g, t) = (group.to_owned(), topic.to_owned());
            async move { h.unsettled(&g, &t).await == Some(0) }
        })
        .await;
    }
}

/// An unordered consumer stopped by a failure: it returns on its own with `Stopped`.
async fn stopped_by_itself(
    running: tokio::task::JoinHandle<Result<(), ConsumeError>>,
) -> Result<(), ConsumeError> {
    tokio::time::timeout(LIMIT, running)
        .await
        .expect("an unordered consumer stops by itself on Stop")
        .expect("the consumer task")
}

/// Instantiates every case of the suite for a harness expression.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn at_least_once_with_a_consumer_killed_mid_stream() {
            conformance::at_least_once_with_a_consumer_killed_mid_stream(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retry_hands_the_message_again_while_the_partition_waits() {
            conformance::retry_hands_the_message_again_while_the_partition_waits(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn reject_commits_past_the_message() {
            conformance::reject_commits_past_the_message(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn stop_holds_the_partition_and_shows_it() {
            conformance::stop_holds_the_partition_and_shows_it(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn order_per_partition_within_the_concurrency_bound() {
            conformance::order_per_partition_within_the_concurrency_bound(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn shutdown_ends_despite_a_handler_that_never_completes() {
            conformance::shutdown_ends_despite_a_handler_that_never_completes(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_panic_is_a_failure_that_stops_its_partition() {
            conformance::a_panic_is_a_failure_that_stops_its_partition(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn revoked_partitions_lose_their_series() {
            conformance::revoked_partitions_lose_their_series(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_trace_continues_across_the_broker() {
            conformance::the_trace_continues_across_the_broker(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_poison_message_is_dead_lettered_after_its_attempts() {
            conformance::a_poison_message_is_dead_lettered_after_its_attempts(&$harness).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn batches_settle_whole_and_empty_polls_record_nothing() {
            conformance::batches_settle_whole_and_empty_polls_record_nothing(&$harness).await;
        }
    };
}

/// The first `n` messages a consumer gets: `consume` runs one with the handler and the
/// shutdown given, which resolves once `n` arrived (a harness's [`Harness::read`]).
pub async fn collect<M: Clone + Send + Sync + 'static>(
    n: usize,
    consume: impl FnOnce(Handler<M>, Shutdown) -> Running,
) -> Vec<M> {
    let got: Arc<Mutex<Vec<M>>> = Arc::default();
    let enough = Arc::new(Notify::new());
    let handler: Handler<M> = {
        let (got, enough) = (Arc::clone(&got), Arc::clone(&enough));
        BoxCloneSyncService::new(service_fn(move |message: M| {
            let mut got = got.lock().unwrap();
            got.push(message);
            if got.len() >= n {
                enough.notify_one();
            }
            async { Ok::<_, BoxError>(()) }
        }))
    };
    let waiter = Arc::clone(&enough);
    let shutdown: Shutdown = Box::pin(async move { waiter.notified().await });
    tokio::time::timeout(LIMIT, consume(handler, shutdown))
        .await
        .expect("the messages arrive")
        .expect("the reading consumer runs");
    let got = got.lock().unwrap();
    got.iter().take(n).cloned().collect()
}

/// Keeps a broken run from hanging; never an assertion on timing.
const LIMIT: Duration = Duration::from_secs(60);

/// A handler failure the suite classifies by downcast.
#[derive(Debug)]
pub struct Flaky;
impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("flaky")
    }
}
impl std::error::Error for Flaky {}

/// A failure the suite rejects.
#[derive(Debug)]
pub struct Poison;
impl fmt::Display for Poison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("poison")
    }
}
impl std::error::Error for Poison {}

fn spec<H: Harness>(h: &H, topic: &str, partitions: i32) -> Spec {
    Spec {
        group: h.group(),
        topic: topic.to_owned(),
        partitions,
        metrics: Metrics::new(),
        classifier: Classifier::new()
            .on::<Flaky>("Flaky")
            .on::<Poison>("Poison")
            .decision("Flaky", Decision::retry(Duration::from_millis(20)))
            .decision("Poison", Decision::Reject),
        max_concurrency: 8,
        drain_deadline: Duration::from_secs(30),
        join_group: false,
        tracer: None,
        settle_spans: false,
        dead_letter: false,
    }
}

/// Messages `{partition}-{i}` for i in 0..n, on every partition.
async fn publish_all<H: Harness>(h: &H, topic: &str, partitions: i32, n: usize) -> Vec<String> {
    let mut all = Vec::new();
    for i in 0..n {
        for p in 0..partitions {
            let payload = format!("{p}-{i}");
            h.publish(topic, p, &payload).await;
            all.push(payload);
        }
    }
    all
}

/// What a handler saw, in order.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<(String, i32, i64)>>>);

impl Seen {
    fn push<H: Harness>(&self, message: &H::Message) {
        let (p, o) = H::position(message);
        self.0.lock().unwrap().push((H::payload(message), p, o));
    }
    fn payloads(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|s| s.0.clone()).collect()
    }
    fn count(&self, payload: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.0 == payload)
            .count()
    }
    fn distinct(&self) -> BTreeSet<String> {
        self.payloads().into_iter().collect()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A handler that records and then does what `act` says for the payload.
fn handler<H: Harness, F, Fut>(seen: &Seen, act: F) -> Handler<H::Message>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let seen = seen.clone();
    BoxCloneSyncService::new(service_fn(move |message: H::Message| {
        seen.push::<H>(&message);
        act(H::payload(&message))
    }))
}

pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal() -> (Arc<Notify>, Shutdown) {
    let notify = Arc::new(Notify::new());
    let waiter = Arc::clone(&notify);
    (
        notify,
        Box::pin(async move { waiter.notified().await }) as Shutdown,
    )
}

async fn finish(
    notify: &Notify,
    running: tokio::task::JoinHandle<Result<(), ConsumeError>>,
) -> Result<(), ConsumeError> {
    notify.notify_one();
    tokio::time::timeout(LIMIT, running)
        .await
        .expect("the consumer returns after shutdown")
        .expect("the consumer task")
}

/// The value of one sample: family `name` with every `label="value"` in `with` (summed when
/// several series match).
pub fn sample(text: &str, family: &str, with: &[(&str, &str)]) -> Option<f64> {
    shared::samples(text, family, with)
        .into_iter()
        .map(|(_, value)| value)
        .reduce(|a, b| a + b)
}

// --- the cases -------------------------------------------------------------------------------

/// Kill a consumer (drop its future) mid-stream; a second one in the group sees everything the
/// first did not commit, and together they saw everything.
pub async fn at_least_once_with_a_consumer_killed_mid_stream<H: Harness>(h: &H) {
    let topic = h.topic(3).await;
    let all = publish_all(h, &topic, 3, 20).await;
    let spec = spec(h, &topic, 3);

    let first = Seen::default();
    let slow = handler::<H, _, _>(&first, |_| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(())
    });
    let running = tokio::spawn(h.consume(spec.clone(), slow, Box::pin(std::future::pending())));
    eventually("the first consumer to be mid-stream", || first.len() >= 15).await;
    running.abort();
    let _ = running.await;
    assert!(first.distinct().len() < all.len(), "killed before the end");

    let second = Seen::default();
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(
        spec.clone(),
        handler::<H, _, _>(&second, |_| async { Ok(()) }),
        shutdown,
    ));
    let expected: BTreeSet<String> = all.iter().cloned().collect();
    eventually("every message to be handled by the two", || {
        first
            .distinct()
            .union(&second.distinct())
            .cloned()
            .collect::<BTreeSet<_>>()
            == expected
    })
    .await;
    finish(&stop, running).await.expect("clean run");
    settled_to_the_end(h, &spec.group, &topic, 3, 20).await;
}

pub async fn retry_hands_the_message_again_while_the_partition_waits<H: Harness>(h: &H) {
    let topic = h.topic(1).await;
    publish_all(h, &topic, 1, 5).await;
    let spec = spec(h, &topic, 1);
    let seen = Seen::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let act = {
        let failures = Arc::clone(&failures);
        move |payload: String| {
            let failures = Arc::clone(&failures);
            async move {
                if payload == "0-2" && failures.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(Flaky.into());
                }
                Ok(())
            }
        }
    };
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(spec.clone(), handler::<H, _, _>(&seen, act), shutdown));
    eventually("all five handled", || seen.distinct().len() == 5).await;
    eventually("the retried message handled three times", || {
        seen.count("0-2") == 3
    })
    .await;
    settled_to_the_end(h, &spec.group, &topic, 1, 5).await;
    finish(&stop, running).await.expect("clean run");

    assert_eq!(seen.count("0-2"), 3, "two retries, then success");
    if h.ordered() {
        let order: Vec<String> = seen.payloads();
        let expected = ["0-0", "0-1", "0-2", "0-2", "0-2", "0-3", "0-4"];
        assert_eq!(
            order, expected,
            "the partition waited for the retried message"
        );
    }
    let text = spec.metrics.encode();
    assert_eq!(
        sample(
            &text,
            name::RETRIES,
            &[(label::ERROR_TYPE, "Flaky"), (label::SYSTEM, h.system())]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("{}_count", name::PROCESS_DURATION),
            &[(label::ERROR_TYPE, "Flaky")]
        ),
        Some(2.0),
        "the process layer uses the consumer's classifier"
    );
}

pub async fn reject_commits_past_the_message<H: Harness>(h: &H) {
    let topic = h.topic(1).await;
    publish_all(h, &topic, 1, 4).await;
    let spec = spec(h, &topic, 1);
    let seen = Seen::default();
    let act = |payload: String| async move {
        if payload == "0-1" {
            return Err(Poison.into());
        }
        Ok(())
    };
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(spec.clone(), handler::<H, _, _>(&seen, act), shutdown));
    eventually("all four handled", || seen.distinct().len() == 4).await;
    finish(&stop, running)
        .await
        .expect("a rejected message does not stop the consumer");
    settled_to_the_end(h, &spec.group, &topic, 1, 4).await;
    assert_eq!(seen.count("0-1"), 1, "rejected, not retried");
    let text = spec.metrics.encode();
    assert_eq!(
        sample(
            &text,
            name::PARTITION_STOPPED,
            &[(label::SYSTEM, h.system())]
        ),
        None
    );
}

pub async fn stop_holds_the_partition_and_shows_it<H: Harness>(h: &H) {
    let topic = h.topic(2).await;
    publish_all(h, &topic, 2, 4).await;
    let mut spec = spec(h, &topic, 2);
    let seen = Seen::default();
    // An unclassified error: the default decision is Stop.
    let act = |payload: String| async move {
        if payload == "1-1" {
            return Err(BoxError::from("unclassified"));
        }
        Ok(())
    };
    if !h.ordered() {
        // One at a time, so what follows the failure is provably left alone.
        spec.max_concurrency = 1;
        let running = tokio::spawn(h.consume(
            spec.clone(),
            handler::<H, _, _>(&seen, act),
            Box::pin(std::future::pending()),
        ));
        match stopped_by_itself(running).await {
            Err(ConsumeError::Stopped { error_type, .. }) => {
                assert_eq!(error_type, eventscope::classify::OTHER);
            }
            other => panic!("expected Stopped, got {other:?}"),
        }
        assert_eq!(seen.count("1-1"), 1, "not retried by this consumer");
        let left = h.unsettled(&spec.group, &topic).await.unwrap_or_default();
        assert!(
            left >= 1,
            "the failed message is not settled: it waits for the next consumer"
        );
        return;
    }
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(spec.clone(), handler::<H, _, _>(&seen, act), shutdown));
    let stopped = [
        (label::SYSTEM, h.system()),
        (label::DESTINATION, topic.as_str()),
        (label::PARTITION, "1"),
        (label::GROUP, spec.group.as_str()),
    ];
    eventually("the stopped gauge", || {
        sample(&spec.metrics.encode(), name::PARTITION_STOPPED, &stopped) == Some(1.0)
    })
    .await;
    eventually("partition 0 handled", || {
        (0..4).all(|i| seen.count(&format!("0-{i}")) == 1)
    })
    .await;
    eventually_async("partition 0 committed", || {
        let (h, g, t) = (&h, spec.group.clone(), topic.clone());
        async move { h.committed(&g, &t, 0).await == Some(4) }
    })
    .await;
    let outcome = finish(&stop, running).await;
    assert_eq!(
        sample(&spec.metrics.encode(), name::PARTITION_STOPPED, &stopped),
        None,
        "a consumer that returned holds nothing stopped"
    );
    assert_eq!(seen.count("1-1"), 1, "not retried");
    assert_eq!(seen.count("1-2") + seen.count("1-3"), 0, "nothing after it");
    assert_eq!(
        h.committed(&spec.group, &topic, 1).await,
        Some(1),
        "committed up to the failed message, never past it"
    );
    match outcome {
        Err(ConsumeError::PartitionStopped {
            partition,
            offset,
            error_type,
            ..
        }) => {
            assert_eq!((partition, offset), (1, 1));
            assert_eq!(error_type, eventscope::classify::OTHER);
        }
        other => panic!("expected PartitionStopped, got {other:?}"),
    }
}

pub async fn order_per_partition_within_the_concurrency_bound<H: Harness>(h: &H) {
    let topic = h.topic(3).await;
    publish_all(h, &topic, 3, 15).await;
    let mut spec = spec(h, &topic, 3);
    spec.max_concurrency = 2;
    let seen = Seen::default();
    let running_now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let act = {
        let (running_now, most) = (Arc::clone(&running_now), Arc::clone(&most));
        move |_payload: String| {
            let (running_now, most) = (Arc::clone(&running_now), Arc::clone(&most));
            async move {
                let now = running_now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
                running_now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(spec.clone(), handler::<H, _, _>(&seen, act), shutdown));
    eventually("all handled", || seen.distinct().len() == 45).await;
    finish(&stop, running).await.expect("clean run");
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "at most two calls at once"
    );
    if !h.ordered() {
        eprintln!("order per partition: not checked, a queue has no partitions to keep in order");
        return;
    }
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (_, p, o) in seen.0.lock().unwrap().iter() {
        per_partition.entry(*p).or_default().push(*o);
    }
    assert_eq!(per_partition.len(), 3);
    for (p, offsets) in per_partition {
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        assert_eq!(offsets, sorted, "partition {p} handled in order");
    }
}

pub async fn shutdown_ends_despite_a_handler_that_never_completes<H: Harness>(h: &H) {
    let topic = h.topic(2).await;
    publish_all(h, &topic, 2, 3).await;
    let mut spec = spec(h, &topic, 2);
    spec.drain_deadline = Duration::from_millis(200);
    let seen = Seen::default();
    let act = |payload: String| async move {
        if payload == "1-1" {
            std::future::pending::<()>().await;
        }
        Ok(())
    };
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(spec.clone(), handler::<H, _, _>(&seen, act), shutdown));
    eventually("partition 0 and the stuck message handled", || {
        (0..3).all(|i| seen.count(&format!("0-{i}")) == 1) && seen.count("1-1") == 1
    })
    .await;
    finish(&stop, running)
        .await
        .expect("a cancelled call is no failure");
    if h.ordered() {
        assert_eq!(h.committed(&spec.group, &topic, 0).await, Some(3));
        assert_eq!(
            h.committed(&spec.group, &topic, 1).await,
            Some(1),
            "what finished before the stuck message is committed, the stuck one is not"
        );
    } else {
        eventually_async("only the stuck message left unsettled", || {
            let (g, t) = (spec.group.clone(), topic.clone());
            async move { h.unsettled(&g, &t).await == Some(1) }
        })
        .await;
    }
    let text = spec.metrics.encode();
    assert_eq!(
        sample(
            &text,
            &format!("{}_count", name::PROCESS_DURATION),
            &[(label::ERROR_TYPE, CANCELLED)]
        ),
        Some(1.0),
        "the cancelled call is recorded as such"
    );
}

pub async fn a_panic_is_a_failure_that_stops_its_partition<H: Harness>(h: &H) {
    let topic = h.topic(2).await;
    publish_all(h, &topic, 2, 3).await;
    let spec = spec(h, &topic, 2);
    let seen = Seen::default();
    let act = |payload: String| async move {
        if payload == "0-1" {
            panic!("handler bug");
        }
        Ok(())
    };
    if !h.ordered() {
        let mut spec = spec.clone();
        spec.max_concurrency = 1;
        let running = tokio::spawn(h.consume(
            spec.clone(),
            handler::<H, _, _>(&seen, act),
            Box::pin(std::future::pending()),
        ));
        match stopped_by_itself(running).await {
            Err(ConsumeError::Stopped { error_type, .. }) => assert_eq!(error_type, PANIC),
            other => panic!("expected Stopped, got {other:?}"),
        }
        let destination = h.destination(&topic);
        assert_eq!(
            sample(
                &spec.metrics.encode(),
                &format!("{}_count", name::PROCESS_DURATION),
                &[
                    (label::ERROR_TYPE, PANIC),
                    (label::DESTINATION, destination.as_str())
                ]
            ),
            Some(1.0)
        );
        return;
    }
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(spec.clone(), handler::<H, _, _>(&seen, act), shutdown));
    let stopped = [
        (label::DESTINATION, topic.as_str()),
        (label::PARTITION, "0"),
        (label::GROUP, spec.group.as_str()),
    ];
    eventually("the stopped gauge, while the consumer runs", || {
        sample(&spec.metrics.encode(), name::PARTITION_STOPPED, &stopped) == Some(1.0)
    })
    .await;
    eventually("partition 1 handled", || {
        (0..3).all(|i| seen.count(&format!("1-{i}")) == 1)
    })
    .await;
    let text = spec.metrics.encode();
    assert_eq!(
        sample(
            &text,
            &format!("{}_count", name::PROCESS_DURATION),
            &[
                (label::ERROR_TYPE, PANIC),
                (label::DESTINATION, topic.as_str())
            ]
        ),
        Some(1.0)
    );
    let outcome = finish(&stop, running).await;
    assert_eq!(seen.count("0-2"), 0, "the partition stopped at the panic");
    assert_eq!(h.committed(&spec.group, &topic, 0).await, Some(1));
    match outcome {
        Err(ConsumeError::PartitionStopped {
            partition,
            offset,
            error_type,
            ..
        }) => {
            assert_eq!((partition, offset), (0, 1));
            assert_eq!(error_type, PANIC);
        }
        other => panic!("expected PartitionStopped, got {other:?}"),
    }
}

pub async fn revoked_partitions_lose_their_series<H: Harness>(h: &H) {
    if !h.ordered() {
        eprintln!(
            "revoked partitions: not checked, a queue's consumers share it without partitions"
        );
        return;
    }
    let topic = h.topic(2).await;
    publish_all(h, &topic, 2, 2).await;
    let mut first_spec = spec(h, &topic, 2);
    first_spec.join_group = true;
    let seen = Seen::default();
    let (stop_first, shutdown) = signal();
    let first = tokio::spawn(h.consume(
        first_spec.clone(),
        handler::<H, _, _>(&seen, |_| async { Ok(()) }),
        shutdown,
    ));
    let series = |metrics: &Metrics, partition: &str| {
        sample(
            &metrics.encode(),
            name::LAST_MESSAGE_TIMESTAMP,
            &[
                (label::DESTINATION, topic.as_str()),
                (label::PARTITION, partition),
            ],
        )
        .is_some()
    };
    eventually("both partitions processed by the only member", || {
        series(&first_spec.metrics, "0") && series(&first_spec.metrics, "1")
    })
    .await;

    // A second member with metrics of its own: the first keeps series only for what it owns.
    let mut second_spec = first_spec.clone();
    second_spec.metrics = Metrics::new();
    let (stop_second, shutdown) = signal();
    let second = tokio::spawn(h.consume(
        second_spec.clone(),
        handler::<H, _, _>(&Seen::default(), |_| async { Ok(()) }),
        shutdown,
    ));
    eventually("one partition revoked from the first member", || {
        series(&first_spec.metrics, "0") != series(&first_spec.metrics, "1")
    })
    .await;
    finish(&stop_second, second).await.expect("clean run");
    finish(&stop_first, first).await.expect("clean run");
    let text = first_spec.metrics.encode();
    assert_eq!(
        sample(
            &text,
            name::LAG_MESSAGES,
            &[(label::DESTINATION, topic.as_str())]
        ),
        None,
        "leaving the group revokes everything"
    );
}

pub async fn batches_settle_whole_and_empty_polls_record_nothing<H: Harness>(h: &H) {
    let topic = h.topic(1).await;
    let spec = spec(h, &topic, 1);
    let batches = Arc::new(Mutex::new(Vec::<usize>::new()));
    let handler: BatchHandler<H::Message> = {
        let batches = Arc::clone(&batches);
        BoxCloneSyncService::new(service_fn(move |batch: Vec<H::Message>| {
            batches.lock().unwrap().push(batch.len());
            async { Ok::<_, BoxError>(()) }
        }))
    };
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume_batch(spec.clone(), handler.clone(), shutdown));
    // Nothing published yet: the consumer polls an empty topic.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = spec.metrics.encode();
    assert!(batches.lock().unwrap().is_empty(), "no call for nothing");
    assert_eq!(sample(&text, name::CONSUMED_MESSAGES, &[]), None);
    assert!(
        !text.contains(&format!("{}=\"\"", label::DESTINATION)),
        "no series with an empty destination"
    );
    publish_all(h, &topic, 1, 6).await;
    eventually("six messages in batches", || {
        batches.lock().unwrap().iter().sum::<usize>() == 6
    })
    .await;
    finish(&stop, running).await.expect("clean run");
    assert!(batches.lock().unwrap().iter().all(|n| *n > 0));
    settled_to_the_end(h, &spec.group, &topic, 1, 6).await;
    let text = spec.metrics.encode();
    let destination = h.destination(&topic);
    assert_eq!(
        sample(
            &text,
            name::CONSUMED_MESSAGES,
            &[(label::DESTINATION, destination.as_str())]
        ),
        Some(6.0)
    );
    assert!(
        sample(
            &text,
            &format!("{}_count", name::OPERATION_DURATION),
            &[
                (label::OPERATION, OPERATION_SETTLE),
                (label::DESTINATION, destination.as_str())
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "commits are timed as settles"
    );
}

/// SPEC §3: `send {topic}` (PRODUCER) → broker → `process {topic}` (CONSUMER), one trace, the
/// creation context as parent (no ambient span) and as link; the settle is a `settle {topic}`
/// CLIENT span when enabled.
pub async fn the_trace_continues_across_the_broker<H: Harness>(h: &H) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let topic = h.topic(1).await;
    let mut spec = spec(h, &topic, 1);
    spec.tracer = Some(provider.clone());
    spec.settle_spans = true;
    let metrics = spec.metrics.clone();
    h.publish_through(
        PublishLayer::new(metrics.clone()).tracer_provider(&provider),
        &topic,
        0,
        "traced",
    )
    .await;

    let seen = Seen::default();
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(
        spec,
        handler::<H, _, _>(&seen, |_| async { Ok(()) }),
        shutdown,
    ));
    eventually("the traced message is handled", || seen.len() == 1).await;
    let send_name = format!("send {}", h.send_destination(&topic));
    let process_name = format!("process {}", h.destination(&topic));
    let settle_name = format!("settle {}", h.destination(&topic));
    eventually("the commit's settle span", || {
        let _ = provider.force_flush();
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|s| s.name == settle_name)
    })
    .await;
    finish(&stop, running).await.expect("clean run");

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let one = |name: &str| {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(
            found.len(),
            1,
            "one {name:?} span in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        found[0].clone()
    };
    let send = one(&send_name);
    let process = one(&process_name);
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        process.span_context.trace_id(),
        send.span_context.trace_id()
    );
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert_eq!(process.links.len(), 1);
    assert_eq!(
        process.links[0].span_context.span_id(),
        send.span_context.span_id()
    );
    let system = |span: &opentelemetry_sdk::trace::SpanData| {
        span.attributes
            .iter()
            .find(|kv| {
                kv.key.as_str() == opentelemetry_semantic_conventions::attribute::MESSAGING_SYSTEM
            })
            .map(|kv| kv.value.as_str().into_owned())
    };
    assert_eq!(system(&process).as_deref(), Some(h.system()));
    let settles: Vec<_> = spans.iter().filter(|s| s.name == settle_name).collect();
    assert!(settles.iter().all(|s| s.span_kind == SpanKind::Client));
}

/// SPEC §7, §8: a message that keeps failing is tried exactly as often as its retry policy
/// says, within the policy's delays, then published to the dead-letter destination with the
/// error headers, a fresh id, the failed message as its cause and its correlation id kept, in
/// the failed attempt's trace; the messages after it are processed; the counters read what
/// happened.
pub async fn a_poison_message_is_dead_lettered_after_its_attempts<H: Harness>(h: &H) {
    const ATTEMPTS: u32 = 3;
    let policy = RetryPolicy::exponential(Duration::from_millis(40))
        .max_delay(Duration::from_millis(150))
        .max_attempts(ATTEMPTS);
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let topic = h.topic(1).await;
    publish_all(h, &topic, 1, 4).await;
    let mut spec = spec(h, &topic, 1);
    spec.classifier = spec.classifier.clone().decision("Poison", policy);
    spec.tracer = Some(provider.clone());
    spec.dead_letter = true;

    // What the handler saw of each attempt at the poison message: when, which attempt, and the
    // ids of its scope (what its dead-letter copy must name).
    type Attempt = (std::time::Instant, Option<u32>, Option<MessageScope>);
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let seen = Seen::default();
    let handler: Handler<H::Message> = {
        let (seen, attempts) = (seen.clone(), Arc::clone(&attempts));
        BoxCloneSyncService::new(service_fn(move |message: H::Message| {
            seen.push::<H>(&message);
            let poison = H::payload(&message) == "0-1";
            if poison {
                attempts.lock().unwrap().push((
                    std::time::Instant::now(),
                    message.delivery_attempt(),
                    MessageScope::current(),
                ));
            }
            async move {
                if poison {
                    return Err(BoxError::from(Poison));
                }
                Ok(())
            }
        }))
    };
    let (stop, shutdown) = signal();
    let running = tokio::spawn(h.consume(spec.clone(), handler, shutdown));
    eventually("every message handled", || seen.distinct().len() == 4).await;
    settled_to_the_end(h, &spec.group, &topic, 1, 4).await;
    finish(&stop, running)
        .await
        .expect("a dead-lettered message stops nothing");

    // Tried exactly as often as the policy says, the others once each.
    assert_eq!(seen.count("0-1"), ATTEMPTS as usize);
    for other in ["0-0", "0-2", "0-3"] {
        assert_eq!(seen.count(other), 1, "{other}");
    }
    let attempts = attempts.lock().unwrap().clone();
    let numbers: Vec<Option<u32>> = attempts.iter().map(|a| a.1).collect();
    assert_eq!(
        numbers,
        vec![Some(1), Some(2), Some(3)],
        "delivery_attempt()"
    );
    // Each gap is the jittered delay, at most the policy's bound for that attempt (plus what the
    // machine needs to hand the message out again).
    for (n, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        let bound = policy.delay_bound(n as u32 + 1);
        assert!(
            gap <= bound + Duration::from_secs(2),
            "attempt {} came {gap:?} after the one before; the policy allows {bound:?}",
            n + 2
        );
    }

    // The dead-letter copy.
    let dead_letter_destination = h.dead_letter_destination(&topic);
    let copies = h.read(&dead_letter_destination, 1).await;
    assert_eq!(copies.len(), 1);
    let copy = &copies[0];
    assert_eq!(H::payload(copy), "0-1", "the original payload");
    let text = |name: &str| copy.header_str(name).map(str::to_owned);
    assert_eq!(
        text(header::DLQ_ORIGINAL_DESTINATION),
        Some(h.send_destination(&topic))
    );
    assert_eq!(text(header::DLQ_ERROR_TYPE).as_deref(), Some("Poison"));
    assert_eq!(text(header::DLQ_ERROR_MESSAGE).as_deref(), Some("poison"));
    assert_eq!(
        text(header::DLQ_ATTEMPTS),
        Some(ATTEMPTS.to_string()),
        "attempts made"
    );
    assert_eq!(
        text(header::DLQ_CONSUMER_GROUP),
        Some(h.consumer_group(&spec))
    );
    let failed_at = text(header::DLQ_FAILED_AT).expect("dlq-failed-at");
    assert!(
        humantime::parse_rfc3339(&failed_at).is_ok() && failed_at.ends_with('Z'),
        "RFC 3339 UTC: {failed_at}"
    );
    assert_eq!(
        failed_at.len(),
        "2026-12-07T15:01:36.123Z".len(),
        "milliseconds"
    );
    if h.ordered() {
        assert_eq!(text(header::DLQ_ORIGINAL_PARTITION).as_deref(), Some("0"));
        assert_eq!(text(header::DLQ_ORIGINAL_OFFSET).as_deref(), Some("1"));
    }
    // A new message caused by the one that failed, in the same flow.
    let failed = attempts
        .last()
        .and_then(|a| a.2.clone())
        .expect("the handler ran inside the consumer's process layer");
    let failed_id = failed
        .message_id()
        .expect("the failed message's id")
        .to_owned();
    let copy_id = copy.message_id().expect("the copy has an id").into_owned();
    assert_ne!(copy_id, failed_id, "a fresh message id");
    assert_eq!(text(header::CAUSATION_ID), Some(failed_id));
    assert_eq!(
        text(header::CORRELATION_ID).as_deref(),
        Some(failed.correlation_id()),
        "the correlation id is kept"
    );

    // Counted by the consumer.
    let metrics = spec.metrics.encode();
    let destination = h.destination(&topic);
    let labels = [
        (label::ERROR_TYPE, "Poison"),
        (label::DESTINATION, destination.as_str()),
    ];
    assert_eq!(sample(&metrics, name::DEAD_LETTERED, &labels), Some(1.0));
    assert_eq!(
        sample(&metrics, name::RETRIES, &labels),
        Some(f64::from(ATTEMPTS - 1))
    );

    // The dead-letter send is a child of the last failed attempt's process span; attempts the
    // core retried in process are one trace with it.
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let failed_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.name == format!("process {destination}"))
        .filter(|s| {
            s.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "error.type" && kv.value.as_str() == "Poison")
        })
        .collect();
    assert_eq!(
        failed_spans.len(),
        ATTEMPTS as usize,
        "a process span per attempt"
    );
    let send_name = format!("send {}", h.send_destination(&dead_letter_destination));
    let sends: Vec<_> = spans.iter().filter(|s| s.name == send_name).collect();
    assert_eq!(sends.len(), 1, "one dead-letter send span");
    let last = failed_spans
        .iter()
        .max_by_key(|s| s.start_time)
        .expect("attempts");
    assert_eq!(sends[0].parent_span_id, last.span_context.span_id());
    assert_eq!(
        sends[0].span_context.trace_id(),
        last.span_context.trace_id()
    );
    if h.ordered() {
        assert!(
            failed_spans
                .iter()
                .all(|s| s.span_context.trace_id() == last.span_context.trace_id()),
            "every attempt in one trace"
        );
    }
}
