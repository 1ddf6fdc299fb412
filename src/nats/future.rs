//! The future returned by [`NatsPublisher`](super::NatsPublisher) and
//! [`JetStreamPublisher`](super::JetStreamPublisher).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::error::PublishError;

/// Resolves when the client flushed the message (core NATS) or the stream acknowledged it
/// (JetStream).
///
/// async-nats' publish futures cannot be named, so each publish boxes one: an allocation next
/// to the several the client makes per message. Dropping it before it resolves may still leave
/// the message sent.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<T, PublishError>> + Send>>,
}

impl<T> ResponseFuture<T> {
    pub(crate) fn new(
        inner: impl Future<Output = Result<T, PublishError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
