//! Traced and measured message processing.
//!
//! [`ProcessLayer`] wraps a handler: a [`tower::Service`] that takes an
//! [`IncomingMessage`](crate::message::IncomingMessage). For every message it:
//!
//! - extracts the creation context from the headers (never failing: an unusable context counts in
//!   `eventscope_trace_context_invalid_total` and the message is processed as a new root);
//! - runs the handler inside a `process {destination}` CONSUMER span that links to the creation
//!   context, and, per [`ParentPolicy`], also uses it as parent;
//! - records `messaging_client_consumed_messages_total`, `messaging_consumer_queue_time_seconds`,
//!   `messaging_consumer_in_flight_messages` (decremented even when the handler future is dropped)
//!   and `messaging_process_duration_seconds` with `error_type` from a pluggable classifier;
//! - sets a [`MessageScope`](crate::scope::MessageScope) so that whatever the handler publishes
//!   through a [`PublishLayer`](crate::publish::PublishLayer) carries the same `correlation-id`
//!   and `causation-id` = this message's id.
//!
//! [`BatchProcessLayer`] does the same for handlers that take a `Vec` of messages.
//!
//! The layer never settles messages: consumer drivers commit or ack only after the wrapped
//! handler returned `Ok`.
//!
//! # Example
//!
//! ```
//! use eventscope::memory::MemoryMessage;
//! use eventscope::metrics::Metrics;
//! use eventscope::process::{ParentPolicy, ProcessLayer};
//! use tower::{service_fn, Layer};
//!
//! let metrics = Metrics::new();
//! let handler = ProcessLayer::new(metrics)
//!     .parent_policy(ParentPolicy::Parent)
//!     .layer(service_fn(|message: MemoryMessage| async move {
//!         tracing::info!(offset = message.offset(), "charging card");
//!         Ok::<_, std::io::Error>(())
//!     }));
//! # let _ = handler;
//! ```

mod batch;
pub mod future;
mod layer;
mod service;

pub use self::batch::{BatchProcess, BatchProcessLayer};
pub use self::layer::ProcessLayer;
pub use self::service::Process;

/// The trace headers and the id headers of an incoming message, found in one pass.
#[inline]
pub(crate) fn scan_headers<H: crate::message::Headers + ?Sized>(
    message: &H,
) -> (crate::propagation::Scan<'_>, crate::scope::IdScan<'_>) {
    use crate::header::Known;
    let mut trace = crate::propagation::Scan::default();
    let mut ids = crate::scope::IdScan::default();
    for (name, value) in message.headers() {
        match Known::of(name) {
            Some(known @ (Known::Traceparent | Known::Tracestate | Known::Baggage)) => {
                trace.observe(known, value)
            }
            Some(known) => ids.observe(known, value),
            None => {}
        }
    }
    (trace, ids)
}

thread_local! {
    /// Set while a process layer calls the service it wraps.
    static CALLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A process layer calling its inner service. A process layer reached inside another's call (a
/// handler wrapped in a `ProcessLayer` by hand and then given to a consumer, which wraps every
/// handler in its own) records nothing: the consumer's layer, with the consumer's metrics,
/// tracer and classifier, is the one that counts, so there is one span and one set of series
/// per message, never two that disagree.
pub(crate) struct Calling {
    was: bool,
}

impl Calling {
    #[inline]
    pub(crate) fn enter() -> Self {
        Self {
            was: CALLING.replace(true),
        }
    }

    /// Whether this call is inside another process layer's call; warns once if so.
    #[inline]
    pub(crate) fn nested() -> bool {
        if !CALLING.get() {
            return false;
        }
        Self::warn_nested();
        true
    }

    #[cold]
    fn warn_nested() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "a ProcessLayer wraps a handler that a consumer wraps again: the inner layer records nothing; \
                 configure the consumer (metrics, tracer_provider, classify_errors, parent_policy) and pass the bare handler"
            );
        });
    }
}

impl Drop for Calling {
    fn drop(&mut self) {
        CALLING.set(self.was);
    }
}

thread_local! {
    /// The process span of the attempt before, while the consumer core polls a retry in
    /// process: a message that brought no trace context continues that attempt's trace. A
    /// pointer into the pinned `Retrying` future (null when none), so that the check every
    /// message makes is a plain thread-local read.
    static RETRY_OF: std::cell::Cell<*const opentelemetry::trace::SpanContext> =
        const { std::cell::Cell::new(std::ptr::null()) };
    /// The last handler call on this thread that failed inside a process layer: the context of
    /// its process span and the message scope it ran in. The consumer core takes it right
    /// after the failure (same task, same poll) for the dead-letter publish.
    static FAILED: std::cell::RefCell<Option<(opentelemetry::Context, crate::scope::MessageScope)>> =
        const { std::cell::RefCell::new(None) };
}

/// A failed call's process span context and message scope, written by the process layer.
pub(crate) fn note_failed(cx: opentelemetry::Context, scope: crate::scope::MessageScope) {
    FAILED.with(|failed| *failed.borrow_mut() = Some((cx, scope)));
}

/// Takes what the process layer noted of the call that just failed on this thread.
pub(crate) fn take_failed() -> Option<(opentelemetry::Context, crate::scope::MessageScope)> {
    FAILED.with(|failed| failed.borrow_mut().take())
}

/// The span a retry in process continues, if the core is polling one.
#[allow(unsafe_code)]
#[inline]
pub(crate) fn retry_of() -> Option<opentelemetry::trace::SpanContext> {
    // SAFETY: a non-null pointer was set by `Retrying::poll` for the duration of its inner
    // poll, on this thread, pointing into the pinned future (neither moved nor changed while
    // pinned and polled); `RestoreRetry` puts the previous pointer back when that poll ends,
    // unwinding included.
    unsafe { RETRY_OF.get().as_ref() }.cloned()
}

pin_project_lite::pin_project! {
    /// Polls a retry's handler call with the span of the attempt before set (see `RETRY_OF`).
    pub(crate) struct Retrying<F> {
        #[pin]
        inner: F,
        of: Option<opentelemetry::trace::SpanContext>,
    }
}

impl<F> Retrying<F> {
    pub(crate) fn new(inner: F, of: Option<opentelemetry::trace::SpanContext>) -> Self {
        Self { inner, of }
    }
}

impl<F: std::future::Future> std::future::Future for Retrying<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let of: &Option<opentelemetry::trace::SpanContext> = this.of;
        let _restore =
            RestoreRetry(RETRY_OF.replace(of.as_ref().map_or(std::ptr::null(), |sc| sc)));
        this.inner.poll(cx)
    }
}

/// Puts back the `RETRY_OF` a `Retrying` poll found, when the poll ends or unwinds.
struct RestoreRetry(*const opentelemetry::trace::SpanContext);

impl Drop for RestoreRetry {
    fn drop(&mut self) {
        RETRY_OF.set(self.0);
    }
}

/// How the process span relates to the context the message was created in (SPEC §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParentPolicy {
    /// Link to the creation context only; the parent is whatever span is current.
    Link,
    /// Use the creation context as parent, and link to it too.
    Parent,
    /// `Parent` when no span is current (a consumer loop), else `Link`.
    #[default]
    Auto,
}

impl ParentPolicy {
    #[inline]
    pub(crate) fn use_as_parent(self) -> bool {
        match self {
            Self::Link => false,
            Self::Parent => true,
            Self::Auto => !has_ambient_span(),
        }
    }
}

/// A span is current: an eventscope span, or a `tracing` span entered through
/// tracing-opentelemetry (which makes its OpenTelemetry context current).
fn has_ambient_span() -> bool {
    use opentelemetry::trace::TraceContextExt;
    opentelemetry::Context::map_current(|cx| cx.has_active_span())
}
