//! The futures returned by [`Process`](super::Process) and
//! [`BatchProcess`](super::BatchProcess).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use pin_project_lite::pin_project;
use prometheus::IntGauge;

use crate::classify::ClassifyError;
use crate::metrics::{ConsumerInstruments, Metrics, PartitionState};
use crate::scope::MessageScope;
use crate::span::ActiveSpan;

/// `error.type` of a handler whose future was dropped before it finished.
pub const CANCELLED: &str = "cancelled";

/// Holds `messaging_consumer_in_flight_messages` up while alive.
pub(crate) struct InFlight {
    gauge: IntGauge,
    count: i64,
}

impl InFlight {
    pub(crate) fn new(gauge: IntGauge) -> Self {
        Self::many(gauge, 1)
    }

    pub(crate) fn many(gauge: IntGauge, count: i64) -> Self {
        gauge.add(count);
        Self { gauge, count }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.sub(self.count);
    }
}

/// Records the handler's outcome exactly once: on completion, or as cancelled on drop.
pub(crate) struct Outcome {
    pub(crate) pending: Option<Pending>,
    pub(crate) span: Option<ActiveSpan>,
}

pub(crate) struct Pending {
    pub(crate) start: Instant,
    pub(crate) instruments: Arc<ConsumerInstruments>,
    pub(crate) metrics: Metrics,
    /// The partition whose last-processed creation time advances on success (one message).
    pub(crate) processed_one: Option<(Arc<PartitionState>, SystemTime)>,
    /// The same for every message of a batch.
    pub(crate) processed: Vec<(Arc<PartitionState>, SystemTime)>,
    pub(crate) _in_flight: InFlight,
}

impl Outcome {
    pub(crate) fn finish(&mut self, error_type: Option<&str>) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let seconds = pending.start.elapsed().as_secs_f64();
        match error_type {
            None => {
                pending.instruments.ok_duration.observe(seconds);
                for (state, created) in pending.processed_one.iter().chain(&pending.processed) {
                    state.processed(*created);
                }
            }
            Some(error_type) => {
                if let Some(span) = &self.span {
                    span.fail(error_type);
                }
                pending
                    .metrics
                    .process_error_duration(&pending.instruments, error_type)
                    .observe(seconds);
            }
        }
        if let Some(span) = &self.span {
            span.end();
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.finish(Some(CANCELLED));
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        inner: F,
        span: ActiveSpan,
        scope: MessageScope,
        start: Instant,
        in_flight: InFlight,
        instruments: Arc<ConsumerInstruments>,
        partition: Option<(Arc<PartitionState>, SystemTime)>,
        metrics: Metrics,
        classifier: C,
    ) -> Self {
        Self::with_pending(
            inner,
            span,
            Some(scope),
            classifier,
            Pending {
                start,
                instruments,
                metrics,
                processed_one: partition,
                processed: Vec::new(),
                _in_flight: in_flight,
            },
        )
    }

    pub(crate) fn with_pending(
        inner: F,
        span: ActiveSpan,
        scope: Option<MessageScope>,
        classifier: C,
        pending: Pending,
    ) -> Self {
        Self {
            inner,
            outcome: Outcome {
                pending: Some(pending),
                span: Some(span),
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
                span: None,
            },
            scope: None,
            classifier,
        }
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
        let _cx = this
            .outcome
            .span
            .as_mut()
            .and_then(|span| span.attachable().map(|cx| cx.clone().attach()));
        let _scope = this.scope.as_ref().map(MessageScope::enter);
        // A panic is recorded as such (SPEC §3), then goes on to the consumer core.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| this.inner.poll(cx)));
        let result = match polled {
            Ok(poll) => std::task::ready!(poll),
            Err(panic) => {
                this.outcome.finish(Some(crate::classify::PANIC));
                std::panic::resume_unwind(panic)
            }
        };
        match &result {
            Ok(_) => this.outcome.finish(None),
            Err(error) => {
                let error_type = this.classifier.classify(error);
                this.outcome.finish(Some(&error_type));
            }
        }
        Poll::Ready(result)
    }
}
