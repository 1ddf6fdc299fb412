//! Shared setup of the Kafka integration tests: they talk to a Kafka-compatible broker on
//! 127.0.0.1:9092 (`scripts/kafka.sh start`), each with topics and groups of its own.
#![allow(dead_code, unreachable_pub)]

#[path = "../shared/mod.rs"]
mod shared;
#[allow(unused_imports)] // each test crate uses some of them
pub use shared::{eventually, eventually_or_report, samples};

use std::collections::BTreeMap;
use std::time::Duration;

use eventscope::kafka::{consumer_config, producer_config, EventscopeContext};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

pub const BOOTSTRAP: &str = "127.0.0.1:9092";

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Fails with a hint when no broker listens: these tests must not pass without one.
pub fn require_broker() {
    if std::net::TcpStream::connect_timeout(
        &BOOTSTRAP.parse().expect("loopback address"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!("no Kafka-compatible broker on {BOOTSTRAP}: run `scripts/kafka.sh start` first");
    }
}

pub async fn create_topic(topic: &str, partitions: i32) {
    require_broker();
    create_topic_on(BOOTSTRAP, topic, partitions).await;
}

/// [`create_topic`] on the broker at `bootstrap`.
pub async fn create_topic_on(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        producer_config(bootstrap).create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics request");
    for result in results {
        match result {
            Ok(_) => {}
            // Names are unique per test: the topic exists because a producer retrying its send
            // had it created first (a restarted broker creates topics on metadata requests), or
            // because the admin client retried a create the broker had already done.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => panic!("creating topic {t} failed: {code:?}"),
        }
    }
    // The topic is usable once its partitions show up in the metadata.
    // Asking about a topic must not create it (tansu would, with 4 partitions).
    let probe: BaseConsumer = producer_config(bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("metadata client");
    let seen =
        |probe: &BaseConsumer| match probe.fetch_metadata(Some(topic), Duration::from_secs(2)) {
            Ok(metadata) => match metadata.topics().first() {
                Some(t) => format!("{} partitions, error {:?}", t.partitions().len(), t.error()),
                None => "no such topic in the answer".to_owned(),
            },
            Err(error) => format!("metadata request failed: {error}"),
        };
    eventually_or_report(
        "topic metadata",
        Duration::from_secs(20),
        || {
            probe
                .fetch_metadata(Some(topic), Duration::from_secs(2))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                == Some(partitions as usize)
        },
        || {
            format!(
                "{topic} on {bootstrap}: wanted {partitions} partitions, the broker says {}",
                seen(&probe)
            )
        },
    )
    .await;
}

pub fn producer() -> FutureProducer {
    producer_config(BOOTSTRAP)
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// The configuration the tests consume with: eventscope's recommended one, statistics every
/// 200 ms so lag shows up quickly.
pub fn config(group: &str) -> ClientConfig {
    let mut config = consumer_config(BOOTSTRAP, group);
    config
        .set("statistics.interval.ms", "200")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    config
}

pub fn consumer(config: &ClientConfig) -> StreamConsumer<EventscopeContext> {
    config
        .create_with_context(EventscopeContext::new(config))
        .expect("consumer")
}

/// Assigns every partition of `topic`, from the committed offset (else `auto.offset.reset`):
/// no group join to wait for.
pub fn assign(consumer: &impl Consumer<EventscopeContext>, topic: &str, partitions: i32) {
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Stored)
            .expect("partition offset");
    }
    consumer.assign(&list).expect("assign");
}

/// The group's committed offset per partition (`None`: nothing committed), read with a
/// separate client so it is what the broker holds.
pub fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let reader: BaseConsumer = consumer_config(BOOTSTRAP, group)
        .create()
        .expect("offset reader");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = reader
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect()
}
