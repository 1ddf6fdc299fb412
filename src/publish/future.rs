//! The future returned by [`Publish`](super::Publish).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::classify::{ClassifyError, CANCELLED};
use crate::clock::Monotonic;
use crate::message::Receipt;
use crate::metrics::PublishInstruments;
use crate::span::RunningSpan;

pin_project! {
    /// Resolves when the inner publish resolves; ends the span and records the metrics.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
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
    pending: Option<(Monotonic, Arc<PublishInstruments>)>,
    span: RunningSpan,
}

impl Outcome {
    fn finish(&mut self, error_type: Option<&str>) {
        let Some((start, instruments)) = self.pending.take() else {
            return;
        };
        let seconds = start.elapsed_seconds();
        match error_type {
            None => {
                instruments.ok_duration.observe(seconds);
                instruments.ok_sent.inc();
            }
            Some(error_type) => {
                self.span.fail(error_type);
                instruments.record_error(error_type, seconds);
            }
        }
        self.span.end();
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // Checked here, so a finished outcome (nearly all) drops without a call.
        if self.pending.is_some() {
            self.finish(Some(CANCELLED));
        }
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(
        inner: F,
        span: RunningSpan,
        start: Monotonic,
        instruments: Arc<PublishInstruments>,
        classifier: C,
    ) -> Self {
        Self {
            inner,
            outcome: Outcome {
                pending: Some((start, instruments)),
                span,
            },
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
        let result = std::task::ready!(this.inner.poll(cx));
        match &result {
            Ok(receipt) => {
                this.outcome.span.annotate(|attributes| {
                    if let Some(partition) = receipt.partition() {
                        attributes.value(
                            opentelemetry_semantic_conventions::attribute::MESSAGING_DESTINATION_PARTITION_ID,
                            crate::span::partition_id(partition),
                        );
                    }
                    receipt.extra_attributes(attributes);
                });
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
