//! The messages of the RabbitMQ adapter: [`RabbitRecord`] to publish, [`RabbitMessage`]
//! delivered to a handler, [`RabbitReceipt`] for a confirmed publish; and their destination
//! names (SPEC §3).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use opentelemetry_semantic_conventions::attribute as semconv;

use super::carrier::{self, DELIVERY_COUNT, TIMESTAMP_IN_MS};
use super::config::ServerAddress;
use crate::header::{self, Known};
use crate::message::{
    system, HeaderList, Headers, HeadersMut, IncomingMessage, OutgoingMessage, Receipt, Republish,
    SpanAttributes,
};

/// The name of the default exchange in destination names.
pub(crate) const DEFAULT_EXCHANGE: &str = "amq.default";

/// The destination of a publish (SPEC §3): `{exchange}:{routing key}`, one part when the other
/// is empty, `amq.default` for the default exchange without a key.
pub(crate) fn send_destination(exchange: &str, routing_key: &str) -> String {
    match (exchange.is_empty(), routing_key.is_empty()) {
        (true, true) => DEFAULT_EXCHANGE.to_owned(),
        (true, false) => routing_key.to_owned(),
        (false, true) => exchange.to_owned(),
        (false, false) => [exchange, ":", routing_key].concat(),
    }
}

/// The destination of a delivery (SPEC §3): `{exchange}:{routing key}:{queue}`, empty parts
/// left out, a routing key equal to the queue written once.
pub(crate) fn receive_destination(exchange: &str, routing_key: &str, queue: &str) -> String {
    let key = if routing_key == queue {
        ""
    } else {
        routing_key
    };
    let mut name = String::with_capacity(exchange.len() + key.len() + queue.len() + 2);
    for part in [exchange, key, queue] {
        if !part.is_empty() {
            if !name.is_empty() {
                name.push(':');
            }
            name.push_str(part);
        }
    }
    name
}

/// The exchange and routing key a destination string names (the syntax of
/// [`Republish::republish`]): a name without `:` is a queue, reached through the default
/// exchange; otherwise the text after the **last** `:` is the routing key and the text before
/// it the exchange (exchange names may hold `:`, as MassTransit names them; a routing key that
/// holds `:` needs [`RabbitRecord::new`]). `amq.default` is the default exchange.
pub(crate) fn parse_destination(destination: &str) -> (&str, &str) {
    let (exchange, routing_key) = match destination.rsplit_once(':') {
        Some((exchange, routing_key)) => (exchange, routing_key),
        None if destination == DEFAULT_EXCHANGE => ("", ""),
        None => ("", destination),
    };
    let exchange = if exchange == DEFAULT_EXCHANGE {
        ""
    } else {
        exchange
    };
    (exchange, routing_key)
}

/// A message to publish with a [`RabbitPublisher`](super::RabbitPublisher).
///
/// Headers written through the layers (`traceparent`, `causation-id`, ...) and with
/// [`header`](Self::header) are sent as AMQP long strings. The ids live where AMQP keeps them:
/// the message id in the `message_id` property and the correlation id in the `correlation_id`
/// property (an id over 255 bytes, which a property cannot hold, is sent as the `message-id` /
/// `correlation-id` header instead). The creation time is sent twice: the `timestamp` property
/// (seconds) and the `timestamp_in_ms` header.
///
/// A record is **mandatory** by default: a message no queue is bound to receive is returned by
/// the broker and the publish fails with `NO_ROUTE`, instead of vanishing while its span says
/// it was sent. Use [`mandatory(false)`](Self::mandatory) where nobody listening is fine.
#[derive(Clone, PartialEq)]
pub struct RabbitRecord {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    destination: String,
    pub(crate) payload: Vec<u8>,
    /// The AMQP properties other than the ids, headers and timestamp.
    pub(crate) properties: BasicProperties,
    pub(crate) message_id: Option<String>,
    pub(crate) correlation_id: Option<String>,
    /// Text headers.
    pub(crate) headers: HeaderList,
    /// Headers of other AMQP types, as the caller gave them.
    pub(crate) values: Vec<(String, AMQPValue)>,
    pub(crate) timestamp: Option<SystemTime>,
    pub(crate) mandatory: bool,
}

impl fmt::Debug for RabbitRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitRecord")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("payload_len", &self.payload.len())
            .field("message_id", &self.message_id)
            .field("correlation_id", &self.correlation_id)
            .field("headers", &self.headers)
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

/// Which id property.
#[derive(Clone, Copy)]
enum Id {
    Message,
    Correlation,
}

impl RabbitRecord {
    /// A record for `exchange` with `routing_key` and `payload` (the default exchange is `""`).
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        let (exchange, routing_key) = (exchange.into(), routing_key.into());
        Self {
            destination: send_destination(&exchange, &routing_key),
            exchange,
            routing_key,
            payload: payload.into(),
            properties: BasicProperties::default(),
            message_id: None,
            correlation_id: None,
            headers: HeaderList::new(),
            values: Vec::new(),
            timestamp: None,
            mandatory: true,
        }
    }

    /// A record for the queue `queue`, through the default exchange.
    pub fn to_queue(queue: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self::new("", queue, payload)
    }

    /// Adds a text header (kept alongside any of the same name). `message-id` and
    /// `correlation-id` set the id properties instead.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<str>) -> Self {
        let name = name.into();
        match Known::of(&name) {
            Some(Known::MessageId) => self.set_id(Id::Message, value.as_ref().to_owned()),
            Some(Known::CorrelationId) => self.set_id(Id::Correlation, value.as_ref().to_owned()),
            _ => {
                self.headers.push(name, value);
            }
        }
        self
    }

    /// Adds a header with a raw value, sent as a long string of these bytes.
    pub fn header_bytes(mut self, name: impl Into<String>, value: Vec<u8>) -> Self {
        self.headers.push_bytes(name, value);
        self
    }

    /// Adds a header of any AMQP type (`x-delay` for the delayed-message exchange, `x-match`
    /// arguments, ...). Text values join the text headers; a short string is sent as a long
    /// string, also inside a table or an array.
    pub fn header_value(mut self, name: impl Into<String>, value: AMQPValue) -> Self {
        let name = name.into();
        match carrier::text(&value) {
            Some(bytes) => {
                let bytes = bytes.to_vec();
                match (Known::of(&name), String::from_utf8(bytes)) {
                    (Some(Known::MessageId), Ok(id)) => self.set_id(Id::Message, id),
                    (Some(Known::CorrelationId), Ok(id)) => self.set_id(Id::Correlation, id),
                    (_, Ok(text)) => {
                        self.headers.push(name, text);
                    }
                    (_, Err(bytes)) => {
                        self.headers.push_bytes(name, bytes.into_bytes());
                    }
                }
            }
            None => self.values.push((name, value)),
        }
        self
    }

    /// Sets the message id (AMQP `message_id`). Without one, the publish layer sets a fresh id.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.set_id(Id::Message, id.into());
        self
    }

    /// Sets the correlation id (AMQP `correlation_id`). Without one, the publish layer sets the
    /// flow's id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.set_id(Id::Correlation, id.into());
        self
    }

    /// Sets the AMQP properties (content type, delivery mode, priority, expiration, type,
    /// app id, reply-to, ...). Their `message_id`, `correlation_id`, `timestamp` and header
    /// table become the record's id, timestamp and headers, as if set one by one.
    pub fn properties(mut self, properties: BasicProperties) -> Self {
        if let Some(id) = properties.message_id() {
            self.set_id(Id::Message, id.to_string());
        }
        if let Some(id) = properties.correlation_id() {
            self.set_id(Id::Correlation, id.to_string());
        }
        if let Some(seconds) = *properties.timestamp() {
            self.timestamp =
                SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds));
        }
        if let Some(table) = properties.headers() {
            for (name, value) in table.inner() {
                self = self.header_value(name.as_str(), value.clone());
            }
        }
        self.properties = other_properties(&properties, Keep::All);
        self
    }

    /// Makes the message persistent (delivery mode 2): a durable queue keeps it across a
    /// broker restart. AMQP's default is transient.
    pub fn persistent(mut self) -> Self {
        self.properties = std::mem::take(&mut self.properties).with_delivery_mode(2);
        self
    }

    /// Sets the creation time (default: when the publisher sends it).
    pub fn timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Whether a message no queue receives is an error (`true`, the default) or dropped by the
    /// broker without a word (`false`).
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// The exchange (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The text headers (without the ids, which are properties).
    pub fn headers(&self) -> &HeaderList {
        &self.headers
    }

    /// The AMQP properties set with [`properties`](Self::properties) or
    /// [`persistent`](Self::persistent), without ids, timestamp and headers.
    pub fn basic_properties(&self) -> &BasicProperties {
        &self.properties
    }

    fn set_id(&mut self, id: Id, value: String) {
        let (slot, name) = match id {
            Id::Message => (&mut self.message_id, header::MESSAGE_ID),
            Id::Correlation => (&mut self.correlation_id, header::CORRELATION_ID),
        };
        *slot = Some(value);
        // One place for each id: a header of the same name would be a second.
        self.headers.remove(name);
        self.values
            .retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }

    /// The exchange and routing key as AMQP names.
    pub(crate) fn names(&self) -> Result<(ShortString, ShortString), &'static str> {
        let exchange = ShortString::try_new(self.exchange.as_str())
            .map_err(|_| "exchange name over 255 bytes")?;
        let routing_key = ShortString::try_new(self.routing_key.as_str())
            .map_err(|_| "routing key over 255 bytes")?;
        Ok((exchange, routing_key))
    }

    /// The AMQP properties the record is sent with, created at `now` if it has no timestamp.
    pub(crate) fn amqp_properties(&self, now: SystemTime) -> BasicProperties {
        let mut properties = self.properties.clone();
        // Ids too long for a property travel as headers.
        let mut long_ids = [("", ""); 2];
        let mut long = 0;
        for (id, name) in [
            (&self.message_id, header::MESSAGE_ID),
            (&self.correlation_id, header::CORRELATION_ID),
        ] {
            let Some(id) = id else { continue };
            match ShortString::try_new(id.as_str()) {
                Ok(value) if name == header::MESSAGE_ID => {
                    properties = properties.with_message_id(value);
                }
                Ok(value) => properties = properties.with_correlation_id(value),
                Err(_) => {
                    long_ids[long] = (name, id.as_str());
                    long += 1;
                }
            }
        }
        let since = self
            .timestamp
            .unwrap_or(now)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let millis = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
        let table = carrier::field_table(&self.headers, &long_ids[..long], &self.values, millis);
        properties
            .with_timestamp(since.as_secs())
            .with_headers(table)
    }
}

/// Which properties a copy keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Everything but the ids, timestamp and headers.
    All,
    /// What a republished copy of a delivered message keeps: no expiration (it would expire
    /// again in the dead-letter queue, as RabbitMQ's own dead-lettering knows), no `user_id`
    /// (the broker refuses one that is not the publishing connection's user).
    Republished,
}

/// `properties` without ids, timestamp and headers (`BasicProperties` cannot unset a field).
fn other_properties(properties: &BasicProperties, keep: Keep) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = properties.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = properties.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = properties.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = properties.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = properties.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = properties.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = properties.app_id() {
        out = out.with_app_id(v.clone());
    }
    if keep == Keep::All {
        if let Some(v) = properties.expiration() {
            out = out.with_expiration(v.clone());
        }
        if let Some(v) = properties.user_id() {
            out = out.with_user_id(v.clone());
        }
        if let Some(v) = properties.cluster_id() {
            out = out.with_cluster_id(v.clone());
        }
    }
    out
}

impl Headers for RabbitRecord {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        // The correlation id is a property; the layers read it as the header.
        let correlation = self
            .correlation_id
            .as_deref()
            .map(|id| (header::CORRELATION_ID, id.as_bytes()));
        self.headers.iter().chain(correlation)
    }
}

impl HeadersMut for RabbitRecord {
    fn set_header(&mut self, name: &str, value: &str) {
        match Known::of(name) {
            Some(Known::MessageId) => self.set_id(Id::Message, value.to_owned()),
            Some(Known::CorrelationId) => self.set_id(Id::Correlation, value.to_owned()),
            _ => self.headers.set_header(name, value),
        }
    }

    fn set_static_header(&mut self, name: &'static str, value: &str) {
        match Known::of(name) {
            Some(Known::MessageId) => self.set_id(Id::Message, value.to_owned()),
            Some(Known::CorrelationId) => self.set_id(Id::Correlation, value.to_owned()),
            _ => self.headers.set_static_header(name, value),
        }
    }

    fn remove_header(&mut self, name: &str) {
        match Known::of(name) {
            Some(Known::MessageId) => self.message_id = None,
            Some(Known::CorrelationId) => self.correlation_id = None,
            _ => {}
        }
        self.headers.remove(name);
        self.values
            .retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }
}

impl OutgoingMessage for RabbitRecord {
    fn system(&self) -> &'static str {
        system::RABBITMQ
    }

    fn destination(&self) -> &str {
        &self.destination
    }

    /// The `message_id` property.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.message_id.as_deref().map(Cow::Borrowed)
    }

    /// Sets the `message_id` property.
    fn set_message_id(&mut self, id: &str) {
        self.set_id(Id::Message, id.to_owned());
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn extra_attributes(&self, attributes: &mut SpanAttributes) {
        if !self.routing_key.is_empty() {
            attributes.string(
                semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                self.routing_key.as_str(),
            );
        }
    }
}

/// The broker confirmed a publish (the publisher confirm arrived, and the message was routed
/// if it was mandatory).
#[derive(Clone, Debug, Default)]
pub struct RabbitReceipt {
    pub(crate) server: Option<Arc<ServerAddress>>,
}

impl Receipt for RabbitReceipt {
    fn extra_attributes(&self, attributes: &mut SpanAttributes) {
        server_attributes(self.server.as_deref(), attributes);
    }
}

fn server_attributes(server: Option<&ServerAddress>, attributes: &mut SpanAttributes) {
    if let Some(server) = server {
        attributes.string(semconv::SERVER_ADDRESS, &*server.host);
        attributes.int(semconv::SERVER_PORT, i64::from(server.port));
    }
}

/// What the deliveries of one exchange and routing key to a consumer's queue share.
#[derive(Debug)]
pub(crate) struct Origin {
    pub(crate) destination: Arc<str>,
    pub(crate) queue: Arc<str>,
    pub(crate) server: Option<Arc<ServerAddress>>,
}

/// A delivery and what the consumer made of it on receipt.
pub(crate) struct Received {
    pub(crate) delivery: Delivery,
    /// Whether the delivery's connection still stands.
    pub(crate) alive: Arc<super::consumer::Alive>,
    /// An id given on receipt to a message that came without one (SPEC §2).
    pub(crate) fresh_id: Option<Box<str>>,
    /// A `correlation-id` header exists: the property is not read.
    pub(crate) correlation_header: bool,
    pub(crate) created: Option<SystemTime>,
}

/// A message delivered to a handler by a [`RabbitConsumer`](super::RabbitConsumer): the
/// delivery as lapin received it, cheap to clone.
///
/// Its headers, as the layers read them, are the text headers of the delivery (see the
/// [module docs](super)) and the `correlation_id` property as `correlation-id`. Its
/// [`message_id`](IncomingMessage::message_id) is the `message-id` header, else the
/// `message_id` property, else an id given on receipt (logged once per destination).
/// [`delivery_attempt`](IncomingMessage::delivery_attempt) is `x-delivery-count` + 1 on quorum
/// queues, else 2 for a redelivery, else 1.
#[derive(Clone)]
pub struct RabbitMessage {
    pub(crate) origin: Arc<Origin>,
    pub(crate) received: Arc<Received>,
    /// The attempt this message is handed to the handler for: the delivery's, or the consumer
    /// core's count where that is higher (retries in process).
    pub(crate) attempt: u32,
}

impl fmt::Debug for RabbitMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delivery = &self.received.delivery;
        f.debug_struct("RabbitMessage")
            .field("destination", &self.origin.destination)
            .field("delivery_tag", &delivery.delivery_tag)
            .field("redelivered", &delivery.redelivered)
            .field("payload_len", &delivery.data.len())
            .finish_non_exhaustive()
    }
}

impl RabbitMessage {
    /// The queue it was consumed from.
    pub fn queue(&self) -> &str {
        &self.origin.queue
    }

    /// The exchange it was published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        self.received.delivery.exchange.as_str()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.received.delivery.routing_key.as_str()
    }

    /// The delivery tag (per channel; tags start again at 1 after the consumer reconnected).
    pub fn delivery_tag(&self) -> u64 {
        self.received.delivery.delivery_tag
    }

    /// Whether the broker delivered it before.
    pub fn redelivered(&self) -> bool {
        self.received.delivery.redelivered
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.received.delivery.data
    }

    /// The AMQP properties as they arrived, every header of every type included.
    pub fn properties(&self) -> &BasicProperties {
        &self.received.delivery.properties
    }

    /// The first text header called `name` (ASCII case-insensitive), as the layers read it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        Headers::headers(self)
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    fn table(&self) -> Option<&FieldTable> {
        self.received.delivery.properties.headers().as_ref()
    }
}

impl Headers for RabbitMessage {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let correlation = if self.received.correlation_header {
            None
        } else {
            self.received
                .delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| (header::CORRELATION_ID, id.as_str().as_bytes()))
        };
        self.table()
            .into_iter()
            .flat_map(|table| table.inner().iter())
            .filter_map(|(name, value)| carrier::text(value).map(|bytes| (name.as_str(), bytes)))
            .chain(correlation)
    }
}

impl IncomingMessage for RabbitMessage {
    fn system(&self) -> &'static str {
        system::RABBITMQ
    }

    fn destination(&self) -> &str {
        &self.origin.destination
    }

    /// The `message-id` header, else the `message_id` property, else the id given on receipt.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        if let Some(id) = crate::message::header_id(self) {
            return Some(Cow::Borrowed(id));
        }
        let property = self.received.delivery.properties.message_id().as_ref();
        if let Some(id) = property.filter(|id| header::id_ok(id.as_str())) {
            return Some(Cow::Borrowed(id.as_str()));
        }
        self.received.fresh_id.as_deref().map(Cow::Borrowed)
    }

    /// Not for a message without an id of its own: the one given on receipt is not kept by a
    /// redelivery, and a classic queue says only `redelivered` (the queue's type is not known
    /// at the first delivery, so this holds on quorum queues too). Such a message is retried
    /// in process.
    fn redeliveries_counted(&self) -> bool {
        self.received.fresh_id.is_none()
    }

    fn consumer_group(&self) -> Option<&str> {
        Some(&self.origin.queue)
    }

    fn created_at(&self) -> Option<SystemTime> {
        self.received.created
    }

    fn body_size(&self) -> Option<usize> {
        Some(self.received.delivery.data.len())
    }

    fn payload(&self) -> &[u8] {
        &self.received.delivery.data
    }

    fn delivery_attempt(&self) -> Option<u32> {
        Some(self.attempt)
    }

    fn set_delivery_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }

    fn extra_attributes(&self, attributes: &mut SpanAttributes) {
        let delivery = &self.received.delivery;
        if !delivery.routing_key.as_str().is_empty() {
            attributes.string(
                semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                delivery.routing_key.as_str(),
            );
        }
        attributes.int(
            semconv::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
            i64::try_from(delivery.delivery_tag).unwrap_or(i64::MAX),
        );
        server_attributes(self.origin.server.as_deref(), attributes);
    }
}

/// Headers the broker manages, which a new message must not carry over.
fn broker_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(DELIVERY_COUNT) || name.eq_ignore_ascii_case(TIMESTAMP_IN_MS)
}

impl Republish for RabbitMessage {
    type Record = RabbitRecord;

    /// A record with this message's payload, headers, correlation id and properties (not its
    /// ids, creation time, expiration or `user_id`, nor `x-delivery-count`), for `destination`:
    /// `{exchange}:{routing key}` (the last `:` separates them, so exchange names may hold
    /// `:`), `{exchange}:` for an empty routing key, or a bare queue name, reached through the
    /// default exchange (`amq.default` names that exchange). The
    /// [dead-letter destination](Republish::dead_letter_destination) is always the queue
    /// `{queue}.dlq`, whatever its name holds.
    fn republish(&self, destination: &str) -> RabbitRecord {
        let dead_letters = self.dead_letter_destination();
        let (exchange, routing_key) = if destination == dead_letters {
            ("", destination)
        } else {
            parse_destination(destination)
        };
        let properties = &self.received.delivery.properties;
        let mut record = RabbitRecord::new(exchange, routing_key, self.payload().to_vec());
        record.properties = other_properties(properties, Keep::Republished);
        for (name, value) in self.table().into_iter().flat_map(|t| t.inner().iter()) {
            let name = name.as_str();
            if crate::message::republished_header(name) || broker_header(name) {
                continue;
            }
            match (Known::of(name), carrier::text(value)) {
                (Some(Known::CorrelationId), Some(id)) => {
                    record.correlation_id = Some(String::from_utf8_lossy(id).into_owned());
                }
                (_, Some(bytes)) => {
                    record.headers.push_bytes(name, bytes.to_vec());
                }
                (_, None) => record.values.push((name.to_owned(), value.clone())),
            }
        }
        if record.correlation_id.is_none() {
            record.correlation_id = properties
                .correlation_id()
                .as_ref()
                .map(|id| id.to_string());
        }
        record
    }

    /// The queue `{queue}.dlq`, through the default exchange (SPEC §8).
    fn dead_letter_destination(&self) -> String {
        format!("{}.dlq", self.origin.queue)
    }

    /// Where it was published to, `{exchange}:{routing key}` (as a publish names it; the
    /// delivery's destination also names the queue): what its dead-letter copy records in
    /// `dlq-original-destination` and where a replay sends it back.
    fn origin(&self) -> Cow<'_, str> {
        Cow::Owned(send_destination(self.exchange(), self.routing_key()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lapin::types::{FieldArray, LongString};
    use opentelemetry::KeyValue;

    use super::*;

    #[test]
    fn outgoing_layers_see_the_payload() {
        let record = RabbitRecord::to_queue("jobs", b"{}".to_vec());
        assert_eq!(OutgoingMessage::payload(&record), b"{}");
        assert_eq!(OutgoingMessage::body_size(&record), Some(2));
    }

    #[test]
    fn send_destinations_follow_the_convention() {
        assert_eq!(send_destination("orders", "created"), "orders:created");
        assert_eq!(send_destination("", "jobs"), "jobs");
        assert_eq!(send_destination("events", ""), "events");
        assert_eq!(send_destination("", ""), "amq.default");
        assert_eq!(send_destination("Ns:Type", ""), "Ns:Type");
    }

    #[test]
    fn receive_destinations_leave_out_empty_parts_and_a_repeated_queue() {
        assert_eq!(
            receive_destination("orders", "created", "billing"),
            "orders:created:billing"
        );
        assert_eq!(receive_destination("", "jobs", "jobs"), "jobs");
        assert_eq!(
            receive_destination("events", "", "billing"),
            "events:billing"
        );
        assert_eq!(
            receive_destination("events", "billing", "billing"),
            "events:billing"
        );
        assert_eq!(receive_destination("", "other", "billing"), "other:billing");
        assert_eq!(receive_destination("", "", "billing"), "billing");
    }

    #[test]
    fn destination_strings_name_an_exchange_and_a_routing_key() {
        assert_eq!(parse_destination("jobs.dlq"), ("", "jobs.dlq"));
        assert_eq!(parse_destination("orders:created"), ("orders", "created"));
        assert_eq!(parse_destination("orders:"), ("orders", ""));
        assert_eq!(parse_destination(":jobs"), ("", "jobs"));
        assert_eq!(parse_destination("amq.default"), ("", ""));
        assert_eq!(parse_destination("amq.default:jobs"), ("", "jobs"));
        assert_eq!(
            parse_destination("MyApp.Contracts:OrderSubmitted:"),
            ("MyApp.Contracts:OrderSubmitted", "")
        );
        for (exchange, key) in [("orders", "created"), ("", "jobs")] {
            let name = send_destination(exchange, key);
            assert_eq!(parse_destination(&name), (exchange, key), "{name}");
        }
    }

    #[test]
    fn ids_live_in_properties_and_read_as_headers() {
        let mut record = RabbitRecord::to_queue("jobs", b"{}".to_vec())
            .header("Correlation-Id", "flow-1")
            .header("x-tenant", "t1");
        assert_eq!(record.header_str("correlation-id"), Some("flow-1"));
        assert_eq!(record.headers().len(), 1, "the id is not a header");
        record.set_message_id("m-1");
        record.set_static_header(header::CORRELATION_ID, "flow-2");
        record.set_static_header(header::CAUSATION_ID, "c-0");
        assert_eq!(OutgoingMessage::message_id(&record).as_deref(), Some("m-1"));
        assert_eq!(record.header_str("correlation-id"), Some("flow-2"));
        let properties =
            record.amqp_properties(SystemTime::UNIX_EPOCH + Duration::from_millis(42_123));
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some("m-1")
        );
        assert_eq!(
            properties
                .correlation_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("flow-2")
        );
        assert_eq!(*properties.timestamp(), Some(42));
        let table = properties.headers().as_ref().expect("headers");
        assert_eq!(
            table.inner().get("causation-id"),
            Some(&AMQPValue::LongString("c-0".into()))
        );
        assert_eq!(
            table.inner().get("timestamp_in_ms"),
            Some(&AMQPValue::LongLongInt(42_123))
        );
        assert!(table.inner().get("message-id").is_none());
        assert!(table.inner().get("correlation-id").is_none());
        record.remove_header("correlation-id");
        assert_eq!(record.header_str("correlation-id"), None);
    }

    #[test]
    fn an_id_too_long_for_a_property_travels_as_a_header() {
        let long = "x".repeat(256);
        let record = RabbitRecord::to_queue("jobs", Vec::new()).correlation_id(long.clone());
        let properties = record.amqp_properties(SystemTime::now());
        assert_eq!(*properties.correlation_id(), None);
        let table = properties.headers().as_ref().expect("headers");
        assert_eq!(
            table.inner().get("correlation-id"),
            Some(&AMQPValue::LongString(long.into()))
        );
    }

    #[test]
    fn properties_are_taken_apart() {
        let mut table = FieldTable::default();
        table.insert("x-delay".into(), AMQPValue::LongInt(500));
        table.insert("note".into(), AMQPValue::ShortString("short".into()));
        let record = RabbitRecord::new("ex", "rk", Vec::new()).properties(
            BasicProperties::default()
                .with_message_id("m-9".into())
                .with_content_type("application/json".into())
                .with_timestamp(7)
                .with_headers(table),
        );
        assert_eq!(OutgoingMessage::message_id(&record).as_deref(), Some("m-9"));
        assert_eq!(record.headers().get("note"), Some(&b"short"[..]));
        let sent = record.amqp_properties(SystemTime::now());
        assert_eq!(*sent.timestamp(), Some(7));
        assert_eq!(
            sent.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        let table = sent.headers().as_ref().expect("headers");
        assert_eq!(table.inner().get("x-delay"), Some(&AMQPValue::LongInt(500)));
        assert_eq!(
            table.inner().get("note"),
            Some(&AMQPValue::LongString("short".into()))
        );
        assert_eq!(
            table.inner().get("timestamp_in_ms"),
            Some(&AMQPValue::LongLongInt(7_000))
        );
        let mut attributes = SpanAttributes::new();
        record.extra_attributes(&mut attributes);
        assert_eq!(
            attributes.drain().collect::<Vec<_>>(),
            vec![KeyValue::new(
                semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                "rk"
            )]
        );
    }

    fn message(table: FieldTable, properties: BasicProperties) -> RabbitMessage {
        let mut delivery =
            Delivery::mock(3, "orders".into(), "created".into(), true, b"{}".to_vec());
        delivery.properties = properties.with_headers(table);
        let scanned = carrier::scan(delivery.properties.headers().as_ref());
        RabbitMessage {
            attempt: 1,
            origin: Arc::new(Origin {
                destination: Arc::from("orders:created:billing"),
                queue: Arc::from("billing"),
                server: Some(Arc::new(ServerAddress {
                    host: Arc::from("127.0.0.1"),
                    port: 5672,
                })),
            }),
            received: Arc::new(Received {
                delivery,
                alive: Arc::default(),
                fresh_id: None,
                correlation_header: scanned.correlation_header,
                created: None,
            }),
        }
    }

    #[test]
    fn a_message_reads_its_ids_header_first() {
        let mut table = FieldTable::default();
        table.insert("traceparent".into(), AMQPValue::LongString("00-a".into()));
        table.insert("x-number".into(), AMQPValue::LongLongInt(1));
        let properties = BasicProperties::default()
            .with_message_id("prop-id".into())
            .with_correlation_id("prop-flow".into());
        let plain = message(table.clone(), properties.clone());
        assert_eq!(
            IncomingMessage::message_id(&plain).as_deref(),
            Some("prop-id")
        );
        assert_eq!(plain.header_str("correlation-id"), Some("prop-flow"));
        assert_eq!(plain.header("x-number"), None, "not text");
        assert_eq!(plain.header("TRACEPARENT"), Some(&b"00-a"[..]));

        table.insert("message-id".into(), AMQPValue::LongString("head-id".into()));
        table.insert(
            "correlation-id".into(),
            AMQPValue::LongString("head-flow".into()),
        );
        let both = message(table, properties);
        assert_eq!(
            IncomingMessage::message_id(&both).as_deref(),
            Some("head-id")
        );
        let flows: Vec<_> = Headers::headers(&both)
            .filter(|(k, _)| *k == "correlation-id")
            .collect();
        assert_eq!(flows, vec![("correlation-id", &b"head-flow"[..])]);
        let mut attributes = SpanAttributes::new();
        both.extra_attributes(&mut attributes);
        assert_eq!(
            attributes.drain().collect::<Vec<_>>(),
            vec![
                KeyValue::new(
                    semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                    "created"
                ),
                KeyValue::new(semconv::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG, 3),
                KeyValue::new(semconv::SERVER_ADDRESS, "127.0.0.1"),
                KeyValue::new(semconv::SERVER_PORT, 5672),
            ]
        );
    }

    #[test]
    fn a_republished_copy_keeps_the_flow_but_not_the_ids() {
        let mut table = FieldTable::default();
        table.insert("message-id".into(), AMQPValue::LongString("m-1".into()));
        table.insert("Causation-Id".into(), AMQPValue::LongString("c-0".into()));
        table.insert("x-delivery-count".into(), AMQPValue::LongLongInt(4));
        table.insert("timestamp_in_ms".into(), AMQPValue::LongLongInt(5));
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        table.insert(
            "bin".into(),
            AMQPValue::LongString(LongString::from(vec![0xff])),
        );
        let original = message(
            table,
            BasicProperties::default()
                .with_message_id("m-1".into())
                .with_correlation_id("flow-1".into())
                .with_expiration("1000".into())
                .with_user_id("alice".into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        );
        let copy = original.republish(&original.dead_letter_destination());
        assert_eq!((copy.exchange(), copy.routing_key()), ("", "billing.dlq"));
        assert_eq!(copy.payload(), b"{}");
        assert_eq!(
            OutgoingMessage::message_id(&copy),
            None,
            "a new message gets a new id"
        );
        assert_eq!(copy.header_str("correlation-id"), Some("flow-1"));
        assert_eq!(copy.headers().get("causation-id"), None);
        assert_eq!(copy.headers().get("bin"), Some(&[0xff][..]));
        assert_eq!(copy.headers().get("timestamp_in_ms"), None);
        let names: Vec<_> = copy.values.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["x-death"]);
        let properties = copy.basic_properties();
        assert_eq!(*properties.expiration(), None);
        assert_eq!(*properties.user_id(), None);
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        let replayed = original.republish("orders:created");
        assert_eq!(
            (replayed.exchange(), replayed.routing_key()),
            ("orders", "created")
        );
        assert_eq!(replayed.destination(), "orders:created");
    }
}
