//! What every consumer driver shares: the failure policy and its errors.
//!
//! Drivers (embedded broker, Kafka, …) feed messages to a handler service, keep order per
//! partition, and settle (commit / ack) a message only after the handler returned `Ok`, so
//! delivery is at-least-once. What happens when the handler fails is explicit:
//!
//! - [`FailurePolicy::StopPartition`] (default): the partition stops at the failed message and is
//!   never committed past it; the other partitions go on. The driver's lag gauges then show the
//!   partition falling behind, and [`ConsumeError::PartitionStopped`] is returned at shutdown.
//! - [`FailurePolicy::Redeliver`]: the same message is handed to the handler again after a pause,
//!   counting each attempt in `messaging_consumer_retries_total`, until it succeeds. Handlers
//!   that can fail for good should route such messages elsewhere themselves (dead letter).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use eventscope::driver::FailurePolicy;
//!
//! let policy = FailurePolicy::Redeliver { backoff: Duration::from_millis(100) };
//! assert_ne!(policy, FailurePolicy::default());
//! ```

use std::fmt;
use std::time::Duration;

/// A boxed error from a handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Derives `error_type` for the driver's own counts (redeliveries) from a handler error.
pub(crate) type ErrorClassifier =
    std::sync::Arc<dyn Fn(&BoxError) -> std::borrow::Cow<'static, str> + Send + Sync>;

/// What a driver does when the handler fails; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Stop consuming the partition at the failed message.
    #[default]
    StopPartition,
    /// Hand the same message to the handler again after `backoff`, until it succeeds.
    Redeliver {
        /// Pause before each redelivery.
        backoff: Duration,
    },
}

/// Why a consumer driver stopped or reported a failure.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsumeError {
    /// Under [`FailurePolicy::StopPartition`], the handler failed on this message; nothing at or
    /// after `offset` was committed.
    PartitionStopped {
        /// Topic or queue.
        destination: String,
        /// Partition.
        partition: i32,
        /// Offset of the message that failed.
        offset: i64,
        /// The handler's error.
        source: BoxError,
    },
    /// The broker client failed.
    Broker(BoxError),
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PartitionStopped {
                destination,
                partition,
                offset,
                source,
            } => write!(
                f,
                "handler failed on {destination}[{partition}] at offset {offset}, partition stopped: {source}"
            ),
            Self::Broker(e) => write!(f, "broker error: {e}"),
        }
    }
}

impl std::error::Error for ConsumeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::PartitionStopped { source, .. } | Self::Broker(source) => Some(&**source),
        }
    }
}
