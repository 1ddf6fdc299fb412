//! Throughput of the Redis dedup store: messages per second through claim + done mark, with
//! many checks in flight at once on one multiplexed connection (the `ConnectionManager`
//! pipelines them), as a consumer with concurrent lanes drives it.
//!
//! ```text
//! cargo bench --features redis --bench dedup_redis            # needs Redis at 127.0.0.1:6379
//! EVENTSCOPE_REDIS_URL=redis://host:port cargo bench --features redis --bench dedup_redis
//! ```
//!
//! Prints, per number of checks in flight, the messages per second (each message: one
//! `SET NX PX GET` claim and one `SET PX` mark) and then the rate of duplicate checks (one claim
//! that finds the mark). Keys are of a group of the run's own and are deleted at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventscope::dedup::{Claim, ClaimToken, DedupKey, DedupStore, RedisStore};
use futures_util::stream::{self, StreamExt};

const MESSAGES: usize = 20_000;

async fn run(store: &RedisStore, group: &str, round: usize, in_flight: usize) -> (f64, f64) {
    let keys: Arc<Vec<DedupKey>> = Arc::new(
        (0..MESSAGES)
            .map(|i| DedupKey::new(group, &format!("r{round}-evt-{i}")))
            .collect(),
    );
    let lease = Duration::from_secs(60);
    let retention = Duration::from_secs(300);
    let start = Instant::now();
    stream::iter(keys.iter().cloned())
        .for_each_concurrent(in_flight, |key| async move {
            let claim = store.claim(&key, ClaimToken::new(), lease).await.unwrap();
            assert_eq!(claim, Claim::Claimed);
            store.complete(&key, retention).await.unwrap();
        })
        .await;
    let processed = MESSAGES as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    stream::iter(keys.iter().cloned())
        .for_each_concurrent(in_flight, |key| async move {
            let claim = store.claim(&key, ClaimToken::new(), lease).await.unwrap();
            assert_eq!(claim, Claim::Duplicate);
        })
        .await;
    let duplicates = MESSAGES as f64 / start.elapsed().as_secs_f64();
    (processed, duplicates)
}

fn main() {
    let url =
        std::env::var("EVENTSCOPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = RedisStore::connect(&url).await.expect("Redis is reachable");
        let group = format!("bench-{}", uuid::Uuid::now_v7());
        println!("{MESSAGES} messages per run, one multiplexed connection");
        println!(
            "{:>10} {:>16} {:>18}",
            "in flight", "messages/s", "duplicate checks/s"
        );
        for (round, in_flight) in [1, 16, 64, 256].into_iter().enumerate() {
            let (processed, duplicates) = run(&store, &group, round, in_flight).await;
            println!("{in_flight:>10} {processed:>16.0} {duplicates:>18.0}");
        }
        let client = eventscope::dedup::redis::Client::open(url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = eventscope::dedup::redis::cmd("KEYS")
            .arg(format!("eventscope:dedup:{group}:*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        for chunk in keys.chunks(1000) {
            let _: () = eventscope::dedup::redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    });
}
