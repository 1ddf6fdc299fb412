//! The futures returned by [`Process`](super::Process) and
//! [`BatchProcess`](super::BatchProcess).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::classify::{ClassifyError, CANCELLED};
use crate::clock::Monotonic;
use crate::metrics::{ConsumerInstruments, ConsumerPartition, PartitionState};
use crate::scope::MessageScope;
use crate::span::RunningSpan;

/// Records the handler's outcome exactly once: on completion, or as cancelled on drop.
pub(crate) struct Outcome {
    pub(crate) pending: Option<Pending>,
    pub(crate) span: RunningSpan,
}

/// Where a handler call's outcome goes.
pub(crate) enum Recorded {
    /// One message: the layer's memoised instruments and partition state (held as the one
    /// `Arc` the memo handed out), and the message's creation time (ns since the epoch).
    One(Arc<ConsumerPartition>, Option<u64>),
    /// A batch: the instruments of its first message, and every message's partition state and
    /// creation time (ns since the epoch).
    Batch(Arc<ConsumerInstruments>, Vec<(Arc<PartitionState>, u64)>),
}

impl Recorded {
    fn instruments(&self) -> &ConsumerInstruments {
        match self {
            Self::One(entry, _) => &entry.consumer,
            Self::Batch(instruments, _) => instruments,
        }
    }
}

/// A handler call under way: counted in `messaging_consumer_in_flight_messages` from
/// [`new`](Self::new) until it drops, whether the call finished, failed or was dropped.
pub(crate) struct Pending {
    start: Monotonic,
    recorded: Recorded,
    in_flight: i64,
}

impl Pending {
    #[inline]
    pub(crate) fn new(recorded: Recorded, in_flight: i64) -> Self {
        recorded.instruments().in_flight.add(in_flight);
        Self {
            start: Monotonic::now(),
            recorded,
            in_flight,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.recorded.instruments().in_flight.sub(self.in_flight);
    }
}

impl Outcome {
    pub(crate) fn new(pending: Pending, span: RunningSpan) -> Self {
        Self {
            pending: Some(pending),
            span,
        }
    }

    pub(crate) fn finish(&mut self, error_type: Option<&str>) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let seconds = pending.start.elapsed_seconds();
        let instruments = pending.recorded.instruments();
        match error_type {
            None => {
                instruments.ok_duration.observe(seconds);
                match &pending.recorded {
                    Recorded::One(entry, Some(created)) => entry.partition.processed(*created),
                    Recorded::One(_, None) => {}
                    Recorded::Batch(_, processed) => {
                        for (state, created) in processed {
                            state.processed(*created);
                        }
                    }
                }
            }
            Some(error_type) => {
                self.span.fail(error_type);
                instruments.error_duration(error_type).observe(seconds);
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

pin_project! {
    /// Runs the handler with its span's OpenTelemetry context current and its message scope
    /// set, on every poll; records the outcome.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        scope: Option<MessageScope>,
        classifier: C,
        outcome: Outcome,
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn with_pending(
        inner: F,
        span: RunningSpan,
        scope: Option<MessageScope>,
        classifier: C,
        pending: Pending,
    ) -> Self {
        Self {
            inner,
            outcome: Outcome {
                pending: Some(pending),
                span,
            },
            scope,
            classifier,
        }
    }

    /// Runs `inner` without recording anything (an empty batch).
    pub(crate) fn unrecorded(inner: F, classifier: C) -> Self {
        Self {
            inner,
            outcome: Outcome {
                pending: None,
                span: RunningSpan::default(),
            },
            scope: None,
            classifier,
        }
    }
}

/// Tells the consumer core which span and scope the failed call had (the dead-letter publish
/// is their child; a retry in process continues the trace).
fn note_failed(outcome: &mut Outcome, scope: &mut Option<MessageScope>) {
    if let Some(scope) = scope.take() {
        super::note_failed(outcome.span.context(), scope);
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: ClassifyError<E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _cx = this.outcome.span.attachable().map(|cx| cx.clone().attach());
            let _scope = this.scope.as_ref().map(MessageScope::enter);
            // A panic is recorded as such (SPEC §3), then goes on to the consumer core.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| this.inner.poll(cx)))
        };
        let result = match polled {
            Ok(poll) => std::task::ready!(poll),
            Err(panic) => {
                note_failed(this.outcome, this.scope);
                this.outcome.finish(Some(crate::classify::PANIC));
                std::panic::resume_unwind(panic)
            }
        };
        match &result {
            Ok(_) => this.outcome.finish(None),
            Err(error) => {
                note_failed(this.outcome, this.scope);
                let error_type = this.classifier.classify(error);
                this.outcome.finish(Some(&error_type));
            }
        }
        Poll::Ready(result)
    }
}
