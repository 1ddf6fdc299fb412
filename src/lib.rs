//! # eventscope
//!
//! Tower middleware that makes event-driven systems observable. Wrap the publisher and the
//! handlers you already have, and every message published and processed is
//!
//! - **traced**: W3C trace context travels in the message headers, publish and process are
//!   OpenTelemetry messaging spans (`send orders`, `process orders`), so one trace runs from the
//!   service that published to every service that processed;
//! - **measured**: latency histograms, counters and consumer lag in a [`prometheus::Registry`];
//! - **correlated**: `correlation-id` and `causation-id` headers follow the business flow.
//!
//! Spans are native OpenTelemetry spans, started through the global tracer provider (the `otlp`
//! feature's [`telemetry`] module installs one in one call) or a provider you give a layer
//! (`tracer_provider`). The sampler decides before anything else is built, so unsampled messages
//! cost little, and with no provider installed no span is built at all. While a handler runs, its
//! process span's OpenTelemetry context is current: your own `tracing` spans and log lines inside
//! the handler join the trace.
//!
//! # Example
//!
//! ```
//! use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
//! use eventscope::metrics::Metrics;
//! use eventscope::publish::PublishLayer;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let broker = MemoryBroker::new();
//! let metrics = Metrics::new();
//!
//! // Publish through the layer: trace context and ids go into the headers.
//! let publisher = PublishLayer::new(metrics.clone()).layer(broker.publisher());
//! publisher.oneshot(MemoryRecord::new("orders", b"{}".to_vec())).await?;
//!
//! // Process: the consumer wraps the handler in its own process layer (span, metrics, ids).
//! let consumer = broker.consumer("billing").subscribe(["orders"]).metrics(metrics.clone());
//! let handler = service_fn(|m: MemoryMessage| async move {
//!     assert!(m.headers().get("correlation-id").is_some());
//!     Ok::<_, std::io::Error>(())
//! });
//! let done = async { tokio::time::sleep(std::time::Duration::from_millis(200)).await };
//! consumer.run(handler, done).await?;
//!
//! assert!(metrics.encode().contains("messaging_client_consumed_messages_total"));
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | [`memory`]: the embedded in-memory broker, for demos and tests |
//! | `otlp` | yes | [`telemetry`]: one-call OpenTelemetry setup with OTLP export |
//! | `server` | yes | [`server`]: a `/metrics` HTTP endpoint |
//! | `dedup` | no | `dedup`: the idempotency layer and its in-memory store (`quick_cache`) |
//! | `redis` | no | `dedup::RedisStore`, a dedup store shared through Redis (`redis` 1.x, re-exported as `dedup::redis`; its releases from 1.4 on need Rust 1.88) |
//! | `schema` | no | `schema`: JSON Schema validation of incoming and outgoing events (`jsonschema`, no remote fetching) |
//! | `kafka` | no | `kafka`: publisher, consumer driver and lag for `rdkafka` 0.39 (re-exported as `kafka::rdkafka`) |
//! | `nats` | no | `nats`: core NATS and JetStream publishers, consumers and lag for `async-nats` 0.52 (re-exported as `nats::async_nats`; needs Rust 1.89) |
//! | `rabbitmq` | no | `rabbitmq`: publisher with confirms, consumer that reconnects by itself, and lag for `lapin` 4 (re-exported as `rabbitmq::lapin`; needs Rust 1.88) |
//! | `testing` | no | `testing`: a test kit for your handlers (span capture, metric reads, a consumer run until its messages are settled); enables `memory`. For dev-dependencies |
//!
//! # Supported Rust versions
//!
//! eventscope is built and tested with the latest stable Rust; the minimum supported version is
//! the `rust-version` in `Cargo.toml` (1.85); the `rabbitmq` feature needs 1.88 (the minimum of
//! `lapin` 4) and the `nats` feature 1.89 (async-nats 0.52's own). Raising it is a minor-version
//! change.

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
// `deny`, not `forbid`: two audited places allow it. The Kafka adapter reads raw header names
// through librdkafka (`kafka::carrier`), which `rdkafka` offers no safe way to do, and `text`
// takes checked ASCII as `str` without validating it twice.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
mod clock;
pub mod consume;
pub mod header;
mod hex;
pub mod message;
pub mod metrics;
pub mod process;
pub mod propagation;
pub mod publish;
pub mod replay;
pub mod scope;
mod span;
mod sync;
mod text;

/// A type-erased error, as handlers and services usually return it.
pub use tower::BoxError;

// The everyday types, at the root.
pub use crate::classify::{Classifier, ClassifyError, Decide, Decision};
pub use crate::consume::{ConsumeError, Consumer};
pub use crate::message::{IncomingMessage, OutgoingMessage};
pub use crate::metrics::Metrics;
pub use crate::process::{ParentPolicy, ProcessLayer};
pub use crate::publish::PublishLayer;
pub use crate::scope::MessageScope;

/// A tracer provider the layers and consumers can take (`tracer_provider(&provider)`): any
/// [`opentelemetry::trace::TracerProvider`] whose tracers and spans may move between threads,
/// as the SDK's `SdkTracerProvider` does. Implemented for every such provider.
pub trait SharedTracerProvider:
    opentelemetry::trace::TracerProvider<
    Tracer: opentelemetry::trace::Tracer<Span: Send + Sync + 'static> + Send + Sync + 'static,
>
{
}

impl<P> SharedTracerProvider for P where
    P: opentelemetry::trace::TracerProvider<
        Tracer: opentelemetry::trace::Tracer<Span: Send + Sync + 'static> + Send + Sync + 'static,
    >
{
}

#[cfg(feature = "dedup")]
pub mod dedup;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
#[cfg(feature = "schema")]
pub mod schema;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "otlp")]
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
