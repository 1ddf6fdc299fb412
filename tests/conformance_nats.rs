//! The consumer contract (tests/conformance) on JetStream (the server on 127.0.0.1:4222): a
//! topic is a stream of one subject, a group a durable pull consumer of it, "nothing left
//! unsettled" its `num_pending + num_ack_pending` (less a nak'd message's second count). Order per partition does not apply (a
//! stream consumed by concurrent handlers settles each message on its own; the suite says
//! so and checks the concurrency bound instead).

mod conformance;
mod nats_support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use conformance::{BatchHandler, Handler, Harness, Running, Shutdown, Spec};
use eventscope::consume::ConsumeError;
use eventscope::nats::async_nats::jetstream;
use eventscope::nats::{JetStreamConsumer, JetStreamMessage, JetStreamPublisher, NatsRecord};
use eventscope::publish::PublishLayer;
use nats_support::TestStream;
use tower::{Layer, ServiceExt};

/// Short enough that a killed consumer's messages come back well within the suite's limits.
const ACK_WAIT: Duration = Duration::from_secs(2);

struct JetStream {
    /// Connected on first use, in the test's runtime (the client's task lives there).
    js: tokio::sync::OnceCell<jetstream::Context>,
    /// The streams of this case, deleted with the harness.
    streams: Mutex<HashMap<String, TestStream>>,
}

fn harness() -> JetStream {
    nats_support::require_server();
    JetStream {
        js: tokio::sync::OnceCell::new(),
        streams: Mutex::default(),
    }
}

impl JetStream {
    async fn js(&self) -> jetstream::Context {
        self.js.get_or_init(nats_support::js).await.clone()
    }

    fn stream(&self, topic: &str) -> jetstream::stream::Stream {
        self.streams.lock().unwrap()[topic].stream.clone()
    }

    /// The spec's consumer: a durable of the topic's stream named after the group.
    fn consumer(
        &self,
        spec: Spec,
    ) -> impl std::future::Future<Output = Result<JetStreamConsumer, ConsumeError>> + Send + 'static
    {
        let stream = self.stream(&spec.topic);
        let js = self.js.get().expect("a topic was made first").clone();
        async move {
            let pull = stream
                .get_or_create_consumer(
                    &spec.group,
                    jetstream::consumer::pull::Config {
                        ack_wait: ACK_WAIT,
                        max_deliver: 20,
                        filter_subject: spec.topic.clone(),
                        ..eventscope::nats::consumer_config(&spec.group)
                    },
                )
                .await
                .map_err(|e| ConsumeError::Broker(Box::new(e)))?;
            let consumer = JetStreamConsumer::new(js, pull)
                .map_err(|e| ConsumeError::Broker(Box::new(e)))?
                .metrics(spec.metrics.clone())
                .classify_errors(spec.classifier.clone())
                .max_concurrency(spec.max_concurrency)
                .drain_deadline(spec.drain_deadline);
            Ok(spec.spans(consumer))
        }
    }
}

impl Harness for JetStream {
    type Message = JetStreamMessage;

    fn system(&self) -> &'static str {
        eventscope::message::system::NATS
    }

    async fn topic(&self, _partitions: i32) -> String {
        let stream = TestStream::new(&self.js().await, "conformance").await;
        let topic = stream.subject.clone();
        self.streams.lock().unwrap().insert(topic.clone(), stream);
        topic
    }

    fn group(&self) -> String {
        nats_support::unique("group")
    }

    async fn publish(&self, topic: &str, _partition: i32, payload: &str) {
        JetStreamPublisher::new(self.js().await)
            .oneshot(NatsRecord::new(topic.to_owned(), payload.to_owned()))
            .await
            .expect("publish");
    }

    async fn publish_through(
        &self,
        layer: PublishLayer,
        topic: &str,
        _partition: i32,
        payload: &str,
    ) {
        layer
            .layer(JetStreamPublisher::new(self.js().await))
            .oneshot(NatsRecord::new(topic.to_owned(), payload.to_owned()))
            .await
            .expect("publish");
    }

    fn payload(message: &JetStreamMessage) -> String {
        String::from_utf8_lossy(message.payload()).into_owned()
    }

    fn position(message: &JetStreamMessage) -> (i32, i64) {
        (0, message.stream_sequence() as i64)
    }

    fn consume(
        &self,
        spec: Spec,
        handler: Handler<JetStreamMessage>,
        shutdown: Shutdown,
    ) -> Running {
        let consumer = self.consumer(spec);
        // Boxed where its types are concrete: a Send proof inside the async block trips over the
        // run future's higher-ranked bounds.
        Box::pin(async move {
            let run: Running = Box::pin(consumer.await?.run(handler, shutdown));
            run.await
        })
    }

    fn consume_batch(
        &self,
        spec: Spec,
        handler: BatchHandler<JetStreamMessage>,
        shutdown: Shutdown,
    ) -> Running {
        let consumer = self.consumer(spec);
        Box::pin(async move {
            let run: Running = Box::pin(consumer.await?.run_batch(handler, shutdown));
            run.await
        })
    }

    async fn committed(&self, _group: &str, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    fn ordered(&self) -> bool {
        false
    }

    /// `num_pending + num_ack_pending - num_redelivered`: a nak'd message waiting to be
    /// delivered again counts in both of the first two (and in the third) until it is.
    async fn unsettled(&self, group: &str, topic: &str) -> Option<u64> {
        let info = self.stream(topic).consumer_info(group).await.ok()?;
        let counted = info.num_pending + info.num_ack_pending as u64;
        Some(counted.saturating_sub(info.num_redelivered as u64))
    }
}

conformance_suite!(harness());
