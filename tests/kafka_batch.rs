//! Batch mode: `run_batch` hands the handler up to N messages of one partition at a time, in
//! order; a batch is committed as a whole after success, and a failed batch stops its
//! partition at the batch's first offset while the other partition goes on.

mod kafka_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventscope::consume::ConsumeError;
use eventscope::kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};
use eventscope::metrics::Metrics;
use futures_util::future::try_join_all;
use kafka_support::*;
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceExt};

const PER_PARTITION: i64 = 300;
const MAX_BATCH: usize = 50;
const POISON: i64 = 170;

#[derive(Clone, Debug, PartialEq)]
struct Seen {
    partition: i32,
    offsets: Vec<i64>,
    failed: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_per_partition_in_order_and_stop_whole() {
    let topic = unique("batch");
    let group = unique("batch-group");
    create_topic(&topic, 2).await;
    let mut publisher = KafkaPublisher::new(producer());
    let mut pending = Vec::new();
    for partition in 0..2 {
        for i in 0..PER_PARTITION {
            let record = KafkaRecord::new(&topic, format!("{i}").into_bytes()).partition(partition);
            pending.push(publisher.ready().await.unwrap().call(record));
        }
    }
    try_join_all(pending).await.expect("published");

    let metrics = Metrics::new();
    let consumer = consumer(&config(&group));
    assign(&consumer, &topic, 2);
    let batches: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let handler = service_fn({
        let batches = batches.clone();
        move |batch: Vec<KafkaMessage>| {
            let partition = batch[0].partition().unwrap_or_default();
            assert!(
                batch.iter().all(|m| m.partition() == Some(partition)),
                "one partition per batch"
            );
            let offsets: Vec<i64> = batch.iter().map(KafkaMessage::offset).collect();
            let failed = partition == 0 && offsets.contains(&POISON);
            batches.lock().unwrap().push(Seen {
                partition,
                offsets,
                failed,
            });
            std::future::ready(if failed {
                Err(std::io::Error::other("poison"))
            } else {
                Ok(())
            })
        }
    });
    let (stop, mut stopped) = watch::channel(false);
    let driver = tokio::spawn(
        KafkaConsumer::new(consumer)
            .metrics(metrics.clone())
            .max_batch_size(MAX_BATCH)
            .commit_interval(Duration::from_millis(100))
            .run_batch(handler, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    eventually(
        "partition 1 committed to its end",
        Duration::from_secs(30),
        || committed(&group, &topic, 2)[&1] == Some(PER_PARTITION),
    )
    .await;
    let failed_first = {
        let mut first = None;
        eventually("the poisoned batch", Duration::from_secs(30), || {
            first = batches
                .lock()
                .unwrap()
                .iter()
                .find(|b| b.failed)
                .map(|b| b.offsets[0]);
            first.is_some()
        })
        .await;
        first.unwrap()
    };
    eventually(
        "partition 0 committed up to the failed batch",
        Duration::from_secs(30),
        || committed(&group, &topic, 2)[&0] == Some(failed_first),
    )
    .await;
    stop.send(true).unwrap();
    match driver.await.unwrap() {
        Err(ConsumeError::PartitionStopped {
            partition: 0,
            offset,
            ..
        }) => {
            assert_eq!(offset, failed_first)
        }
        other => panic!("expected partition 0 stopped, got {other:?}"),
    }

    let batches = batches.lock().unwrap().clone();
    assert!(batches
        .iter()
        .all(|b| !b.offsets.is_empty() && b.offsets.len() <= MAX_BATCH));
    for partition in 0..2 {
        let offsets: Vec<i64> = batches
            .iter()
            .filter(|b| b.partition == partition)
            .flat_map(|b| b.offsets.clone())
            .collect();
        let end = if partition == 0 {
            batches
                .iter()
                .find(|b| b.failed)
                .unwrap()
                .offsets
                .last()
                .unwrap()
                + 1
        } else {
            PER_PARTITION
        };
        assert_eq!(
            offsets,
            (0..end).collect::<Vec<_>>(),
            "partition {partition} in order, once"
        );
    }
    assert_eq!(committed(&group, &topic, 2)[&0], Some(failed_first));
}
