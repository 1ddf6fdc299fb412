//! Idempotent consumers: a handler that runs at most once per message id and consumer group.
//!
//! Brokers deliver at least once: a consumer that dies after its handler succeeded but before
//! the commit, a rebalance, a publisher's retry — each hands the handler a message it has
//! already processed. [`DedupLayer`] remembers the ids it processed in a [`DedupStore`] and
//! answers a redelivery without running the handler.
//!
//! - **Key:** the message id of SPEC §2 (the `message-id` header, else the broker's native id,
//!   else `{topic}/{partition}/{offset}` on Kafka and the embedded broker, so even messages
//!   from producers that set no id are caught when Kafka redelivers them), per consumer group:
//!   `eventscope:dedup:{group}:{id}` (SPEC §8). A message without any id (RabbitMQ or core
//!   NATS, from a producer that set none) cannot be deduplicated: a fresh id never repeats. It
//!   is processed as is, and a rate-limited warning says so.
//! - **Claim, then mark:** before the handler runs, the id is *claimed* for a
//!   [`lease`](DedupLayer::lease); only after the handler succeeded is it marked *done*, for
//!   the [`retention`](DedupLayer::retention) time. A handler that fails releases its claim,
//!   so the retry runs it again.
//! - **A duplicate** (the id is done) never reaches the handler. The layer answers
//!   [`Processed::Duplicate`], which the consumer settles like any success; it counts in
//!   `messaging_consumer_duplicates_total`, and the process span gets the attribute
//!   `eventscope.duplicate = true` ([`DUPLICATE_ATTRIBUTE`]).
//! - **A concurrent duplicate** (the id is claimed by a delivery still running: the same
//!   message on two partitions, or on two consumers after a rebalance) never runs in
//!   parallel with it: the call fails with [`DedupError`] of kind
//!   [`InFlight`](error::DedupErrorKind::InFlight) (`error.type` `dedup_in_flight`), and the
//!   consumer retries it later, when it finds the id done (a duplicate) or released (it runs).
//!   Waiting inside the layer instead would hold a concurrency permit and, with a shared
//!   store, poll it; the consumer's retry waits without holding anything.
//! - **The store is down:** the call fails with kind
//!   [`Unavailable`](error::DedupErrorKind::Unavailable) (`error.type` `dedup_unavailable`),
//!   logged at warn level at most once a second, so the consumer retries it later (fail
//!   closed). [`fail_open`](DedupLayer::fail_open) runs the handler instead.
//!
//! Map both errors to a retry in the consumer's classifier:
//!
//! ```
//! use std::time::Duration;
//! use eventscope::classify::{Classifier, Decision};
//! use eventscope::dedup::error::DedupError;
//!
//! let classifier = Classifier::new()
//!     .on::<DedupError>("dedup")
//!     .decision("dedup", Decision::retry(Duration::from_millis(500)));
//! # let _ = classifier;
//! ```
//!
//! # The window that remains
//!
//! The done mark is written after the handler succeeded, and the broker's commit after that.
//! A consumer that dies *between the handler's success and the mark* leaves a claim, not a done
//! marker: once its lease ends, the redelivery runs the handler again. Marking before the
//! handler would instead lose the message when the handler fails or the process dies. The
//! window is one store round trip long; what happens in it is the handler's own side effect,
//! which only the handler can make idempotent (a unique constraint, an upsert, an idempotency
//! key sent on to the next service).
//!
//! A mark that fails after the handler succeeded (the store went away in between) is tried
//! again, with a pause of up to 800 ms, until the store answers: the call, and on ordered
//! brokers its partition, waits meanwhile, as it would for the store anyway, and the message
//! is settled once it is marked. Failing it instead would retry into its own claim. When
//! failing open, the message is settled at once with a warning, and a redelivery runs the
//! handler again. A call cancelled while it waits (the consumer's drain deadline) makes one
//! last attempt on the runtime.
//!
//! The store remembers only what it keeps: the in-memory store forgets on restart, and a Redis
//! server restarted without persistence (or failing over to a replica that had not yet
//! received the marks) forgets the marks it lost. Run Redis with the persistence your
//! duplicates deserve (`appendonly yes`).
//!
//! # Where the layer goes
//!
//! Inside the consumer's process layer (the process span's context is current while the layer
//! runs, so the duplicate attribute lands on it, and the handler's failures still go through
//! the process layer's classification). Stack the schema layer inside it, so an invalid
//! message is dead-lettered rather than marked done.
//!
//! # Example
//!
//! ```
//! use eventscope::dedup::{DedupLayer, MemoryStore, Processed};
//! use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
//! use eventscope::metrics::Metrics;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventscope::BoxError> {
//! let broker = MemoryBroker::new();
//! let metrics = Metrics::new();
//! // The same event published twice, as a producer's retry would.
//! for _ in 0..2 {
//!     let record = MemoryRecord::new("orders", b"{}".to_vec()).header("message-id", "evt-1");
//!     broker.publisher().oneshot(record).await?;
//! }
//!
//! let consumer = broker.consumer("billing").subscribe(["orders"]).metrics(metrics.clone());
//! let dedup = DedupLayer::new(MemoryStore::default(), metrics.clone());
//! let handler = dedup.layer(service_fn(
//!     |_m: MemoryMessage| async { Ok::<_, std::io::Error>(()) },
//! ));
//! consumer.run(handler, tokio::time::sleep(std::time::Duration::from_millis(200))).await?;
//!
//! assert!(metrics.encode().contains("messaging_consumer_duplicates_total"));
//! # let _ = Processed::<()>::Duplicate;
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;
mod memory;
#[cfg(feature = "redis")]
mod redis_store;
mod service;
mod store;

pub use self::error::{DedupError, DedupErrorKind, StoreError};
pub use self::layer::{DedupLayer, DEFAULT_LEASE, DEFAULT_RETENTION};
pub use self::memory::{MemoryStore, DEFAULT_MAX_ENTRIES};
#[cfg(feature = "redis")]
pub use self::redis_store::{RedisStore, DEFAULT_TIMEOUT};
pub use self::service::Dedup;
pub use self::store::{Claim, ClaimToken, DedupKey, DedupStore, KEY_PREFIX};
/// The `redis` crate (1.x) the [`RedisStore`] is built on, for configuring its connection
/// ([`RedisStore::new`] takes a `redis::aio::ConnectionManager`).
#[cfg(feature = "redis")]
pub use ::redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The process-span attribute set on a delivery skipped as a duplicate (`true`).
pub const DUPLICATE_ATTRIBUTE: &str = "eventscope.duplicate";

/// What a deduplicated handler answers: the handler's response, or that it did not run.
///
/// An enum rather than the handler's response itself: a duplicate has no response of its
/// own, and the layer must not invent one. The consumer settles both as done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed<T> {
    /// The handler ran and succeeded with this response.
    Done(T),
    /// The id was already processed: the handler did not run.
    Duplicate,
}

impl<T> Processed<T> {
    /// `true` for a skipped duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate)
    }

    /// The handler's response, if it ran.
    pub fn into_response(self) -> Option<T> {
        match self {
            Self::Done(response) => Some(response),
            Self::Duplicate => None,
        }
    }
}

/// Lets a log line through at most once a second, counting the ones held back.
#[derive(Debug)]
pub(crate) struct Throttle {
    start: Instant,
    /// Milliseconds since `start` before which nothing is let through.
    next: AtomicU64,
    held_back: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            next: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }
}

impl Throttle {
    const INTERVAL_MS: u64 = 1_000;

    /// `Some(number held back since the last one)` when this one may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now + Self::INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}
