//! A test kit for your handlers (feature `testing`): run them on the embedded broker, then
//! assert on the spans and metrics they produced, the way the README draws them.
//!
//! - [`SpanCapture`]: a tracer provider that keeps every span in memory. Give its
//!   [`provider`](SpanCapture::provider) to the publish layers and consumers under test; its
//!   [`spans`](SpanCapture::spans) answer "does this trace run `send orders` → `process orders`
//!   → `send payments`?" ([`Spans::assert_chain`]), "which span is `process orders`?"
//!   ([`Spans::one`]), "what `error.type` did it get?" ([`CapturedSpan::assert_attribute`]),
//!   and tell parents, children and links apart. A failed assertion prints the captured traces
//!   as trees.
//! - [`MetricsSnapshot`]: reads a [`Metrics`](crate::metrics::Metrics) by family name and
//!   labels, through the exposition `/metrics` serves: a counter's value, a histogram's count
//!   and sum, a gauge, with `None` for a series that was never recorded.
//! - [`run_until_settled`]: runs a consumer of the embedded broker until a number of messages
//!   are settled (committed), with a timeout that fails with how far it got, and returns what
//!   the consumer returned.
//!
//! Add it to your dev-dependencies only:
//!
//! ```toml
//! [dev-dependencies]
//! eventscope = { version = "0.1", features = ["testing"] }
//! ```
//!
//! # Example
//!
//! A handler that declines a payment: its message's process span gets the classifier's
//! `error.type`, the message is dead-lettered, and the others are settled.
//!
//! ```
//! use eventscope::classify::{Classifier, Decision};
//! use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
//! use eventscope::metrics::{label, name, Metrics};
//! use eventscope::testing::{run_until_settled, MetricsSnapshot, SpanCapture};
//! use eventscope::PublishLayer;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! #[derive(Debug)]
//! struct Declined;
//! # impl std::fmt::Display for Declined {
//! #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("declined") }
//! # }
//! # impl std::error::Error for Declined {}
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventscope::BoxError> {
//! let (broker, metrics, capture) = (MemoryBroker::new(), Metrics::new(), SpanCapture::new());
//! let publisher = PublishLayer::new(metrics.clone())
//!     .tracer_provider(capture.provider())
//!     .layer(broker.publisher());
//! for amount in ["10", "20000", "30"] {
//!     publisher.clone().oneshot(MemoryRecord::new("payments", amount.as_bytes().to_vec())).await?;
//! }
//!
//! let handler = service_fn(|m: MemoryMessage| async move {
//!     match m.payload() {
//!         b"20000" => Err(Declined),
//!         _ => Ok(()),
//!     }
//! });
//! let consumer = broker
//!     .consumer("billing")
//!     .subscribe(["payments"])
//!     .metrics(metrics.clone())
//!     .tracer_provider(capture.provider())
//!     .classify_errors(Classifier::new().on::<Declined>("Declined").decision("Declined", Decision::DeadLetter))
//!     .dead_letter(broker.publisher());
//! run_until_settled(consumer, handler, 3).await?;
//!
//! // The declined payment's trace runs on to its dead-letter copy.
//! let spans = capture.spans();
//! let [_, failed, _] =
//!     spans.assert_chain(["send payments", "process payments", "send payments.dlq"]);
//! failed.assert_attribute("error.type", "Declined");
//! assert!(failed.is_error());
//!
//! let read = MetricsSnapshot::of(&metrics);
//! let billing = [(label::GROUP, "billing")];
//! assert_eq!(read.counter(name::CONSUMED_MESSAGES, &billing), Some(3));
//! assert_eq!(read.counter(name::DEAD_LETTERED, &billing), Some(1));
//! assert_eq!(read.histogram_count(name::PROCESS_DURATION, &[(label::ERROR_TYPE, "Declined")]), Some(1));
//! assert_eq!(read.counter(name::RETRIES, &billing), None, "never retried");
//! # Ok(())
//! # }
//! ```

mod metrics;
mod settle;
mod spans;

pub use self::metrics::MetricsSnapshot;
pub use self::settle::{run_until_settled, UntilSettled};
pub use self::spans::{CapturedLink, CapturedSpan, SpanCapture, SpanKind, Spans, TracingGuard};
