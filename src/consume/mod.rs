//! The consumer core every broker adapter runs on: it feeds messages to a handler stack and
//! carries out the settle decision of each result (SPEC §7).
//!
//! An adapter hands the core a *source* of messages and a *settler* of decisions; the core
//! gives every message a lane, runs the handler with at most
//! [`max_concurrency`](Consumer::max_concurrency) calls at once, catches a handler panic as a
//! failure with `error.type="panic"`, maps each failure to a [`Decision`] through the
//! consumer's [`ClassifyError`] (the same one its [`process_layer`](Consumer::process_layer)
//! uses), and settles:
//!
//! - on ordered brokers (Kafka, the embedded broker) each partition is a lane handled in order;
//!   `Ack` and `Reject` commit past a message once every earlier message of its partition is
//!   done, `Retry { after }` hands it to the handler again after `after` while the partition
//!   waits, and `Stop` pauses the partition at the message for as long as it is assigned: it is
//!   logged at once at error level, `messaging_consumer_partition_stopped` reads 1, and
//!   [`ConsumeError::PartitionStopped`] is returned when the consumer shuts down;
//! - unordered brokers (RabbitMQ and JetStream, next) settle each message on its own.
//!
//! Nothing is settled before the handler stack returned: delivery is at-least-once. Every
//! settle is timed in `messaging_client_operation_duration_seconds` with
//! `messaging_operation_name="settle"`.
//!
//! **Shutdown** always ends: when the `shutdown` future resolves the core stops fetching, lets
//! in-flight handler calls finish for up to the [`drain_deadline`](Consumer::drain_deadline)
//! (default 30 s), cancels what is left (those messages stay unsettled and are delivered again),
//! makes the final commit and returns.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use eventscope::classify::{Classifier, Decision};
//! use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
//! use eventscope::metrics::Metrics;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventscope::BoxError> {
//! let broker = MemoryBroker::new();
//! broker.publisher().oneshot(MemoryRecord::new("orders", b"{}".to_vec())).await?;
//!
//! let consumer = broker
//!     .consumer("billing")
//!     .subscribe(["orders"])
//!     .metrics(Metrics::new())
//!     .classify_errors(Classifier::new().otherwise(Decision::retry(Duration::from_millis(50))))
//!     .drain_deadline(Duration::from_secs(5));
//! // The process layer shares the consumer's metrics and classifier.
//! let handler = consumer.process_layer().layer(service_fn(|_m: MemoryMessage| async {
//!     Ok::<_, eventscope::BoxError>(())
//! }));
//! consumer.run(handler, tokio::time::sleep(Duration::from_millis(100))).await?;
//! assert_eq!(broker.committed("billing", "orders", 0).unwrap_or(0)
//!     + broker.committed("billing", "orders", 1).unwrap_or(0)
//!     + broker.committed("billing", "orders", 2).unwrap_or(0), 1);
//! # Ok(())
//! # }
//! ```

// Without an adapter feature nothing runs the core.
#![cfg_attr(
    not(any(feature = "memory", feature = "kafka")),
    allow(dead_code, unused_imports)
)]

use std::fmt;
use std::time::Duration;

use crate::classify::Classifier;
#[cfg(doc)]
use crate::classify::Decision;
use crate::metrics::Metrics;
use crate::process::{BatchProcessLayer, ProcessLayer};
use crate::span::Tracer;
use crate::BoxError;

#[cfg(doc)]
use crate::classify::ClassifyError;

mod handle;
mod ordered;
mod source;
#[allow(dead_code)] // the mode RabbitMQ and JetStream run on; tested here until they land
mod unordered;

pub(crate) use self::handle::{Batch, One};

/// `run` and `run_batch` of an ordered adapter's consumer, written once: the adapter's
/// `open(self) -> Result<(source, settler, Core, classifier), ConsumeError>` is all that
/// differs between brokers.
#[cfg(any(feature = "memory", feature = "kafka"))]
macro_rules! ordered_runs {
    ($message:ty) => {
        /// Consumes until `shutdown` resolves, then stops fetching, lets running handler calls
        /// finish (up to the [drain deadline](crate::consume::Consumer::drain_deadline)),
        /// makes the final commit and returns (SPEC §7).
        ///
        /// Dropping the returned future instead aborts at once: what was processed since the
        /// last commit is delivered again.
        ///
        /// # Errors
        ///
        /// [`ConsumeError::PartitionStopped`](crate::consume::ConsumeError::PartitionStopped)
        /// for the first partition a failure stopped (the other partitions went on);
        /// [`ConsumeError::Broker`](crate::consume::ConsumeError::Broker) when the broker
        /// client is misconfigured or fails for good.
        pub async fn run<S>(
            self,
            handler: S,
            shutdown: impl std::future::Future<Output = ()>,
        ) -> Result<(), crate::consume::ConsumeError>
        where
            S: tower_service::Service<$message> + Clone + Send + 'static,
            S::Future: Send,
            S::Error: Into<crate::BoxError> + Send,
            C: crate::classify::ClassifyError<S::Error> + Clone + Send + Sync + 'static,
        {
            let (source, settler, core, classifier) = self.open()?;
            let handler = crate::consume::One {
                service: handler,
                classifier,
            };
            crate::consume::run_ordered(source, settler, handler, 1, core, shutdown).await
        }

        /// Like [`run`](Self::run), handing the handler up to
        /// [`max_batch_size`](crate::consume::Consumer::max_batch_size) messages of one
        /// partition at a time (whatever is buffered, never waiting to fill a batch, never an
        /// empty one). A batch is settled as a whole.
        ///
        /// # Errors
        ///
        /// As for [`run`](Self::run); `offset` is the first offset of the stopped batch.
        pub async fn run_batch<S>(
            self,
            handler: S,
            shutdown: impl std::future::Future<Output = ()>,
        ) -> Result<(), crate::consume::ConsumeError>
        where
            S: tower_service::Service<Vec<$message>> + Clone + Send + 'static,
            S::Future: Send,
            S::Error: Into<crate::BoxError> + Send,
            C: crate::classify::ClassifyError<S::Error> + Clone + Send + Sync + 'static,
        {
            let max_batch = self.options.max_batch;
            let (source, settler, core, classifier) = self.open()?;
            let handler = crate::consume::Batch {
                service: handler,
                classifier,
            };
            crate::consume::run_ordered(source, settler, handler, max_batch, core, shutdown).await
        }
    };
}
pub(crate) use self::ordered::{run_ordered, Core};
pub(crate) use self::source::{Delivery, Event, Lane, OrderedSettler, OrderedSource};
#[cfg(any(feature = "memory", feature = "kafka"))]
pub(crate) use ordered_runs;

/// A consumer: an adapter's source of messages, driven by the core with one [`Metrics`] and
/// one error classifier; see the [module docs](self).
///
/// Built by the adapters ([`MemoryBroker::consumer`](crate::memory::MemoryBroker::consumer),
/// `KafkaConsumer::new`); the settings here are the same for every broker.
pub struct Consumer<A, C = Classifier> {
    pub(crate) adapter: A,
    pub(crate) classifier: C,
    pub(crate) metrics: Metrics,
    pub(crate) options: Options,
    pub(crate) spans: Spans,
}

/// Where the consumer's spans come from, and whether settles are spans too.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spans {
    pub(crate) tracer: Tracer,
    pub(crate) settle: bool,
}

/// What the core needs to know of a consumer besides its source and settler.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) max_concurrency: usize,
    pub(crate) drain_deadline: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) max_buffered: usize,
    pub(crate) max_batch: usize,
}

impl Options {
    pub(crate) const DEFAULT: Self = Self {
        max_concurrency: 16,
        drain_deadline: Duration::from_secs(30),
        commit_interval: Duration::from_secs(1),
        max_buffered: 2000,
        max_batch: 100,
    };
}

impl<A: fmt::Debug, C: fmt::Debug> fmt::Debug for Consumer<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("adapter", &self.adapter)
            .field("classifier", &self.classifier)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<A> Consumer<A> {
    pub(crate) fn with(adapter: A, metrics: Metrics, options: Options) -> Self {
        Self {
            adapter,
            classifier: Classifier::new(),
            metrics,
            options,
            spans: Spans::default(),
        }
    }
}

impl<A, C> Consumer<A, C> {
    /// Most handler calls running at once, across partitions (default 16).
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.options.max_concurrency = max.max(1);
        self
    }

    /// How long shutdown waits for in-flight handler calls before it cancels them (default
    /// 30 s). Cancelled messages stay unsettled and are delivered again.
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.options.drain_deadline = deadline;
        self
    }

    /// How often finished work is committed (default: 1 s for Kafka, 10 ms for the embedded
    /// broker). A consumer that dies without shutting down redelivers what it processed since
    /// its last commit; shutdown commits everything that finished.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.options.commit_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Messages buffered per partition before fetching it is paused (default 2000); fetching
    /// resumes once the handler worked through half of them.
    pub fn max_buffered(mut self, max: usize) -> Self {
        self.options.max_buffered = max.max(2);
        self
    }

    /// Most messages per handler call of `run_batch` (default 100).
    pub fn max_batch_size(mut self, max: usize) -> Self {
        self.options.max_batch = max.max(1);
        self
    }

    /// Uses `classifier` for the `error.type` and the settle [`Decision`] of handler failures
    /// (default [`Classifier::new`]: every failure stops its partition). Call it before
    /// [`process_layer`](Self::process_layer), which hands out the same classifier.
    pub fn classify_errors<C2>(self, classifier: C2) -> Consumer<A, C2> {
        Consumer {
            adapter: self.adapter,
            classifier,
            metrics: self.metrics,
            options: self.options,
            spans: self.spans,
        }
    }

    /// Starts this consumer's spans (its [`process_layer`](Self::process_layer)'s and, when
    /// enabled, the settle spans) with a tracer of `provider` (default: the global provider).
    pub fn tracer_provider<P: crate::SharedTracerProvider>(mut self, provider: &P) -> Self {
        self.spans.tracer = Tracer::from_provider(provider);
        self
    }

    /// Makes every commit / ack / nack / term a `settle {destination}` CLIENT span (SPEC §3;
    /// default off).
    pub fn settle_spans(mut self, on: bool) -> Self {
        self.spans.settle = on;
        self
    }

    /// The metrics this consumer reports into.
    pub fn metrics_handle(&self) -> &Metrics {
        &self.metrics
    }

    /// The classifier in use.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }
}

impl<A, C: Clone> Consumer<A, C> {
    /// A [`ProcessLayer`] recording into this consumer's metrics with its classifier: the
    /// outermost layer of the handler stack to [`run`](crate::memory::MemoryConsumer::run).
    pub fn process_layer(&self) -> ProcessLayer<C> {
        ProcessLayer::new(self.metrics.clone())
            .classify_errors(self.classifier.clone())
            .with_tracer(self.spans.tracer.clone())
    }

    /// A [`BatchProcessLayer`] recording into this consumer's metrics with its classifier, for
    /// `run_batch`.
    pub fn batch_process_layer(&self) -> BatchProcessLayer<C> {
        BatchProcessLayer::new(self.metrics.clone())
            .classify_errors(self.classifier.clone())
            .with_tracer(self.spans.tracer.clone())
    }
}

/// Why a consumer stopped or reported a failure.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsumeError {
    /// A failure decided [`Decision::Stop`] on this message of an ordered broker; nothing at or
    /// after `offset` was committed. Reported when the consumer returns; the partition was
    /// logged and shown in `messaging_consumer_partition_stopped` at once.
    PartitionStopped {
        /// Topic.
        destination: String,
        /// Partition.
        partition: i32,
        /// Offset of the message that failed (the first of a batch).
        offset: i64,
        /// The failure's `error.type`.
        error_type: String,
        /// The handler's error.
        source: BoxError,
    },
    /// A failure decided [`Decision::Stop`] on an unordered broker: the consumer stopped
    /// pulling.
    Stopped {
        /// Queue or stream.
        destination: String,
        /// The failure's `error.type`.
        error_type: String,
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
                error_type,
                source,
            } => write!(
                f,
                "handler failed ({error_type}) on {destination}[{partition}] at offset {offset}, partition stopped: {source}"
            ),
            Self::Stopped {
                destination,
                error_type,
                source,
            } => write!(
                f,
                "handler failed ({error_type}) on {destination}, consumer stopped: {source}"
            ),
            Self::Broker(e) => write!(f, "broker error: {e}"),
        }
    }
}

impl std::error::Error for ConsumeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::PartitionStopped { source, .. }
            | Self::Stopped { source, .. }
            | Self::Broker(source) => Some(&**source),
        }
    }
}

/// Where a settle happens: the optional `settle {destination}` CLIENT span (SPEC §3), started
/// at `started` and ended `elapsed` later, with `error.type` when the settle failed. Called
/// once per destination for every commit / ack / nack / term the core makes.
pub(crate) fn settle_span_hook(
    spans: &Spans,
    system: &'static str,
    destination: &str,
    group: &str,
    started: std::time::SystemTime,
    elapsed: Duration,
    error_type: Option<&str>,
) {
    if !spans.settle {
        return;
    }
    let start = crate::span::SpanStart {
        operation: crate::span::OP_SETTLE,
        kind: opentelemetry::trace::SpanKind::Client,
        system,
        destination,
        label: None,
        message_id: None,
        conversation_id: None,
        body_size: None,
        partition: None,
        group: Some(group),
        group_label: None,
        batch_size: None,
    };
    let span = opentelemetry::Context::map_current(|parent| {
        spans.tracer.start_at(&start, parent, started)
    });
    span.describe(&start, |_| {});
    if let Some(error_type) = error_type {
        span.fail(error_type);
    }
    span.end_at(started + elapsed);
}
