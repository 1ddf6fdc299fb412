//! The consumer core every broker adapter runs on: it feeds messages to a handler stack and
//! carries out the settle decision of each result (SPEC §7).
//!
//! A [`Consumer`] is an adapter (a broker's source of messages and settler of decisions, see
//! [How a broker plugs in](#how-a-broker-plugs-in)) with the settings of the core.
//! [`run`](Consumer::run) wraps your handler in the consumer's own
//! [`ProcessLayer`], so every message is traced and measured with
//! the consumer's metrics, tracer and classifier (your own layers go inside it), and then:
//!
//! - runs at most [`max_concurrency`](Consumer::max_concurrency) handler calls at once;
//! - catches a handler panic as a failure with `error.type="panic"`;
//! - maps each failure to a [`Decision`] through the consumer's
//!   [classifier](Consumer::classify_errors), and settles:
//!   - on ordered brokers (Kafka, the embedded broker) each partition is a lane handled in
//!     order; `Ack` and `Reject` commit past a message once every earlier message of its
//!     partition is done, `Retry { after }` hands it to the handler again after `after` while
//!     the partition waits, and `Stop` pauses the partition at the message for as long as it is
//!     assigned: it is logged at once at error level, `messaging_consumer_partition_stopped`
//!     reads 1, and [`ConsumeError::PartitionStopped`] is returned when the consumer shuts down;
//!   - unordered brokers (RabbitMQ, NATS) settle each message on its own: ack, nack with
//!     requeue, reject or term.
//!
//! Nothing is settled before the handler stack returned: delivery is at-least-once. Every
//! settle is timed in `messaging_client_operation_duration_seconds` with
//! `messaging_operation_name="settle"`, and with [`settle_spans`](Consumer::settle_spans) is a
//! `settle {destination}` span.
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
//! use tower::{service_fn, ServiceExt};
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
//! let handler = service_fn(|_m: MemoryMessage| async { Ok::<_, eventscope::BoxError>(()) });
//! consumer.run(handler, tokio::time::sleep(Duration::from_millis(100))).await?;
//! assert_eq!(broker.committed("billing", "orders", 0).unwrap_or(0)
//!     + broker.committed("billing", "orders", 1).unwrap_or(0)
//!     + broker.committed("billing", "orders", 2).unwrap_or(0), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # How a broker plugs in
//!
#![doc = include_str!("plug-in.md")]

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower::util::Either;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(doc)]
use crate::classify::Decision;
use crate::classify::{Classifier, ClassifyError, Decide};
use crate::message::{Receipt, Republish};
use crate::metrics::Metrics;
use crate::process::{BatchProcessLayer, ParentPolicy, ProcessLayer};
use crate::propagation::Propagation;
use crate::publish::PublishLayer;
use crate::span::Tracer;
use crate::BoxError;

mod dead_letter;
mod handle;
mod ordered;
mod report;
mod run;
mod source;
mod unordered;

pub(crate) use self::dead_letter::Configured;
pub use self::dead_letter::DeadLetters;
use self::handle::{Batch, One};
use self::report::Core;
pub use self::report::Reporter;
use self::run::Run;
pub use self::source::{
    Adapter, DeadLetterRule, Event, Lane, Mode, Opening, Ordered, OrderedSettler, OrderedSource,
    Positioned, Progress, Unordered, UnorderedSettler, UnorderedSource,
};

/// A consumer: an adapter's source of messages, driven by the core with one [`Metrics`], one
/// tracer and one error classifier; see the [module docs](self).
///
/// Built by the adapters ([`MemoryBroker::consumer`](crate::memory::MemoryBroker::consumer),
/// `KafkaConsumer::from_config`, ...) or, for an adapter of your own, by
/// [`from_adapter`](Self::from_adapter); the settings here are the same for every broker.
pub struct Consumer<A, C = Classifier, D = ()> {
    pub(crate) adapter: A,
    classifier: C,
    dead_letters: D,
    /// Read by the test kit, which watches for stopped partitions.
    pub(crate) metrics: Metrics,
    options: Options,
    spans: Spans,
    propagation: Propagation,
    policy: ParentPolicy,
    /// Benchmarks only: the handler runs without the process layer.
    bare: bool,
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

impl<A: fmt::Debug, C: fmt::Debug, D: fmt::Debug> fmt::Debug for Consumer<A, C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("adapter", &self.adapter)
            .field("classifier", &self.classifier)
            .field("dead_letters", &self.dead_letters)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<A: Adapter> Consumer<A> {
    /// A consumer of `adapter` with the default settings: metrics in a registry of their own,
    /// the global tracer provider, [`Classifier::new`].
    pub fn from_adapter(adapter: A) -> Self {
        Self::with(adapter, Options::DEFAULT)
    }
}

impl<A> Consumer<A> {
    pub(crate) fn with(adapter: A, options: Options) -> Self {
        Self {
            adapter,
            classifier: Classifier::new(),
            dead_letters: (),
            metrics: Metrics::new(),
            options,
            spans: Spans::default(),
            propagation: Propagation::default(),
            policy: ParentPolicy::default(),
            bare: false,
        }
    }
}

impl<A, C, D> Consumer<A, C, D> {
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

    /// How often finished work is committed on ordered brokers (default: 1 s for Kafka, 10 ms
    /// for the embedded broker). A consumer that dies without shutting down redelivers what it
    /// processed since its last commit; shutdown commits everything that finished.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.options.commit_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Messages buffered per partition before fetching it is paused (default 2000); fetching
    /// resumes once the handler worked through half of them.
    ///
    /// Small buffers save memory but pause often, and a pause can be dear: librdkafka drops
    /// what it already fetched for a paused partition and fetches it again. On Kafka (tansu on
    /// a 2-core machine, 256-byte messages) a buffer of 2 consumed 184 messages/s, 100 gave
    /// 12.9k/s, 2000 gave 17.9k/s; so a Kafka consumer never buffers fewer than 100 (the
    /// adapter's floor, [`Adapter::min_buffered`]).
    pub fn max_buffered(mut self, max: usize) -> Self {
        self.options.max_buffered = max.max(2);
        self
    }

    /// Most messages per handler call of [`run_batch`](Self::run_batch) (default 100).
    pub fn max_batch_size(mut self, max: usize) -> Self {
        self.options.max_batch = max.max(1);
        self
    }

    /// Reports into `metrics` (default: metrics in a registry of their own): the process
    /// layer's series, the settles, retries, lag and rebalances of this consumer.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Uses `classifier` for the `error.type` and the settle [`Decision`] of handler failures
    /// (default [`Classifier::new`]: every failure stops its partition).
    pub fn classify_errors<C2>(self, classifier: C2) -> Consumer<A, C2, D> {
        Consumer {
            adapter: self.adapter,
            classifier,
            dead_letters: self.dead_letters,
            metrics: self.metrics,
            options: self.options,
            spans: self.spans,
            propagation: self.propagation,
            policy: self.policy,
            bare: self.bare,
        }
    }

    /// Starts this consumer's spans (process and, when enabled, settle spans) with a tracer of
    /// `provider` (default: the global provider, as `telemetry::init` installs it).
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

    /// How a process span relates to the context the message was created in (default
    /// [`ParentPolicy::Auto`]).
    pub fn parent_policy(mut self, policy: ParentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Extracts trace context with another propagator (default W3C Trace Context + Baggage).
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// The classifier in use.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }

    /// For eventscope's own benchmarks, which measure the adapter and the core without the
    /// layer: handlers run without the process layer, so nothing is traced or measured per
    /// message. Not for applications.
    #[doc(hidden)]
    pub fn without_process_layer_for_benchmarks(mut self) -> Self {
        self.bare = true;
        self
    }
}

impl<A: Adapter, C> Consumer<A, C>
where
    A::Message: Republish,
{
    /// Publishes messages that fail for good to a dead-letter destination through `publisher`
    /// (wrapped in the consumer's publish layer: a `send` span, publish metrics), then settles
    /// them (SPEC §7, §8): those whose failure the classifier decides
    /// [`Decision::DeadLetter`], and, by default, those whose [retry
    /// policy](crate::classify::RetryPolicy) ran out of attempts.
    ///
    /// The copy keeps the payload, key and headers with a fresh `message-id`, `causation-id`
    /// = the failed message's id, its `correlation-id`, the SPEC §8 `dlq-*` headers, and a
    /// `send` span that is a child of the failed attempt's `process` span. The original is
    /// settled only once the copy is acknowledged; a publish that fails is logged, counted in
    /// the publish metrics and tried again after a backoff, the original left unsettled.
    /// `messaging_consumer_dead_lettered_messages_total` counts each copy.
    ///
    /// The destination is the adapter's default (`{destination}.dlq`; RabbitMQ `{queue}.dlq`)
    /// unless [`dead_letter_destination`](Consumer::dead_letter_destination) names another.
    /// Where the broker can tell, a missing destination is an error when the consumer starts
    /// ([`check_dead_letters`](Consumer::check_dead_letters)).
    pub fn dead_letter<P>(
        self,
        publisher: P,
    ) -> Consumer<A, C, DeadLetters<<A::Message as Republish>::Record>>
    where
        P: Service<<A::Message as Republish>::Record> + Clone + Send + Sync + 'static,
        P::Response: Receipt + Send + 'static,
        P::Error: Into<BoxError> + 'static,
        P::Future: Send + 'static,
        <A::Message as Republish>::Record: Send + 'static,
    {
        Consumer {
            adapter: self.adapter,
            classifier: self.classifier,
            dead_letters: DeadLetters::new(publisher),
            metrics: self.metrics,
            options: self.options,
            spans: self.spans,
            propagation: self.propagation,
            policy: self.policy,
            bare: self.bare,
        }
    }
}

impl<A, C, R: crate::message::OutgoingMessage + Send + 'static> Consumer<A, C, DeadLetters<R>> {
    /// Names the dead-letter destination of messages consumed from a destination (a topic, a
    /// queue, a subject) instead of the adapter's default.
    pub fn dead_letter_destination(
        mut self,
        rule: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        self.dead_letters = self.dead_letters.destination(rule);
        self
    }

    /// Whether the consumer checks at startup that its dead-letter destinations exist (default
    /// `true`; see [`Adapter::check_dead_letters`]). The adapter checks on the broker it
    /// consumes from: switch it off when the dead-letter publisher writes to another cluster.
    pub fn check_dead_letters(mut self, check: bool) -> Self {
        self.dead_letters = self.dead_letters.checked(check);
        self
    }
}

impl<A: Adapter, C: Clone, D: Configured<A::Message>> Consumer<A, C, D> {
    /// Takes the consumer apart into its adapter, the core's settings, the process layer
    /// every handler is wrapped in, and the dead-letter sink.
    fn into_parts(self) -> Parts<A, C, D::Sink> {
        let group: Arc<str> = Arc::from(self.adapter.group());
        let system = self.adapter.system();
        let sink = self.dead_letters.sink(
            PublishLayer::new(self.metrics.clone())
                .propagation(self.propagation.clone())
                .with_tracer(self.spans.tracer.clone()),
        );
        let layer = ProcessLayer::new(self.metrics.clone())
            .classify_errors(self.classifier)
            .propagation(self.propagation)
            .parent_policy(self.policy)
            .with_tracer(self.spans.tracer.clone());
        let mut options = self.options;
        options.max_buffered = options.max_buffered.max(self.adapter.min_buffered());
        let core = Core {
            reporter: Reporter::new(self.metrics.clone(), system, Arc::clone(&group)),
            metrics: self.metrics,
            system,
            group,
            options,
            spans: self.spans,
        };
        Parts {
            check: self.dead_letters.destination(),
            adapter: self.adapter,
            core,
            layer,
            bare: self.bare,
            sink,
        }
    }

    /// Consumes until `shutdown` resolves, calling `handler` with one message at a time (at
    /// most [`max_concurrency`](Self::max_concurrency) at once) wrapped in the consumer's
    /// process layer; then stops fetching, lets running handler calls finish (up to the
    /// [drain deadline](Self::drain_deadline)), settles what finished and returns (SPEC §7).
    ///
    /// Your own layers (idempotency, schema validation, timeouts, ...) go around `handler`
    /// before you pass it: they run inside the process span.
    ///
    /// Dropping the returned future instead aborts at once: what was processed since the last
    /// commit is delivered again.
    ///
    /// # Errors
    ///
    /// [`ConsumeError::PartitionStopped`] for the first partition a failure stopped (the other
    /// partitions went on), [`ConsumeError::Stopped`] when a failure stopped an unordered
    /// consumer, [`ConsumeError::Broker`] when the broker client is misconfigured or fails for
    /// good.
    pub fn run<S>(
        self,
        handler: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), ConsumeError>> + Send
    where
        S: Service<A::Message> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send,
        C: ClassifyError<S::Error> + Decide + Send + Sync + 'static,
    {
        // Built here, outside the future: the future is `Send` by this signature, so callers
        // that spawn it never have to prove it for their concrete handler types (rustc cannot
        // always, for errors such as `BoxError` behind a higher-ranked bound).
        let Parts {
            adapter,
            core,
            layer,
            bare,
            sink,
            check,
        } = self.into_parts();
        let handler = One {
            dead_letters: sink,
            classifier: layer.classifier.clone(),
            service: if bare {
                Either::Right(handler)
            } else {
                Either::Left(layer.layer(handler))
            },
        };
        let opening = Opening {
            reporter: core.reporter.clone(),
            options: core.options,
        };
        async move {
            if let Some(rule) = check {
                adapter.check_dead_letters(rule).await?;
            }
            let mode = adapter.open(opening).await?;
            mode.run(handler, 1, core, shutdown).await
        }
    }

    /// Like [`run`](Self::run), handing the handler up to
    /// [`max_batch_size`](Self::max_batch_size) messages at a time (of one partition, on
    /// ordered brokers) as a `Vec`: whatever is ready, never waiting to fill a batch, never an
    /// empty one. A batch is one `process` span with a link per message, and is settled as a
    /// whole.
    ///
    /// # Errors
    ///
    /// As for [`run`](Self::run); a stopped partition's `offset` is the first of the batch.
    pub fn run_batch<S>(
        self,
        handler: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), ConsumeError>> + Send
    where
        S: Service<Vec<A::Message>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send,
        C: ClassifyError<S::Error> + Decide + Send + Sync + 'static,
    {
        let Parts {
            adapter,
            core,
            layer,
            bare,
            sink,
            check,
        } = self.into_parts();
        let max_batch = core.options.max_batch;
        let handler = Batch {
            dead_letters: sink,
            classifier: layer.classifier.clone(),
            service: if bare {
                Either::Right(handler)
            } else {
                Either::Left(BatchProcessLayer::from_process(layer).layer(handler))
            },
        };
        let opening = Opening {
            reporter: core.reporter.clone(),
            options: core.options,
        };
        async move {
            if let Some(rule) = check {
                adapter.check_dead_letters(rule).await?;
            }
            let mode = adapter.open(opening).await?;
            mode.run(handler, max_batch, core, shutdown).await
        }
    }
}

/// A consumer taken apart to run: its adapter, the core's settings, the process layer every
/// handler is wrapped in, the dead-letter sink, and whether (and by which rule) dead-letter
/// destinations are checked at startup.
struct Parts<A, C, S> {
    adapter: A,
    core: Core,
    layer: ProcessLayer<C>,
    bare: bool,
    sink: S,
    check: Option<Option<DeadLetterRule>>,
}

/// How long to wait before trying a failed dead-letter publish again: the shape of a retry
/// policy's backoff (100 ms doubling, at most 30 s, full jitter).
pub(crate) fn dead_letter_backoff(tries: u32) -> Duration {
    crate::classify::RetryPolicy::exponential(Duration::from_millis(100))
        .max_delay(Duration::from_secs(30))
        .delay_bound(tries)
        .mul_f64(fastrand::f64())
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
        /// Queue, subject or stream.
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
