//! The future returned by [`RabbitPublisher`](super::RabbitPublisher).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::error::PublishError;
use super::record::RabbitReceipt;

/// Resolves when the broker confirmed the publish (or refused it, or the publisher's timeout
/// passed).
///
/// The message is handed to lapin when the future is made (in
/// [`call`](tower_service::Service::call)), so messages go out in the order of the calls and
/// many can wait for their confirms at once, whenever their futures are awaited. lapin's
/// publish is an `async fn`, whose future has no name to store: this one is boxed, one
/// allocation per publish beside the ones lapin makes for the frames.
///
/// Dropping it does not withdraw the message: once handed to lapin, the broker gets it.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<RabbitReceipt, PublishError>> + Send>>,
    /// The outcome, when the first poll already had it (a record refused before sending).
    early: Option<Result<RabbitReceipt, PublishError>>,
}

impl ResponseFuture {
    /// Starts `inner`: its first poll hands the message's frames to lapin (in a runtime; outside
    /// one it starts when first awaited).
    pub(crate) fn start(
        inner: impl Future<Output = Result<RabbitReceipt, PublishError>> + Send + 'static,
    ) -> Self {
        let mut inner: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(inner);
        let mut early = None;
        if tokio::runtime::Handle::try_current().is_ok() {
            // Nobody waits yet: the awaiting task's waker is registered on its first poll.
            if let Poll::Ready(outcome) = inner
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()))
            {
                early = Some(outcome);
            }
        }
        Self { inner, early }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<RabbitReceipt, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(outcome) = self.early.take() {
            return Poll::Ready(outcome);
        }
        self.inner.as_mut().poll(cx)
    }
}
