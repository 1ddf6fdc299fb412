//! The consumer contract (tests/conformance) on Kafka (the broker on 127.0.0.1:9092).

mod conformance;
mod kafka_support;

use std::sync::Arc;
use std::time::Duration;

use conformance::{BatchHandler, Handler, Harness, Running, Shutdown, Spec};
use eventscope::kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};
use eventscope::publish::PublishLayer;
use kafka_support::{assign, config, consumer, create_topic, unique};
use rdkafka::consumer::Consumer as _;
use tower::{Layer, ServiceExt};

struct Kafka {
    publisher: KafkaPublisher,
}

fn harness() -> Kafka {
    kafka_support::require_broker();
    Kafka {
        publisher: KafkaPublisher::new(kafka_support::producer()),
    }
}

impl Kafka {
    fn consumer(spec: &Spec) -> KafkaConsumer {
        let config = config(&spec.group);
        let raw = consumer(&config);
        if spec.join_group {
            raw.subscribe(&[&spec.topic]).expect("subscribe");
        } else {
            // Manual assignment: no group join to wait for where groups are not the point.
            assign(&raw, &spec.topic, spec.partitions);
        }
        spec.spans(
            KafkaConsumer::new(Arc::new(raw))
                .metrics(spec.metrics.clone())
                .classify_errors(spec.classifier.clone())
                .max_concurrency(spec.max_concurrency)
                .drain_deadline(spec.drain_deadline)
                .commit_interval(Duration::from_millis(100)),
        )
    }
}

impl Harness for Kafka {
    type Message = KafkaMessage;

    fn system(&self) -> &'static str {
        eventscope::message::system::KAFKA
    }

    async fn topic(&self, partitions: i32) -> String {
        let topic = unique("conformance");
        create_topic(&topic, partitions).await;
        create_topic(&format!("{topic}.dlq"), 1).await;
        topic
    }

    fn group(&self) -> String {
        unique("conformance-group")
    }

    async fn publish(&self, topic: &str, partition: i32, payload: &str) {
        self.publisher
            .clone()
            .oneshot(KafkaRecord::new(topic, payload.as_bytes().to_vec()).partition(partition))
            .await
            .expect("publish");
    }

    async fn publish_through(
        &self,
        layer: PublishLayer,
        topic: &str,
        partition: i32,
        payload: &str,
    ) {
        layer
            .layer(self.publisher.clone())
            .oneshot(KafkaRecord::new(topic, payload.as_bytes().to_vec()).partition(partition))
            .await
            .expect("publish");
    }

    fn payload(message: &KafkaMessage) -> String {
        String::from_utf8_lossy(message.payload()).into_owned()
    }

    fn position(message: &KafkaMessage) -> (i32, i64) {
        (message.partition().unwrap_or_default(), message.offset())
    }

    fn consume(&self, spec: Spec, handler: Handler<KafkaMessage>, shutdown: Shutdown) -> Running {
        let consumer = Self::consumer(&spec);
        if spec.dead_letter {
            Box::pin(
                consumer
                    .dead_letter(self.publisher.clone())
                    .run(handler, shutdown),
            )
        } else {
            Box::pin(consumer.run(handler, shutdown))
        }
    }

    fn consume_batch(
        &self,
        spec: Spec,
        handler: BatchHandler<KafkaMessage>,
        shutdown: Shutdown,
    ) -> Running {
        Box::pin(Self::consumer(&spec).run_batch(handler, shutdown))
    }

    async fn read(&self, destination: &str, n: usize) -> Vec<KafkaMessage> {
        let config = config(&unique("conformance-reader"));
        let raw = consumer(&config);
        assign(&raw, destination, 1);
        let consumer = KafkaConsumer::new(Arc::new(raw));
        conformance::collect(n, |handler, shutdown| {
            Box::pin(consumer.run(handler, shutdown))
        })
        .await
    }

    async fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let (group, topic) = (group.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            kafka_support::committed(&group, &topic, partition + 1)
                .get(&partition)
                .copied()
                .flatten()
        })
        .await
        .expect("offset reader")
    }
}

conformance_suite!(harness());
