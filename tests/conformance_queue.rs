//! The consumer contract (tests/conformance) on an in-process queue: a work queue with acks,
//! nacks and redelivery, plugged into the consumer core from outside the crate through its
//! public adapter traits. It runs the core's unordered mode through the whole suite without a
//! broker, and shows that the plug-in point is enough to write an adapter.

mod conformance;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use conformance::{BatchHandler, Handler, Harness, Running, Shutdown, Spec};
use eventscope::classify::Decision;
use eventscope::consume::{
    Adapter, ConsumeError, Consumer, Opening, Unordered, UnorderedSettler, UnorderedSource,
};
use eventscope::message::{
    HeaderList, Headers, HeadersMut, IncomingMessage, OutgoingMessage, Republish,
};
use eventscope::publish::PublishLayer;
use eventscope::BoxError;
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};

const SYSTEM: &str = "queue";

/// A stored message.
#[derive(Clone)]
struct Stored {
    payload: Arc<str>,
    headers: Arc<HeaderList>,
    created: SystemTime,
    deliveries: u32,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Stored>,
    /// Delivered and not settled: tag -> (consumer, message).
    unacked: HashMap<u64, (u64, Stored)>,
}

/// The broker: named queues.
#[derive(Clone, Default)]
struct Broker {
    queues: Arc<Mutex<HashMap<String, Queue>>>,
    arrived: Arc<Notify>,
    next: Arc<AtomicU64>,
}

impl Broker {
    fn push(&self, queue: &str, stored: Stored) {
        self.queues
            .lock()
            .unwrap()
            .entry(queue.to_owned())
            .or_default()
            .ready
            .push_back(stored);
        self.arrived.notify_waiters();
    }
}

/// A record to publish to a queue.
#[derive(Clone, Debug)]
struct QueueRecord {
    queue: String,
    payload: String,
    headers: HeaderList,
}

impl Headers for QueueRecord {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl HeadersMut for QueueRecord {
    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.set_header(name, value);
    }
    fn remove_header(&mut self, name: &str) {
        self.headers.remove(name);
    }
}

impl OutgoingMessage for QueueRecord {
    fn system(&self) -> &'static str {
        SYSTEM
    }
    fn destination(&self) -> &str {
        &self.queue
    }
    fn payload(&self) -> &[u8] {
        self.payload.as_bytes()
    }
}

/// Publishes to the broker; acknowledged at once.
#[derive(Clone)]
struct Publisher(Broker);

impl Service<QueueRecord> for Publisher {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: QueueRecord) -> Self::Future {
        self.0.push(
            &record.queue,
            Stored {
                payload: Arc::from(record.payload),
                headers: Arc::new(record.headers),
                created: SystemTime::now(),
                deliveries: 0,
            },
        );
        std::future::ready(Ok(()))
    }
}

/// A delivered message.
#[derive(Clone, Debug)]
struct QueueMessage {
    queue: Arc<str>,
    tag: u64,
    payload: Arc<str>,
    headers: Arc<HeaderList>,
    created: SystemTime,
    deliveries: u32,
}

impl Headers for QueueMessage {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl IncomingMessage for QueueMessage {
    fn system(&self) -> &'static str {
        SYSTEM
    }
    fn destination(&self) -> &str {
        &self.queue
    }
    fn consumer_group(&self) -> Option<&str> {
        Some(&self.queue)
    }
    fn created_at(&self) -> Option<SystemTime> {
        Some(self.created)
    }
    fn payload(&self) -> &[u8] {
        self.payload.as_bytes()
    }
    fn delivery_attempt(&self) -> Option<u32> {
        Some(self.deliveries)
    }
}

impl Republish for QueueMessage {
    type Record = QueueRecord;

    fn republish(&self, destination: &str) -> QueueRecord {
        let mut headers = HeaderList::new();
        for (name, value) in self.headers.iter() {
            let id = name.eq_ignore_ascii_case("message-id")
                || name.eq_ignore_ascii_case("causation-id");
            if !id {
                headers.push_bytes(name, value.to_vec());
            }
        }
        QueueRecord {
            queue: destination.to_owned(),
            payload: self.payload.to_string(),
            headers,
        }
    }
}

/// The adapter: a consumer of one queue (the queue is its group).
struct QueueConsumer {
    broker: Broker,
    queue: String,
}

impl Adapter for QueueConsumer {
    type Message = QueueMessage;
    type Mode = Unordered<Source, Settler>;

    fn system(&self) -> &'static str {
        SYSTEM
    }

    fn group(&self) -> &str {
        &self.queue
    }

    async fn open(self, _opening: Opening) -> Result<Self::Mode, ConsumeError> {
        let id = self.broker.next.fetch_add(1, Ordering::Relaxed);
        Ok(Unordered {
            source: Source {
                broker: self.broker.clone(),
                queue: Arc::from(self.queue.as_str()),
                id,
            },
            settler: Settler {
                broker: self.broker,
                queue: self.queue,
            },
        })
    }
}

struct Source {
    broker: Broker,
    queue: Arc<str>,
    id: u64,
}

impl UnorderedSource for Source {
    type Message = QueueMessage;

    async fn next(&mut self) -> Option<Result<QueueMessage, BoxError>> {
        loop {
            let arrived = self.broker.arrived.notified();
            {
                let mut queues = self.broker.queues.lock().unwrap();
                let queue = queues.entry(self.queue.to_string()).or_default();
                if let Some(mut stored) = queue.ready.pop_front() {
                    stored.deliveries += 1;
                    let tag = self.broker.next.fetch_add(1, Ordering::Relaxed);
                    queue.unacked.insert(tag, (self.id, stored.clone()));
                    return Some(Ok(QueueMessage {
                        queue: Arc::clone(&self.queue),
                        tag,
                        payload: stored.payload,
                        headers: stored.headers,
                        created: stored.created,
                        deliveries: stored.deliveries,
                    }));
                }
            }
            // Woken by a publish or a requeue; a timer covers a wake-up missed in between.
            let _ = tokio::time::timeout(Duration::from_millis(20), arrived).await;
        }
    }
}

impl Drop for Source {
    /// A consumer that goes away without settling (a closed channel): its messages go back.
    fn drop(&mut self) {
        let mut queues = self.broker.queues.lock().unwrap();
        if let Some(queue) = queues.get_mut(&*self.queue) {
            let mine: Vec<u64> = queue
                .unacked
                .iter()
                .filter(|(_, (owner, _))| *owner == self.id)
                .map(|(tag, _)| *tag)
                .collect();
            for tag in mine {
                if let Some((_, stored)) = queue.unacked.remove(&tag) {
                    queue.ready.push_front(stored);
                }
            }
        }
        drop(queues);
        self.broker.arrived.notify_waiters();
    }
}

struct Settler {
    broker: Broker,
    queue: String,
}

impl UnorderedSettler<QueueMessage> for Settler {
    async fn settle(&self, message: &QueueMessage, decision: Decision) -> Result<(), BoxError> {
        if let Decision::Retry { after } = decision {
            tokio::time::sleep(after).await;
        }
        let mut queues = self.broker.queues.lock().unwrap();
        let queue = queues.entry(self.queue.clone()).or_default();
        let Some((_, stored)) = queue.unacked.remove(&message.tag) else {
            return Err("unknown delivery tag".into());
        };
        match decision {
            Decision::Retry { .. } | Decision::Stop => queue.ready.push_back(stored),
            // Ack, Reject, DeadLetter: gone from the queue.
            _ => {}
        }
        drop(queues);
        self.broker.arrived.notify_waiters();
        Ok(())
    }
}

struct InProcess {
    broker: Broker,
    next: AtomicU64,
}

fn harness() -> InProcess {
    InProcess {
        broker: Broker::default(),
        next: AtomicU64::new(0),
    }
}

impl InProcess {
    fn consumer(&self, spec: &Spec) -> Consumer<QueueConsumer> {
        // The queue is the group: every consumer of a spec shares its queue.
        let consumer = Consumer::from_adapter(QueueConsumer {
            broker: self.broker.clone(),
            queue: spec.topic.clone(),
        })
        .metrics(spec.metrics.clone())
        .classify_errors(spec.classifier.clone())
        .max_concurrency(spec.max_concurrency)
        .drain_deadline(spec.drain_deadline);
        spec.spans(consumer)
    }
}

impl Harness for InProcess {
    type Message = QueueMessage;

    fn system(&self) -> &'static str {
        SYSTEM
    }

    async fn topic(&self, _partitions: i32) -> String {
        format!("queue-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn group(&self) -> String {
        format!("group-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    async fn publish(&self, topic: &str, _partition: i32, payload: &str) {
        Publisher(self.broker.clone())
            .oneshot(QueueRecord {
                queue: topic.to_owned(),
                payload: payload.to_owned(),
                headers: HeaderList::new(),
            })
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
            .layer(Publisher(self.broker.clone()))
            .oneshot(QueueRecord {
                queue: topic.to_owned(),
                payload: payload.to_owned(),
                headers: HeaderList::new(),
            })
            .await
            .expect("publish");
    }

    fn payload(message: &QueueMessage) -> String {
        message.payload.to_string()
    }

    fn position(message: &QueueMessage) -> (i32, i64) {
        (0, message.tag as i64)
    }

    fn consume(&self, spec: Spec, handler: Handler<QueueMessage>, shutdown: Shutdown) -> Running {
        let consumer = self.consumer(&spec);
        if spec.dead_letter {
            Box::pin(
                consumer
                    .dead_letter(Publisher(self.broker.clone()))
                    .run(handler, shutdown),
            )
        } else {
            Box::pin(consumer.run(handler, shutdown))
        }
    }

    fn consume_batch(
        &self,
        spec: Spec,
        handler: BatchHandler<QueueMessage>,
        shutdown: Shutdown,
    ) -> Running {
        Box::pin(self.consumer(&spec).run_batch(handler, shutdown))
    }

    async fn committed(&self, _group: &str, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }

    fn ordered(&self) -> bool {
        false
    }

    fn consumer_group(&self, spec: &Spec) -> String {
        spec.topic.clone()
    }

    async fn read(&self, destination: &str, n: usize) -> Vec<QueueMessage> {
        let consumer = Consumer::from_adapter(QueueConsumer {
            broker: self.broker.clone(),
            queue: destination.to_owned(),
        });
        conformance::collect(n, |handler, shutdown| {
            Box::pin(consumer.run(handler, shutdown))
        })
        .await
    }

    async fn unsettled(&self, _group: &str, topic: &str) -> Option<u64> {
        let queues = self.broker.queues.lock().unwrap();
        let queue = queues.get(topic)?;
        Some((queue.ready.len() + queue.unacked.len()) as u64)
    }
}

conformance_suite!(harness());
