use std::task::{Context, Poll};
use std::time::Instant;

use tower_service::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::future::ResponseFuture;
use super::PublishLayer;
use crate::classify::{ClassifyError, TypeNameClassifier};
use crate::message::{new_id, OutgoingMessage, Receipt};
use crate::propagation::header;
use crate::scope::MessageScope;
use crate::span::{self, SpanStart};

/// A publisher service that traces and measures every message; built by [`PublishLayer`].
#[derive(Clone, Debug)]
pub struct Publish<S, C = TypeNameClassifier> {
    pub(crate) inner: S,
    pub(crate) config: PublishLayer<C>,
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
        let scope = MessageScope::current();

        let message_id = match message.message_id() {
            Some(id) => id.into_owned(),
            None => {
                let id = new_id();
                message.set_message_id(id.clone());
                id
            }
        };
        // An explicit correlation id wins; inside a handler the flow's id; else a new flow.
        let correlation_id = match message.header_str(header::CORRELATION_ID) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => scope
                .as_ref()
                .map_or_else(new_id, |s| s.correlation_id().to_owned()),
        };
        message.set_header(header::CORRELATION_ID, correlation_id.clone());
        if let Some(cause) = scope.as_ref().and_then(MessageScope::message_id) {
            message.set_header(header::CAUSATION_ID, cause.to_owned());
        }

        let system = message.system();
        let instruments = config.metrics.publisher(system, message.destination());
        let span = span::send(&SpanStart {
            system,
            destination: message.destination(),
            message_id: Some(&message_id),
            conversation_id: Some(&correlation_id),
            body_size: message.body_size(),
            partition: message.partition(),
            group: None,
        });
        if !span.is_disabled() {
            let mut extra = Vec::new();
            message.extra_attributes(&mut extra);
            span::add_attributes(&span, extra);
        }
        if config.inject {
            // A span filtered out by the subscriber must not break the trace: pass on the
            // ambient context instead.
            let cx = if span.is_disabled() {
                opentelemetry::Context::current()
            } else {
                span.context()
            };
            config.propagation.inject(&cx, &mut message);
        }

        let start = Instant::now();
        let inner = {
            let _entered = span.enter();
            self.inner.call(message)
        };
        ResponseFuture::new(
            inner,
            span,
            start,
            instruments,
            config.metrics.clone(),
            config.classifier.clone(),
        )
    }
}
