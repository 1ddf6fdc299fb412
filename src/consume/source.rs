#![doc = include_str!("plug-in.md")]

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::report::Reporter;
use super::{ConsumeError, Options};
use crate::classify::Decision;
use crate::message::IncomingMessage;
use crate::BoxError;

/// A broker's consumer, as the core drives it: what it reports as, and how it opens.
///
/// [`Consumer::from_adapter`](super::Consumer::from_adapter) wraps an adapter in a consumer with
/// every setting of the core; the broker adapters of this crate do that for you
/// (`MemoryBroker::consumer`, `KafkaConsumer::from_config`, ...).
pub trait Adapter: Send + Sized + 'static {
    /// The message handed to handlers.
    type Message: IncomingMessage + Clone + Send + Sync + 'static;
    /// [`Ordered`] or [`Unordered`], with the adapter's source and settler.
    type Mode: Mode<Self::Message>;

    /// The `messaging.system` the consumer reports as.
    fn system(&self) -> &'static str;

    /// The consumer group (Kafka, the embedded broker), queue (RabbitMQ) or durable consumer
    /// (JetStream) that consumes.
    fn group(&self) -> &str;

    /// Connects and subscribes, when the consumer starts running.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Broker`] when the broker cannot be reached or refuses the subscription.
    fn open(
        self,
        opening: Opening,
    ) -> impl Future<Output = Result<Self::Mode, ConsumeError>> + Send;

    /// The smallest per-partition buffer worth having on this broker (default 2):
    /// [`max_buffered`](super::Consumer::max_buffered) is raised to it.
    fn min_buffered(&self) -> usize {
        2
    }

    /// Checks, before consuming, that the dead-letter destinations of what this consumer reads
    /// exist, where the broker can tell (SPEC §8): `rule` names the dead-letter destination of
    /// a destination when the consumer was given one, else the adapter's default naming
    /// applies. Called only for a consumer with a dead-letter destination. The default checks
    /// nothing: a destination that turns out missing is then a logged, counted publish
    /// failure, and the message stays unsettled.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::Broker`] naming the missing destination.
    fn check_dead_letters(
        &self,
        rule: Option<DeadLetterRule>,
    ) -> impl Future<Output = Result<(), ConsumeError>> + Send {
        let _ = rule;
        async { Ok(()) }
    }
}

/// Names the dead-letter destination of a destination (see
/// [`Consumer::dead_letter_destination`](super::Consumer::dead_letter_destination)).
pub type DeadLetterRule = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// What an adapter is opened with: the consumer's settings that shape fetching, and the
/// [`Reporter`] for what only the broker knows.
#[derive(Debug)]
pub struct Opening {
    pub(crate) reporter: Reporter,
    pub(crate) options: Options,
}

impl Opening {
    /// Where the adapter reports lag, dropped messages and unreadable headers.
    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Most handler calls at once (a prefetch or pull batch should not be smaller).
    pub fn max_concurrency(&self) -> usize {
        self.options.max_concurrency
    }

    /// Messages buffered per partition before fetching it is paused.
    pub fn max_buffered(&self) -> usize {
        self.options.max_buffered
    }

    /// How long shutdown waits for running handler calls.
    pub fn drain_deadline(&self) -> std::time::Duration {
        self.options.drain_deadline
    }
}

/// An ordered broker's source and settler; see the [module docs](super#how-a-broker-plugs-in).
#[derive(Debug)]
pub struct Ordered<Src, Set> {
    /// Messages in partition order, and rebalances.
    pub source: Src,
    /// Commits how far each partition is done.
    pub settler: Set,
}

/// An unordered broker's source and settler; see the [module docs](super#how-a-broker-plugs-in).
#[derive(Debug)]
pub struct Unordered<Src, Set> {
    /// Deliveries.
    pub source: Src,
    /// Settles each delivery.
    pub settler: Set,
}

/// [`Ordered`] or [`Unordered`]: how the core runs an adapter. Implemented by those two only.
pub trait Mode<M>: super::run::Run<M> {}

impl<Src, Set> Mode<Src::Message> for Ordered<Src, Set>
where
    Src: OrderedSource,
    Set: OrderedSettler,
{
}

impl<Src, Set> Mode<Src::Message> for Unordered<Src, Set>
where
    Src: UnorderedSource,
    Set: UnorderedSettler<Src::Message>,
{
}

/// An ordered lane: one partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
}

impl Lane {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// A message of an ordered broker: where it sits in its partition.
pub trait Positioned {
    /// Its topic.
    fn lane_topic(&self) -> &Arc<str>;
    /// Its partition.
    fn lane_partition(&self) -> i32;
    /// Its offset in the partition.
    fn lane_offset(&self) -> i64;
}

/// What an ordered source yields.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<M> {
    /// A message, in partition order.
    Message(M),
    /// Partitions now ours (a rebalance; may be empty when a rebalance only took some away).
    Assigned(Vec<Lane>),
    /// Partitions no longer ours: their buffered messages are dropped, running calls finish.
    Revoked(Vec<Lane>),
    /// The source cannot go on.
    Fatal(BoxError),
}

/// An ordered broker's stream of messages and rebalances.
pub trait OrderedSource: Send + 'static {
    /// The message type.
    type Message: IncomingMessage + Positioned + Clone + Send + Sync + 'static;

    /// The next event. Must be cancel-safe: the core polls it in a `select!`.
    fn next(&mut self) -> impl Future<Output = Event<Self::Message>> + Send;

    /// Stops fetching a lane (its buffer is full, or it was stopped at a message).
    fn pause(&mut self, lane: &Lane);

    /// Fetches a paused lane again.
    fn resume(&mut self, lane: &Lane);
}

/// Carries out `Ack` and `Reject` on an ordered broker: the committed offset of a lane.
pub trait OrderedSettler: Send + Sync + 'static {
    /// The core handles `lane` from now on, keeping in `progress` the offset after the last
    /// message it finished (every earlier message of the lane is done too). A settler that must
    /// commit outside [`commit`](Self::commit) (Kafka, before a rebalance takes partitions
    /// away) keeps the handle; the core writes it without calling the settler.
    fn track(&self, lane: &Lane, progress: &Progress) {
        let _ = (lane, progress);
    }

    /// Commits: `done` holds each lane that advanced since the last commit with its next
    /// offset. `last` is the final commit at shutdown. Timed by the core as a settle.
    ///
    /// # Errors
    ///
    /// When the broker refused the commit; the core logs it, counts the settle as failed and
    /// commits the same offsets again next time.
    fn commit(&self, done: &[(Lane, i64)], last: bool) -> Result<(), BoxError>;
}

/// How far the core is through a lane: the offset after the last message it finished, or
/// `None` before the first. Cheap to clone; clones share the value.
#[derive(Clone, Debug)]
pub struct Progress(Arc<AtomicI64>);

impl Progress {
    /// No offset finished yet.
    const NOTHING: i64 = -1;

    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicI64::new(Self::NOTHING)))
    }

    /// The next offset to commit, if any message is done.
    pub fn get(&self) -> Option<i64> {
        let next = self.0.load(Ordering::Acquire);
        (next != Self::NOTHING).then_some(next)
    }

    pub(crate) fn set(&self, next: i64) {
        self.0.store(next, Ordering::Release);
    }
}

/// An unordered broker's stream of deliveries.
pub trait UnorderedSource: Send + 'static {
    /// The message type.
    type Message: IncomingMessage + Clone + Send + Sync + 'static;

    /// The next delivery; `None` when the source is closed for good. Must be cancel-safe.
    fn next(&mut self) -> impl Future<Output = Option<Result<Self::Message, BoxError>>> + Send;

    /// The core stopped pulling, for good: shutdown began, a failure decided `Stop`, or the
    /// source failed. Stop the broker from delivering more (cancel the subscription), so that
    /// nothing waits in this consumer's buffer while running handler calls drain; deliveries
    /// already made are still settled afterwards, and the source is dropped once they are.
    /// Called once, before the drain, and bounded by the drain deadline. The default does
    /// nothing.
    fn stop(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Carries out a decision on one delivery (ack, nack with requeue, reject, term, ...).
pub trait UnorderedSettler<M>: Send + Sync + 'static {
    /// Settles `message` as `decision` says (SPEC §7). `Retry { after }` asks for the message
    /// again after `after`, however the broker does that.
    ///
    /// # Errors
    ///
    /// When the broker did not take the settle (a closed channel, a lost connection): the core
    /// logs it and counts the settle as failed; the broker delivers the message again.
    fn settle(
        &self,
        message: &M,
        decision: Decision,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Whether the broker hands a message out again after `Retry` (default `true`). A broker
    /// that cannot (core NATS) says `false`: the core then calls the handler again itself
    /// after the retry's delay, and settles only the final decision.
    fn redelivers(&self) -> bool {
        true
    }
}
