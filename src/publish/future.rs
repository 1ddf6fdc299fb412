//! The future returned by [`Publish`](super::Publish).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use tracing::Span;

use crate::classify::ClassifyError;
use crate::message::Receipt;
use crate::metrics::{Metrics, PublishInstruments};
use crate::span;

/// `error.type` of a publish whose future was dropped before the broker answered.
pub const CANCELLED: &str = "cancelled";

pin_project! {
    /// Resolves when the inner publish resolves; ends the span and records the metrics.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        span: Span,
        classifier: C,
        outcome: Outcome,
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Records the outcome exactly once: on completion, or as cancelled on drop.
struct Outcome {
    pending: Option<(Instant, Arc<PublishInstruments>, Metrics)>,
    span: Span,
}

impl Outcome {
    fn finish(&mut self, error_type: Option<&str>) {
        let Some((start, instruments, metrics)) = self.pending.take() else {
            return;
        };
        let seconds = start.elapsed().as_secs_f64();
        match error_type {
            None => {
                instruments.ok_duration.observe(seconds);
                instruments.ok_sent.inc();
            }
            Some(error_type) => {
                span::record_error(&self.span, error_type);
                metrics.record_publish_error(&instruments, error_type, seconds);
            }
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.finish(Some(CANCELLED));
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(
        inner: F,
        span: Span,
        start: Instant,
        instruments: Arc<PublishInstruments>,
        metrics: Metrics,
        classifier: C,
    ) -> Self {
        Self {
            inner,
            outcome: Outcome {
                pending: Some((start, instruments, metrics)),
                span: span.clone(),
            },
            span,
            classifier,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    T: Receipt,
    C: ClassifyError<E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.inner.poll(cx));
        match &result {
            Ok(receipt) => {
                if let Some(partition) = receipt.partition() {
                    span::record_partition(this.span, partition);
                }
                if !this.span.is_disabled() {
                    let mut extra = Vec::new();
                    receipt.extra_attributes(&mut extra);
                    span::add_attributes(this.span, extra);
                }
                this.outcome.finish(None);
            }
            Err(error) => {
                let error_type = this.classifier.classify(error);
                this.outcome.finish(Some(&error_type));
            }
        }
        Poll::Ready(result)
    }
}
