//! AMQP headers ⇄ the header view the layers read and write (SPEC §2).
//!
//! An AMQP header value is typed. The layers see text only:
//!
//! - **reading**, a header is text when it is a long string, a byte array (how Python's
//!   `bytes` arrive) or a short string; its bytes are passed on as they are (a value that is not
//!   UTF-8 is then unusable to the layers, which count it). A header of any other type is left
//!   out of the view; under a name eventscope reads (`traceparent`, `tracestate`, `baggage` and
//!   the ids) it is a malformed header, counted once per message through the consumer's
//!   [`Reporter`](crate::consume::Reporter), and the message is processed as a new root.
//!   AMQP's own `correlation_id` property joins the view as `correlation-id` when no header of
//!   that name exists, so the layers take it as the flow's id;
//! - **writing**, every text header is a long string: a short string in a header table makes
//!   RabbitMQ 3.10 close the whole connection (541 `INTERNAL_ERROR`), so short strings a caller
//!   put into a table are turned into long strings too, inside nested tables and arrays.
//!
//! Creation time: the `timestamp_in_ms` header (the name RabbitMQ's message interceptor uses,
//! written as the 64-bit integer it writes) is read first, then the `timestamp` property
//! (seconds).

use std::time::{Duration, SystemTime};

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::header::{self, Known};
use crate::message::HeaderList;

/// Milliseconds since the epoch at which the message was created.
pub(crate) const TIMESTAMP_IN_MS: &str = "timestamp_in_ms";
/// The delivery count of a quorum queue, absent on the first delivery.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

/// The bytes of a header value the layers can read as text, `None` for other types.
pub(crate) fn text(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// What one pass over an incoming message's headers finds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Headers eventscope reads whose type is not text.
    pub(crate) unreadable: usize,
    /// A `message-id` header holds a usable id (SPEC §2).
    pub(crate) message_id: bool,
    /// A `correlation-id` header exists (it then wins over the property).
    pub(crate) correlation_header: bool,
    /// `timestamp_in_ms`, when it is a number.
    pub(crate) timestamp_ms: Option<i64>,
    /// `x-delivery-count`, when it is a number.
    pub(crate) delivery_count: Option<i64>,
}

/// Looks at every header once.
pub(crate) fn scan(table: Option<&FieldTable>) -> Scanned {
    let mut scanned = Scanned::default();
    for (name, value) in table.into_iter().flat_map(|t| t.inner().iter()) {
        let name = name.as_str();
        if let Some(known) = Known::of(name) {
            match text(value) {
                None => scanned.unreadable += 1,
                Some(bytes) => match known {
                    Known::MessageId => {
                        scanned.message_id |= header::usable_id(bytes).is_some();
                    }
                    Known::CorrelationId => scanned.correlation_header = true,
                    _ => {}
                },
            }
        } else if name.eq_ignore_ascii_case(TIMESTAMP_IN_MS) {
            scanned.timestamp_ms = scanned.timestamp_ms.or_else(|| integer(value));
        } else if name.eq_ignore_ascii_case(DELIVERY_COUNT) {
            scanned.delivery_count = scanned.delivery_count.or_else(|| integer(value));
        }
    }
    scanned
}

/// A header value as a whole number: any integer type, a timestamp, or decimal text.
fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        other => std::str::from_utf8(text(other)?).ok()?.trim().parse().ok(),
    }
}

/// The creation time: `timestamp_in_ms`, else the `timestamp` property in seconds.
pub(crate) fn created_at(
    timestamp_ms: Option<i64>,
    timestamp_s: Option<u64>,
) -> Option<SystemTime> {
    let since_epoch = match (timestamp_ms, timestamp_s) {
        (Some(ms), _) if ms >= 0 => Duration::from_millis(ms as u64),
        (_, Some(s)) => Duration::from_secs(s),
        _ => return None,
    };
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

/// The header table a record is sent with: its text headers and `extra` (ids too long for a
/// property) as long strings, its other values (short strings made long strings) unless a text
/// header has the same name, and `timestamp_in_ms` unless the record has one.
pub(crate) fn field_table(
    text: &HeaderList,
    extra: &[(&'static str, &str)],
    values: &[(String, AMQPValue)],
    timestamp_ms: i64,
) -> FieldTable {
    let is_text = |name: &str| {
        text.get(name).is_some() || extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut table = FieldTable::default();
    let mut has_timestamp = false;
    for (name, value) in values {
        has_timestamp |= name.eq_ignore_ascii_case(TIMESTAMP_IN_MS);
        if !is_text(name) {
            if let Ok(name) = ShortString::try_new(name.as_str()) {
                table.insert(name, long_strings(value.clone()));
            }
        }
    }
    let texts = text
        .iter()
        .chain(extra.iter().map(|(name, value)| (*name, value.as_bytes())));
    for (name, value) in texts {
        has_timestamp |= name.eq_ignore_ascii_case(TIMESTAMP_IN_MS);
        // Names over 255 bytes cannot be sent in AMQP; such a header is left out.
        if let Ok(name) = ShortString::try_new(name) {
            table.insert(name, AMQPValue::LongString(LongString::from(value)));
        }
    }
    if !has_timestamp {
        table.insert(TIMESTAMP_IN_MS.into(), AMQPValue::LongLongInt(timestamp_ms));
    }
    table
}

/// The bytes the AMQP properties of a message take in its content header frame, with the
/// frame's fixed fields (class, weight, body size, property flags).
pub(crate) fn content_header_len(properties: &lapin::BasicProperties) -> usize {
    let short = |s: &Option<ShortString>| s.as_ref().map_or(0, |s| 1 + s.as_str().len());
    14 + short(properties.content_type())
        + short(properties.content_encoding())
        + properties
            .headers()
            .as_ref()
            .map_or(0, |t| 4 + table_len(t))
        + properties.delivery_mode().map_or(0, |_| 1)
        + properties.priority().map_or(0, |_| 1)
        + short(properties.correlation_id())
        + short(properties.reply_to())
        + short(properties.expiration())
        + short(properties.message_id())
        + properties.timestamp().map_or(0, |_| 8)
        + short(properties.kind())
        + short(properties.user_id())
        + short(properties.app_id())
        + short(properties.cluster_id())
}

/// The encoded size of a table's entries.
fn table_len(table: &FieldTable) -> usize {
    table
        .inner()
        .iter()
        .map(|(name, value)| 1 + name.as_str().len() + 1 + value_len(value))
        .sum()
}

/// The encoded size of a value, without its type tag.
fn value_len(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.len(),
        AMQPValue::ByteArray(b) => 4 + b.len(),
        AMQPValue::FieldArray(a) => {
            4 + a.as_slice().iter().map(|v| 1 + value_len(v)).sum::<usize>()
        }
        AMQPValue::FieldTable(t) => 4 + table_len(t),
        AMQPValue::Void => 0,
    }
}

/// `value` with every short string, also inside tables and arrays, made a long string.
pub(crate) fn long_strings(value: AMQPValue) -> AMQPValue {
    match value {
        AMQPValue::ShortString(s) => AMQPValue::LongString(LongString::from(String::from(s))),
        AMQPValue::FieldTable(table) => AMQPValue::FieldTable(long_string_table(table)),
        AMQPValue::FieldArray(array) => AMQPValue::FieldArray(FieldArray::from(
            array
                .as_slice()
                .iter()
                .cloned()
                .map(long_strings)
                .collect::<Vec<_>>(),
        )),
        other => other,
    }
}

fn long_string_table(table: FieldTable) -> FieldTable {
    let mut out = FieldTable::default();
    for (name, value) in table.inner() {
        out.insert(name.clone(), long_strings(value.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use lapin::types::{ByteArray, DecimalValue};

    use super::*;

    fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in entries {
            table.insert(name.into(), value);
        }
        table
    }

    #[test]
    fn text_headers_are_long_strings_byte_arrays_and_short_strings() {
        assert_eq!(text(&AMQPValue::LongString("a".into())), Some(&b"a"[..]));
        assert_eq!(
            text(&AMQPValue::ByteArray(ByteArray::from(vec![0xff]))),
            Some(&[0xff][..])
        );
        assert_eq!(text(&AMQPValue::ShortString("s".into())), Some(&b"s"[..]));
        assert_eq!(text(&AMQPValue::LongLongInt(1)), None);
        assert_eq!(text(&AMQPValue::Void), None);
    }

    #[test]
    fn a_scan_counts_known_headers_of_other_types_and_reads_numbers() {
        let scanned = scan(Some(&table(vec![
            ("traceparent", AMQPValue::LongLongInt(7)),
            ("Baggage", AMQPValue::Boolean(true)),
            ("Message-Id", AMQPValue::LongString("m-1".into())),
            (
                "correlation-id",
                AMQPValue::ByteArray(ByteArray::from(vec![0xff])),
            ),
            ("x-death", AMQPValue::FieldArray(FieldArray::default())),
            ("timestamp_in_ms", AMQPValue::LongLongInt(1_700_000_000_123)),
            ("x-delivery-count", AMQPValue::LongLongInt(2)),
        ])));
        assert_eq!(
            scanned,
            Scanned {
                unreadable: 2,
                message_id: true,
                correlation_header: true,
                timestamp_ms: Some(1_700_000_000_123),
                delivery_count: Some(2),
            }
        );
        assert_eq!(scan(None), Scanned::default());
        let unusable = scan(Some(&table(vec![(
            "message-id",
            AMQPValue::LongString("a\nb".into()),
        )])));
        assert!(!unusable.message_id);
        let text_number = scan(Some(&table(vec![(
            "timestamp_in_ms",
            AMQPValue::LongString(" 42 ".into()),
        )])));
        assert_eq!(text_number.timestamp_ms, Some(42));
        let odd = scan(Some(&table(vec![(
            "timestamp_in_ms",
            AMQPValue::DecimalValue(DecimalValue { scale: 1, value: 5 }),
        )])));
        assert_eq!(odd.timestamp_ms, None);
    }

    #[test]
    fn creation_time_prefers_milliseconds() {
        let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(created_at(Some(1_500), Some(9)), Some(at(1_500)));
        assert_eq!(created_at(None, Some(9)), Some(at(9_000)));
        assert_eq!(created_at(Some(-1), Some(9)), Some(at(9_000)));
        assert_eq!(created_at(None, None), None);
    }

    #[test]
    fn the_content_header_size_is_what_goes_on_the_wire() {
        use lapin::types::generation::gen_field_table;
        let mut table = FieldTable::default();
        table.insert("traceparent".into(), AMQPValue::LongString("00-abc".into()));
        table.insert("n".into(), AMQPValue::LongLongInt(1));
        table.insert(
            "nested".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::Boolean(true),
                AMQPValue::DecimalValue(DecimalValue { scale: 1, value: 2 }),
                AMQPValue::ByteArray(ByteArray::from(vec![1, 2, 3])),
            ])),
        );
        let encoded = gen_field_table(&table)(Vec::new().into())
            .expect("encodes")
            .write;
        assert_eq!(4 + table_len(&table), encoded.len());
        let properties = lapin::BasicProperties::default()
            .with_message_id("m-1".into())
            .with_timestamp(1)
            .with_headers(table);
        assert_eq!(content_header_len(&properties), 14 + 4 + 8 + encoded.len());
    }

    #[test]
    fn written_tables_hold_long_strings_only() {
        let mut text = HeaderList::new();
        text.push("traceparent", "00-x");
        text.push("shared", "text wins");
        let nested = table(vec![("inner", AMQPValue::ShortString("s".into()))]);
        let values = vec![
            ("shared".to_owned(), AMQPValue::LongLongInt(1)),
            ("x-count".to_owned(), AMQPValue::LongLongInt(3)),
            ("x-table".to_owned(), AMQPValue::FieldTable(nested)),
            (
                "x-array".to_owned(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortString("a".into())])),
            ),
        ];
        let written = field_table(&text, &[("correlation-id", "long")], &values, 42);
        let get = |name: &str| written.inner().get(name).cloned();
        assert_eq!(
            get("traceparent"),
            Some(AMQPValue::LongString("00-x".into()))
        );
        assert_eq!(
            get("shared"),
            Some(AMQPValue::LongString("text wins".into()))
        );
        assert_eq!(get("x-count"), Some(AMQPValue::LongLongInt(3)));
        fn no_short_strings(value: &AMQPValue) -> bool {
            match value {
                AMQPValue::ShortString(_) => false,
                AMQPValue::FieldTable(t) => t.inner().values().all(no_short_strings),
                AMQPValue::FieldArray(a) => a.as_slice().iter().all(no_short_strings),
                _ => true,
            }
        }
        assert!(written.inner().values().all(no_short_strings));
        assert_eq!(
            get("correlation-id"),
            Some(AMQPValue::LongString("long".into()))
        );
        assert_eq!(get("timestamp_in_ms"), Some(AMQPValue::LongLongInt(42)));
        let stamped = vec![("timestamp_in_ms".to_owned(), AMQPValue::LongLongInt(7))];
        let table = field_table(&HeaderList::new(), &[], &stamped, 42);
        assert_eq!(
            table.inner().get("timestamp_in_ms"),
            Some(&AMQPValue::LongLongInt(7)),
            "the record's own creation time is kept"
        );
    }
}
