//! What is published ([`NatsRecord`], [`JetStreamReceipt`]) and what handlers receive
//! ([`NatsMessage`], [`JetStreamMessage`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use bytes::Bytes;
use opentelemetry_semantic_conventions::attribute as semconv;

use super::attribute;
use super::carrier::{header_value, is_server_header, NATS_MSG_ID};
use crate::message::{
    system, HeaderList, Headers, HeadersMut, IncomingMessage, OutgoingMessage, Receipt, Republish,
    SpanAttributes,
};
use crate::sync::Recover;

/// A message to publish with a [`NatsPublisher`](super::NatsPublisher) (core NATS) or a
/// [`JetStreamPublisher`](super::JetStreamPublisher).
///
/// Its id is its `Nats-Msg-Id` header, the id JetStream deduplicates by: the
/// [`PublishLayer`](crate::publish::PublishLayer) writes the id it generates there (SPEC §2),
/// [`id`](Self::id) sets one of your own, and a record that only has a `message-id` header is
/// sent with `Nats-Msg-Id` set to it. Headers are kept as a [`HeaderList`] until the record is
/// sent, so the publish layer replaces same-named headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsRecord {
    pub(crate) subject: String,
    pub(crate) payload: Bytes,
    pub(crate) headers: HeaderList,
}

impl NatsRecord {
    /// A record for `subject` with `payload` and no headers.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
            headers: HeaderList::new(),
        }
    }

    /// Adds a header (kept alongside any of the same name). A name NATS cannot carry (not
    /// visible ASCII, or with `:`) or a value with CR or LF fails the publish with
    /// [`PublishErrorKind::InvalidHeader`](super::error::PublishErrorKind::InvalidHeader);
    /// nothing panics.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<str>) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Copies every header of `headers` (e.g. those of a message you forward).
    pub fn headers_from(mut self, headers: &HeaderMap) -> Self {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            for value in values {
                self.headers.push(name, value.as_str());
            }
        }
        self
    }

    /// Sets the message id, sent as `Nats-Msg-Id`: give a record its id before the first try
    /// and publishing it again (after a [`TimedOut`](super::error::PublishErrorKind::TimedOut))
    /// stores it once, within the stream's duplicate window.
    pub fn id(mut self, id: impl AsRef<str>) -> Self {
        self.set_message_id(id.as_ref());
        self
    }

    /// The subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The record's headers.
    pub fn headers(&self) -> &HeaderList {
        &self.headers
    }
}

impl OutgoingMessage for NatsRecord {
    fn system(&self) -> &'static str {
        system::NATS
    }

    fn destination(&self) -> &str {
        &self.subject
    }

    /// `Nats-Msg-Id`, else the `message-id` header.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.headers
            .get(NATS_MSG_ID)
            .or_else(|| self.headers.get(crate::header::MESSAGE_ID))
            .and_then(|id| std::str::from_utf8(id).ok())
            .map(Cow::Borrowed)
    }

    /// Writes `Nats-Msg-Id`; a `message-id` header goes, so the record has one id.
    fn set_message_id(&mut self, id: &str) {
        self.headers.remove(crate::header::MESSAGE_ID);
        self.headers.set_static_header(NATS_MSG_ID, id);
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Where JetStream stored a published message: the publish span's attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamReceipt {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// `true` when the stream already held a message with its `Nats-Msg-Id` (within the
    /// duplicate window): this publish stored nothing, `sequence` is the earlier copy's. Not
    /// an error.
    pub duplicate: bool,
}

impl Receipt for JetStreamReceipt {
    fn extra_attributes(&self, attrs: &mut SpanAttributes) {
        attrs.string(attribute::STREAM_NAME, self.stream.as_str());
        attrs.int(
            attribute::STREAM_SEQUENCE,
            i64::try_from(self.sequence).unwrap_or(i64::MAX),
        );
        attrs.bool(attribute::DUPLICATE, self.duplicate);
    }
}

/// The server a consumer reads from, for `server.address` / `server.port`.
#[derive(Debug, Clone)]
pub(crate) struct ServerAddress {
    pub(crate) host: Arc<str>,
    pub(crate) port: u16,
}

/// What all messages of one consumer share.
#[derive(Debug)]
pub(crate) struct Origin {
    /// The durable consumer (JetStream) or queue group (core; empty without one).
    pub(crate) group: Arc<str>,
    /// The stream (JetStream; empty for core NATS).
    pub(crate) stream: Arc<str>,
    pub(crate) server: Option<ServerAddress>,
    /// Subjects whose id-less messages were already logged (core NATS, bounded).
    anonymous: Mutex<HashSet<Box<str>>>,
}

/// How many subjects an origin remembers having logged id-less messages of.
const ANONYMOUS_LOGGED: usize = 1000;

impl Origin {
    pub(crate) fn new(group: &str, stream: &str, server: Option<ServerAddress>) -> Self {
        Self {
            group: Arc::from(group),
            stream: Arc::from(stream),
            server,
            anonymous: Mutex::default(),
        }
    }

    /// Logs, once per subject, that its messages carry no id.
    fn note_anonymous(&self, subject: &str) {
        let mut logged = self.anonymous.locked();
        if logged.len() < ANONYMOUS_LOGGED && logged.insert(subject.into()) {
            tracing::info!(
                subject,
                "messages on this subject carry no message-id or Nats-Msg-Id: each gets a fresh id on receipt (core NATS has no position to name them by)"
            );
        }
    }

    fn server_attributes(&self, attrs: &mut SpanAttributes) {
        if let Some(server) = &self.server {
            attrs.string(semconv::SERVER_ADDRESS, &*server.host);
            attrs.int(semconv::SERVER_PORT, i64::from(server.port));
        }
    }
}

/// Every header of a NATS message, in no particular order across names (a NATS header map is
/// a hash map), in order within a name.
pub(crate) fn header_pairs(headers: Option<&HeaderMap>) -> impl Iterator<Item = (&str, &[u8])> {
    headers.into_iter().flat_map(|map| {
        map.iter().flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |value| (name, value.as_str().as_bytes()))
        })
    })
}

/// The id of an incoming NATS message (SPEC §2): a usable `message-id` header, else a usable
/// `Nats-Msg-Id`.
fn header_id(headers: Option<&HeaderMap>) -> Option<&str> {
    let mut native = None;
    for (name, value) in header_pairs(headers) {
        if name.eq_ignore_ascii_case(crate::header::MESSAGE_ID) {
            if let Some(id) = crate::header::usable_id(value) {
                return Some(id);
            }
        } else if native.is_none() && name.eq_ignore_ascii_case(NATS_MSG_ID) {
            native = crate::header::usable_id(value);
        }
    }
    native
}

/// A copy of `headers` for a new message: without the original's ids and without the
/// server's own `Nats-*` headers (directives such as `Nats-Rollup` or `Nats-Expected-*` were
/// meant for the original's publish).
fn republished_headers(headers: Option<&HeaderMap>) -> HeaderList {
    let mut copy = HeaderList::new();
    for (name, value) in header_pairs(headers) {
        if !crate::message::republished_header(name) && !is_server_header(name) {
            copy.push_bytes(name, value.to_vec());
        }
    }
    copy
}

/// A core NATS message handed to a handler by a [`NatsConsumer`](super::NatsConsumer): the
/// client's message, cheap to clone.
///
/// Its [`message_id`](IncomingMessage::message_id) is its `message-id` header, else its
/// `Nats-Msg-Id`, else an id made up on receipt (core NATS has no position to name a message
/// by; such subjects are logged once). Core NATS stamps no creation time, so these messages
/// record no queue time.
#[derive(Clone, Debug)]
pub struct NatsMessage {
    inner: Arc<CoreMessage>,
}

#[derive(Debug)]
struct CoreMessage {
    message: async_nats::Message,
    origin: Arc<Origin>,
    /// The id made up on receipt for a message without one, made once it is asked for.
    fresh_id: OnceLock<Box<str>>,
}

impl NatsMessage {
    pub(crate) fn new(message: async_nats::Message, origin: Arc<Origin>) -> Self {
        Self {
            inner: Arc::new(CoreMessage {
                message,
                origin,
                fresh_id: OnceLock::new(),
            }),
        }
    }

    /// The subject it was published to.
    pub fn subject(&self) -> &str {
        &self.inner.message.subject
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.inner.message.payload
    }

    /// The subject to reply to, for a request.
    pub fn reply(&self) -> Option<&str> {
        self.inner.message.reply.as_deref()
    }

    /// The headers, as the client parsed them (`None` for a message sent without any).
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.inner.message.headers.as_ref()
    }

    /// The first value of header `name`, ASCII case-insensitive (Go clients send
    /// `Traceparent`).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(self.headers(), name)
    }

    /// The queue group it was received in, if any.
    pub fn queue_group(&self) -> Option<&str> {
        let group = &*self.inner.origin.group;
        (!group.is_empty()).then_some(group)
    }

    /// The client's message.
    pub fn message(&self) -> &async_nats::Message {
        &self.inner.message
    }
}

impl Headers for NatsMessage {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        header_pairs(self.inner.message.headers.as_ref())
    }
}

impl IncomingMessage for NatsMessage {
    fn system(&self) -> &'static str {
        system::NATS
    }

    fn destination(&self) -> &str {
        &self.inner.message.subject
    }

    /// `message-id`, else `Nats-Msg-Id`, else a fresh id made once for this delivery (SPEC
    /// §2).
    fn message_id(&self) -> Option<Cow<'_, str>> {
        if let Some(id) = header_id(self.inner.message.headers.as_ref()) {
            return Some(Cow::Borrowed(id));
        }
        let id = self.inner.fresh_id.get_or_init(|| {
            self.inner
                .origin
                .note_anonymous(&self.inner.message.subject);
            crate::message::new_id().into_boxed_str()
        });
        Some(Cow::Borrowed(id))
    }

    fn consumer_group(&self) -> Option<&str> {
        self.queue_group()
    }

    fn payload(&self) -> &[u8] {
        &self.inner.message.payload
    }

    fn extra_attributes(&self, attrs: &mut SpanAttributes) {
        self.inner.origin.server_attributes(attrs);
    }
}

impl Republish for NatsMessage {
    type Record = NatsRecord;

    /// A record for the subject `destination` with this message's payload and headers, but
    /// its ids and the server's `Nats-*` headers.
    fn republish(&self, destination: &str) -> NatsRecord {
        NatsRecord {
            subject: destination.to_owned(),
            payload: self.inner.message.payload.clone(),
            headers: republished_headers(self.inner.message.headers.as_ref()),
        }
    }
}

/// Where a JetStream message sits and how often it was delivered, read from its ack subject
/// (no server call, and independent of the `DateTime` type async-nats is built with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) delivered: u64,
    pub(crate) stream_sequence: u64,
    pub(crate) consumer_sequence: u64,
    /// When the stream stored it, ns since the Unix epoch.
    pub(crate) published_nanos: u64,
    pub(crate) pending: u64,
}

impl Position {
    /// Reads `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
    /// or the longer form with a domain and an account hash after `$JS.ACK.` (and tokens after
    /// `<pending>`).
    pub(crate) fn parse(reply: &str) -> Option<Self> {
        let rest = reply.strip_prefix("$JS.ACK.")?;
        let mut tokens = [""; 9];
        let mut count = 0;
        for token in rest.split('.') {
            if count == tokens.len() {
                break;
            }
            tokens[count] = token;
            count += 1;
        }
        // Seven tokens: the original form. Nine or more: domain and account hash first.
        let numbers = match count {
            7 => &tokens[2..7],
            9 => &tokens[4..9],
            _ => return None,
        };
        let number = |i: usize| numbers[i].parse::<u64>().ok();
        Some(Self {
            delivered: number(0)?,
            stream_sequence: number(1)?,
            consumer_sequence: number(2)?,
            published_nanos: number(3)?,
            pending: number(4)?,
        })
    }
}

/// A JetStream message handed to a handler by a [`JetStreamConsumer`](super::JetStreamConsumer):
/// the client's message and where it sits in its stream, cheap to clone.
///
/// Its [`message_id`](IncomingMessage::message_id) is its `message-id` header, else its
/// `Nats-Msg-Id`, else `{stream}/{stream sequence}` (SPEC §2), so a follow-up of a message
/// from a publisher that sets no id still names its cause. Its
/// [`delivery_attempt`](IncomingMessage::delivery_attempt) is the server's delivery count, its
/// creation time the time the stream stored it.
#[derive(Clone, Debug)]
pub struct JetStreamMessage {
    inner: Arc<StreamMessage>,
}

#[derive(Debug)]
struct StreamMessage {
    message: async_nats::Message,
    origin: Arc<Origin>,
    position: Position,
}

impl JetStreamMessage {
    pub(crate) fn new(message: async_nats::Message, origin: Arc<Origin>) -> Self {
        let position = message
            .reply
            .as_deref()
            .and_then(Position::parse)
            .unwrap_or_default();
        Self {
            inner: Arc::new(StreamMessage {
                message,
                origin,
                position,
            }),
        }
    }

    /// The subject it was published to.
    pub fn subject(&self) -> &str {
        &self.inner.message.subject
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.inner.message.payload
    }

    /// The headers, as the client parsed them (`None` for a message stored without any).
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.inner.message.headers.as_ref()
    }

    /// The first value of header `name`, ASCII case-insensitive (Go clients send
    /// `Traceparent`).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(self.headers(), name)
    }

    /// The stream it is stored in.
    pub fn stream(&self) -> &str {
        &self.inner.origin.stream
    }

    /// The durable consumer it was delivered to.
    pub fn consumer(&self) -> &str {
        &self.inner.origin.group
    }

    /// Its sequence in the stream.
    pub fn stream_sequence(&self) -> u64 {
        self.inner.position.stream_sequence
    }

    /// The consumer's delivery sequence (a redelivery gets a new one).
    pub fn consumer_sequence(&self) -> u64 {
        self.inner.position.consumer_sequence
    }

    /// How many times the server has delivered it, this delivery included.
    pub fn delivered(&self) -> u64 {
        self.inner.position.delivered
    }

    /// Messages left for the consumer after this one, when it was delivered.
    pub fn pending(&self) -> u64 {
        self.inner.position.pending
    }

    /// When the stream stored it.
    pub fn published(&self) -> Option<SystemTime> {
        let nanos = self.inner.position.published_nanos;
        (nanos > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
    }

    /// The client's message (its `reply` is the ack subject).
    pub fn message(&self) -> &async_nats::Message {
        &self.inner.message
    }

    /// The subject acks, naks, terms and progress go to.
    pub(crate) fn ack_subject(&self) -> Option<&async_nats::Subject> {
        self.inner.message.reply.as_ref()
    }
}

impl Headers for JetStreamMessage {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        header_pairs(self.inner.message.headers.as_ref())
    }
}

impl IncomingMessage for JetStreamMessage {
    fn system(&self) -> &'static str {
        system::NATS
    }

    fn destination(&self) -> &str {
        &self.inner.message.subject
    }

    /// `message-id`, else `Nats-Msg-Id`, else `{stream}/{stream sequence}` (SPEC §2).
    fn message_id(&self) -> Option<Cow<'_, str>> {
        if let Some(id) = header_id(self.inner.message.headers.as_ref()) {
            return Some(Cow::Borrowed(id));
        }
        Some(Cow::Owned(crate::message::position_id(
            &self.inner.origin.stream,
            &[self.inner.position.stream_sequence],
        )))
    }

    fn consumer_group(&self) -> Option<&str> {
        Some(&self.inner.origin.group)
    }

    fn created_at(&self) -> Option<SystemTime> {
        self.published()
    }

    fn created_at_unix_nanos(&self) -> Option<u64> {
        let nanos = self.inner.position.published_nanos;
        (nanos > 0).then_some(nanos)
    }

    fn payload(&self) -> &[u8] {
        &self.inner.message.payload
    }

    fn delivery_attempt(&self) -> Option<u32> {
        let delivered = self.inner.position.delivered;
        (delivered > 0).then(|| u32::try_from(delivered).unwrap_or(u32::MAX))
    }

    fn extra_attributes(&self, attrs: &mut SpanAttributes) {
        attrs.string(attribute::STREAM_NAME, &*self.inner.origin.stream);
        attrs.int(
            attribute::STREAM_SEQUENCE,
            i64::try_from(self.inner.position.stream_sequence).unwrap_or(i64::MAX),
        );
        self.inner.origin.server_attributes(attrs);
    }
}

impl Republish for JetStreamMessage {
    type Record = NatsRecord;

    /// A record for the subject `destination` with this message's payload and headers, but
    /// its ids and the server's `Nats-*` headers.
    fn republish(&self, destination: &str) -> NatsRecord {
        NatsRecord {
            subject: destination.to_owned(),
            payload: self.inner.message.payload.clone(),
            headers: republished_headers(self.inner.message.headers.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    fn message(reply: Option<&str>, headers: &[(&str, &str)]) -> async_nats::Message {
        let map = (!headers.is_empty()).then(|| {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(
                    async_nats::HeaderName::try_from(*name).unwrap(),
                    async_nats::HeaderValue::try_from(*value).unwrap(),
                );
            }
            map
        });
        async_nats::Message {
            subject: "orders.eu".into(),
            reply: reply.map(Into::into),
            payload: Bytes::from_static(b"{}"),
            headers: map,
            status: None,
            description: None,
            length: 0,
        }
    }

    fn origin() -> Arc<Origin> {
        Arc::new(Origin::new(
            "billing",
            "ORDERS",
            Some(ServerAddress {
                host: Arc::from("127.0.0.1"),
                port: 4222,
            }),
        ))
    }

    #[test]
    fn ack_subjects_of_both_forms_parse() {
        let v1 = Position::parse("$JS.ACK.ORDERS.billing.3.41.57.1765120222685930485.12").unwrap();
        assert_eq!(
            v1,
            Position {
                delivered: 3,
                stream_sequence: 41,
                consumer_sequence: 57,
                published_nanos: 1_765_120_222_685_930_485,
                pending: 12
            }
        );
        let v2 =
            Position::parse("$JS.ACK.hub.ACCHASH.ORDERS.billing.1.2.3.1765120222685930485.0.xyz")
                .unwrap();
        assert_eq!((v2.delivered, v2.stream_sequence, v2.pending), (1, 2, 0));
        for bad in [
            "",
            "_INBOX.x",
            "$JS.ACK.ORDERS.billing.x.2.3.4.5",
            "$JS.ACK.ORDERS.billing.1.2",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn jetstream_ids_header_first_then_native_then_position() {
        let reply = Some("$JS.ACK.ORDERS.billing.2.41.57.1765120222685930485.0");
        let both = JetStreamMessage::new(
            message(reply, &[("Nats-Msg-Id", "native"), ("Message-Id", "m-1")]),
            origin(),
        );
        assert_eq!(both.message_id().as_deref(), Some("m-1"));
        let native = JetStreamMessage::new(message(reply, &[("Nats-Msg-Id", "native")]), origin());
        assert_eq!(native.message_id().as_deref(), Some("native"));
        let none = JetStreamMessage::new(message(reply, &[]), origin());
        assert_eq!(none.message_id().as_deref(), Some("ORDERS/41"));
        assert_eq!(none.delivery_attempt(), Some(2));
        assert_eq!(none.consumer_group(), Some("billing"));
        assert_eq!(
            none.created_at_unix_nanos(),
            Some(1_765_120_222_685_930_485)
        );
        assert_eq!(
            none.created_at().map(crate::clock::unix_nanos),
            none.created_at_unix_nanos()
        );
        let mut attrs = SpanAttributes::new();
        none.extra_attributes(&mut attrs);
        let attrs: Vec<KeyValue> = attrs.drain().collect();
        assert!(attrs.contains(&KeyValue::new(attribute::STREAM_SEQUENCE, 41)));
        assert!(attrs.contains(&KeyValue::new(semconv::SERVER_PORT, 4222)));
    }

    #[test]
    fn a_core_message_without_an_id_keeps_one_made_up_on_receipt() {
        let m = NatsMessage::new(message(None, &[]), origin());
        let first = m.message_id().unwrap().into_owned();
        assert_eq!(m.clone().message_id().as_deref(), Some(first.as_str()));
        assert!(crate::header::id_ok(&first));
        let traced = NatsMessage::new(message(None, &[("traceparent", "x")]), origin());
        assert_ne!(traced.message_id().unwrap(), first, "each message its own");
    }

    #[test]
    fn a_republished_copy_has_no_ids_and_no_server_headers() {
        let m = JetStreamMessage::new(
            message(
                None,
                &[
                    ("Nats-Msg-Id", "native"),
                    ("message-id", "m-1"),
                    ("causation-id", "c-0"),
                    ("correlation-id", "flow-1"),
                    ("Nats-Rollup", "sub"),
                    ("x-tenant", "t-9"),
                ],
            ),
            origin(),
        );
        let copy = m.republish("orders.eu.dlq");
        assert_eq!(copy.subject(), "orders.eu.dlq");
        assert_eq!(copy.payload(), b"{}");
        assert_eq!(copy.headers().get("correlation-id"), Some(&b"flow-1"[..]));
        assert_eq!(copy.headers().get("x-tenant"), Some(&b"t-9"[..]));
        assert_eq!(copy.headers().len(), 2);
        assert_eq!(copy.message_id(), None, "a new message gets a new id");
        assert_eq!(m.dead_letter_destination(), "orders.eu.dlq");
    }

    #[test]
    fn a_record_has_one_id_in_nats_msg_id() {
        let mut record = NatsRecord::new("orders", "{}").header("message-id", "old");
        assert_eq!(record.message_id().as_deref(), Some("old"));
        record.set_message_id("new");
        assert_eq!(record.message_id().as_deref(), Some("new"));
        assert_eq!(record.headers().get(NATS_MSG_ID), Some(&b"new"[..]));
        assert_eq!(record.headers().len(), 1);
        assert_eq!(
            NatsRecord::new("o", "")
                .id("mine")
                .headers()
                .get("nats-msg-id"),
            Some(&b"mine"[..])
        );
    }
}
