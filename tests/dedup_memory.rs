//! The idempotency layer with the in-memory store: on the embedded broker's consumer inside its
//! process layer, and on its own.

mod common;

use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{attr, capture, named, sample};
use eventscope::classify::{Classifier, ClassifyError, Decide, Decision, Failed};
use eventscope::dedup::error::{DedupErrorKind, IN_FLIGHT, UNAVAILABLE};
use eventscope::dedup::{
    Claim, ClaimToken, DedupError, DedupKey, DedupLayer, DedupStore, MemoryStore, Processed,
    StoreError, DUPLICATE_ATTRIBUTE,
};
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::message::{HeaderList, Headers, IncomingMessage};
use eventscope::metrics::{label, name, Metrics};
use eventscope::BoxError;
use opentelemetry::Value;
use tower::{service_fn, Layer, Service, ServiceExt};

fn retry_dedup() -> Classifier {
    Classifier::new()
        .on::<DedupError>("dedup")
        .decision("dedup", Decision::retry(Duration::from_millis(50)))
}

async fn publish(broker: &MemoryBroker, partition: i32, id: &str) {
    let record = MemoryRecord::new("orders", b"{}".to_vec())
        .header("message-id", id)
        .partition(partition);
    broker.publisher().oneshot(record).await.unwrap();
}

/// Resolves once `group` committed `n` messages on each of `partitions`.
async fn committed(broker: MemoryBroker, partitions: &[(i32, i64)]) {
    loop {
        if partitions
            .iter()
            .all(|(p, n)| broker.committed("billing", "orders", *p).unwrap_or(0) >= *n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_redelivered_message_does_not_reach_the_handler_and_is_settled() {
    let capture = capture();
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    publish(&broker, 0, "evt-1").await;
    publish(&broker, 0, "evt-1").await;
    publish(&broker, 0, "evt-2").await;

    let metrics = Metrics::new();
    let consumer = broker
        .consumer("billing")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .tracer_provider(&capture.provider);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let dedup = DedupLayer::new(MemoryStore::default(), metrics.clone());
    let handler = dedup.layer(service_fn(move |_m: MemoryMessage| {
        seen.fetch_add(1, Ordering::SeqCst);
        ready(Ok::<_, BoxError>(()))
    }));
    let done = committed(broker.clone(), &[(0, 3)]);
    tokio::time::timeout(Duration::from_secs(10), consumer.run(handler, done))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let text = metrics.encode();
    let labels = [
        (label::SYSTEM, "memory"),
        (label::DESTINATION, "orders"),
        (label::GROUP, "billing"),
    ];
    assert_eq!(sample(&text, name::DUPLICATES, &labels), Some(1.0));
    // The duplicate was settled as a success.
    assert_eq!(
        sample(
            &text,
            &format!("{}_count", name::PROCESS_DURATION),
            &[(label::ERROR_TYPE, "")]
        ),
        Some(3.0)
    );
    let spans = capture.spans();
    let process = named(&spans, "process orders");
    assert_eq!(process.len(), 3);
    let flagged: Vec<_> = process
        .iter()
        .filter(|s| attr(s, DUPLICATE_ATTRIBUTE) == Some(&Value::Bool(true)))
        .collect();
    assert_eq!(flagged.len(), 1);
    assert_eq!(
        common::attr_str(flagged[0], "messaging.message.id").as_deref(),
        Some("evt-1")
    );
}

#[tokio::test]
async fn the_same_id_delivered_twice_at_once_runs_the_handler_once() {
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 2).unwrap();
    // The same event on two partitions, as a producer retry to another partition would do.
    publish(&broker, 0, "evt-twice").await;
    publish(&broker, 1, "evt-twice").await;

    let metrics = Metrics::new();
    let consumer = broker
        .consumer("billing")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .max_concurrency(2)
        .classify_errors(retry_dedup());
    let (calls, running, overlap) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (c, r, o) = (calls.clone(), running.clone(), overlap.clone());
    let dedup = DedupLayer::new(MemoryStore::default(), metrics.clone());
    let handler = dedup.layer(service_fn(move |_m: MemoryMessage| {
        let (c, r, o) = (c.clone(), r.clone(), o.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            if r.fetch_add(1, Ordering::SeqCst) > 0 {
                o.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        }
    }));
    let done = committed(broker.clone(), &[(0, 1), (1, 1)]);
    tokio::time::timeout(Duration::from_secs(10), consumer.run(handler, done))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(overlap.load(Ordering::SeqCst), 0);
    let text = metrics.encode();
    assert_eq!(sample(&text, name::DUPLICATES, &[]), Some(1.0));
    // The second delivery found the id in flight and was retried (then found it done).
    let retried = sample(&text, name::RETRIES, &[(label::ERROR_TYPE, "dedup")]).unwrap_or(0.0);
    assert!(retried >= 1.0, "{text}");
}

#[tokio::test]
async fn a_failed_handler_releases_its_claim_so_the_retry_runs_it() {
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    publish(&broker, 0, "evt-flaky").await;
    let metrics = Metrics::new();
    let consumer = broker
        .consumer("billing")
        .subscribe(["orders"])
        .metrics(metrics.clone())
        .classify_errors(Classifier::new().otherwise(Decision::retry(Duration::from_millis(10))));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let handler = DedupLayer::new(MemoryStore::default(), metrics.clone()).layer(service_fn(
        move |_m: MemoryMessage| {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            ready(if first {
                Err::<(), BoxError>("payment gateway down".into())
            } else {
                Ok(())
            })
        },
    ));
    let done = committed(broker.clone(), &[(0, 1)]);
    tokio::time::timeout(Duration::from_secs(10), consumer.run(handler, done))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(sample(&metrics.encode(), name::DUPLICATES, &[]), None);
}

/// A message outside any broker, with or without an id.
#[derive(Clone)]
struct Msg {
    headers: HeaderList,
}

impl Msg {
    fn with_id(id: &str) -> Self {
        let mut headers = HeaderList::new();
        headers.push("message-id", id);
        Self { headers }
    }

    fn without_id() -> Self {
        Self {
            headers: HeaderList::new(),
        }
    }
}

impl Headers for Msg {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl IncomingMessage for Msg {
    fn system(&self) -> &'static str {
        "rabbitmq"
    }
    fn destination(&self) -> &str {
        "orders"
    }
    fn consumer_group(&self) -> Option<&str> {
        Some("billing")
    }
}

fn counting(
    calls: &Arc<AtomicUsize>,
) -> impl Service<Msg, Response = (), Error = BoxError, Future = Ready<Result<(), BoxError>>> + Clone
{
    let calls = Arc::clone(calls);
    service_fn(move |_m: Msg| {
        calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok(()))
    })
}

#[tokio::test]
async fn on_its_own_the_layer_answers_duplicate_without_calling_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let metrics = Metrics::new();
    let mut service =
        DedupLayer::new(MemoryStore::default(), metrics.clone()).layer(counting(&calls));
    let first = service
        .ready()
        .await
        .unwrap()
        .call(Msg::with_id("m-1"))
        .await
        .unwrap();
    assert_eq!(first, Processed::Done(()));
    let second = service
        .ready()
        .await
        .unwrap()
        .call(Msg::with_id("m-1"))
        .await
        .unwrap();
    assert!(second.is_duplicate());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        sample(
            &metrics.encode(),
            name::DUPLICATES,
            &[(label::SYSTEM, "rabbitmq"), (label::GROUP, "billing")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_message_without_an_id_is_processed_every_time() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service =
        DedupLayer::new(MemoryStore::default(), Metrics::new()).layer(counting(&calls));
    for _ in 0..3 {
        let answer = service
            .ready()
            .await
            .unwrap()
            .call(Msg::without_id())
            .await
            .unwrap();
        assert_eq!(answer, Processed::Done(()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_cancelled_call_releases_its_claim() {
    let store = MemoryStore::default();
    let never = service_fn(|_m: Msg| std::future::pending::<Result<(), BoxError>>());
    let mut stuck = DedupLayer::new(store.clone(), Metrics::new()).layer(never);
    let mut call = Box::pin(stuck.ready().await.unwrap().call(Msg::with_id("m-cancel")));
    assert!(futures_util::poll!(call.as_mut()).is_pending());
    // The claim is held while the handler runs.
    let key = DedupKey::new("billing", "m-cancel");
    let probe = store
        .claim(&key, ClaimToken::new(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(probe, Claim::InFlight);
    drop(call);
    tokio::task::yield_now().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = DedupLayer::new(store, Metrics::new()).layer(counting(&calls));
    let answer = service
        .ready()
        .await
        .unwrap()
        .call(Msg::with_id("m-cancel"))
        .await
        .unwrap();
    assert_eq!(answer, Processed::Done(()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_id_in_flight_fails_for_a_retry_and_the_classifier_names_it() {
    let store = MemoryStore::default();
    let key = DedupKey::new("billing", "m-busy");
    let other = store
        .claim(&key, ClaimToken::new(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(other, Claim::Claimed);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = DedupLayer::new(store, Metrics::new()).layer(counting(&calls));
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Msg::with_id("m-busy"))
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let classifier = retry_dedup();
    assert_eq!(classifier.classify(&error), "dedup");
    assert_eq!(
        classifier.decide(&Failed::new("dedup", 1)),
        Decision::retry(Duration::from_millis(50))
    );
    let error = error.downcast::<DedupError>().unwrap();
    assert_eq!(error.kind(), DedupErrorKind::InFlight);
    assert_eq!(error.error_type(), IN_FLIGHT);
    assert_eq!(error.message_id(), "m-busy");
}

/// A store that is always down.
#[derive(Clone, Debug)]
struct Down;

type Failing<T> = Ready<Result<T, StoreError>>;

impl DedupStore for Down {
    type ClaimFuture = Failing<Claim>;
    type CompleteFuture = Failing<()>;
    type ReleaseFuture = Failing<()>;

    fn claim(&self, _: &DedupKey, _: ClaimToken, _: Duration) -> Self::ClaimFuture {
        ready(Err(StoreError::new("connection refused")))
    }
    fn complete(&self, _: &DedupKey, _: Duration) -> Self::CompleteFuture {
        ready(Err(StoreError::new("connection refused")))
    }
    fn release(&self, _: &DedupKey, _: ClaimToken) -> Self::ReleaseFuture {
        ready(Err(StoreError::new("connection refused")))
    }
}

#[tokio::test]
async fn a_store_that_is_down_fails_closed_unless_told_to_fail_open() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut closed = DedupLayer::new(Down, Metrics::new()).layer(counting(&calls));
    let error = closed
        .ready()
        .await
        .unwrap()
        .call(Msg::with_id("m-2"))
        .await
        .unwrap_err();
    let error = error.downcast::<DedupError>().unwrap();
    assert_eq!(error.error_type(), UNAVAILABLE);
    assert!(error.to_string().contains("connection refused"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let mut open = DedupLayer::new(Down, Metrics::new())
        .fail_open(true)
        .layer(counting(&calls));
    let answer = open
        .ready()
        .await
        .unwrap()
        .call(Msg::with_id("m-2"))
        .await
        .unwrap();
    assert_eq!(answer, Processed::Done(()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
