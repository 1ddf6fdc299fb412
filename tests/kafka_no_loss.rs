//! No loss across a crash: 10 000 messages; the first consumer of the group is killed
//! (its driver future dropped, no graceful shutdown) partway; a second consumer of the same
//! group finishes the job.
//!
//! What is asserted, per partition:
//! - each consumer processes a contiguous run of offsets, in order (no gap, no repeat), even
//!   with a tiny per-partition buffer that makes the driver pause and resume partitions;
//! - the group's committed offset C after the crash never runs ahead of what the first consumer
//!   processed (offsets are stored only after the handler succeeded): C ≤ last processed + 1;
//! - the second consumer starts exactly at C and processes everything from C to the end;
//! - so every message is processed at least once, and the duplicates are exactly the messages
//!   the first consumer processed at or after C: its uncommitted window (what it processed
//!   since its last commit, plus what was in flight), never anything committed.

mod kafka_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};
use eventscope::metrics::Metrics;
use futures_util::future::try_join_all;
use kafka_support::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceExt};

const MESSAGES: usize = 10_000;
const PARTITIONS: i32 = 4;
const KILL_AFTER: usize = 3_000;

type Seen = Arc<Mutex<BTreeMap<i32, Vec<i64>>>>;

fn recording_handler(
    seen: Seen,
) -> impl tower::Service<KafkaMessage, Response = (), Error = std::io::Error, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |m: KafkaMessage| {
        let seen = seen.clone();
        async move {
            // Give the dispatcher room to run ahead and fill the partition buffers.
            tokio::task::yield_now().await;
            seen.lock()
                .unwrap()
                .entry(m.partition().unwrap_or_default())
                .or_default()
                .push(m.offset());
            Ok::<_, std::io::Error>(())
        }
    })
}

fn total(seen: &Seen) -> usize {
    seen.lock().unwrap().values().map(Vec::len).sum()
}

fn assert_contiguous(who: &str, partition: i32, offsets: &[i64]) {
    for pair in offsets.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{who}: partition {partition} skipped or repeated"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumer_loses_nothing() {
    let started = std::time::Instant::now();
    let phase = |what: &str| println!("{:>6.1?} {what}", started.elapsed());
    let topic = unique("noloss");
    let group = unique("noloss-group");
    create_topic(&topic, PARTITIONS).await;

    let mut publisher = KafkaPublisher::new(producer());
    let mut pending = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let record = KafkaRecord::new(&topic, vec![b'm'; 100]).key(format!("k{i}"));
        pending.push(publisher.ready().await.unwrap().call(record));
    }
    let deliveries = try_join_all(pending).await.expect("all delivered");
    phase("published");
    let mut end: BTreeMap<i32, i64> = BTreeMap::new();
    for d in &deliveries {
        let e = end.entry(d.partition).or_default();
        *e = (*e).max(d.offset + 1);
    }

    let metrics = Metrics::new();
    let mut config = config(&group);
    // Only the driver commits: nothing is committed behind its back when the client closes.
    // The tiny partition buffers (`max_buffered(32)`) make the driver pause and resume
    // partitions all the time; a short fetch wait keeps each resume quick.
    config
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50");

    // First consumer: killed once it has processed KILL_AFTER messages.
    let first_seen: Seen = Arc::default();
    let first = consumer(&config);
    first.subscribe(&[&topic]).unwrap();
    let first = Arc::new(first);
    let first_alive = Arc::downgrade(&first);
    let driver = tokio::spawn(
        KafkaConsumer::new(first)
            .metrics(metrics.clone())
            .max_buffered(32)
            .commit_interval(Duration::from_millis(200))
            .run(
                recording_handler(first_seen.clone()),
                std::future::pending(),
            ),
    );
    eventually(
        "the first consumer to get going",
        Duration::from_secs(60),
        || total(&first_seen) >= KILL_AFTER,
    )
    .await;
    phase("first consumer killed");
    driver.abort();
    assert!(driver.await.unwrap_err().is_cancelled());
    eventually(
        "the first consumer to be gone",
        Duration::from_secs(30),
        || first_alive.strong_count() == 0,
    )
    .await;
    let group_reader: BaseConsumer = eventscope::kafka::consumer_config(BOOTSTRAP, &group)
        .create()
        .unwrap();
    eventually(
        "the group to have no members",
        Duration::from_secs(30),
        || {
            group_reader
                .fetch_group_list(Some(&group), Duration::from_secs(5))
                .map(|list| list.groups().iter().all(|g| g.members().is_empty()))
                .unwrap_or(false)
        },
    )
    .await;
    phase("first consumer left the group");
    let first_seen = first_seen.lock().unwrap().clone();
    let committed = committed(&group, &topic, PARTITIONS);
    assert!(total_of(&first_seen) < MESSAGES, "killed before the end");

    // Second consumer, same group: finishes the job and shuts down gracefully.
    let second_seen: Seen = Arc::default();
    let second = consumer(&config);
    second.subscribe(&[&topic]).unwrap();
    let (stop, stopped) = watch::channel(false);
    let driver = tokio::spawn(
        KafkaConsumer::new(second)
            .metrics(metrics.clone())
            .max_buffered(32)
            .commit_interval(Duration::from_millis(200))
            .run(recording_handler(second_seen.clone()), async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    eventually(
        "the second consumer to get going",
        Duration::from_secs(60),
        || total(&second_seen) > 0,
    )
    .await;
    phase("second consumer joined and processing");
    eventually(
        "every partition to be finished",
        Duration::from_secs(120),
        || {
            let seen = second_seen.lock().unwrap();
            end.iter().all(|(p, e)| {
                let start = committed[p].unwrap_or(0);
                start == *e || seen.get(p).and_then(|o| o.last()) == Some(&(e - 1))
            })
        },
    )
    .await;
    phase("second consumer finished");
    stop.send(true).unwrap();
    driver.await.unwrap().expect("graceful shutdown");
    let second_seen = second_seen.lock().unwrap().clone();

    let mut duplicates = 0;
    for (&partition, &end) in &end {
        let first = first_seen.get(&partition).cloned().unwrap_or_default();
        let second = second_seen.get(&partition).cloned().unwrap_or_default();
        assert_contiguous("first consumer", partition, &first);
        assert_contiguous("second consumer", partition, &second);
        assert!(first.first().is_none_or(|o| *o == 0), "first starts at 0");

        let c = committed[&partition].unwrap_or(0);
        let first_next = first.last().map_or(0, |o| o + 1);
        assert!(
            c <= first_next,
            "p{partition}: committed {c} past processed {first_next}"
        );
        if c < end {
            assert_eq!(
                second.first(),
                Some(&c),
                "p{partition}: second starts at the commit"
            );
            assert_eq!(
                second.last(),
                Some(&(end - 1)),
                "p{partition}: second reaches the end"
            );
        } else {
            assert!(second.is_empty());
        }
        // Every offset processed at least once.
        for offset in 0..end {
            assert!(
                first.binary_search(&offset).is_ok() || second.binary_search(&offset).is_ok(),
                "p{partition}: offset {offset} lost"
            );
        }
        // Duplicates: exactly the first consumer's uncommitted window.
        let window: Vec<i64> = first.iter().copied().filter(|o| *o >= c).collect();
        let again: Vec<i64> = second
            .iter()
            .copied()
            .filter(|o| first.contains(o))
            .collect();
        assert_eq!(
            again, window,
            "p{partition}: duplicates outside the uncommitted window"
        );
        duplicates += again.len();
    }
    println!(
        "first processed {}, second {}, duplicates {duplicates}",
        total_of(&first_seen),
        total_of(&second_seen)
    );
    assert_eq!(
        total_of(&first_seen) + total_of(&second_seen) - duplicates,
        MESSAGES
    );
}

fn total_of(seen: &BTreeMap<i32, Vec<i64>>) -> usize {
    seen.values().map(Vec::len).sum()
}
