use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as semconv;
use tower_layer::Layer;
use tower_service::Service;

use super::future::{Outcome, Pending, Recorded, ResponseFuture};
use super::{ParentPolicy, ProcessLayer};
use crate::classify::{Classifier, ClassifyError};
use crate::message::{IncomingMessage, SpanAttributes};
use crate::scope::MessageScope;
use crate::span::{self, SpanStart};

/// Applies [`BatchProcess`] to a handler of `Vec<M>`.
///
/// One `process {destination}` span per batch with `messaging.batch.message_count`, one link
/// per message carrying that message's attributes; per-message consumed, queue-time and
/// in-flight metrics; one process duration per batch. The span's parent is whatever span is
/// current ([`ParentPolicy`] does not apply: a batch has many creation contexts).
///
/// No [`MessageScope`] is set for a batch as a whole; a handler that publishes per message
/// wraps that work in [`MessageScope::of`]`(&message).scope(...)`.
///
/// # Example
///
/// ```
/// use eventscope::memory::MemoryMessage;
/// use eventscope::metrics::Metrics;
/// use eventscope::process::BatchProcessLayer;
/// use tower::{service_fn, Layer};
///
/// let handler = BatchProcessLayer::new(Metrics::new()).layer(service_fn(
///     |batch: Vec<MemoryMessage>| async move { Ok::<_, std::io::Error>(batch.len()) },
/// ));
/// # let _ = handler;
/// ```
#[derive(Clone, Debug)]
pub struct BatchProcessLayer<C = Classifier> {
    config: ProcessLayer<C>,
}

impl BatchProcessLayer {
    /// Records into `metrics`, extracts W3C Trace Context + Baggage.
    pub fn new(metrics: crate::metrics::Metrics) -> Self {
        Self {
            config: ProcessLayer::new(metrics).parent_policy(ParentPolicy::Link),
        }
    }
}

impl<C> BatchProcessLayer<C> {
    /// Uses another propagator.
    pub fn propagation(self, propagation: crate::propagation::Propagation) -> Self {
        Self {
            config: self.config.propagation(propagation),
        }
    }

    /// Starts the batch spans with a tracer of `provider` (default: the global provider).
    pub fn tracer_provider<P: crate::SharedTracerProvider>(self, provider: &P) -> Self {
        Self {
            config: self.config.tracer_provider(provider),
        }
    }

    /// The batch form of a consumer's process layer: its metrics, tracer, propagator and
    /// classifier (a batch has many creation contexts, so the parent policy is `Link`).
    pub(crate) fn from_process(config: ProcessLayer<C>) -> Self {
        Self {
            config: config.parent_policy(ParentPolicy::Link),
        }
    }

    /// Uses `classifier` to derive `error.type` from the handler's errors.
    pub fn classify_errors<C2>(self, classifier: C2) -> BatchProcessLayer<C2> {
        BatchProcessLayer {
            config: self.config.classify_errors(classifier),
        }
    }
}

impl<S, C: Clone> Layer<S> for BatchProcessLayer<C> {
    type Service = BatchProcess<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BatchProcess {
            inner,
            config: self.config.clone(),
        }
    }
}

/// A batch handler that traces and measures every batch; built by [`BatchProcessLayer`].
#[derive(Clone, Debug)]
pub struct BatchProcess<S, C = Classifier> {
    inner: S,
    config: ProcessLayer<C>,
}

impl<S, C> BatchProcess<S, C> {
    /// The wrapped handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped handler, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, M> Service<Vec<M>> for BatchProcess<S, C>
where
    S: Service<Vec<M>>,
    M: IncomingMessage,
    C: ClassifyError<S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, batch: Vec<M>) -> Self::Future {
        let config = &self.config;
        let metrics = &config.metrics;
        if super::Calling::nested() {
            return ResponseFuture::unrecorded(self.inner.call(batch), config.classifier.clone());
        }
        let Some(first) = batch.first() else {
            // An empty batch is no processing: no span, no series.
            return ResponseFuture::unrecorded(self.inner.call(batch), config.classifier.clone());
        };
        let system = first.system();
        let group = first.consumer_group().unwrap_or("");
        let instruments = metrics.consumer(system, first.destination(), group);
        let start = SpanStart {
            operation: span::OP_PROCESS,
            kind: SpanKind::Consumer,
            system,
            destination: first.destination(),
            label: Some(&instruments.destination),
            message_id: None,
            conversation_id: None,
            body_size: None,
            partition: None,
            group: first.consumer_group(),
            group_label: Some(&instruments.group),
            batch_size: Some(batch.len()),
            name_slot: Some(&instruments.span_name),
        };
        let span =
            opentelemetry::Context::map_current(|parent| config.tracer.start(&start, parent));
        span.describe(&start, |_| {});

        let now = crate::clock::unix_nanos_now();
        let mut processed = Vec::new();
        // The scope only names a message on its link; without a recording span the ids are
        // only checked (for the invalid count).
        let recording = span.is_recording();
        for message in &batch {
            let (trace, ids) = super::scan_headers(message);
            let extracted = config.propagation.extract_scanned(&trace, message);
            let (scope, ids_invalid) = if recording {
                let (scope, invalid) = ids.scope(message);
                (Some(scope), invalid)
            } else {
                (None, ids.is_invalid(message))
            };
            if extracted.invalid || ids_invalid {
                metrics.record_trace_context_invalid(message.system());
            }
            let group = message.consumer_group().unwrap_or("");
            let entry = metrics.consumer_partition(
                message.system(),
                message.destination(),
                group,
                message.partition(),
            );
            entry.consumer.consumed.inc();
            if let Some(created) = message.created_at_unix_nanos() {
                // Saturating: a creation time in the future (clock skew) reads as no wait.
                let waited = now.saturating_sub(created) as f64 / 1e9;
                entry.consumer.queue_time.observe(waited);
                processed.push((Arc::clone(&entry.partition), created));
            }
            if let Some(scope) = &scope {
                span.link(
                    extracted.context.span().span_context(),
                    link_attributes(message, scope),
                );
            }
        }

        let count = batch.len() as i64;
        let pending = Pending::new(Recorded::Batch(instruments, processed), count);
        let span = span.into_running();
        let called = {
            let _cx = span.attachable().map(|cx| cx.clone().attach());
            let _calling = super::Calling::enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(batch)))
        };
        match called {
            Ok(inner) => {
                ResponseFuture::with_pending(inner, span, None, config.classifier.clone(), pending)
            }
            Err(panic) => {
                Outcome::new(pending, span).finish(Some(crate::classify::PANIC));
                std::panic::resume_unwind(panic)
            }
        }
    }
}

fn link_attributes<M: IncomingMessage>(message: &M, scope: &MessageScope) -> Vec<KeyValue> {
    let mut attributes = SpanAttributes::new();
    attributes.string(
        semconv::MESSAGING_MESSAGE_CONVERSATION_ID,
        scope.correlation_id(),
    );
    if let Some(id) = scope.message_id() {
        attributes.string(semconv::MESSAGING_MESSAGE_ID, id);
    }
    if let Some(partition) = message.partition() {
        attributes.value(
            semconv::MESSAGING_DESTINATION_PARTITION_ID,
            crate::span::partition_id(partition),
        );
    }
    message.extra_attributes(&mut attributes);
    attributes.drain().collect()
}
