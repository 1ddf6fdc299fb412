use std::borrow::Cow;
use std::task::{Context, Poll};

use opentelemetry::trace::SpanKind;
use tower_service::Service;

use super::future::ResponseFuture;
use super::PublishLayer;
use crate::classify::{ClassifyError, TypeNameClassifier};
use crate::header::{self, id_ok, usable_id, IdBuffer, Known};
use crate::message::{Headers, OutgoingMessage, Receipt};
use crate::metrics::{Memo, PublishInstruments};
use crate::scope::MessageScope;
use crate::span::{self, RunningSpan, SpanStart};

/// A publisher service that traces and measures every message; built by [`PublishLayer`].
#[derive(Clone, Debug)]
pub struct Publish<S, C = TypeNameClassifier> {
    pub(crate) inner: S,
    pub(crate) config: PublishLayer<C>,
    pub(crate) memo: Memo<PublishInstruments>,
}

impl<S, C> Publish<S, C> {
    /// The wrapped publisher.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped publisher, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the publisher.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, M> Service<M> for Publish<S, C>
where
    S: Service<M>,
    S::Response: Receipt,
    M: OutgoingMessage,
    C: ClassifyError<S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut message: M) -> Self::Future {
        let config = &self.config;
        let system = message.system();
        let instruments = self.memo.get_or(
            &config.metrics,
            system,
            message.destination(),
            "",
            None,
            || config.metrics.publisher(system, message.destination()),
        );

        let mut generated = IdBuffer::new();
        // One pass: the caller's correlation id, whether an id header stands twice (a message
        // republished with its headers must leave with one of each), and which of the headers
        // written below are absent (those are appended without looking again).
        let ids = IdHeaders::of(&message);
        let explicit = ids
            .correlation
            .and_then(usable_id)
            .map(|id| (ids.counts.correlations > 1).then(|| id.to_owned()));
        let Counts {
            correlations,
            message_ids,
            causations,
            trace_headers,
        } = ids.counts;
        // A `message-id` header comes first (SPEC §2); only without one is the message asked
        // (a protocol's native id).
        let usable_message_id = match ids.message_id {
            Some(header) => usable_id(header).is_some(),
            None => message.message_id().is_some_and(|id| id_ok(&id)),
        };
        let new_message_id = if !usable_message_id {
            let id = generated.new_id();
            message.set_message_id(id);
            Some(id)
        } else {
            if message_ids > 1 {
                let id = message
                    .message_id()
                    .map(Cow::into_owned)
                    .unwrap_or_default();
                message.set_message_id(&id);
            }
            None
        };
        // An explicit correlation id wins; inside a handler the flow's id; else a new flow,
        // whose correlation id is the id of its first message.
        let explicit = match explicit {
            Some(Some(collapsed)) => {
                message.set_static_header(header::CORRELATION_ID, &collapsed);
                true
            }
            Some(None) => true,
            None => false,
        };
        MessageScope::with_current(|scope| {
            if !explicit {
                let mut fallback = IdBuffer::new();
                let correlation_id = match (scope, new_message_id) {
                    (Some(scope), _) => Cow::Borrowed(scope.correlation_id()),
                    (None, Some(id)) => Cow::Borrowed(id),
                    (None, None) => message
                        .message_id()
                        .map(|id| Cow::Owned(id.into_owned()))
                        .unwrap_or_else(|| Cow::Borrowed(fallback.new_id())),
                };
                if correlations == 0 {
                    message.append_static_header(header::CORRELATION_ID, &correlation_id);
                } else {
                    message.set_static_header(header::CORRELATION_ID, &correlation_id);
                }
            }
            if let Some(cause) = scope.and_then(MessageScope::message_id) {
                if causations == 0 {
                    message.append_static_header(header::CAUSATION_ID, cause);
                } else {
                    message.set_static_header(header::CAUSATION_ID, cause);
                }
            }
        });

        let span = if config.tracer.is_off() {
            // No provider: no span; the current trace context and baggage pass on as they are.
            if config.inject {
                opentelemetry::Context::map_current(|cx| {
                    config
                        .propagation
                        .inject_current(cx, &mut message, trace_headers == 0)
                });
            }
            RunningSpan::default()
        } else {
            send_span(config, &mut message, &instruments, trace_headers == 0)
        };

        let started = crate::clock::Monotonic::now();
        let inner = self.inner.call(message);
        ResponseFuture::new(inner, span, started, instruments, config.classifier.clone())
    }
}

/// Starts the send span of `message` and writes its trace context (SPEC §3).
fn send_span<C, M: OutgoingMessage>(
    config: &PublishLayer<C>,
    message: &mut M,
    instruments: &PublishInstruments,
    fresh: bool,
) -> RunningSpan {
    let system = message.system();
    let start = SpanStart {
        operation: span::OP_SEND,
        kind: SpanKind::Producer,
        system,
        destination: message.destination(),
        label: Some(&instruments.destination),
        message_id: None,
        conversation_id: None,
        body_size: message.body_size(),
        partition: message.partition(),
        group: None,
        group_label: None,
        batch_size: None,
        name_slot: Some(&instruments.span_name),
    };
    let span = opentelemetry::Context::map_current(|parent| config.tracer.start(&start, parent));
    if span.is_recording() {
        // The ids as written above, found in one pass (a protocol with a native id field
        // is asked for it).
        let written = IdHeaders::of(message);
        let message_id = match written.message_id.and_then(crate::text::utf8) {
            Some(id) => Some(Cow::Borrowed(id)),
            None => message.message_id(),
        };
        span.describe(
            &SpanStart {
                message_id: message_id.as_deref(),
                conversation_id: written.correlation.and_then(crate::text::utf8),
                ..start
            },
            |attributes| message.extra_attributes(attributes),
        );
        if let Some(to) = super::link() {
            span.link(&to, Vec::new());
        }
    }
    if config.inject {
        config.propagation.inject_span(&span, message, fresh);
    }
    span.into_ending()
}

/// The first `correlation-id` and `message-id` headers, and how many of them, of
/// `causation-id` and of the W3C trace headers a message carries.
struct IdHeaders<'a> {
    correlation: Option<&'a [u8]>,
    message_id: Option<&'a [u8]>,
    counts: Counts,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    correlations: usize,
    message_ids: usize,
    causations: usize,
    trace_headers: usize,
}

impl<'a> IdHeaders<'a> {
    fn of<H: Headers + ?Sized>(headers: &'a H) -> Self {
        let mut ids = Self {
            correlation: None,
            message_id: None,
            counts: Counts::default(),
        };
        for (key, value) in headers.headers() {
            match Known::of(key) {
                Some(Known::CorrelationId) => {
                    ids.correlation.get_or_insert(value);
                    ids.counts.correlations += 1;
                }
                Some(Known::MessageId) => {
                    ids.message_id.get_or_insert(value);
                    ids.counts.message_ids += 1;
                }
                Some(Known::CausationId) => ids.counts.causations += 1,
                Some(Known::Traceparent | Known::Tracestate) => ids.counts.trace_headers += 1,
                Some(Known::Baggage) | None => {}
            }
        }
        ids
    }
}
