use std::borrow::Cow;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::trace::SpanKind;
use tower_service::Service;

use super::future::ResponseFuture;
use super::PublishLayer;
use crate::classify::{ClassifyError, TypeNameClassifier};
use crate::header::{self, id_ok, usable_id, IdBuffer, Known};
use crate::message::{new_id, Headers, OutgoingMessage, Receipt};
use crate::metrics::{Memo, PublishInstruments};
use crate::scope::MessageScope;
use crate::span::{self, SpanStart};

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
        // One pass: the caller's correlation id, and whether an id header stands twice (a
        // message republished with its headers must leave with one of each).
        let ids = IdHeaders::of(&message);
        let duplicate_message_id = ids.message_ids > 1;
        let explicit = ids
            .correlation
            .and_then(usable_id)
            .map(|id| (ids.correlations > 1).then(|| id.to_owned()));
        let usable_message_id = message.message_id().is_some_and(|id| id_ok(&id));
        let new_message_id = if !usable_message_id {
            let id = generated.new_id();
            message.set_message_id(id.to_owned());
            Some(id)
        } else {
            if duplicate_message_id {
                let id = message
                    .message_id()
                    .map(Cow::into_owned)
                    .unwrap_or_default();
                message.set_message_id(id);
            }
            None
        };
        // An explicit correlation id wins; inside a handler the flow's id; else a new flow,
        // whose correlation id is the id of its first message.
        let explicit = match explicit {
            Some(Some(collapsed)) => {
                message.set_static_header(header::CORRELATION_ID, collapsed);
                true
            }
            Some(None) => true,
            None => false,
        };
        MessageScope::with_current(|scope| {
            if !explicit {
                let correlation_id = match (scope, new_message_id) {
                    (Some(scope), _) => scope.correlation_id().to_owned(),
                    (None, Some(id)) => id.to_owned(),
                    (None, None) => message.message_id().map_or_else(new_id, Cow::into_owned),
                };
                message.set_static_header(header::CORRELATION_ID, correlation_id);
            }
            if let Some(cause) = scope.and_then(MessageScope::message_id) {
                message.set_static_header(header::CAUSATION_ID, cause.to_owned());
            }
        });

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
        };
        let span =
            opentelemetry::Context::map_current(|parent| config.tracer.start(&start, parent));
        if span.is_recording() {
            let message_id = message.message_id();
            span.describe(
                &SpanStart {
                    message_id: message_id.as_deref(),
                    conversation_id: message.header_str(header::CORRELATION_ID),
                    ..start
                },
                |attributes| message.extra_attributes(attributes),
            );
            if let Some(to) = super::link() {
                span.link(&to, Vec::new());
            }
        }
        if config.inject {
            config.propagation.inject_span(&span, &mut message);
        }

        let started = Instant::now();
        let inner = self.inner.call(message);
        ResponseFuture::new(inner, span, started, instruments, config.classifier.clone())
    }
}

/// The first `correlation-id` header and how many of it and of `message-id` a message carries.
struct IdHeaders<'a> {
    correlation: Option<&'a [u8]>,
    correlations: usize,
    message_ids: usize,
}

impl<'a> IdHeaders<'a> {
    fn of<H: Headers + ?Sized>(headers: &'a H) -> Self {
        let mut ids = Self {
            correlation: None,
            correlations: 0,
            message_ids: 0,
        };
        for (key, value) in headers.headers() {
            match Known::of(key) {
                Some(Known::CorrelationId) => {
                    ids.correlation.get_or_insert(value);
                    ids.correlations += 1;
                }
                Some(Known::MessageId) => ids.message_ids += 1,
                _ => {}
            }
        }
        ids
    }
}
