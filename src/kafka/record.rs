use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(test)]
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::message::{
    system, HeaderList, Headers, IncomingMessage, OutgoingMessage, Receipt, Republish,
    SpanAttributes,
};

/// A record to publish with a [`KafkaPublisher`](super::KafkaPublisher).
///
/// The record owns its data, so it can wait in a full producer queue without borrowing from
/// the caller. Headers become librdkafka headers only when the record is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaRecord {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: HeaderList,
    pub(crate) partition: Option<i32>,
    pub(crate) timestamp: Option<SystemTime>,
}

impl KafkaRecord {
    /// A record for `topic` with `payload`, no key, no headers; the partitioner picks the
    /// partition and the producer the timestamp.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: Some(payload.into()),
            ..Self::tombstone(topic)
        }
    }

    /// A record without payload: a tombstone, which deletes `key` from a compacted topic.
    pub fn tombstone(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            key: None,
            payload: None,
            headers: HeaderList::new(),
            partition: None,
            timestamp: None,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// Milliseconds since the epoch, as Kafka stores timestamps.
    pub(crate) fn timestamp_millis(&self) -> Option<i64> {
        self.timestamp.map(|t| {
            let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
    }
}

crate::message::record_builders!(KafkaRecord);

impl OutgoingMessage for KafkaRecord {
    fn system(&self) -> &'static str {
        system::KAFKA
    }

    fn destination(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> Option<i32> {
        self.partition
    }

    fn body_size(&self) -> Option<usize> {
        self.payload.as_ref().map(Vec::len)
    }

    /// The payload; empty for a tombstone.
    fn payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }

    fn extra_attributes(&self, attrs: &mut SpanAttributes) {
        key_attributes(self.key.as_deref(), self.payload.is_none(), attrs);
    }
}

/// Where the broker stored a published record: the publish span's partition and offset.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaReceipt {
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The producer's broker and client id, for the span.
    pub(crate) endpoint: Arc<super::config::Endpoint>,
}

impl Receipt for KafkaReceipt {
    fn partition(&self) -> Option<i32> {
        Some(self.partition)
    }

    fn extra_attributes(&self, attrs: &mut SpanAttributes) {
        attrs.int(semconv::MESSAGING_KAFKA_OFFSET, self.offset);
        self.endpoint.attributes(attrs);
    }
}

/// The broker a consumer bootstraps from, for `server.address` / `server.port`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ServerAddress {
    pub(crate) host: Arc<str>,
    pub(crate) port: Option<u16>,
}

impl ServerAddress {
    /// The first entry of a `bootstrap.servers` list (`host:port`, `[v6]:port`, `host`).
    pub(crate) fn from_bootstrap(servers: &str) -> Option<Self> {
        let first = servers.split(',').map(str::trim).find(|s| !s.is_empty())?;
        let first = first
            .split_once("://")
            .map_or(first, |(_scheme, rest)| rest);
        let (host, port) = match first.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') => (host, port.parse().ok()),
            _ => (first, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then(|| Self {
            host: Arc::from(host),
            port,
        })
    }
}

/// A message handed to a handler by a [`KafkaConsumer`](super::KafkaConsumer): an owned copy
/// of what librdkafka delivered, cheap to clone.
///
/// Header names that are not UTF-8 are left out (and counted in
/// `eventscope_trace_context_invalid_total`); values are kept as bytes. A message without headers,
/// with a binary key or with unusable trace headers is processed as a new trace root; its
/// [`message_id`](IncomingMessage::message_id) is its `message-id` header, else
/// `{topic}/{partition}/{offset}`.
#[derive(Clone, Debug)]
pub struct KafkaMessage {
    pub(crate) origin: Arc<Origin>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Milliseconds since the epoch, as Kafka keeps them (`None` for its sentinels).
    pub(crate) timestamp_millis: Option<u64>,
    pub(crate) data: Data,
    /// Which attempt the consumer core hands it for (1 = the first).
    pub(crate) attempt: u32,
}

/// What all messages of a partition share.
#[derive(Debug)]
pub(crate) struct Origin {
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) endpoint: Arc<super::config::Endpoint>,
}

/// Key, payload and headers of one consumed message, copied out of librdkafka into a single
/// shared allocation: copying a message costs one allocation, not one per field and header.
///
/// The buffer starts with a table of machine words, then holds the bytes:
///
/// ```text
/// [key length] [payload length] [header count] ([name length] [value length]) × count
/// key, payload, then each header's name and value
/// ```
///
/// A key or payload that is absent (not empty) has the length [`ABSENT`]. Header names are
/// UTF-8, checked when copied.
#[derive(Clone, Debug)]
pub(crate) struct Data(Arc<[u8]>);

const WORD: usize = std::mem::size_of::<usize>();

/// The length of a key or payload that is absent.
const ABSENT: usize = usize::MAX;

/// Table words before the headers' lengths: key length, payload length, header count.
const FIXED_WORDS: usize = 3;

impl Data {
    /// Copies `key`, `payload` and the headers that `headers` hands to its callback, skipping
    /// (and counting) those whose name is not UTF-8. `headers` is called twice, to size the
    /// buffer and then to fill it, and must hand out the same headers both times.
    pub(crate) fn copy(
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: impl Fn(&mut dyn FnMut(&[u8], Option<&[u8]>)),
    ) -> (Self, usize) {
        let (mut count, mut header_bytes, mut skipped) = (0, 0, 0);
        headers(&mut |name, value| {
            if crate::text::utf8(name).is_some() {
                count += 1;
                header_bytes += name.len() + value.map_or(0, <[u8]>::len);
            } else {
                skipped += 1;
            }
        });
        let table = (FIXED_WORDS + 2 * count) * WORD;
        let size =
            table + key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + header_bytes;
        // An iterator of known length makes `Arc<[u8]>` allocate once, with room for the counts.
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0, size).collect();
        if let Some(buffer) = Arc::get_mut(&mut bytes) {
            let mut writer = Writer {
                buffer,
                word: 0,
                at: table,
            };
            writer.word(key.map_or(ABSENT, <[u8]>::len));
            writer.word(payload.map_or(ABSENT, <[u8]>::len));
            writer.word(count);
            writer.bytes(key.unwrap_or_default());
            writer.bytes(payload.unwrap_or_default());
            let mut written = 0;
            headers(&mut |name, value| {
                if written < count && crate::text::utf8(name).is_some() {
                    let value = value.unwrap_or_default();
                    writer.word(name.len());
                    writer.word(value.len());
                    writer.bytes(name);
                    writer.bytes(value);
                    written += 1;
                }
            });
        }
        (Self(bytes), skipped)
    }

    /// Table word `index`.
    fn word(&self, index: usize) -> usize {
        self.0
            .get(index * WORD..(index + 1) * WORD)
            .and_then(|word| word.try_into().ok())
            .map_or(0, usize::from_ne_bytes)
    }

    fn slice(&self, start: usize, len: usize) -> &[u8] {
        self.0
            .get(start..start.saturating_add(len))
            .unwrap_or_default()
    }

    fn header_count(&self) -> usize {
        self.word(2)
    }

    /// Where the key starts: after the table.
    fn fields(&self) -> usize {
        (FIXED_WORDS + 2 * self.header_count()) * WORD
    }

    fn field_len(&self, index: usize) -> Option<usize> {
        Some(self.word(index)).filter(|&len| len != ABSENT)
    }

    pub(crate) fn key(&self) -> Option<&[u8]> {
        let len = self.field_len(0)?;
        Some(self.slice(self.fields(), len))
    }

    pub(crate) fn payload(&self) -> Option<&[u8]> {
        let len = self.payload_len()?;
        Some(self.slice(self.fields() + self.field_len(0).unwrap_or(0), len))
    }

    pub(crate) fn payload_len(&self) -> Option<usize> {
        self.field_len(1)
    }

    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut at =
            self.fields() + self.field_len(0).unwrap_or(0) + self.payload_len().unwrap_or(0);
        (0..self.header_count()).map(move |index| {
            let name_len = self.word(FIXED_WORDS + 2 * index);
            let value_len = self.word(FIXED_WORDS + 2 * index + 1);
            let name = self.slice(at, name_len);
            let value = self.slice(at.saturating_add(name_len), value_len);
            at = at.saturating_add(name_len).saturating_add(value_len);
            // Only UTF-8 names are copied in, so this never falls back to "".
            (crate::text::utf8(name).unwrap_or_default(), value)
        })
    }
}

impl Default for Data {
    /// No key, no payload, no headers.
    fn default() -> Self {
        Self::copy(None, None, |_| {}).0
    }
}

/// Fills a [`Data`] buffer: the table from its start, the bytes after it. Writes that would not
/// fit are dropped (they cannot happen: the buffer is sized from the same fields).
struct Writer<'a> {
    buffer: &'a mut [u8],
    /// The next table word's offset.
    word: usize,
    /// The next byte's offset.
    at: usize,
}

impl Writer<'_> {
    fn word(&mut self, value: usize) {
        if let Some(slot) = self.buffer.get_mut(self.word..self.word + WORD) {
            slot.copy_from_slice(&value.to_ne_bytes());
        }
        self.word += WORD;
    }

    fn bytes(&mut self, field: &[u8]) {
        let end = self.at.saturating_add(field.len());
        if let Some(slot) = self.buffer.get_mut(self.at..end) {
            slot.copy_from_slice(field);
        }
        self.at = end;
    }
}

impl KafkaMessage {
    /// Topic.
    pub fn topic(&self) -> &str {
        &self.origin.topic
    }

    /// The partition, always known here; the same as
    /// [`IncomingMessage::partition`](crate::message::IncomingMessage::partition).
    pub fn partition(&self) -> Option<i32> {
        Some(self.partition)
    }

    /// Offset within the partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Key, if any (any bytes; not necessarily UTF-8).
    pub fn key(&self) -> Option<&[u8]> {
        self.data.key()
    }

    /// Payload; empty for a tombstone (see [`is_tombstone`](Self::is_tombstone)).
    pub fn payload(&self) -> &[u8] {
        self.data.payload().unwrap_or_default()
    }

    /// `true` for a record without payload (a tombstone deletes its key from a compacted
    /// topic), as opposed to an empty payload.
    pub fn is_tombstone(&self) -> bool {
        self.data.payload_len().is_none()
    }

    /// Headers, in the order the producer wrote them, duplicates included.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.data.headers()
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// The record's timestamp (create or log-append time), when the broker reported one.
    pub fn timestamp(&self) -> Option<SystemTime> {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(self.timestamp_millis?))
    }

    /// The consumer group this message was consumed for.
    pub fn group(&self) -> &str {
        &self.origin.group
    }
}

impl Headers for KafkaMessage {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.data.headers()
    }
}

impl Republish for KafkaMessage {
    type Record = KafkaRecord;

    /// A record for `destination` with this message's key, payload (a tombstone stays one) and
    /// headers but its ids; the partitioner picks the partition.
    fn republish(&self, destination: &str) -> KafkaRecord {
        let mut headers = HeaderList::new();
        for (name, value) in KafkaMessage::headers(self) {
            if !crate::message::republished_header(name) {
                headers.push_copy(name, value);
            }
        }
        KafkaRecord {
            topic: destination.to_owned(),
            key: KafkaMessage::key(self).map(<[u8]>::to_vec),
            payload: (!self.is_tombstone()).then(|| KafkaMessage::payload(self).to_vec()),
            headers,
            partition: None,
            timestamp: None,
        }
    }
}

impl IncomingMessage for KafkaMessage {
    fn system(&self) -> &'static str {
        system::KAFKA
    }

    fn destination(&self) -> &str {
        &self.origin.topic
    }

    fn partition(&self) -> Option<i32> {
        Some(self.partition)
    }

    /// The `message-id` header, else the record's position, `{topic}/{partition}/{offset}`
    /// (SPEC §2): unique within the cluster, so a follow-up of a message from a producer that
    /// sets no id still gets a `causation-id`.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        if let Some(id) = crate::message::header_id(self) {
            return Some(Cow::Borrowed(id));
        }
        Some(Cow::Owned(crate::message::position_id(
            self.topic(),
            &[i64::from(self.partition), self.offset],
        )))
    }

    fn consumer_group(&self) -> Option<&str> {
        let group = &*self.origin.group;
        (!group.is_empty()).then_some(group)
    }

    fn created_at(&self) -> Option<SystemTime> {
        self.timestamp()
    }

    fn created_at_unix_nanos(&self) -> Option<u64> {
        Some(self.timestamp_millis?.saturating_mul(1_000_000))
    }

    fn body_size(&self) -> Option<usize> {
        self.data.payload_len()
    }

    fn payload(&self) -> &[u8] {
        KafkaMessage::payload(self)
    }

    fn key(&self) -> Option<&[u8]> {
        KafkaMessage::key(self)
    }

    fn offset(&self) -> Option<i64> {
        Some(self.offset)
    }

    /// The attempt the consumer core hands it for: Kafka counts no deliveries, so this is the
    /// core's count of its retries in process (1 on the first delivery).
    fn delivery_attempt(&self) -> Option<u32> {
        Some(self.attempt)
    }

    fn set_delivery_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }

    fn extra_attributes(&self, attrs: &mut SpanAttributes) {
        key_attributes(KafkaMessage::key(self), self.is_tombstone(), attrs);
        attrs.int(semconv::MESSAGING_KAFKA_OFFSET, self.offset);
        self.origin.endpoint.attributes(attrs);
    }
}

/// `messaging.kafka.message.key` (only when UTF-8) and `messaging.kafka.message.tombstone`.
fn key_attributes(key: Option<&[u8]>, tombstone: bool, attrs: &mut SpanAttributes) {
    if let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) {
        attrs.string(semconv::MESSAGING_KAFKA_MESSAGE_KEY, key);
    }
    if tombstone {
        attrs.bool(semconv::MESSAGING_KAFKA_MESSAGE_TOMBSTONE, true);
    }
}

/// A Kafka timestamp in milliseconds, `None` for the "not available" sentinels (negative).
pub(crate) fn timestamp_millis(millis: Option<i64>) -> Option<u64> {
    u64::try_from(millis?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(message: &impl OutgoingMessage) -> Vec<KeyValue> {
        let mut attrs = SpanAttributes::new();
        message.extra_attributes(&mut attrs);
        attrs.drain().collect()
    }

    #[test]
    fn outgoing_layers_see_the_payload() {
        let record = KafkaRecord::new("t", b"{}".to_vec());
        assert_eq!(OutgoingMessage::payload(&record), b"{}");
        assert_eq!(OutgoingMessage::payload(&KafkaRecord::tombstone("t")), b"");
    }

    #[test]
    fn key_attribute_only_for_utf8_keys() {
        let text = KafkaRecord::new("t", b"x".to_vec()).key("customer-7");
        assert_eq!(
            attributes(&text),
            vec![KeyValue::new(
                semconv::MESSAGING_KAFKA_MESSAGE_KEY,
                "customer-7"
            )]
        );
        let binary = KafkaRecord::new("t", b"x".to_vec()).key(vec![0xff, 0xfe]);
        assert!(attributes(&binary).is_empty());
        let tombstone = KafkaRecord::tombstone("t").key("k");
        assert!(attributes(&tombstone).contains(&KeyValue::new(
            semconv::MESSAGING_KAFKA_MESSAGE_TOMBSTONE,
            true
        )));
        assert_eq!(tombstone.body_size(), None);
    }

    #[test]
    fn a_republished_copy_keeps_key_payload_and_headers_but_not_the_ids() {
        let headers: [(&str, &[u8]); 4] = [
            ("message-id", b"m-1"),
            ("Causation-Id", b"c-0"),
            ("correlation-id", b"flow-1"),
            ("bin", &[0xff]),
        ];
        let (data, _) = Data::copy(Some(b"k-1"), Some(b"{}"), |each| {
            for (name, value) in headers {
                each(name.as_bytes(), Some(value));
            }
        });
        let message = KafkaMessage {
            origin: Arc::new(Origin {
                topic: Arc::from("orders"),
                group: Arc::from("billing"),
                endpoint: Arc::new(crate::kafka::config::Endpoint::for_tests()),
            }),
            partition: 1,
            offset: 9,
            timestamp_millis: None,
            data,
            attempt: 1,
        };
        let copy = message.republish("orders.dlq");
        assert_eq!(copy.topic(), "orders.dlq");
        assert_eq!(copy.key.as_deref(), Some(&b"k-1"[..]));
        assert_eq!(copy.payload(), Some(&b"{}"[..]));
        assert_eq!(copy.headers().get("bin"), Some(&[0xff][..]));
        assert_eq!(copy.headers().get("correlation-id"), Some(&b"flow-1"[..]));
        assert_eq!(copy.message_id(), None, "a new message gets a new id");
        assert_eq!(copy.headers().get("causation-id"), None);
    }

    #[test]
    fn message_id_lives_in_a_single_header() {
        let mut record = KafkaRecord::new("t", b"x".to_vec()).header("Message-Id", "old");
        record.set_message_id("new");
        assert_eq!(record.message_id().as_deref(), Some("new"));
        assert_eq!(record.headers().len(), 1);
    }

    #[test]
    fn bootstrap_servers_parse() {
        let parse = ServerAddress::from_bootstrap;
        assert_eq!(
            parse("127.0.0.1:9092,other:9093"),
            Some(ServerAddress {
                host: "127.0.0.1".into(),
                port: Some(9092)
            })
        );
        assert_eq!(
            parse(" [::1]:19092"),
            Some(ServerAddress {
                host: "::1".into(),
                port: Some(19092)
            })
        );
        assert_eq!(
            parse("PLAINTEXT://kafka"),
            Some(ServerAddress {
                host: "kafka".into(),
                port: None
            })
        );
        assert_eq!(parse(""), None);
    }

    #[test]
    fn message_fields_share_one_buffer() {
        let (data, _) = Data::copy(Some(&[0xff, 0x01]), Some(b"{}"), |each| {
            for (name, value) in [("message-id", &b"m-1"[..]), ("Bin", &[0x00, 0xfe][..])] {
                each(name.as_bytes(), Some(value));
            }
        });
        let message = KafkaMessage {
            origin: Arc::new(Origin {
                topic: Arc::from("orders"),
                group: Arc::from(""),
                endpoint: Arc::new(crate::kafka::config::Endpoint::for_tests()),
            }),
            partition: 2,
            offset: 7,
            timestamp_millis: Some(1_700_000_000_123),
            data,
            attempt: 1,
        };
        assert_eq!(message.key(), Some(&[0xff, 0x01][..]));
        assert_eq!(message.payload(), &b"{}"[..]);
        assert!(!message.is_tombstone());
        assert_eq!(message.header("bin"), Some(&[0x00, 0xfe][..]));
        assert_eq!(
            IncomingMessage::message_id(&message).as_deref(),
            Some("m-1")
        );
        assert_eq!(message.consumer_group(), None);
        // The timestamp as the layers read it, and as a `SystemTime`: the same instant.
        let nanos = 1_700_000_000_123_000_000;
        assert_eq!(message.created_at_unix_nanos(), Some(nanos));
        assert_eq!(
            message.created_at().map(crate::clock::unix_nanos),
            Some(nanos)
        );
        let anonymous = KafkaMessage {
            data: Data::default(),
            ..message.clone()
        };
        assert_eq!(
            IncomingMessage::message_id(&anonymous).as_deref(),
            Some("orders/2/7")
        );
        let mut attrs = SpanAttributes::new();
        message.extra_attributes(&mut attrs);
        assert_eq!(
            attrs.drain().collect::<Vec<_>>(),
            vec![
                KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, 7),
                KeyValue::new(semconv::MESSAGING_CLIENT_ID, "rdkafka"),
            ]
        );
    }

    #[test]
    fn sentinel_timestamps_are_none() {
        assert_eq!(timestamp_millis(Some(-1)), None);
        assert_eq!(timestamp_millis(None), None);
        assert_eq!(
            timestamp_millis(Some(1_700_000_000_000)),
            Some(1_700_000_000_000)
        );
        let record = KafkaRecord::new("t", Vec::new())
            .timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(42));
        assert_eq!(record.timestamp_millis(), Some(42));
    }
}
