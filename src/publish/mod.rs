//! Traced and measured publishing.
//!
//! [`PublishLayer`] wraps a publisher service (one that takes an [`OutgoingMessage`] and resolves
//! once the broker has acknowledged it). For every message it:
//!
//! - starts a `send {destination}` PRODUCER span and injects its context into the headers,
//!   replacing any `traceparent`/`tracestate`/`baggage` already there;
//! - writes `correlation-id` (kept when the caller set one, else copied from the message being
//!   processed, else new), `causation-id` (the id of the message being processed) and a message
//!   id when the message has none;
//! - records `messaging_client_operation_duration_seconds` and
//!   `messaging_client_sent_messages_total`, ending both the span and the measurement when the
//!   inner future resolves, so partition and offset from the [`Receipt`] are on the span.
//!
//! [`OutgoingMessage`]: crate::message::OutgoingMessage
//! [`Receipt`]: crate::message::Receipt
//!
//! # Example
//!
//! ```
//! use eventscope::memory::{MemoryBroker, MemoryRecord};
//! use eventscope::metrics::Metrics;
//! use eventscope::publish::PublishLayer;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new();
//! let metrics = Metrics::new();
//! let mut publisher = PublishLayer::new(metrics.clone()).layer(broker.publisher());
//!
//! let receipt = publisher
//!     .ready()
//!     .await?
//!     .call(MemoryRecord::new("orders", b"{\"id\":1}".to_vec()))
//!     .await?;
//! assert_eq!(receipt.offset, 0);
//! assert!(metrics.encode().contains(r#"messaging_client_sent_messages_total{error_type="",messaging_destination_name="orders",messaging_system="memory"} 1"#));
//! # Ok(())
//! # }
//! ```

pub mod future;
mod layer;
mod service;

pub use self::layer::PublishLayer;
pub use self::service::Publish;

thread_local! {
    /// A span a publish made in [`with_link`] links to (a replayed dead letter links to the
    /// message that was dead-lettered).
    static LINK: std::cell::RefCell<Option<opentelemetry::trace::SpanContext>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` (which calls a publish layer) so that the `send` span it starts, if it records,
/// links to `to`.
pub(crate) fn with_link<T>(to: opentelemetry::trace::SpanContext, f: impl FnOnce() -> T) -> T {
    let before = LINK.with(|link| link.replace(Some(to)));
    let result = f();
    LINK.with(|link| *link.borrow_mut() = before);
    result
}

/// The span the current publish links to, if any.
pub(crate) fn link() -> Option<opentelemetry::trace::SpanContext> {
    LINK.with(|link| link.borrow().clone())
}
