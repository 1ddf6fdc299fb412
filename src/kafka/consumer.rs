use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{
    CommitMode, Consumer as _, ConsumerContext, DefaultConsumerContext, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::carrier::read_headers;
use super::context::{EventscopeContext, Progress, RebalanceEvent, Settings};
use super::record::{system_time_from_millis, Data, KafkaMessage, Origin};
use crate::classify::Classifier;
use crate::consume::{
    ConsumeError, Consumer, Core, Delivery, Event, Lane, Options, OrderedSettler, OrderedSource,
};
use crate::message::system::KAFKA;
use crate::metrics::Metrics;
use crate::BoxError;

/// Drives a handler with the messages of your `rdkafka` [`StreamConsumer`], run by the
/// [consumer core](crate::consume); see the [module docs](super).
///
/// The consumer must be created with an [`EventscopeContext`] (whose [`Metrics`] the consumer
/// and its [`process_layer`](Consumer::process_layer) report into) and with
/// `enable.auto.offset.store=false` (`run` refuses to start otherwise): a message's offset is
/// stored once it and every earlier message of its partition are settled, and stored offsets
/// are committed every [`commit_interval`](Consumer::commit_interval), before partitions are
/// revoked and at shutdown. Subscribe (or assign) before or after building it, as with any
/// consumer; a revoked partition finishes its running handler call and its buffered messages
/// are left to the next owner.
///
/// A partition with [`max_buffered`](Consumer::max_buffered) messages waiting is paused in
/// librdkafka until its handler has worked through half of them, so memory stays bounded and a
/// slow partition does not hold the others up.
///
/// [`Metrics`]: crate::metrics::Metrics
pub type KafkaConsumer<X = DefaultConsumerContext, C = Classifier> =
    Consumer<KafkaSubscription<X>, C>;

/// The Kafka part of a [`KafkaConsumer`]: your consumer.
pub struct KafkaSubscription<X: ConsumerContext + 'static = DefaultConsumerContext> {
    consumer: Arc<StreamConsumer<EventscopeContext<X>>>,
}

impl<X: ConsumerContext + 'static> fmt::Debug for KafkaSubscription<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.consumer.context().group())
            .finish_non_exhaustive()
    }
}

impl<X: ConsumerContext + 'static> Consumer<KafkaSubscription<X>> {
    /// Drives `consumer` (pass an `Arc` to keep a handle to it, e.g. to read committed offsets
    /// after `run` returned).
    pub fn new(consumer: impl Into<Arc<StreamConsumer<EventscopeContext<X>>>>) -> Self {
        let consumer = consumer.into();
        let metrics = consumer.context().metrics().clone();
        Consumer::with(KafkaSubscription { consumer }, metrics, Options::DEFAULT)
    }
}

impl<X: ConsumerContext + 'static, C> Consumer<KafkaSubscription<X>, C> {
    /// The consumer.
    pub fn consumer(&self) -> &Arc<StreamConsumer<EventscopeContext<X>>> {
        &self.adapter.consumer
    }

    crate::consume::ordered_runs!(KafkaMessage);

    fn open(self) -> Result<(KafkaSource<X>, KafkaSettler<X>, Core, C), ConsumeError> {
        let Self {
            adapter,
            classifier,
            metrics,
            options,
            spans,
        } = self;
        let consumer = adapter.consumer;
        // Refuses a consumer that would commit what the handler has not processed.
        if let Err(KafkaError::StoreOffset(RDKafkaErrorCode::InvalidArgument)) =
            consumer.store_offsets(&TopicPartitionList::new())
        {
            return Err(ConsumeError::Broker(
                "the consumer must be created with enable.auto.offset.store=false".into(),
            ));
        }
        let context = Arc::clone(consumer.context());
        let settings = Arc::clone(context.settings());
        let source_metrics = metrics.clone();
        let core = Core {
            metrics,
            system: KAFKA,
            group: Arc::clone(&settings.group),
            options,
            spans,
        };
        let settler = KafkaSettler {
            consumer: Arc::clone(&consumer),
            progress: Arc::clone(context.progress()),
        };
        let source = KafkaSource {
            consumer,
            context,
            settings,
            origins: Vec::new(),
            pending: VecDeque::new(),
            metrics: source_metrics,
        };
        Ok((source, settler, core, classifier))
    }
}

impl Delivery for KafkaMessage {
    fn lane_topic(&self) -> &Arc<str> {
        &self.origin.topic
    }

    fn lane_partition(&self) -> i32 {
        self.partition
    }

    fn lane_offset(&self) -> i64 {
        self.offset
    }
}

/// Room reserved for headers when a message is copied out of librdkafka (trace context and
/// ids take about 200 bytes).
const HEADER_ROOM: usize = 256;

/// librdkafka's stream and rebalances, as the core's events.
struct KafkaSource<X: ConsumerContext + 'static> {
    consumer: Arc<StreamConsumer<EventscopeContext<X>>>,
    context: Arc<EventscopeContext<X>>,
    settings: Arc<Settings>,
    /// What the messages of a topic share (a consumer reads few topics).
    origins: Vec<Arc<Origin>>,
    pending: VecDeque<Event<KafkaMessage>>,
    /// Counts messages with unreadable headers.
    metrics: Metrics,
}

impl<X: ConsumerContext + 'static> KafkaSource<X> {
    fn origin(&mut self, topic: &str) -> &Arc<Origin> {
        let index = match self.origins.iter().position(|o| &*o.topic == topic) {
            Some(index) => index,
            None => {
                self.origins.push(Arc::new(Origin {
                    topic: Arc::from(topic),
                    group: Arc::clone(&self.settings.group),
                    server: self.settings.server.clone(),
                }));
                self.origins.len() - 1
            }
        };
        &self.origins[index]
    }

    fn lanes(&mut self, partitions: Vec<(String, i32)>) -> Vec<Lane> {
        partitions
            .into_iter()
            .map(|(topic, partition)| Lane::new(Arc::clone(&self.origin(&topic).topic), partition))
            .collect()
    }

    /// Rebalances queued by the context come before the messages fetched after them.
    fn take_rebalances(&mut self) {
        for event in self.context.take_rebalances() {
            let event = match event {
                RebalanceEvent::Assigned(partitions) => Event::Assigned(self.lanes(partitions)),
                RebalanceEvent::Revoked(partitions) => Event::Revoked(self.lanes(partitions)),
            };
            self.pending.push_back(event);
        }
    }

    fn received(&mut self, received: Result<BorrowedMessage<'_>, KafkaError>) {
        match received {
            Ok(message) => {
                let origin = Arc::clone(self.origin(message.topic()));
                let detached = detach(&message, origin, &self.metrics);
                self.pending.push_back(Event::Message(detached));
            }
            Err(error @ KafkaError::MessageConsumptionFatal(_)) => {
                self.pending.push_back(Event::Fatal(Box::new(error)));
            }
            Err(error) => tracing::warn!(%error, "kafka consumer error"),
        }
    }

    fn partition_list(lane: &Lane) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(1);
        list.add_partition(&lane.topic, lane.partition);
        list
    }
}

impl<X: ConsumerContext + 'static> OrderedSource for KafkaSource<X> {
    type Message = KafkaMessage;

    async fn next(&mut self) -> Event<KafkaMessage> {
        {
            loop {
                if let Some(event) = self.pending.pop_front() {
                    return event;
                }
                self.take_rebalances();
                if !self.pending.is_empty() {
                    continue;
                }
                let consumer = Arc::clone(&self.consumer);
                let context = Arc::clone(&self.context);
                tokio::select! {
                    biased;
                    () = context.rebalanced() => {}
                    received = consumer.recv() => {
                        self.take_rebalances();
                        self.received(received);
                    }
                }
            }
        }
    }

    fn pause(&mut self, lane: &Lane) {
        if let Err(error) = self.consumer.pause(&Self::partition_list(lane)) {
            tracing::warn!(%error, topic = %lane.topic, partition = lane.partition, "pausing partition failed");
        }
    }

    fn resume(&mut self, lane: &Lane) {
        if let Err(error) = self.consumer.resume(&Self::partition_list(lane)) {
            tracing::warn!(%error, topic = %lane.topic, partition = lane.partition, "resuming partition failed");
        }
    }
}

/// Copies a message out of librdkafka: one buffer for key, payload and header values.
fn detach(message: &BorrowedMessage<'_>, origin: Arc<Origin>, metrics: &Metrics) -> KafkaMessage {
    let (key, payload) = (message.key(), message.payload());
    let sizes = key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len);
    let mut data = Data {
        bytes: Vec::with_capacity(sizes + HEADER_ROOM),
        ..Data::default()
    };
    data.key = key.map(|key| data.push(key));
    data.payload = payload.map(|payload| data.push(payload));
    // Headers whose names are not UTF-8 are skipped and counted, never a panic.
    let skipped = read_headers(message, &mut data);
    metrics.record_unreadable_headers(KAFKA, skipped);
    KafkaMessage {
        origin,
        partition: message.partition(),
        offset: message.offset(),
        timestamp: system_time_from_millis(message.timestamp().to_millis()),
        data: Arc::new(data),
    }
}

/// Stores settled offsets and commits them.
struct KafkaSettler<X: ConsumerContext + 'static> {
    consumer: Arc<StreamConsumer<EventscopeContext<X>>>,
    /// Shared with the context, which commits it before partitions are revoked.
    progress: Arc<Progress>,
}

impl<X: ConsumerContext + 'static> OrderedSettler for KafkaSettler<X> {
    type Cursor = Arc<AtomicI64>;

    fn cursor(&self, lane: &Lane) -> Arc<AtomicI64> {
        self.progress.track(&lane.topic, lane.partition)
    }

    fn mark(&self, cursor: &Arc<AtomicI64>, next: i64) {
        // A store per message would cost more than the rest of the core: the progress is
        // handed to librdkafka's offset store only before a commit.
        cursor.store(next, Ordering::Release);
    }

    fn commit(&self, _done: &[(Lane, i64)], last: bool) -> Result<(), BoxError> {
        self.progress.store(&*self.consumer)?;
        let mode = if last {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        match self.consumer.commit_consumer_state(mode) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(Box::new(error)),
        }
    }
}
