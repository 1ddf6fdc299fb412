//! What an adapter hands the core: a source of messages and a settler of decisions.

use std::future::Future;
use std::sync::Arc;

use crate::BoxError;

/// An ordered lane: one partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Lane {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
}

impl Lane {
    pub(crate) fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// A message of an ordered broker: where it sits in its partition.
pub(crate) trait Delivery: Clone + Send + Sync + 'static {
    /// Its topic.
    fn lane_topic(&self) -> &Arc<str>;
    /// Its partition.
    fn lane_partition(&self) -> i32;
    /// Its offset in the partition.
    fn lane_offset(&self) -> i64;
}

/// What an ordered source yields.
#[derive(Debug)]
pub(crate) enum Event<M> {
    /// A message, in partition order.
    Message(M),
    /// Partitions now ours.
    Assigned(Vec<Lane>),
    /// Partitions no longer ours: their buffered messages are dropped, running calls finish.
    Revoked(Vec<Lane>),
    /// The source cannot go on.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    Fatal(BoxError),
}

/// An ordered broker's stream of messages and rebalances.
pub(crate) trait OrderedSource: Send {
    type Message: Delivery;

    /// The next event. Must be cancel-safe: the core polls it in a `select!`.
    fn next(&mut self) -> impl Future<Output = Event<Self::Message>> + Send;

    /// Stops fetching a lane (its buffer is full, or it was stopped at a message).
    fn pause(&mut self, lane: &Lane);

    /// Fetches a paused lane again.
    fn resume(&mut self, lane: &Lane);
}

/// Carries out `Ack` and `Reject` on an ordered broker: the committed offset of a lane.
pub(crate) trait OrderedSettler: Send + Sync + 'static {
    /// A lane's handle for [`mark`](Self::mark), made once per lane.
    type Cursor: Send + Sync + 'static;

    fn cursor(&self, lane: &Lane) -> Self::Cursor;

    /// Every message of the lane before `next` is done. Called by the lane as it advances;
    /// must be cheap (no I/O): [`commit`](Self::commit) makes it durable.
    fn mark(&self, cursor: &Self::Cursor, next: i64);

    /// Commits: `done` holds each lane that advanced since the last commit with its next
    /// offset. `last` is the final commit at shutdown. Timed by the core as a settle.
    fn commit(&self, done: &[(Lane, i64)], last: bool) -> Result<(), BoxError>;
}
