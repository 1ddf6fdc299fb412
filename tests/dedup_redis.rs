//! The Redis dedup store against the real server at 127.0.0.1:6379: its keys and values, a
//! claim released only by its owner, and consumers sharing it. Every test uses a group of its
//! own and deletes its keys.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sample;
use eventscope::classify::{Classifier, Decision};
use eventscope::dedup::redis::{self, AsyncCommands};
use eventscope::dedup::{
    Claim, ClaimToken, DedupError, DedupKey, DedupLayer, DedupStore, RedisStore,
};
use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
use eventscope::metrics::{name, Metrics};
use eventscope::BoxError;
use tower::{service_fn, Layer, ServiceExt};

const URL: &str = "redis://127.0.0.1:6379";

/// A group of this test's own; its keys are deleted on drop.
struct Group(String);

impl Group {
    fn new() -> Self {
        Self(format!("test-{}", uuid::Uuid::now_v7()))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let client = redis::Client::open(URL).unwrap();
        let mut connection = client.get_connection().unwrap();
        let pattern = format!("eventscope:dedup:{}:*", self.0);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut connection)
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query(&mut connection).unwrap();
        }
    }
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn claims_and_done_markers_are_namespaced_keys_with_a_ttl() {
    let group = Group::new();
    let store = RedisStore::connect(URL).await.unwrap();
    let mut redis = raw().await;
    let key = DedupKey::new(&group.0, "orders/0/42");
    let name = format!("eventscope:dedup:{}:orders/0/42", group.0);
    assert_eq!(key.as_str(), name);
    let (mine, other) = (ClaimToken::new(), ClaimToken::new());

    let lease = Duration::from_secs(30);
    assert_eq!(
        store.claim(&key, mine, lease).await.unwrap(),
        Claim::Claimed
    );
    let value: String = redis.get(&name).await.unwrap();
    assert_eq!(value, format!("{:016x}", mine.get()));
    let ttl: i64 = redis.pttl(&name).await.unwrap();
    assert!(ttl > 29_000 && ttl <= 30_000, "{ttl}");
    assert_eq!(
        store.claim(&key, other, lease).await.unwrap(),
        Claim::InFlight
    );

    // Only the claim's owner removes it.
    store.release(&key, other).await.unwrap();
    assert_eq!(
        store.claim(&key, other, lease).await.unwrap(),
        Claim::InFlight
    );
    store.release(&key, mine).await.unwrap();
    let exists: bool = redis.exists(&name).await.unwrap();
    assert!(!exists);

    assert_eq!(
        store.claim(&key, other, lease).await.unwrap(),
        Claim::Claimed
    );
    store
        .complete(&key, Duration::from_secs(3600))
        .await
        .unwrap();
    let value: String = redis.get(&name).await.unwrap();
    assert_eq!(value, "done");
    let ttl: i64 = redis.pttl(&name).await.unwrap();
    assert!(ttl > 3_590_000 && ttl <= 3_600_000, "{ttl}");
    assert_eq!(
        store.claim(&key, mine, lease).await.unwrap(),
        Claim::Duplicate
    );
    // A late release (its lease long over) does not forget the done marker.
    store.release(&key, other).await.unwrap();
    assert_eq!(
        store.claim(&key, mine, lease).await.unwrap(),
        Claim::Duplicate
    );
}

#[tokio::test]
async fn an_expired_claim_is_taken_over_and_the_late_owner_cannot_release_it() {
    let group = Group::new();
    let store = RedisStore::connect(URL).await.unwrap();
    let key = DedupKey::new(&group.0, "m-slow");
    let (slow, next) = (ClaimToken::new(), ClaimToken::new());
    let short = Duration::from_millis(50);
    assert_eq!(
        store.claim(&key, slow, short).await.unwrap(),
        Claim::Claimed
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        store
            .claim(&key, next, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed
    );
    store.release(&key, slow).await.unwrap();
    assert_eq!(
        store.claim(&key, ClaimToken::new(), short).await.unwrap(),
        Claim::InFlight
    );
}

#[tokio::test]
async fn every_id_runs_once_across_partitions_and_consumers_sharing_redis() {
    let group = Group::new();
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 2).unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("evt-{i}")).collect();
    // Every event twice, once on each partition.
    for id in &ids {
        for partition in [0, 1] {
            let record = MemoryRecord::new("orders", b"{}".to_vec())
                .header("message-id", id)
                .partition(partition);
            broker.publisher().oneshot(record).await.unwrap();
        }
    }
    let metrics = Metrics::new();
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let classifier = Classifier::new()
        .on::<DedupError>("dedup")
        .decision("dedup", Decision::retry(Duration::from_millis(20)));
    // Two members of the group, each with its own connection: the partitions are dealt
    // between them, and only Redis knows what the other processed.
    let mut members = Vec::new();
    for _ in 0..2 {
        let consumer = broker
            .consumer(&group.0)
            .subscribe(["orders"])
            .metrics(metrics.clone())
            .classify_errors(classifier.clone());
        let store = RedisStore::connect(URL).await.unwrap();
        let runs = Arc::clone(&runs);
        let handler =
            DedupLayer::new(store, metrics.clone()).layer(service_fn(move |m: MemoryMessage| {
                let id =
                    String::from_utf8(m.headers().get("message-id").unwrap().to_vec()).unwrap();
                let runs = Arc::clone(&runs);
                async move {
                    *runs.lock().unwrap().entry(id).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, BoxError>(())
                }
            }));
        let broker = broker.clone();
        let group = group.0.clone();
        members.push(tokio::spawn(async move {
            let done = async move {
                while (0..2).any(|p| broker.committed(&group, "orders", p).unwrap_or(0) < 20) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            consumer.run(handler, done).await
        }));
    }
    for member in members {
        tokio::time::timeout(Duration::from_secs(20), member)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 20);
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    // One duplicate per id, and one more for each message a rebalance handed to the other
    // member after it was processed but before its commit: those are caught too.
    let duplicates = sample(&metrics.encode(), name::DUPLICATES, &[]).unwrap_or(0.0);
    assert!(duplicates >= 20.0, "{duplicates}");
}
