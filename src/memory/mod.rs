//! An embedded in-memory broker: topics with partitions, keys, offsets, headers, creation
//! timestamps and consumer groups with committed offsets, shaped like the real adapters.
//!
//! It is the demo's broker and a test kit: a [`MemoryPublisher`] is a `tower::Service` like the
//! Kafka publisher, a [`MemoryConsumer`] drives a handler like the Kafka driver (order per
//! partition, commit after success, lag gauges of SPEC §5), and no setup is needed.
//! It is safe to share between tasks and bounded in memory: each partition keeps at most
//! `retention` records (default 100 000).
//!
//! # When a partition is full
//!
//! It never loses a message silently. What a publish to a full partition does is the
//! [`Overflow`] policy of the broker:
//!
//! - [`Overflow::Block`] (the default): the publish waits until every consumer group subscribed
//!   to the topic has committed past the partition's oldest record, which then makes room. The
//!   record's future waits, and [`MemoryPublisher`]'s `poll_ready` stays pending while a record
//!   of it waits, so a publisher goes at the pace of its slowest subscribed group. A group is
//!   subscribed from the moment one of its consumers runs until the last one returns or is
//!   dropped: a group that never consumes (stalled, or its partition stopped by a failure)
//!   keeps publishers waiting for as long as it stays subscribed. Groups that are not subscribed (never were,
//!   or left) do not hold records back; records published before any group subscribed are
//!   simply kept up to `retention`.
//! - [`Overflow::DropOldest`]: the oldest record is removed at once and publishing never
//!   waits. Every record a group had not received when it was removed counts in
//!   `messaging_consumer_dropped_messages_total` (give the broker
//!   [`metrics`](MemoryBrokerBuilder::metrics)), a rate-limited warning names the group, and
//!   the group's lag (counted from its committed offset) includes those records until it moves
//!   past them to the oldest retained one.
//!
//! A group that left keeps its committed offsets; records removed before it comes back count as
//! dropped for it too.
//!
//! ```
//! use eventscope::memory::{MemoryBroker, Overflow};
//! use eventscope::metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! let broker = MemoryBroker::builder()
//!     .retention(1_000)
//!     .overflow(Overflow::DropOldest)
//!     .metrics(metrics.clone())
//!     .build();
//! # let _ = broker;
//! ```
//!
//! # Example
//!
//! ```
//! use eventscope::memory::{MemoryBroker, MemoryRecord};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventscope::memory::MemoryError> {
//! let broker = MemoryBroker::builder().default_partitions(3).retention(10_000).build();
//! broker.create_topic("orders", 4)?;
//! let delivery = broker
//!     .publisher()
//!     .oneshot(MemoryRecord::new("orders", b"hello".to_vec()).key("customer-7"))
//!     .await?;
//! assert_eq!(broker.high_watermark("orders", delivery.partition), Some(1));
//! # Ok(())
//! # }
//! ```

mod broker;
mod carrier;
mod consumer;
pub mod future;
mod group;
mod lag;
mod log;
mod publisher;
mod record;

pub use self::broker::{MemoryBroker, MemoryBrokerBuilder, MemoryError, Overflow};
pub use self::consumer::{MemoryConsumer, MemorySubscription};
pub use self::publisher::MemoryPublisher;
pub use self::record::{MemoryMessage, MemoryReceipt, MemoryRecord};
