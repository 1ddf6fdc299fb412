use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::TraceContextExt;
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::future::{InFlight, ResponseFuture};
use super::ProcessLayer;
use crate::classify::{ClassifyError, TypeNameClassifier};
use crate::message::IncomingMessage;
use crate::propagation::Extracted;
use crate::scope::MessageScope;
use crate::span::{self, SpanStart};

/// A handler that traces and measures every message; built by [`ProcessLayer`].
#[derive(Clone, Debug)]
pub struct Process<S, C = TypeNameClassifier> {
    pub(crate) inner: S,
    pub(crate) config: ProcessLayer<C>,
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
        let system = message.system();
        let extracted = config.propagation.extract(&message);
        if extracted.invalid {
            config.metrics.record_trace_context_invalid(system);
        }
        let scope = MessageScope::of(&message);
        let group = message.consumer_group().unwrap_or("");
        let entry = config.metrics.consumer_partition(
            system,
            message.destination(),
            group,
            message.partition(),
        );
        let instruments = Arc::clone(&entry.consumer);

        let span = span::process(
            &SpanStart {
                system,
                destination: message.destination(),
                message_id: scope.message_id(),
                conversation_id: Some(scope.correlation_id()),
                body_size: message.body_size(),
                partition: message.partition(),
                group: message.consumer_group(),
            },
            None,
        );
        if !span.is_disabled() {
            relate_to_creation(&span, &extracted, config.policy.use_as_parent());
            let mut extra = Vec::new();
            message.extra_attributes(&mut extra);
            span::add_attributes(&span, extra);
        }

        instruments.consumed.inc();
        let created = message.created_at();
        if let Some(created) = created {
            let waited = SystemTime::now()
                .duration_since(created)
                .unwrap_or_default();
            instruments.queue_time.observe(waited.as_secs_f64());
        }
        let partition = created.map(|created| (Arc::clone(&entry.partition), created));
        let in_flight = InFlight::new(instruments.in_flight.clone());

        let start = Instant::now();
        let inner = {
            let _entered = span.enter();
            let _scope = scope.enter();
            self.inner.call(message)
        };
        ResponseFuture::new(
            inner,
            span,
            scope,
            start,
            in_flight,
            instruments,
            partition,
            config.metrics.clone(),
            config.classifier.clone(),
        )
    }
}

/// Sets the parent and the link before the span starts, so both are on the exported span.
pub(crate) fn relate_to_creation(span: &Span, extracted: &Extracted, as_parent: bool) {
    let creation = extracted.context.span().span_context().clone();
    if as_parent {
        // An empty extracted context makes the span a root instead of inheriting anything.
        let _ = span.set_parent(extracted.context.clone());
    } else if !extracted.context.baggage().is_empty() {
        let baggage: opentelemetry::baggage::Baggage = extracted
            .context
            .baggage()
            .iter()
            .map(|(key, (value, meta))| (key.clone(), (value.clone(), meta.clone())))
            .collect();
        let parent = opentelemetry::Context::current().with_baggage(baggage);
        let _ = span.set_parent(parent);
    }
    if creation.is_valid() {
        span.add_link(creation);
    }
}
