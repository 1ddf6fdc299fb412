//! The consumer contract (tests/conformance) on the embedded broker.

mod conformance;

use std::sync::atomic::{AtomicU64, Ordering};

use conformance::{BatchHandler, Handler, Harness, Running, Shutdown, Spec};
use eventscope::memory::{MemoryBroker, MemoryConsumer, MemoryMessage, MemoryRecord};
use eventscope::publish::PublishLayer;
use tower::{Layer, ServiceExt};

struct Memory {
    broker: MemoryBroker,
    next: AtomicU64,
}

fn harness() -> Memory {
    Memory {
        broker: MemoryBroker::new(),
        next: AtomicU64::new(0),
    }
}

impl Memory {
    fn consumer(&self, spec: &Spec) -> MemoryConsumer {
        // Every member of the embedded broker joins its group; `join_group` changes nothing.
        let consumer = self
            .broker
            .consumer(spec.group.clone())
            .subscribe([spec.topic.clone()])
            .metrics(spec.metrics.clone())
            .lag_interval(std::time::Duration::from_millis(20))
            .classify_errors(spec.classifier.clone())
            .max_concurrency(spec.max_concurrency)
            .drain_deadline(spec.drain_deadline);
        spec.spans(consumer)
    }
}

impl Harness for Memory {
    type Message = MemoryMessage;

    fn system(&self) -> &'static str {
        eventscope::message::system::MEMORY
    }

    async fn topic(&self, partitions: i32) -> String {
        let topic = format!("topic-{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.broker.create_topic(&topic, partitions).expect("topic");
        topic
    }

    fn group(&self) -> String {
        format!("group-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    async fn publish(&self, topic: &str, partition: i32, payload: &str) {
        self.broker
            .publisher()
            .oneshot(MemoryRecord::new(topic, payload.as_bytes().to_vec()).partition(partition))
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
            .layer(self.broker.publisher())
            .oneshot(MemoryRecord::new(topic, payload.as_bytes().to_vec()).partition(partition))
            .await
            .expect("publish");
    }

    fn payload(message: &MemoryMessage) -> String {
        String::from_utf8_lossy(message.payload()).into_owned()
    }

    fn position(message: &MemoryMessage) -> (i32, i64) {
        (message.partition().unwrap_or_default(), message.offset())
    }

    fn consume(&self, spec: Spec, handler: Handler<MemoryMessage>, shutdown: Shutdown) -> Running {
        let consumer = self.consumer(&spec);
        if spec.dead_letter {
            Box::pin(
                consumer
                    .dead_letter(self.broker.publisher())
                    .run(handler, shutdown),
            )
        } else {
            Box::pin(consumer.run(handler, shutdown))
        }
    }

    fn consume_batch(
        &self,
        spec: Spec,
        handler: BatchHandler<MemoryMessage>,
        shutdown: Shutdown,
    ) -> Running {
        Box::pin(self.consumer(&spec).run_batch(handler, shutdown))
    }

    async fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        self.broker.committed(group, topic, partition)
    }

    async fn read(&self, destination: &str, n: usize) -> Vec<MemoryMessage> {
        let consumer = self
            .broker
            .consumer(self.group())
            .subscribe([destination.to_owned()]);
        conformance::collect(n, |handler, shutdown| {
            Box::pin(consumer.run(handler, shutdown))
        })
        .await
    }
}

conformance_suite!(harness());
