use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use tower_service::Service;

use super::future::{Outcome, Pending, Recorded, ResponseFuture};
use super::ProcessLayer;
use crate::classify::{Classifier, ClassifyError};
use crate::message::IncomingMessage;
use crate::metrics::{ConsumerInstruments, ConsumerPartition, Memo};
use crate::propagation::Extracted;
use crate::scope::MessageScope;
use crate::span::{self, ActiveSpan, RunningSpan, SpanStart, Tracer};

/// A handler that traces and measures every message; built by [`ProcessLayer`].
#[derive(Clone, Debug)]
pub struct Process<S, C = Classifier> {
    pub(crate) inner: S,
    pub(crate) config: ProcessLayer<C>,
    pub(crate) memo: Memo<ConsumerPartition>,
}

impl<S, C> Process<S, C> {
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

impl<S, C, M> Service<M> for Process<S, C>
where
    S: Service<M>,
    M: IncomingMessage,
    C: ClassifyError<S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, message: M) -> Self::Future {
        let config = &self.config;
        if super::Calling::nested() {
            return ResponseFuture::unrecorded(self.inner.call(message), config.classifier.clone());
        }
        let system = message.system();
        let (trace, ids) = super::scan_headers(&message);
        let mut extracted = config.propagation.extract_scanned(&trace, &message);
        if !extracted.context.has_active_span() {
            // A retry in process of a message without trace context: one trace for all.
            if let Some(previous) = super::retry_of() {
                extracted.context = extracted.context.with_remote_span_context(previous);
            }
        }
        let (scope, ids_invalid) = ids.scope(&message);
        if extracted.invalid || ids_invalid {
            config.metrics.record_trace_context_invalid(system);
        }
        let group = message.consumer_group().unwrap_or("");
        let entry = self.memo.get_or(
            &config.metrics,
            system,
            message.destination(),
            group,
            message.partition(),
            || {
                config.metrics.consumer_partition(
                    system,
                    message.destination(),
                    group,
                    message.partition(),
                )
            },
        );
        let instruments = &entry.consumer;

        let as_parent = config.policy.use_as_parent();
        let span = if as_parent && config.tracer.is_off() {
            // No provider: the creation context is passed on as it is, nothing is built.
            let baggage = config.propagation.may_extract_baggage(&trace);
            RunningSpan::passthrough(extracted.context, baggage)
        } else {
            process_span(config, &message, &scope, instruments, &extracted, as_parent)
        };

        instruments.consumed.inc();
        let created = message.created_at_unix_nanos();
        if let Some(created) = created {
            // Saturating: a creation time in the future (clock skew) reads as no wait.
            let waited = crate::clock::unix_nanos_now().saturating_sub(created);
            instruments.queue_time.observe(waited as f64 / 1e9);
        }
        let pending = Pending::new(Recorded::One(entry, created), 1);
        let called = {
            let _cx = span.attachable().map(|cx| cx.clone().attach());
            let _scope = scope.enter();
            let _calling = super::Calling::enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(message)))
        };
        match called {
            Ok(inner) => ResponseFuture::with_pending(
                inner,
                span,
                Some(scope),
                config.classifier.clone(),
                pending,
            ),
            // A panic in `call` (before there is a future) is recorded like one in the future,
            // then goes on to the consumer core.
            Err(panic) => {
                let mut outcome = Outcome::new(pending, span);
                super::note_failed(outcome.span.context(), scope);
                outcome.finish(Some(crate::classify::PANIC));
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// Starts the process span of `message` (SPEC §3) and makes it ready to run under.
fn process_span<C, M: IncomingMessage>(
    config: &ProcessLayer<C>,
    message: &M,
    scope: &MessageScope,
    instruments: &ConsumerInstruments,
    extracted: &Extracted,
    as_parent: bool,
) -> RunningSpan {
    let start = SpanStart {
        operation: span::OP_PROCESS,
        kind: SpanKind::Consumer,
        system: message.system(),
        destination: message.destination(),
        label: Some(&instruments.destination),
        message_id: scope.message_id(),
        conversation_id: Some(scope.correlation_id()),
        body_size: message.body_size(),
        partition: message.partition(),
        group: message.consumer_group(),
        group_label: Some(&instruments.group),
        batch_size: None,
        name_slot: Some(&instruments.span_name),
    };
    let span = start_process(&config.tracer, &start, extracted, as_parent);
    if span.is_recording() {
        span.describe(&start, |attributes| {
            if let Some(attempt) = message.delivery_attempt() {
                attributes.int(span::DELIVERY_ATTEMPT, i64::from(attempt));
            }
            message.extra_attributes(attributes);
        });
        span.link(extracted.context.span().span_context(), Vec::new());
    }
    span.into_running()
}

/// Starts a process span related to the message's creation context (SPEC §3): as its parent,
/// or under the ambient context with the message's baggage carried over.
pub(crate) fn start_process(
    tracer: &Tracer,
    start: &SpanStart<'_>,
    extracted: &Extracted,
    as_parent: bool,
) -> ActiveSpan {
    if as_parent {
        // An empty extracted context makes the span a root instead of inheriting anything.
        return tracer.start(start, &extracted.context);
    }
    let baggage = extracted.context.baggage();
    opentelemetry::Context::map_current(|current| {
        if baggage.is_empty() {
            tracer.start(start, current)
        } else {
            let baggage: opentelemetry::baggage::Baggage = baggage
                .iter()
                .map(|(key, (value, meta))| (key.clone(), (value.clone(), meta.clone())))
                .collect();
            tracer.start(start, &current.with_baggage(baggage))
        }
    })
}
