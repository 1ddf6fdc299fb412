//! Kafka through `rdkafka`: a traced publisher, a consumer driver that commits only what was
//! processed, and consumer lag from librdkafka statistics.
//!
//! Built on **`rdkafka` 0.39**, re-exported as [`eventscope::kafka::rdkafka`](rdkafka): use it
//! to name `rdkafka` types without a dependency of your own, or keep yours at the same version
//! (`rdkafka = "0.39"`), since its types appear in this module's API.
//!
//! The adapter has the same parts as every broker adapter (one file each):
//!
//! - **carrier** (`carrier.rs`): a [`KafkaRecord`] keeps its headers as a
//!   [`HeaderList`](crate::message::HeaderList) until it is sent, so the
//!   [`PublishLayer`](crate::publish::PublishLayer) can replace same-named headers; a
//!   [`KafkaMessage`] carries an owned copy of the headers it arrived with;
//! - **publisher** (`publisher.rs`): [`KafkaPublisher`], a `tower::Service<KafkaRecord>` over your
//!   `FutureProducer`, resolving on the delivery report with a [`KafkaReceipt`] (partition and
//!   offset); it waits instead of failing when the producer queue is full. Wrap it in
//!   [`publish_layer`], which names failures by their librdkafka code;
//! - **consumer** (`consumer.rs`, with the callbacks in `context.rs`): [`KafkaConsumer`], built
//!   with [`KafkaConsumer::from_config`] (which checks the settings it relies on): a source of
//!   the consumer's messages and a settler of offsets, run by the
//!   [consumer core](crate::consume): in order per partition, each handler call wrapped in the
//!   consumer's process layer, offsets stored and committed only once settled (SPEC §7);
//! - **lag** (`lag.rs`): librdkafka statistics turned into `messaging_consumer_lag_messages` /
//!   `_seconds` by the [`EventscopeContext`];
//! - **config** (`config.rs`): [`consumer_config`] and [`producer_config`], the starting
//!   points.
//!
//! A message without a `message-id` header has the id `{topic}/{partition}/{offset}`, so
//! what its handler publishes still gets a `causation-id`. Header names that are not UTF-8
//! (only hand-written clients send them) are skipped, never a panic, and counted in
//! `eventscope_trace_context_invalid_total`.
//!
//! Spans carry `messaging.kafka.message.key` (UTF-8 keys only), `messaging.kafka.offset`,
//! `messaging.kafka.message.tombstone`, and on the consumer side `server.address` /
//! `server.port` from `bootstrap.servers`.
//!
//! # Example
//!
//! ```no_run
//! use eventscope::kafka::{self, KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};
//! use eventscope::metrics::Metrics;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let metrics = Metrics::new();
//!
//! // Publish: your producer, wrapped.
//! let producer: kafka::rdkafka::producer::FutureProducer =
//!     kafka::producer_config("127.0.0.1:9092").create()?;
//! let publisher = kafka::publish_layer(metrics.clone()).layer(KafkaPublisher::new(producer));
//! let delivery = publisher
//!     .oneshot(KafkaRecord::new("orders", b"{\"id\":1}".to_vec()).key("customer-7"))
//!     .await?;
//! println!("stored at {}[{}]", delivery.partition, delivery.offset);
//!
//! // Consume: a consumer built from a checked configuration, driving a wrapped handler.
//! let config = kafka::consumer_config("127.0.0.1:9092", "billing");
//! let consumer = KafkaConsumer::from_config(&config)?
//!     .subscribe(&["orders"])?
//!     .metrics(metrics.clone())
//!     .max_concurrency(8);
//! let handler = service_fn(|m: KafkaMessage| async move {
//!     tracing::info!(offset = m.offset(), "charging card");
//!     Ok::<_, std::io::Error>(())
//! });
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! consumer.run(handler, shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! To bring a `StreamConsumer` of your own, create it with an [`EventscopeContext`] from the
//! same configuration and pass it to [`KafkaConsumer::new`].

mod carrier;
mod config;
mod consumer;
mod context;
pub mod error;
pub mod future;
mod lag;
mod publisher;
mod record;

pub use self::config::{consumer_config, producer_config};
pub use self::consumer::{KafkaConsumer, KafkaSubscription};
pub use self::context::EventscopeContext;
pub use self::error::{ConfigError, KafkaErrorClassifier, PublishError};
pub use self::publisher::{publish_layer, KafkaPublisher};
pub use self::record::{KafkaMessage, KafkaReceipt, KafkaRecord};

/// The `rdkafka` this adapter is built on (0.39), for naming its types at the same version.
pub use rdkafka;
