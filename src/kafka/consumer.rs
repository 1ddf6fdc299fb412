use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use futures_util::FutureExt as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    CommitMode, Consumer as _, ConsumerContext, DefaultConsumerContext, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::carrier::for_each_raw_header;
use super::config::{check, Settings};
use super::context::{EventscopeContext, RebalanceEvent};
use super::error::ConfigError;
use super::record::{timestamp_millis, Data, KafkaMessage, Origin};
use crate::classify::Classifier;
use crate::consume::{
    Adapter, ConsumeError, Consumer, DeadLetterRule, Event, Lane, Opening, Options, Ordered,
    OrderedSettler, OrderedSource, Positioned, Progress, Reporter,
};
use crate::message::system::KAFKA;
use crate::BoxError;

/// Drives a handler with the messages of your `rdkafka` [`StreamConsumer`], run by the
/// [consumer core](crate::consume); see the [module docs](super).
///
/// Build it with [`from_config`](KafkaConsumer::from_config), or bring a consumer created with
/// an [`EventscopeContext`] and `enable.auto.offset.store=false` to
/// [`new`](KafkaConsumer::new) (`run` refuses to start otherwise): a message's offset is
/// stored once it and every earlier message of its partition are settled, and stored offsets
/// are committed every [`commit_interval`](Consumer::commit_interval), before partitions are
/// revoked and at shutdown. Subscribe (or assign) before or after building it, as with any
/// consumer; a revoked partition finishes its running handler call and its buffered messages
/// are left to the next owner.
///
/// A partition with [`max_buffered`](Consumer::max_buffered) messages waiting is paused in
/// librdkafka until its handler has worked through half of them, so memory stays bounded and a
/// slow partition does not hold the others up.
pub type KafkaConsumer<Context = DefaultConsumerContext, Classify = Classifier> =
    Consumer<KafkaSubscription<Context>, Classify>;

/// The Kafka part of a [`KafkaConsumer`]: your consumer.
pub struct KafkaSubscription<Ctx: ConsumerContext + 'static = DefaultConsumerContext> {
    consumer: Arc<StreamConsumer<EventscopeContext<Ctx>>>,
}

impl<Ctx: ConsumerContext + 'static> fmt::Debug for KafkaSubscription<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("group", &self.consumer.context().group())
            .finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    /// Creates the `rdkafka` consumer from `config`, with an [`EventscopeContext`], and the
    /// driver for it; start from [`consumer_config`](super::consumer_config). Subscribe with
    /// [`subscribe`](Consumer::subscribe), or assign partitions through
    /// [`consumer`](Consumer::consumer).
    ///
    /// ```no_run
    /// use eventscope::kafka::{self, KafkaConsumer};
    /// use eventscope::metrics::Metrics;
    ///
    /// # fn main() -> Result<(), eventscope::kafka::ConfigError> {
    /// let config = kafka::consumer_config("127.0.0.1:9092", "billing");
    /// let consumer = KafkaConsumer::from_config(&config)?
    ///     .subscribe(&["orders"])?
    ///     .metrics(Metrics::new());
    /// # let _ = consumer;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When `group.id` is missing ([`ConfigError::MissingGroupId`]), `enable.auto.offset.store`
    /// is not `false` ([`ConfigError::AutoOffsetStore`]: offsets of unprocessed messages would
    /// be committed), `statistics.interval.ms` is not set
    /// ([`ConfigError::MissingStatisticsInterval`]: no lag; set it to `0` to go without), or
    /// librdkafka rejects the configuration ([`ConfigError::Client`]).
    /// `enable.auto.commit` may stay on: it only commits stored offsets, and the driver stores
    /// only what was processed.
    pub fn from_config(config: &ClientConfig) -> Result<Self, ConfigError> {
        Self::from_config_with_context(config, DefaultConsumerContext)
    }
}

impl<Ctx: ConsumerContext + 'static> KafkaConsumer<Ctx> {
    /// Drives `consumer`, created with an [`EventscopeContext`] (pass an `Arc` to keep a handle
    /// to it, e.g. to read committed offsets after `run` returned).
    pub fn new(consumer: impl Into<Arc<StreamConsumer<EventscopeContext<Ctx>>>>) -> Self {
        Consumer::with(
            KafkaSubscription {
                consumer: consumer.into(),
            },
            Options::DEFAULT,
        )
    }

    /// Like [`from_config`](KafkaConsumer::from_config), delegating logging, errors, OAuth and
    /// commit callbacks to your own consumer context (see [`EventscopeContext::wrap`]).
    ///
    /// # Errors
    ///
    /// As for [`from_config`](KafkaConsumer::from_config).
    pub fn from_config_with_context(
        config: &ClientConfig,
        context: Ctx,
    ) -> Result<Self, ConfigError> {
        check(config)?;
        let consumer: StreamConsumer<EventscopeContext<Ctx>> =
            config.create_with_context(EventscopeContext::wrap(config, context))?;
        Ok(Self::new(consumer))
    }
}

/// The smallest per-partition buffer a Kafka consumer keeps (see `max_buffered`).
const MIN_BUFFERED: usize = 100;

impl<Ctx: ConsumerContext + 'static, C> KafkaConsumer<Ctx, C> {
    /// The consumer.
    pub fn consumer(&self) -> &Arc<StreamConsumer<EventscopeContext<Ctx>>> {
        &self.adapter.consumer
    }

    /// Subscribes the consumer to `topics` (replacing an earlier subscription); partitions are
    /// assigned by the group.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Client`] when librdkafka refuses the subscription (e.g. an invalid
    /// topic pattern).
    pub fn subscribe(self, topics: &[&str]) -> Result<Self, ConfigError> {
        self.consumer().subscribe(topics)?;
        Ok(self)
    }
}

impl<Ctx: ConsumerContext + 'static> Adapter for KafkaSubscription<Ctx> {
    type Message = KafkaMessage;
    type Mode = Ordered<KafkaSource<Ctx>, KafkaSettler<Ctx>>;

    fn system(&self) -> &'static str {
        KAFKA
    }

    fn group(&self) -> &str {
        self.consumer.context().group()
    }

    /// Each pause makes librdkafka drop what it fetched for the partition: a small buffer
    /// collapses throughput (see `Consumer::max_buffered`).
    fn min_buffered(&self) -> usize {
        MIN_BUFFERED
    }

    /// The dead-letter topic of every topic subscribed or assigned (not patterns) must exist on
    /// the consumer's cluster (a dead-letter publisher to another cluster is not checked here).
    async fn check_dead_letters(&self, rule: Option<DeadLetterRule>) -> Result<(), ConsumeError> {
        let consumer = Arc::clone(&self.consumer);
        let checked = tokio::task::spawn_blocking(move || {
            let mut topics = std::collections::BTreeSet::new();
            if let Ok(list) = consumer.subscription() {
                topics.extend(list.elements().iter().map(|e| e.topic().to_owned()));
            }
            if let Ok(list) = consumer.assignment() {
                topics.extend(list.elements().iter().map(|e| e.topic().to_owned()));
            }
            for topic in topics.iter().filter(|t| !t.starts_with('^')) {
                let dead_letters = match &rule {
                    Some(rule) => rule(topic),
                    None => format!("{topic}.dlq"),
                };
                let metadata = consumer
                    .fetch_metadata(Some(&dead_letters), std::time::Duration::from_secs(10))
                    .map_err(|e| ConsumeError::Broker(Box::new(e)))?;
                let missing = metadata.topics().iter().any(|t| {
                    t.name() == dead_letters && (t.error().is_some() || t.partitions().is_empty())
                });
                if missing || metadata.topics().is_empty() {
                    return Err(ConsumeError::Broker(
                        format!("dead-letter topic {dead_letters} (of {topic}) does not exist")
                            .into(),
                    ));
                }
            }
            Ok(())
        })
        .await;
        checked.unwrap_or_else(|e| Err(ConsumeError::Broker(Box::new(e))))
    }

    async fn open(self, opening: Opening) -> Result<Self::Mode, ConsumeError> {
        let consumer = self.consumer;
        // Refuses a consumer that would commit what the handler has not processed.
        if let Err(KafkaError::StoreOffset(RDKafkaErrorCode::InvalidArgument)) =
            consumer.store_offsets(&TopicPartitionList::new())
        {
            return Err(ConsumeError::Broker(
                "the consumer must be created with enable.auto.offset.store=false".into(),
            ));
        }
        let context = Arc::clone(consumer.context());
        context.report_to(opening.reporter().clone());
        let settings = Arc::clone(context.settings());
        let settler = KafkaSettler {
            consumer: Arc::clone(&consumer),
        };
        let source = KafkaSource {
            consumer,
            context,
            settings,
            origins: Vec::new(),
            pending: VecDeque::new(),
            reporter: opening.reporter().clone(),
        };
        Ok(Ordered { source, settler })
    }
}

impl Positioned for KafkaMessage {
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

/// librdkafka's stream and rebalances, as the core's events.
pub struct KafkaSource<Ctx: ConsumerContext + 'static> {
    consumer: Arc<StreamConsumer<EventscopeContext<Ctx>>>,
    context: Arc<EventscopeContext<Ctx>>,
    settings: Arc<Settings>,
    /// What the messages of a topic share (a consumer reads few topics).
    origins: Vec<Arc<Origin>>,
    pending: VecDeque<Event<KafkaMessage>>,
    /// Counts messages with unreadable headers.
    reporter: Reporter,
}

impl<Ctx: ConsumerContext + 'static> fmt::Debug for KafkaSource<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("group", &self.settings.group)
            .finish_non_exhaustive()
    }
}

impl<Ctx: ConsumerContext + 'static> KafkaSource<Ctx> {
    fn origin(&mut self, topic: &str) -> &Arc<Origin> {
        let index = match self.origins.iter().position(|o| &*o.topic == topic) {
            Some(index) => index,
            None => {
                self.origins.push(Arc::new(Origin {
                    topic: Arc::from(topic),
                    group: Arc::clone(&self.settings.group),
                    endpoint: Arc::clone(&self.settings.endpoint),
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
                let detached = detach(&message, origin, &self.reporter);
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

impl<Ctx: ConsumerContext + 'static> OrderedSource for KafkaSource<Ctx> {
    type Message = KafkaMessage;

    async fn next(&mut self) -> Event<KafkaMessage> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            self.take_rebalances();
            if !self.pending.is_empty() {
                continue;
            }
            let consumer = Arc::clone(&self.consumer);
            // The usual case, a message already fetched: taken without arming the rebalance
            // wake-up, which would add and remove a waiter under `Notify`'s lock per message.
            // A rebalance queued meanwhile still comes first (`take_rebalances` below).
            if let Some(received) = consumer.recv().now_or_never() {
                self.take_rebalances();
                self.received(received);
                continue;
            }
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

/// Copies a message out of librdkafka: one allocation for key, payload and headers.
fn detach(message: &BorrowedMessage<'_>, origin: Arc<Origin>, reporter: &Reporter) -> KafkaMessage {
    // Headers whose names are not UTF-8 are skipped and counted, never a panic.
    let (data, skipped) = Data::copy(message.key(), message.payload(), |each| {
        for_each_raw_header(message, each);
    });
    reporter.unreadable_headers(skipped);
    KafkaMessage {
        origin,
        partition: message.partition(),
        offset: message.offset(),
        timestamp_millis: timestamp_millis(message.timestamp().to_millis()),
        data,
        attempt: 1,
    }
}

/// Stores settled offsets and commits them.
pub struct KafkaSettler<Ctx: ConsumerContext + 'static> {
    consumer: Arc<StreamConsumer<EventscopeContext<Ctx>>>,
}

impl<Ctx: ConsumerContext + 'static> fmt::Debug for KafkaSettler<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettler").finish_non_exhaustive()
    }
}

impl<Ctx: ConsumerContext + 'static> OrderedSettler for KafkaSettler<Ctx> {
    fn track(&self, lane: &Lane, progress: &Progress) {
        // The context commits it before a rebalance takes the partition away.
        self.consumer.context().track(lane, progress);
    }

    fn commit(&self, done: &[(Lane, i64)], last: bool) -> Result<(), BoxError> {
        // A store per message would cost more than the rest of the core: offsets go to
        // librdkafka's store only before a commit.
        if !done.is_empty() {
            let mut list = TopicPartitionList::with_capacity(done.len());
            for (lane, next) in done {
                list.add_partition_offset(&lane.topic, lane.partition, Offset::Offset(*next))?;
            }
            self.consumer.store_offsets(&list)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::consumer_config;

    #[test]
    fn a_config_librdkafka_rejects_is_a_client_error() {
        let mut config = consumer_config("127.0.0.1:9092", "g");
        config.set("no.such.setting", "1");
        let error = KafkaConsumer::from_config(&config).unwrap_err();
        assert!(matches!(error, ConfigError::Client(_)), "{error}");
    }
}
