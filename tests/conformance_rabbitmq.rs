//! The consumer contract (tests/conformance) on RabbitMQ (the broker on 127.0.0.1:5672).
//!
//! A "topic" is a durable queue of its own, reached through the default exchange, so its
//! destination is the queue's name on both sides (SPEC §3: a routing key equal to the queue is
//! written once). The consumer group is the queue. Partitions do not exist: the cases about
//! order per partition and rebalances say so and check what applies (the suite skips them for
//! an unordered harness). "Unsettled" is what the broker counts: ready plus delivered and not
//! acknowledged, read with `rabbitmqctl list_queues` (a passive declare counts ready messages
//! only).

mod conformance;
mod rabbitmq_support;

use std::sync::Mutex;

use conformance::{BatchHandler, Handler, Harness, Running, Shutdown, Spec};
use eventscope::publish::PublishLayer;
use eventscope::rabbitmq::{RabbitConsumer, RabbitMessage, RabbitRecord};
use rabbitmq_support::{
    connect, declare_queue, delete_queue, publisher, queue_counts, unique, URI,
};
use tower::{Layer, ServiceExt};

/// The harness of one test: it deletes the queues it made when the test is over.
#[derive(Default)]
struct Rabbit {
    queues: Mutex<Vec<String>>,
}

fn harness() -> Rabbit {
    rabbitmq_support::require_broker();
    Rabbit::default()
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        // Dropped inside the test's runtime, which cannot block: a thread with a runtime of
        // its own deletes them.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let connection = connect("eventscope-conformance-cleanup").await;
                let channel = connection.create_channel().await.expect("channel");
                for queue in queues {
                    delete_queue(&channel, &queue).await;
                }
                let _ = connection.close(200, "OK".into()).await;
            });
        });
        let _ = deleted.join();
    }
}

impl Rabbit {
    fn consumer(spec: &Spec) -> RabbitConsumer {
        spec.spans(
            RabbitConsumer::new(URI, &spec.topic)
                .expect("consumer")
                .metrics(spec.metrics.clone())
                .classify_errors(spec.classifier.clone())
                .max_concurrency(spec.max_concurrency)
                .drain_deadline(spec.drain_deadline),
        )
    }
}

impl Harness for Rabbit {
    type Message = RabbitMessage;

    fn system(&self) -> &'static str {
        eventscope::message::system::RABBITMQ
    }

    async fn topic(&self, _partitions: i32) -> String {
        let queue = unique("conformance");
        let connection = connect("eventscope-conformance-setup").await;
        let channel = connection.create_channel().await.expect("channel");
        declare_queue(&channel, &queue).await;
        // Where its consumers dead-letter: the queue `{queue}.dlq` (records are mandatory, so
        // it must exist).
        let dead_letters = format!("{queue}.dlq");
        declare_queue(&channel, &dead_letters).await;
        let _ = connection.close(200, "OK".into()).await;
        self.queues
            .lock()
            .unwrap()
            .extend([queue.clone(), dead_letters]);
        queue
    }

    fn group(&self) -> String {
        unique("conformance-group")
    }

    async fn publish(&self, topic: &str, _partition: i32, payload: &str) {
        let connection = connect("eventscope-conformance-publish").await;
        publisher(&connection)
            .await
            .oneshot(RabbitRecord::to_queue(topic, payload.as_bytes().to_vec()))
            .await
            .expect("publish confirmed");
        let _ = connection.close(200, "OK".into()).await;
    }

    async fn publish_through(
        &self,
        layer: PublishLayer,
        topic: &str,
        _partition: i32,
        payload: &str,
    ) {
        let connection = connect("eventscope-conformance-publish").await;
        layer
            .layer(publisher(&connection).await)
            .oneshot(RabbitRecord::to_queue(topic, payload.as_bytes().to_vec()))
            .await
            .expect("publish confirmed");
        let _ = connection.close(200, "OK".into()).await;
    }

    fn payload(message: &RabbitMessage) -> String {
        String::from_utf8_lossy(message.payload()).into_owned()
    }

    fn position(message: &RabbitMessage) -> (i32, i64) {
        (0, message.delivery_tag() as i64)
    }

    fn consume(&self, spec: Spec, handler: Handler<RabbitMessage>, shutdown: Shutdown) -> Running {
        let consumer = Self::consumer(&spec);
        if !spec.dead_letter {
            return Box::pin(consumer.run(handler, shutdown));
        }
        Box::pin(async move {
            let connection = connect("eventscope-conformance-dead-letters").await;
            let dead_letters = publisher(&connection).await;
            let run: Running = Box::pin(consumer.dead_letter(dead_letters).run(handler, shutdown));
            let result = run.await;
            let _ = connection.close(200, "OK".into()).await;
            result
        })
    }

    /// The consumer group is the queue.
    fn consumer_group(&self, spec: &Spec) -> String {
        spec.topic.clone()
    }

    async fn read(&self, destination: &str, n: usize) -> Vec<RabbitMessage> {
        let consumer = RabbitConsumer::new(URI, destination).expect("reader");
        conformance::collect(n, |handler, shutdown| {
            let run: Running = Box::pin(consumer.run(handler, shutdown));
            run
        })
        .await
    }

    fn consume_batch(
        &self,
        spec: Spec,
        handler: BatchHandler<RabbitMessage>,
        shutdown: Shutdown,
    ) -> Running {
        Box::pin(Self::consumer(&spec).run_batch(handler, shutdown))
    }

    async fn committed(&self, _group: &str, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    fn ordered(&self) -> bool {
        false
    }

    async fn unsettled(&self, _group: &str, topic: &str) -> Option<u64> {
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || queue_counts(&topic))
            .await
            .expect("rabbitmqctl")
            .map(|(ready, unacked)| ready + unacked)
    }
}

conformance_suite!(harness());
