//! The transport-neutral view of a message that the layers work with.
//!
//! Each broker adapter implements [`IncomingMessage`] for the messages its consumer driver hands
//! to a handler, [`OutgoingMessage`] for the records its publisher takes, and [`Receipt`] for what
//! the publisher returns once the broker has acknowledged. The layers see nothing else, so they
//! know no broker.
//!
//! # Example
//!
//! ```
//! use eventscope::message::{IncomingMessage, Headers};
//!
//! struct MyMessage { topic: String, headers: Vec<(String, Vec<u8>)> }
//!
//! impl Headers for MyMessage {
//!     fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
//!         self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
//!     }
//! }
//!
//! impl IncomingMessage for MyMessage {
//!     fn system(&self) -> &'static str { "kafka" }
//!     fn destination(&self) -> &str { &self.topic }
//! }
//!
//! let m = MyMessage { topic: "orders".into(), headers: vec![("Correlation-Id".into(), b"c-1".to_vec())] };
//! assert_eq!(m.header_str("correlation-id"), Some("c-1"));
//! ```

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::KeyValue;

/// Well-known `messaging.system` values.
pub mod system {
    /// Apache Kafka and Kafka-compatible brokers.
    pub const KAFKA: &str = "kafka";
    /// RabbitMQ (AMQP 0-9-1).
    pub const RABBITMQ: &str = "rabbitmq";
    /// NATS and JetStream.
    pub const NATS: &str = "nats";
    /// eventscope's embedded in-memory broker.
    pub const MEMORY: &str = "memory";
}

/// Read access to a message's headers, as raw bytes in their stored order.
///
/// Names are compared ASCII case-insensitively by every helper built on this trait.
pub trait Headers {
    /// Every header, in order, duplicates included. A header without a value yields `b""`.
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_;

    /// The first header called `name` whose value is UTF-8.
    fn header_str(&self, name: &str) -> Option<&str> {
        self.headers()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .find_map(|(_, value)| std::str::from_utf8(value).ok())
    }
}

/// Write access to a message's headers.
pub trait HeadersMut {
    /// Sets `name` to `value`, removing every other header of the same name (ASCII
    /// case-insensitive) so that a republished message never carries two.
    fn set_header(&mut self, name: &str, value: String);
}

/// What a consumer driver hands to the process layer.
///
/// Only [`system`](IncomingMessage::system) and [`destination`](IncomingMessage::destination)
/// are required; everything else defaults to "unknown" and is simply not reported.
pub trait IncomingMessage: Headers {
    /// The `messaging.system` value, see [`system`].
    fn system(&self) -> &'static str;
    /// Topic, queue or subject the message was received from.
    fn destination(&self) -> &str;
    /// The message id. The default reads the `message-id` header; protocols with a native id
    /// field (AMQP, JetStream) override it.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.header_str(crate::propagation::header::MESSAGE_ID)
            .map(Cow::Borrowed)
    }
    /// Partition the message was read from.
    fn partition(&self) -> Option<i32> {
        None
    }
    /// Consumer group (or durable consumer / queue) that received it.
    fn consumer_group(&self) -> Option<&str> {
        None
    }
    /// When the message was created (the producer's or broker's timestamp).
    fn created_at(&self) -> Option<SystemTime> {
        None
    }
    /// Size of the payload in bytes.
    fn body_size(&self) -> Option<usize> {
        None
    }
    /// Broker-specific span attributes (offset, routing key, key, …), appended to `attrs`.
    fn extra_attributes(&self, attrs: &mut Vec<KeyValue>) {
        let _ = attrs;
    }
}

/// What a publisher service takes, as seen by the publish layer.
pub trait OutgoingMessage: Headers + HeadersMut {
    /// The `messaging.system` value, see [`system`].
    fn system(&self) -> &'static str;
    /// Topic, exchange/routing key or subject the message goes to.
    fn destination(&self) -> &str;
    /// The message id, if the caller already set one. The default reads the `message-id`
    /// header; protocols with a native id field override it and
    /// [`set_message_id`](Self::set_message_id) together.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.header_str(crate::propagation::header::MESSAGE_ID)
            .map(Cow::Borrowed)
    }
    /// Stores a generated message id; the default writes the `message-id` header.
    fn set_message_id(&mut self, id: String) {
        self.set_header(crate::propagation::header::MESSAGE_ID, id);
    }
    /// Partition chosen by the caller, if any.
    fn partition(&self) -> Option<i32> {
        None
    }
    /// Size of the payload in bytes.
    fn body_size(&self) -> Option<usize> {
        None
    }
    /// Broker-specific span attributes, appended to `attrs`.
    fn extra_attributes(&self, attrs: &mut Vec<KeyValue>) {
        let _ = attrs;
    }
}

/// What a publisher returns once the broker acknowledged the message.
pub trait Receipt {
    /// Partition the message landed in.
    fn partition(&self) -> Option<i32> {
        None
    }
    /// Broker-specific span attributes known from the acknowledgement (offset, sequence, …).
    fn extra_attributes(&self, attrs: &mut Vec<KeyValue>) {
        let _ = attrs;
    }
}

impl Receipt for () {}

/// An ordered, owned list of headers with byte values: what the embedded broker stores and
/// what publisher records carry until they are handed to a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderList(Vec<(String, Vec<u8>)>);

impl HeaderList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a text header, keeping any existing header of the same name.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.push_bytes(name, value.into().into_bytes())
    }

    /// Appends a header with a raw value, keeping any existing header of the same name.
    pub fn push_bytes(&mut self, name: impl Into<String>, value: Vec<u8>) -> &mut Self {
        self.0.push((name.into(), value));
        self
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }

    /// Removes every header called `name` (ASCII case-insensitive).
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }

    /// Number of headers, duplicates included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The headers as `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The underlying pairs.
    pub fn into_vec(self) -> Vec<(String, Vec<u8>)> {
        self.0
    }
}

impl From<Vec<(String, Vec<u8>)>> for HeaderList {
    fn from(pairs: Vec<(String, Vec<u8>)>) -> Self {
        Self(pairs)
    }
}

impl Headers for HeaderList {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.iter()
    }
}

impl HeadersMut for HeaderList {
    fn set_header(&mut self, name: &str, value: String) {
        self.remove(name);
        self.0.push((name.to_owned(), value.into_bytes()));
    }
}

/// Generates a new unique id (a UUIDv7: unique, and sortable by creation time).
pub fn new_id() -> String {
    let mut buffer = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_owned()
}
