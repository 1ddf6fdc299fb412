//! The consumer contract (tests/conformance) on JetStream (the server on 127.0.0.1:4222): a
//! topic is a stream of one subject, a group a durable pull consumer of it, "nothing left
//! unsettled" its ack floor at the stream's end (see `unsettled` for the count before that). Order per partition does not apply (a
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
        let dead_letters = spec.dead_letter.then(|| {
            JetStreamPublisher::new(self.js.get().expect("a topic was made first").clone())
        });
        let consumer = self.consumer(spec);
        // Boxed where its types are concrete: a Send proof inside the async block trips over the
        // run future's higher-ranked bounds.
        Box::pin(async move {
            let consumer = consumer.await?;
            let run: Running = match dead_letters {
                Some(publisher) => Box::pin(consumer.dead_letter(publisher).run(handler, shutdown)),
                None => Box::pin(consumer.run(handler, shutdown)),
            };
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

    /// A consumer of its own, on the stream that captures `destination` (a topic's stream
    /// captures its dead letters too).
    async fn read(&self, destination: &str, n: usize) -> Vec<JetStreamMessage> {
        let js = self.js().await;
        let stream = js
            .stream_by_subject(destination)
            .await
            .expect("a stream captures the destination");
        let reader = nats_support::unique("reader");
        let pull = js
            .get_stream(&stream)
            .await
            .expect("stream")
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: destination.to_owned(),
                ..eventscope::nats::consumer_config(&reader)
            })
            .await
            .expect("reader");
        let consumer = JetStreamConsumer::new(js, pull).expect("explicit acks");
        conformance::collect(n, |handler, shutdown| {
            let run: Running = Box::pin(consumer.run(handler, shutdown));
            run
        })
        .await
    }

    async fn committed(&self, _group: &str, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    fn ordered(&self) -> bool {
        false
    }

    /// Nothing once the consumer's ack floor reached the stream's last message (acks and
    /// terms move it); else `num_pending + num_ack_pending - num_redelivered`, at least 1. The
    /// server counts a message nak'd without delay in both `num_pending` and `num_ack_pending`
    /// until it is delivered again, and one nak'd with a delay in neither of the first two
    /// alone, so neither sum is the count by itself.
    async fn unsettled(&self, group: &str, topic: &str) -> Option<u64> {
        let stream = self.stream(topic);
        let info = stream.consumer_info(group).await.ok()?;
        let last = stream.get_info().await.ok()?.state.last_sequence;
        if info.ack_floor.stream_sequence >= last {
            return Some(0);
        }
        let counted = info.num_pending + info.num_ack_pending as u64;
        Some(counted.saturating_sub(info.num_redelivered as u64).max(1))
    }
}

conformance_suite!(harness());
