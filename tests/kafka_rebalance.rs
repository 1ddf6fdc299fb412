//! A rebalance commits what is done before partitions go, and the revoked partitions' lag
//! series disappear. The first consumer commits only periodically every hour and never
//! automatically, so offsets reach the broker before the second consumer takes over only
//! through the commit made when partitions are revoked.

mod kafka_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};
use eventscope::metrics::{label, name, Metrics};
use futures_util::future::try_join_all;
use kafka_support::*;
use rdkafka::consumer::Consumer;
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceExt};

const PARTITIONS: i32 = 4;
const PER_PARTITION: i64 = 50;

type Seen = Arc<Mutex<Vec<(i32, i64)>>>;

fn handler(
    seen: Seen,
) -> impl Service<KafkaMessage, Response = (), Error = std::io::Error, Future: Send> + Clone + Send
{
    service_fn(move |m: KafkaMessage| {
        seen.lock()
            .unwrap()
            .push((m.partition().unwrap_or_default(), m.offset()));
        std::future::ready(Ok::<_, std::io::Error>(()))
    })
}

fn lag_partitions(metrics: &Metrics, topic: &str) -> BTreeSet<i32> {
    samples(
        &metrics.encode(),
        name::LAG_MESSAGES,
        &[(label::DESTINATION, topic)],
    )
    .into_iter()
    .filter_map(|(labels, _)| {
        let key = format!("{}=\"", label::PARTITION);
        let rest = &labels[labels.find(&key)? + key.len()..];
        rest[..rest.find('"')?].parse().ok()
    })
    .collect()
}

fn assigned(consumer: &impl Consumer<eventscope::kafka::EventscopeContext>) -> BTreeSet<i32> {
    consumer
        .assignment()
        .map(|list| list.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_commits_done_work_and_removes_lag_series() {
    let topic = unique("rebalance");
    let group = unique("rebalance-group");
    create_topic(&topic, PARTITIONS).await;
    let mut publisher = KafkaPublisher::new(producer());
    let mut pending = Vec::new();
    for p in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            let record = KafkaRecord::new(&topic, format!("{i}").into_bytes()).partition(p);
            pending.push(publisher.ready().await.unwrap().call(record));
        }
    }
    try_join_all(pending).await.expect("published");

    let mut config = config(&group);
    config.set("enable.auto.commit", "false");

    // The first consumer takes every partition and processes everything.
    let first_metrics = Metrics::new();
    let first = Arc::new(consumer(&config));
    first.subscribe(&[&topic]).unwrap();
    let first_seen: Seen = Arc::default();
    let (stop_first, mut first_stopped) = watch::channel(false);
    let first_driver = tokio::spawn(
        KafkaConsumer::new(Arc::clone(&first))
            .metrics(first_metrics.clone())
            .commit_interval(Duration::from_secs(3600))
            .run(handler(first_seen.clone()), async move {
                let _ = first_stopped.wait_for(|s| *s).await;
            }),
    );
    eventually(
        "the first consumer to process everything",
        Duration::from_secs(60),
        || first_seen.lock().unwrap().len() == (PARTITIONS as i64 * PER_PARTITION) as usize,
    )
    .await;
    eventually(
        "lag series for every partition",
        Duration::from_secs(30),
        || lag_partitions(&first_metrics, &topic) == (0..PARTITIONS).collect(),
    )
    .await;
    assert!(
        committed(&group, &topic, PARTITIONS)
            .values()
            .all(Option::is_none),
        "nothing committed yet: the periodic commit is an hour away"
    );

    // A second member joins: partitions are revoked and dealt again.
    let second_metrics = Metrics::new();
    let second = Arc::new(consumer(&config));
    second.subscribe(&[&topic]).unwrap();
    let second_seen: Seen = Arc::default();
    let (stop_second, mut second_stopped) = watch::channel(false);
    let second_driver = tokio::spawn(
        KafkaConsumer::new(Arc::clone(&second))
            .metrics(second_metrics.clone())
            .commit_interval(Duration::from_secs(3600))
            .run(handler(second_seen.clone()), async move {
                let _ = second_stopped.wait_for(|s| *s).await;
            }),
    );
    eventually(
        "the partitions to be shared",
        Duration::from_secs(60),
        || {
            let (a, b) = (assigned(&*first), assigned(&*second));
            !a.is_empty() && !b.is_empty() && a.len() + b.len() == PARTITIONS as usize
        },
    )
    .await;
    let kept = assigned(&*first);

    // Done work was committed before the partitions went.
    assert_eq!(
        committed(&group, &topic, PARTITIONS),
        (0..PARTITIONS).map(|p| (p, Some(PER_PARTITION))).collect()
    );
    // The revoked partitions' series are gone; the kept ones come back with the next stats.
    eventually(
        "only the kept partitions' lag series",
        Duration::from_secs(30),
        || lag_partitions(&first_metrics, &topic) == kept,
    )
    .await;
    let rebalances = samples(
        &first_metrics.encode(),
        name::REBALANCES,
        &[(label::GROUP, &group)],
    );
    assert!(
        rebalances.iter().map(|(_, v)| v).sum::<f64>() >= 2.0,
        "{rebalances:?}"
    );

    // Nothing the first consumer processed is processed again.
    stop_second.send(true).unwrap();
    second_driver.await.unwrap().expect("second consumer");
    assert!(
        second_seen.lock().unwrap().is_empty(),
        "no redelivery after a clean handover"
    );
    stop_first.send(true).unwrap();
    first_driver.await.unwrap().expect("first consumer");
}
