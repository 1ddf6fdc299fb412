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

pub use crate::span::SpanAttributes;

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
            .find_map(|(_, value)| crate::text::utf8(value))
    }
}

/// Write access to a message's headers.
///
/// Values are borrowed: a carrier copies them into whatever it stores (a [`HeaderList`] keeps
/// ids and `traceparent` inline, without an allocation of their own).
pub trait HeadersMut {
    /// Sets `name` to `value`, removing every other header of the same name (ASCII
    /// case-insensitive) so that a republished message never carries two.
    fn set_header(&mut self, name: &str, value: &str);

    /// [`set_header`](Self::set_header) for a name known at compile time (the headers eventscope
    /// writes), so that a carrier can store the name without copying it. The default forwards.
    fn set_static_header(&mut self, name: &'static str, value: &str) {
        self.set_header(name, value);
    }

    /// Adds `name: value` where the caller knows there is no header of that name (the publish
    /// layer looked, in its one pass over the headers), so that a carrier can append without
    /// looking again. The default is [`set_static_header`](Self::set_static_header).
    fn append_static_header(&mut self, name: &'static str, value: &str) {
        self.set_static_header(name, value);
    }

    /// Removes every header called `name` (ASCII case-insensitive). Injection uses it so a
    /// stale `tracestate` does not outlive its `traceparent`; the default does nothing, for
    /// carriers that cannot remove.
    fn remove_header(&mut self, name: &str) {
        let _ = name;
    }
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
    /// The message id. The default reads the `message-id` header (when it is a usable id,
    /// SPEC §2); protocols with a native id field (AMQP, JetStream) override it, keeping the
    /// header first. The process layers read a usable `message-id` header themselves and ask
    /// this only for a message without one.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        header_id(self).map(Cow::Borrowed)
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
    /// [`created_at`](Self::created_at) in nanoseconds since the Unix epoch: what the layers
    /// read for the queue time and the lag in seconds. The default converts `created_at`; an
    /// adapter whose broker gives a number (Kafka's milliseconds, JetStream's nanoseconds)
    /// overrides it and skips the round trip through `SystemTime` on every message.
    fn created_at_unix_nanos(&self) -> Option<u64> {
        self.created_at().map(crate::clock::unix_nanos)
    }
    /// Size of the payload in bytes; the default is the length of [`payload`](Self::payload).
    fn body_size(&self) -> Option<usize> {
        Some(self.payload().len())
    }
    /// The payload bytes (empty when the adapter does not expose them).
    fn payload(&self) -> &[u8] {
        &[]
    }
    /// The message key, where the broker has one (Kafka, the embedded broker).
    fn key(&self) -> Option<&[u8]> {
        None
    }
    /// Its offset in its partition, where the broker has offsets (Kafka, the embedded broker).
    fn offset(&self) -> Option<i64> {
        None
    }
    /// Whether the attempts at this message can still be counted once the broker delivers it
    /// again: the broker counts its deliveries, or the message has an id of its own (the
    /// consumer core remembers the attempts of the messages it sent back, by message id).
    /// `true` by default. An adapter returns `false` for a message whose id was made up on
    /// receipt, on a broker that does not count deliveries (RabbitMQ classic queues): the core
    /// then retries it in process, so a retry policy's attempts still run out (SPEC §8).
    fn redeliveries_counted(&self) -> bool {
        true
    }
    /// Which attempt at handling this message this is (1 = the first), counting the
    /// deliveries the broker made and the retries the consumer core made in process, where
    /// either is known (SPEC §8: the higher count wins).
    fn delivery_attempt(&self) -> Option<u32> {
        None
    }
    /// The consumer core tells the message which attempt it is handed to the handler for, the
    /// higher of its own count and [`delivery_attempt`](Self::delivery_attempt): adapters keep
    /// it for `delivery_attempt` to report. The default forgets it.
    fn set_delivery_attempt(&mut self, attempt: u32) {
        let _ = attempt;
    }
    /// Broker-specific span attributes (offset, routing key, key, …). Called only for spans
    /// that are recorded.
    fn extra_attributes(&self, attributes: &mut SpanAttributes) {
        let _ = attributes;
    }
}

/// An incoming message that can be sent on again as a new outgoing record: to a dead-letter
/// destination, or replayed from one (SPEC §8).
///
/// The copy is a new message caused by this one: it keeps the key, the payload, the
/// `correlation-id` and every other header, but not this message's ids. Its `message-id` (the
/// header, and the broker's native id where there is one: AMQP `message_id`, `Nats-Msg-Id`) and
/// its `causation-id` are left out, so the publish layer gives it a fresh id and, published
/// while this message is being processed, a `causation-id` naming this message. The trace
/// context is replaced by the publish span's as for any publish.
pub trait Republish: IncomingMessage {
    /// The adapter's outgoing record type.
    type Record: OutgoingMessage;

    /// A record for `destination` (a topic, an `{exchange}:{routing key}`, a subject: the
    /// adapter's destination syntax) with this message's key, payload and headers, without its
    /// ids.
    fn republish(&self, destination: &str) -> Self::Record;

    /// Where this message goes when it is dead-lettered and the consumer names no destination
    /// of its own: `{destination}.dlq` (SPEC §8). RabbitMQ's is `{queue}.dlq` through the
    /// default exchange.
    fn dead_letter_destination(&self) -> String {
        format!("{}.dlq", self.destination())
    }

    /// Where it was published to, as a destination [`republish`](Self::republish) takes: what
    /// its dead-letter copy records in `dlq-original-destination`, and where a replay sends it
    /// back. The default is its [`destination`](IncomingMessage::destination); RabbitMQ's is
    /// `{exchange}:{routing key}` (its consumer destination also names the queue).
    fn origin(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.destination())
    }
}

/// The headers a republished copy leaves out: the ids of the message it copies.
#[cfg_attr(not(any(feature = "kafka", feature = "memory")), allow(dead_code))]
pub(crate) fn republished_header(name: &str) -> bool {
    matches!(
        crate::header::Known::of(name),
        Some(crate::header::Known::MessageId | crate::header::Known::CausationId)
    )
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
        self.header_str(crate::header::MESSAGE_ID)
            .map(Cow::Borrowed)
    }
    /// Stores a generated message id; the default writes the `message-id` header.
    fn set_message_id(&mut self, id: &str) {
        self.set_static_header(crate::header::MESSAGE_ID, id);
    }
    /// Partition chosen by the caller, if any.
    fn partition(&self) -> Option<i32> {
        None
    }
    /// Size of the payload in bytes; the default is the length of [`payload`](Self::payload).
    fn body_size(&self) -> Option<usize> {
        Some(self.payload().len())
    }
    /// The payload bytes, for layers that look at what is sent, such as schema validation.
    ///
    /// Required: a default of "no bytes" once made the schema layer refuse every record of
    /// three adapters as not JSON.
    fn payload(&self) -> &[u8];
    /// Broker-specific span attributes. Called only for spans that are recorded.
    fn extra_attributes(&self, attributes: &mut SpanAttributes) {
        let _ = attributes;
    }
}

/// What a publisher returns once the broker acknowledged the message.
pub trait Receipt {
    /// Partition the message landed in.
    fn partition(&self) -> Option<i32> {
        None
    }
    /// Broker-specific span attributes known from the acknowledgement (offset, sequence, …).
    /// Called only for spans that are recorded.
    fn extra_attributes(&self, attributes: &mut SpanAttributes) {
        let _ = attributes;
    }
}

impl Receipt for () {}

/// An ordered, owned list of headers with byte values: what the embedded broker stores and
/// what publisher records carry until they are handed to a client.
///
/// Values up to 55 bytes (an id, a `traceparent`) are kept in place, so the headers eventscope
/// writes cost the list one allocation, not one each.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderList(Vec<(Cow<'static, str>, Value)>);

/// The longest value kept in place: a `traceparent`.
const INLINE_VALUE: usize = 55;

/// A header value, in place when it fits.
#[derive(Clone)]
enum Value {
    Inline(arrayvec::ArrayVec<u8, INLINE_VALUE>),
    Heap(Vec<u8>),
}

impl Value {
    fn copy(bytes: &[u8]) -> Self {
        match arrayvec::ArrayVec::try_from(bytes) {
            Ok(inline) => Self::Inline(inline),
            Err(_) => Self::Heap(bytes.to_vec()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline(bytes) => bytes,
            Self::Heap(bytes) => bytes,
        }
    }

    fn into_vec(self) -> Vec<u8> {
        match self {
            Self::Inline(bytes) => bytes.to_vec(),
            Self::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Value {}

impl std::fmt::Debug for HeaderList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(name, value)| (name, String::from_utf8_lossy(value))),
            )
            .finish()
    }
}

impl HeaderList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a text header, keeping any existing header of the same name.
    pub fn push(&mut self, name: impl Into<String>, value: impl AsRef<str>) -> &mut Self {
        self.append(
            Cow::Owned(name.into()),
            Value::copy(value.as_ref().as_bytes()),
        );
        self
    }

    /// Appends a header with a raw value, keeping any existing header of the same name.
    pub fn push_bytes(&mut self, name: impl Into<String>, value: Vec<u8>) -> &mut Self {
        let value = match value.len() {
            0..=INLINE_VALUE => Value::copy(&value),
            _ => Value::Heap(value),
        };
        self.append(Cow::Owned(name.into()), value);
        self
    }

    /// Appends a copy of `value` (kept in place when it fits).
    #[cfg_attr(not(any(feature = "kafka", feature = "memory")), allow(dead_code))]
    pub(crate) fn push_copy(&mut self, name: &str, value: &[u8]) {
        self.append(Cow::Owned(name.to_owned()), Value::copy(value));
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
        // Usually there is none: look before rewriting the list.
        if self.get(name).is_some() {
            self.0.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
        }
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
        self.0.iter().map(|(k, v)| (&**k, v.as_slice()))
    }

    /// The underlying pairs.
    pub fn into_vec(self) -> Vec<(String, Vec<u8>)> {
        self.0
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_vec()))
            .collect()
    }

    fn append(&mut self, name: Cow<'static, str>, value: Value) {
        // Publishing adds a handful of headers: grow once, not header by header (and an empty
        // list by a plain allocation, cheaper than the general growth path).
        if self.0.capacity() == 0 {
            self.0 = Vec::with_capacity(4);
        } else if self.0.capacity() == self.0.len() {
            self.0.reserve(4);
        }
        self.0.push((name, value));
    }

    /// The pairs, names as they were given: a carrier that sends them can use a name known at
    /// compile time without copying it.
    #[cfg(feature = "nats")]
    pub(crate) fn into_parts(self) -> Vec<(Cow<'static, str>, Vec<u8>)> {
        self.0
            .into_iter()
            .map(|(name, value)| (name, value.into_vec()))
            .collect()
    }

    fn replace(&mut self, name: Cow<'static, str>, value: &str) {
        // Overwrite the first of the same name in place; drop any later duplicates. The value
        // is made where it is stored, not first on the stack.
        let Some(first) = self
            .0
            .iter()
            .position(|(key, _)| key.eq_ignore_ascii_case(&name))
        else {
            return self.append(name, Value::copy(value.as_bytes()));
        };
        let duplicated = self.0[first + 1..]
            .iter()
            .any(|(key, _)| key.eq_ignore_ascii_case(&name));
        if duplicated {
            let mut index = 0;
            self.0.retain(|(key, _)| {
                index += 1;
                index <= first + 1 || !key.eq_ignore_ascii_case(&name)
            });
        }
        self.0[first] = (name, Value::copy(value.as_bytes()));
    }
}

impl From<Vec<(String, Vec<u8>)>> for HeaderList {
    fn from(pairs: Vec<(String, Vec<u8>)>) -> Self {
        let mut list = Self(Vec::with_capacity(pairs.len()));
        for (name, value) in pairs {
            list.push_bytes(name, value);
        }
        list
    }
}

impl Headers for HeaderList {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.iter()
    }
}

impl HeadersMut for HeaderList {
    fn set_header(&mut self, name: &str, value: &str) {
        self.replace(Cow::Owned(name.to_owned()), value);
    }

    fn set_static_header(&mut self, name: &'static str, value: &str) {
        self.replace(Cow::Borrowed(name), value);
    }

    fn append_static_header(&mut self, name: &'static str, value: &str) {
        self.append(Cow::Borrowed(name), Value::copy(value.as_bytes()));
    }

    fn remove_header(&mut self, name: &str) {
        self.remove(name);
    }
}

/// The builder methods every adapter's outgoing record shares, written once:
/// the record type needs the fields `key: Option<Vec<u8>>`, `headers: HeaderList`,
/// `partition: Option<i32>` and `timestamp: Option<SystemTime>`.
#[cfg(any(feature = "memory", feature = "kafka"))]
macro_rules! record_builders {
    ($record:ty) => {
        impl $record {
            /// Sets the key; records with the same key go to the same partition.
            pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
                self.key = Some(key.into());
                self
            }

            /// Adds a text header (kept alongside any of the same name).
            pub fn header(mut self, name: impl Into<String>, value: impl AsRef<str>) -> Self {
                self.headers.push(name, value);
                self
            }

            /// Adds a header with a raw value.
            pub fn header_bytes(mut self, name: impl Into<String>, value: Vec<u8>) -> Self {
                self.headers.push_bytes(name, value);
                self
            }

            /// Sends to this partition instead of choosing by key.
            pub fn partition(mut self, partition: i32) -> Self {
                self.partition = Some(partition);
                self
            }

            /// Sets the creation timestamp (default: when the broker or producer accepts it).
            pub fn timestamp(mut self, timestamp: std::time::SystemTime) -> Self {
                self.timestamp = Some(timestamp);
                self
            }

            /// The record's headers.
            pub fn headers(&self) -> &$crate::message::HeaderList {
                &self.headers
            }
        }
    };
}
#[cfg(any(feature = "memory", feature = "kafka"))]
pub(crate) use record_builders;

/// A record type whose headers are a [`HeaderList`] in its field `headers` is its own carrier:
/// [`Headers`] and [`HeadersMut`] for it, written once.
#[cfg(any(feature = "memory", feature = "kafka", feature = "nats"))]
macro_rules! header_list_carrier {
    ($record:ty) => {
        impl $crate::message::Headers for $record {
            fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
                self.headers.iter()
            }
        }

        impl $crate::message::HeadersMut for $record {
            fn set_header(&mut self, name: &str, value: &str) {
                $crate::message::HeadersMut::set_header(&mut self.headers, name, value);
            }

            fn set_static_header(&mut self, name: &'static str, value: &str) {
                $crate::message::HeadersMut::set_static_header(&mut self.headers, name, value);
            }

            fn append_static_header(&mut self, name: &'static str, value: &str) {
                $crate::message::HeadersMut::append_static_header(&mut self.headers, name, value);
            }

            fn remove_header(&mut self, name: &str) {
                self.headers.remove(name);
            }
        }
    };
}
#[cfg(any(feature = "memory", feature = "kafka", feature = "nats"))]
pub(crate) use header_list_carrier;

/// The first `message-id` header, if it is a usable id (SPEC §2).
pub(crate) fn header_id<H: Headers + ?Sized>(headers: &H) -> Option<&str> {
    headers
        .headers()
        .find(|(key, _)| key.eq_ignore_ascii_case(crate::header::MESSAGE_ID))
        .and_then(|(_, value)| crate::header::usable_id(value))
}

/// A broker's id for a message that carries none of its own, from where it sits: `name`
/// followed by each number, `/` before each (`orders/0/42`). Written with `itoa`: through
/// `format!` this cost about a thousand instructions per message, more than the rest of an
/// unsampled process span.
pub(crate) fn position_id<N: itoa::Integer + Copy>(name: &str, numbers: &[N]) -> String {
    let mut id = String::with_capacity(name.len() + 21 * numbers.len());
    id.push_str(name);
    let mut digits = itoa::Buffer::new();
    for &number in numbers {
        id.push('/');
        id.push_str(digits.format(number));
    }
    id
}

/// Generates a new unique id (a UUIDv7: unique, and sortable by creation time).
pub fn new_id() -> String {
    crate::header::IdBuffer::new().new_id().to_owned()
}

#[cfg(test)]
mod tests {
    use super::position_id;

    #[test]
    fn a_position_id_names_where_the_message_sits() {
        assert_eq!(position_id("orders", &[0i64, 42]), "orders/0/42");
        assert_eq!(
            position_id("t", &[-1i64, i64::MAX]),
            "t/-1/9223372036854775807"
        );
        assert_eq!(
            position_id("stream", &[u64::MAX]),
            "stream/18446744073709551615"
        );
        assert_eq!(position_id::<u64>("alone", &[]), "alone");
    }
}
