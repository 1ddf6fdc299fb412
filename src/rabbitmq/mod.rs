//! RabbitMQ through `lapin`: a traced publisher with publisher confirms, a consumer on the
//! [consumer core](crate::consume) that settles each delivery and reconnects by itself, and
//! consumer lag from the queue's depth.
//!
//! Built on **`lapin` 4** with its tokio runtime and no TLS feature, re-exported as
//! [`eventscope::rabbitmq::lapin`](lapin): name lapin's types through it, or keep your own
//! `lapin = "4"` (adding its `rustls` or `native-tls` feature there for `amqps://`). lapin 4
//! needs Rust 1.88.
//!
//! The adapter has the same parts as every broker adapter (one file each):
//!
//! - **carrier** (`carrier.rs`): AMQP's typed header table as the text headers the layers
//!   read and write. Written headers are long strings (a short string in a header table makes
//!   RabbitMQ close the connection); long strings, byte arrays and short strings are read.
//!   A header of another type under a name eventscope reads is malformed: the message is
//!   processed as a new root and counted in `eventscope_trace_context_invalid_total`, never a
//!   panic or a lost message;
//! - **publisher** (`publisher.rs`): [`RabbitPublisher`], a `tower::Service<RabbitRecord>` over
//!   a lapin [`Channel`](lapin::Channel) in confirm mode, resolving with the broker's
//!   confirm; wrap it in [`publish_layer`], which names failures (`NO_ROUTE`, `nack`,
//!   `timeout`, ...). Made with [`connect`](RabbitPublisher::connect) it owns its connection
//!   and replaces it when it breaks (`link.rs`); made with [`new`](RabbitPublisher::new) it
//!   publishes on your channel;
//! - **consumer** (`consumer.rs`): [`RabbitConsumer`], built from the URI and the queue, with
//!   a connection of its own that it opens again after a loss, logging it and counting it in
//!   `messaging_consumer_reconnects_total`;
//! - **lag** (`lag.rs`): the queue's ready count, read with a passive `queue.declare` every
//!   `lag_interval` of the [`RabbitConsumer`] (default 5 s), as
//!   `messaging_consumer_lag_messages` with an empty partition label.
//!
//! # Names, ids and times
//!
//! - **Destinations** (SPEC §3): a publish is `{exchange}:{routing key}`, one part when the
//!   other is empty (`amq.default` for the default exchange without a key); a delivery is
//!   `{exchange}:{routing key}:{queue}`, empty parts left out and a routing key equal to the
//!   queue written once, so a message sent straight to the queue `jobs` is `jobs` on both
//!   sides. The consumer group is the queue. Spans carry
//!   `messaging.rabbitmq.destination.routing_key`, `messaging.rabbitmq.message.delivery_tag`
//!   and `server.address` / `server.port` (from the URI's host and port; the URI itself, which
//!   holds the password, is never recorded).
//! - **Ids** (SPEC §2): the message id is AMQP's `message_id` property and the correlation id
//!   its `correlation_id` property, as Spring AMQP and MassTransit use them; `causation-id` is
//!   a header. Reading, a `message-id` or `correlation-id` header wins over the property. A
//!   delivery with no usable id at all gets a fresh one on receipt (logged once per
//!   destination), kept for as long as the delivery is handled, so its follow-ups name it as
//!   their cause.
//! - **Creation time**: the `timestamp` property (seconds) and the `timestamp_in_ms` header
//!   (milliseconds, a 64-bit integer as RabbitMQ's own message interceptor writes it) are
//!   written; queue time reads the header first.
//! - **Republishing** ([`Republish`](crate::message::Republish)): a destination string is
//!   `{exchange}:{routing key}` split at the last `:` (exchange names may hold `:`),
//!   `{exchange}:` for an empty key, or a bare queue name, sent through the default exchange;
//!   the dead-letter destination is the queue `{queue}.dlq`.
//!
//! # Limits
//!
//! - A message's properties and headers travel in one AMQP frame (`frame_max`, 128 KiB on
//!   RabbitMQ by default): [`RabbitPublisher`] refuses a record whose headers do not fit
//!   (`invalid_record`) rather than let the broker close the connection over it.
//! - lapin 4.12 reads header names and short-string properties (`message_id`,
//!   `correlation_id`, `type`, ...) as UTF-8 and fails the whole connection on one that is not,
//!   although RabbitMQ stores such a message. The consumer logs it as an error, reconnects (each
//!   time counted in `messaging_consumer_reconnects_total`) and the message comes back, until it
//!   is moved away with another client or purged; then the consumer goes on by itself. Nothing
//!   in lapin lets an adapter see or skip that delivery.
//!
//! # Example
//!
//! ```no_run
//! use eventscope::metrics::Metrics;
//! use eventscope::rabbitmq::{self, RabbitConsumer, RabbitMessage, RabbitPublisher, RabbitRecord};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let uri = "amqp://guest:guest@127.0.0.1:5672/%2f";
//! let metrics = Metrics::new();
//!
//! // Publish: a connection of the publisher's own, in confirm mode, wrapped. It is replaced
//! // when it breaks, so publishing resumes by itself after a broker restart.
//! let publisher = rabbitmq::publish_layer(metrics.clone())
//!     .layer(RabbitPublisher::connect(uri).await?);
//! publisher
//!     .clone()
//!     .oneshot(RabbitRecord::new("orders", "created", b"{\"id\":1}".to_vec()).persistent())
//!     .await?;
//!
//! // Consume a queue: a connection of its own, prefetch = max_concurrency, lag every 5 s.
//! let consumer = RabbitConsumer::new(uri, "billing")?
//!     .metrics(metrics.clone())
//!     .max_concurrency(16);
//! let handler = service_fn(|m: RabbitMessage| async move {
//!     tracing::info!(routing_key = m.routing_key(), "charging card");
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
pub mod future;
mod lag;
mod link;
mod publisher;
mod record;

pub use self::consumer::{RabbitConsumer, RabbitSubscription};
pub use self::error::{ConfigError, PublishError, RabbitErrorClassifier};
pub use self::publisher::{publish_layer, RabbitPublisher};
pub use self::record::{RabbitMessage, RabbitReceipt, RabbitRecord};

/// The `lapin` this adapter is built on (4), for naming its types at the same version.
pub use lapin;
