//! A real redelivery on Kafka (issue 14): a consumer is killed after its handler succeeded but
//! before the commit; the second consumer of the group gets the message again, and the
//! idempotency layer keeps it from the handler and counts one duplicate. With the in-memory
//! store (shared by both consumers in this process) and with Redis (a connection each, as two
//! processes would have).
//!
//! The message carries no `message-id`: its id is `{topic}/{partition}/{offset}` (SPEC §2), so
//! the redelivery of a record from a producer that sets no id is caught too. Both consumers
//! have the group's `group.id` and are assigned the partition by hand, from the group's
//! committed offset (no group join to wait for, no session timeout for the killed member).

mod common;
mod kafka_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::sample;
use eventscope::dedup::redis::{self, AsyncCommands};
use eventscope::dedup::{DedupLayer, DedupStore, MemoryStore, Processed, RedisStore, KEY_PREFIX};
use eventscope::kafka::{KafkaConsumer, KafkaMessage};
use eventscope::metrics::{label, name, Metrics};
use eventscope::BoxError;
use kafka_support::{assign, committed, config, consumer, create_topic, eventually, unique};
use rdkafka::producer::FutureRecord;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer};

const REDIS: &str = "redis://127.0.0.1:6379";

/// A topic of one partition holding one record without a `message-id`, and a group.
async fn setup() -> (String, String) {
    let (topic, group) = (unique("dedup-redelivery"), unique("dedup-redelivery-group"));
    create_topic(&topic, 1).await;
    kafka_support::producer()
        .send(
            FutureRecord::<str, str>::to(&topic)
                .key("order-1")
                .payload("charge order-1")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .expect("publish");
    (topic, group)
}

/// The dedup layer over `store` around a handler that counts its calls.
fn counting_handler<St: DedupStore>(
    store: St,
    metrics: &Metrics,
    calls: &Arc<AtomicUsize>,
) -> BoxCloneSyncService<KafkaMessage, Processed<()>, BoxError> {
    let calls = Arc::clone(calls);
    BoxCloneSyncService::new(DedupLayer::new(store, metrics.clone()).layer(service_fn(
        move |_message: KafkaMessage| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        },
    )))
}

/// A consumer of the group, assigned the topic's partition from the committed offset.
fn group_consumer(topic: &str, group: &str, metrics: &Metrics) -> KafkaConsumer {
    let raw = consumer(&config(group));
    assign(&raw, topic, 1);
    KafkaConsumer::new(raw).metrics(metrics.clone())
}

fn successes(metrics: &Metrics) -> f64 {
    sample(
        &metrics.encode(),
        &format!("{}_count", name::PROCESS_DURATION),
        &[(label::ERROR_TYPE, "")],
    )
    .unwrap_or(0.0)
}

/// Runs the proof: `first` is the store of the consumer that is killed, `second` the store of
/// the one that gets the redelivery (the same store, or another handle of it).
async fn killed_after_success_then_redelivered<St: DedupStore>(
    topic: &str,
    group: &str,
    first: St,
    second: St,
) {
    let calls = Arc::new(AtomicUsize::new(0));

    // The first consumer processes the message: the handler succeeded and the layer marked
    // the id done (the process layer records the success only after the layer's future, mark
    // included, finished).
    let first_metrics = Metrics::new();
    let first_consumer = group_consumer(topic, group, &first_metrics)
        // Nothing is committed unless it shuts down.
        .commit_interval(Duration::from_secs(3600));
    let handler = counting_handler(first, &first_metrics, &calls);
    let running = tokio::spawn(first_consumer.run(handler, std::future::pending::<()>()));
    eventually(
        "the first consumer processed the message",
        Duration::from_secs(30),
        || successes(&first_metrics) == 1.0,
    )
    .await;
    // Killed: the future dropped, no shutdown, no final commit.
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        committed(group, topic, 1)[&0],
        None,
        "nothing was committed before the kill"
    );

    // The second consumer of the group gets it again, from the committed (none) offset.
    let second_metrics = Metrics::new();
    let second_consumer = group_consumer(topic, group, &second_metrics);
    let handler = counting_handler(second, &second_metrics, &calls);
    let settled = {
        let (topic, group) = (topic.to_owned(), group.to_owned());
        async move {
            while committed(&group, &topic, 1)[&0] != Some(1) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        second_consumer.run(handler, settled),
    )
    .await
    .expect("the redelivery is settled and committed")
    .expect("the second consumer runs");

    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the redelivered message did not reach the handler again"
    );
    let text = second_metrics.encode();
    let labels = [
        (label::SYSTEM, "kafka"),
        (label::DESTINATION, topic),
        (label::GROUP, group),
    ];
    assert_eq!(
        sample(&text, name::CONSUMED_MESSAGES, &labels),
        Some(1.0),
        "the message was delivered again"
    );
    assert_eq!(
        sample(&text, name::DUPLICATES, &labels),
        Some(1.0),
        "{text}"
    );
    // Settled as done: a success, committed past.
    assert_eq!(successes(&second_metrics), 1.0);
    assert_eq!(committed(group, topic, 1)[&0], Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_kill_is_skipped_with_the_memory_store() {
    let (topic, group) = setup().await;
    // One process, two consumers: the store is shared, as a restarted consumer task would
    // share it.
    let store = MemoryStore::default();
    killed_after_success_then_redelivered(&topic, &group, store.clone(), store).await;
}

/// Deletes the group's keys when dropped.
struct RedisGroup(String);

impl Drop for RedisGroup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(REDIS) else {
            return;
        };
        let Ok(mut connection) = client.get_connection() else {
            return;
        };
        let pattern = format!("{KEY_PREFIX}{}:*", self.0);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut connection);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_kill_is_skipped_with_the_redis_store() {
    let (topic, group) = setup().await;
    let _cleanup = RedisGroup(group.clone());
    // Two connections, as two consumer processes would have.
    let first = RedisStore::connect(REDIS)
        .await
        .expect("Redis on 127.0.0.1:6379");
    let second = RedisStore::connect(REDIS)
        .await
        .expect("Redis on 127.0.0.1:6379");
    killed_after_success_then_redelivered(&topic, &group, first, second).await;

    // The mark is the one SPEC §8 names, on the Kafka fallback id.
    let mut redis = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{KEY_PREFIX}{group}:{topic}/0/0");
    let value: Option<String> = redis.get(&key).await.unwrap();
    assert_eq!(value.as_deref(), Some("done"), "{key}");
}
