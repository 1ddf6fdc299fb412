//! NATS and JetStream through `async-nats`: traced publishers, consumers that settle only
//! what was processed, consumer lag and reconnects.
//!
//! Built on **`async-nats` 0.52** (without its default features: no `ring`, websockets,
//! nkeys, key-value or object store), re-exported as [`eventscope::nats::async_nats`](async_nats):
//! name its types through it, or keep your own dependency at the same version. It needs Rust
//! 1.89. Tested against nats-server 2.9.10 and 2.15.1.
//!
//! The adapter has the same parts as every broker adapter:
//!
//! - **carrier** (`carrier.rs`): a [`NatsRecord`] keeps its headers as a
//!   [`HeaderList`](crate::message::HeaderList) until it is sent, then becomes a NATS
//!   `HeaderMap` through the fallible constructors (never `HeaderMap::insert`, which panics on a
//!   bad name); incoming headers are read in place, names ASCII case-insensitively (Go clients
//!   send `Traceparent`);
//! - **publishers** (`publisher.rs`): [`NatsPublisher`] (core NATS: done when the client
//!   flushed the message) and [`JetStreamPublisher`] (done at the stream's acknowledgement,
//!   with a [`JetStreamReceipt`]); wrap either in [`publish_layer`], which names failures by
//!   their [kind](error::PublishErrorKind);
//! - **consumers**: [`NatsConsumer`] (`subscriber.rs`, a core subscription, its queue group
//!   the consumer group) and [`JetStreamConsumer`] (`pull.rs`, a pull consumer, its name the
//!   consumer group), both on the [consumer core](crate::consume)'s unordered mode, each
//!   handler call wrapped in the consumer's process layer;
//! - **lag** (`lag.rs`): the pull consumer's `num_pending` as `messaging_consumer_lag_messages`
//!   (partition label empty) and `num_ack_pending` as `messaging_consumer_unacked_messages`,
//!   read every [`lag_interval`](JetStreamConsumer::lag_interval); reconnects of either
//!   consumer's client in `messaging_consumer_reconnects_total`;
//! - **config** (`config.rs`): [`consumer_config`], the starting point of a pull consumer.
//!
//! # Ids
//!
//! A message's id is its `Nats-Msg-Id` header, the id JetStream deduplicates by: the publish
//! layer writes the id it generates there, and a record with only a `message-id` header is sent
//! with `Nats-Msg-Id` set to it. Reading, a `message-id` header comes first (SPEC §2), then
//! `Nats-Msg-Id`, then, on JetStream, `{stream}/{stream sequence}`; a core NATS message without
//! any gets a fresh id on receipt (logged once per subject).
//!
//! # Settling and redelivery
//!
//! JetStream: see [`JetStreamConsumer`]. A handler that runs longer than half the consumer's
//! `ack_wait` keeps its message **in progress**: a task beside the handlers sends `+WPI` for
//! it every half `ack_wait`, so the server does not deliver it to another consumer while it is
//! still processed (and a late ack does not silently miss). Core NATS cannot deliver a message
//! again: see [`NatsConsumer`].
//!
//! After a connection loss or a server restart both consumers go on by themselves: the client
//! reconnects and resubscribes, a pull consumer's requests are made again. The reconnect is
//! logged and counted in `messaging_consumer_reconnects_total`; a JetStream message that was
//! in flight is delivered again after its `ack_wait`.
//!
//! # Headers the client cannot read
//!
//! async-nats refuses a header block it cannot parse (a value that is not UTF-8, a name with a
//! space, a line without `:`) by **dropping its whole connection**: the message never reaches
//! eventscope, nothing can be counted for it, and the servers (2.9 and 2.15 alike) forward
//! such headers from any publisher. The client reconnects at once. On core NATS the message is
//! lost; on JetStream it is delivered again every `ack_wait` and drops the connection each
//! time, until the consumer's `max_deliver` is used up; [`consumer_config`] bounds it at ten.
//! Whatever the client read together with it is lost with it each time, so messages pulled in
//! the same batch share its fate and may use up their deliveries too: where publishers you do
//! not control write to a stream, pull one message at a time
//! ([`pull_batch(1)`](JetStreamConsumer::pull_batch)), which keeps its neighbours apart.
//! JetStream itself refuses header blocks over 64 KiB (error 10097, a publish error of kind
//! `Other`); core NATS carries headers up to `max_payload`.
//! What eventscope shows of it: the reconnects (`messaging_consumer_reconnects_total` and a
//! warning each time) and a lag that does not shrink while it lasts. Everything the client
//! does deliver is read without a panic: an unusable trace header gives a fresh root and
//! counts in `eventscope_trace_context_invalid_total` (SPEC §2).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use eventscope::nats::{self, async_nats, JetStreamConsumer, JetStreamMessage, JetStreamPublisher, NatsRecord};
//! use eventscope::Metrics;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), eventscope::BoxError> {
//! let metrics = Metrics::new();
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let js = async_nats::jetstream::new(client);
//! let stream = js
//!     .get_or_create_stream(async_nats::jetstream::stream::Config {
//!         name: "ORDERS".into(),
//!         subjects: vec!["orders".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//!
//! // Publish: traced, measured, acknowledged by the stream.
//! let publisher = nats::publish_layer(metrics.clone()).layer(JetStreamPublisher::new(js.clone()));
//! let receipt = publisher.oneshot(NatsRecord::new("orders", "{\"id\":1}")).await?;
//! println!("stored as {}[{}]", receipt.stream, receipt.sequence);
//!
//! // Consume: a durable pull consumer, each message settled once its handler returned.
//! let pull = stream
//!     .get_or_create_consumer("billing", nats::consumer_config("billing"))
//!     .await?;
//! let consumer = JetStreamConsumer::new(js, pull)?
//!     .metrics(metrics.clone())
//!     .lag_interval(Duration::from_secs(5));
//! let handler = service_fn(|m: JetStreamMessage| async move {
//!     tracing::info!(sequence = m.stream_sequence(), "charging card");
//!     Ok::<_, std::io::Error>(())
//! });
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! consumer.run(handler, shutdown).await?;
//! # Ok(())
//! # }
//! ```

mod carrier;
mod config;
mod consumer;
pub mod error;
mod events;
pub mod future;
mod lag;
mod progress;
mod publisher;
mod pull;
mod record;
mod subscriber;

pub use self::config::{consumer_config, MAX_DELIVER};
pub use self::error::{ConfigError, NatsErrorClassifier, PublishError};
pub use self::events::ClientEvents;
pub use self::publisher::{publish_layer, JetStreamPublisher, NatsPublisher};
pub use self::pull::{JetStreamConsumer, JetStreamSettler, JetStreamSource, JetStreamSubscription};
pub use self::record::{JetStreamMessage, JetStreamReceipt, NatsMessage, NatsRecord};
pub use self::subscriber::{NatsConsumer, NatsSettler, NatsSource, NatsSubscription};

/// The `async-nats` this adapter is built on (0.52), for naming its types at the same version.
pub use async_nats;

/// Span attributes of NATS messages that semantic conventions 1.44 do not define (they have no
/// NATS values yet); eventscope's names, in the `messaging.{system}.*` form the conventions use
/// for other brokers.
pub mod attribute {
    /// The JetStream stream a message was stored in (publish and process spans).
    pub const STREAM_NAME: &str = "messaging.nats.stream.name";
    /// Its sequence in the stream (publish and process spans).
    pub const STREAM_SEQUENCE: &str = "messaging.nats.stream.sequence";
    /// `true` when the stream already held a message with the published `Nats-Msg-Id`, so the
    /// publish stored nothing (publish spans).
    pub const DUPLICATE: &str = "messaging.nats.message.duplicate";
}
