//! Versioned JSON Schema validation of events, before the handler and before the broker.
//!
//! [`Schemas`] holds JSON Schemas compiled once, at startup, by event type and version (a
//! schema that does not compile is an error of [`SchemasBuilder::build`]); nothing is fetched
//! over the network or from files at run time. Each payload is read as SPEC §8 says: the event
//! type from the `event-type` header, else the payload's `eventType`; the version from the
//! `event-version` header, else `eventVersion`, else `version`.
//!
//! [`ValidateIncomingLayer`] wraps a handler. A message whose payload
//!
//! - its schema accepts reaches the handler;
//! - its schema rejects fails with a [`SchemaError`] of kind
//!   [`Schema`](SchemaErrorKind::Schema) (`error.type` `schema`), whose text names the event, the
//!   JSON pointer of each offending value and the validator's complaint (at most 1,024 bytes:
//!   what the dead-letter record's `dlq-error-message` carries);
//! - is not a JSON object naming its event type fails with kind
//!   [`Decode`](SchemaErrorKind::Decode) (`decode`);
//! - has no schema for its type and version passes or fails with kind
//!   [`UnknownSchema`](SchemaErrorKind::UnknownSchema) (`unknown_schema`), as
//!   [`Unknown`] says (default: it fails).
//!
//! A refused message never reaches the handler, and counts in
//! `messaging_consumer_invalid_messages_total` with `reason` = its `error.type`. None of these
//! failures goes away on a retry: map them to a dead letter in the consumer's classifier.
//!
//! [`ValidateOutgoingLayer`] wraps a publisher the same way, so a producer cannot emit an
//! event its own schema rejects: the error goes back to the caller and nothing is sent. Put
//! it inside the [`PublishLayer`](crate::publish::PublishLayer) to see the refusal in the
//! `send` span and in `messaging_client_sent_messages_total{error_type}`, or outside it to
//! record nothing. It reads the payload through
//! [`OutgoingMessage::payload`](crate::message::OutgoingMessage::payload).
//!
//! # Versions side by side
//!
//! Register every version you know. An event of a known type whose version is newer than
//! every registered one is validated against the newest registered schema (unless
//! [`exact_versions`](SchemasBuilder::exact_versions)): a consumer that knows `OrderCreated`
//! v1 accepts v2 events as long as v2 only adds optional fields and the v1 schema does not
//! forbid unknown ones (`additionalProperties: false`), as the tolerant-reader practice
//! recommends. `examples/schemas/` has `OrderCreated` v1 and v2 written that way.
//!
//! # Example
//!
//! ```
//! use eventscope::classify::{Classifier, Decision};
//! use eventscope::memory::{MemoryBroker, MemoryMessage, MemoryRecord};
//! use eventscope::metrics::Metrics;
//! use eventscope::schema::{SchemaError, Schemas, ValidateIncomingLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventscope::BoxError> {
//! let schemas = Schemas::builder()
//!     .schema("OrderCreated", 1, r#"{
//!         "type": "object",
//!         "required": ["orderId"],
//!         "properties": { "orderId": { "type": "string" } }
//!     }"#)
//!     .build()?;
//!
//! let broker = MemoryBroker::new();
//! let metrics = Metrics::new();
//! for payload in [r#"{"eventType":"OrderCreated","version":1,"orderId":"o-1"}"#, "not json"] {
//!     broker.publisher().oneshot(MemoryRecord::new("orders", payload)).await?;
//! }
//!
//! // A refused message is settled past (the consumer's dead-letter decision is the better home).
//! let classifier = Classifier::new()
//!     .on::<SchemaError>("schema")
//!     .decision("schema", Decision::Reject);
//! let consumer = broker
//!     .consumer("billing")
//!     .subscribe(["orders"])
//!     .metrics(metrics.clone())
//!     .classify_errors(classifier);
//! let validate = ValidateIncomingLayer::new(schemas, metrics.clone());
//! let handler = validate.layer(service_fn(
//!     |_m: MemoryMessage| async { Ok::<_, std::io::Error>(()) },
//! ));
//! consumer.run(handler, tokio::time::sleep(std::time::Duration::from_millis(200))).await?;
//!
//! assert!(metrics.encode().contains(r#"reason="decode""#));
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;
mod registry;
mod service;

pub use self::error::{BuildError, SchemaError, SchemaErrorKind};
pub use self::layer::{ValidateIncomingLayer, ValidateOutgoingLayer};
pub use self::registry::{Checked, Schemas, SchemasBuilder};
pub use self::service::{ValidateIncoming, ValidateOutgoing};

/// The headers that name an event's type and version (SPEC §8).
pub mod header {
    /// The event type, e.g. `OrderCreated`.
    pub const EVENT_TYPE: &str = "event-type";
    /// The event's schema version, e.g. `2`.
    pub const EVENT_VERSION: &str = "event-version";
}

/// What the schema layers do with an event whose type and version have no schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unknown {
    /// Let it through unvalidated (a topic that carries event types this service does not
    /// care about).
    Pass,
    /// Refuse it with [`SchemaErrorKind::UnknownSchema`].
    #[default]
    Reject,
}
