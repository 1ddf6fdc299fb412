//! An embedded in-memory broker: topics with partitions, keys, offsets, headers, creation
//! timestamps and consumer groups with committed offsets, shaped like the real adapters.
//!
//! It is the demo's broker and a test kit: a [`MemoryPublisher`] is a `tower::Service` like the
//! Kafka publisher, a [`MemoryConsumer`] drives a handler like the Kafka driver (order per
//! partition, commit after success, lag gauges of SPEC §5), and no setup is needed.
//! It is safe to share between tasks and bounded in memory: each partition keeps at most
//! `retention` records (default 100 000); older ones are dropped and a consumer that falls behind
//! the retained log resumes at the oldest retained record, logging a warning.
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
mod consumer;
mod lag;
mod publisher;
mod record;

pub use self::broker::{MemoryBroker, MemoryBrokerBuilder, MemoryError};
pub use self::consumer::{MemoryConsumer, MemorySubscription};
pub use self::publisher::MemoryPublisher;
pub use self::record::{Delivery, MemoryMessage, MemoryRecord};
