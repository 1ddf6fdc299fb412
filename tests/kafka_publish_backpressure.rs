//! A full producer queue slows the caller down instead of failing or buffering without bound:
//! with room for only 4 messages in librdkafka, 2 000 records sent through `ready` + `call`
//! (futures kept, not awaited) are all delivered, in call order, none with `QueueFull`.

mod kafka_support;

use eventscope::kafka::{KafkaPublisher, KafkaRecord};
use eventscope::metrics::Metrics;
use eventscope::publish::PublishLayer;
use futures_util::future::join_all;
use kafka_support::*;
use rdkafka::producer::FutureProducer;
use tower::{Layer, Service, ServiceExt};

const RECORDS: i64 = 2_000;

#[tokio::test]
async fn full_queue_waits_and_keeps_order() {
    let topic = unique("backpressure");
    create_topic(&topic, 1).await;
    let producer: FutureProducer = eventscope::kafka::producer_config(BOOTSTRAP)
        .set("queue.buffering.max.messages", "4")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let metrics = Metrics::new();
    let mut publisher = PublishLayer::new(metrics.clone()).layer(KafkaPublisher::new(producer));

    let mut pending = Vec::new();
    for i in 0..RECORDS {
        let record = KafkaRecord::new(&topic, i.to_string().into_bytes()).partition(0);
        pending.push(publisher.ready().await.expect("ready").call(record));
    }
    let results = join_all(pending).await;
    let offsets: Vec<i64> = results
        .into_iter()
        .map(|r| r.expect("delivered, never QueueFull").offset)
        .collect();
    assert_eq!(
        offsets,
        (0..RECORDS).collect::<Vec<_>>(),
        "queued in call order"
    );

    let sent = samples(
        &metrics.encode(),
        "messaging_client_sent_messages_total",
        &[],
    );
    assert_eq!(sent, vec![(sent[0].0.clone(), RECORDS as f64)]);
    assert!(sent[0].0.contains(r#"error_type="""#));
}

#[tokio::test]
async fn a_parked_record_is_sent_by_its_own_future_too() {
    // `oneshot`-style use never calls `poll_ready` again after the record is parked: the
    // record's future must get it queued by itself.
    let topic = unique("backpressure-oneshot");
    create_topic(&topic, 1).await;
    let producer: FutureProducer = eventscope::kafka::producer_config(BOOTSTRAP)
        .set("queue.buffering.max.messages", "1")
        .create()
        .expect("producer");
    let publisher = KafkaPublisher::new(producer);
    let calls = (0..200).map(|i| {
        publisher
            .clone()
            .oneshot(KafkaRecord::new(&topic, format!("{i}").into_bytes()).partition(0))
    });
    let results = join_all(calls).await;
    let mut offsets: Vec<i64> = results
        .into_iter()
        .map(|r| r.expect("delivered").offset)
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..200).collect::<Vec<_>>());
}
