//! The headers eventscope writes and reads (SPEC §2), and the rules an id must keep to be
//! propagated.
//!
//! This module depends on nothing else in the crate: the message view, propagation, the message
//! scope and the layers all take their header names and id rules from here.
//!
//! # Example
//!
//! ```
//! use eventscope::header;
//! use eventscope::message::{HeaderList, Headers};
//!
//! let mut headers = HeaderList::new();
//! headers.push("Correlation-Id", "order-42");
//! assert_eq!(headers.header_str(header::CORRELATION_ID), Some("order-42"));
//! assert!(header::MAX_ID_BYTES >= 36, "room for a UUID");
//! ```

/// W3C Trace Context `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// W3C Baggage.
pub const BAGGAGE: &str = "baggage";
/// The business flow id.
pub const CORRELATION_ID: &str = "correlation-id";
/// The id of the message whose processing caused this one.
pub const CAUSATION_ID: &str = "causation-id";
/// A unique message id, for protocols without a native id field.
pub const MESSAGE_ID: &str = "message-id";

/// Where a dead-lettered message was consumed from: topic, `{exchange}:{routing key}` or
/// subject (SPEC §8).
pub const DLQ_ORIGINAL_DESTINATION: &str = "dlq-original-destination";
/// The partition a dead-lettered message sat in (Kafka, the embedded broker).
pub const DLQ_ORIGINAL_PARTITION: &str = "dlq-original-partition";
/// The offset a dead-lettered message sat at (Kafka, the embedded broker).
pub const DLQ_ORIGINAL_OFFSET: &str = "dlq-original-offset";
/// The group, queue or durable consumer that failed it.
pub const DLQ_CONSUMER_GROUP: &str = "dlq-consumer-group";
/// The failure's `error.type`.
pub const DLQ_ERROR_TYPE: &str = "dlq-error-type";
/// The failure's text, at most [`DLQ_ERROR_MESSAGE_MAX_BYTES`].
pub const DLQ_ERROR_MESSAGE: &str = "dlq-error-message";
/// Attempts made.
pub const DLQ_ATTEMPTS: &str = "dlq-attempts";
/// When it failed for good: RFC 3339, UTC, milliseconds.
pub const DLQ_FAILED_AT: &str = "dlq-failed-at";
/// What every dead-letter header name starts with; replay removes them all.
pub const DLQ_PREFIX: &str = "dlq-";
/// The longest `dlq-error-message` written, cut on a character boundary.
pub const DLQ_ERROR_MESSAGE_MAX_BYTES: usize = 1024;

/// The longest `correlation-id`, `causation-id` or `message-id` that is propagated (SPEC §2).
/// A longer incoming id, or one that is not UTF-8 or holds a control character, is replaced by
/// a fresh one and counted in `eventscope_trace_context_invalid_total`.
pub const MAX_ID_BYTES: usize = 256;

/// A header eventscope reads, recognised with one comparison: names are told apart by length
/// (and, for the two of ten bytes, by their first letter) before any case-insensitive compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Traceparent,
    Tracestate,
    Baggage,
    CorrelationId,
    CausationId,
    MessageId,
}

impl Known {
    pub(crate) fn of(name: &str) -> Option<Self> {
        let name = name.as_bytes();
        match name.len() {
            11 => is(name, b"traceparent").then_some(Self::Traceparent),
            10 => {
                if is(name, b"message-id") {
                    Some(Self::MessageId)
                } else {
                    is(name, b"tracestate").then_some(Self::Tracestate)
                }
            }
            7 => is(name, b"baggage").then_some(Self::Baggage),
            14 => is(name, b"correlation-id").then_some(Self::CorrelationId),
            12 => is(name, b"causation-id").then_some(Self::CausationId),
            _ => None,
        }
    }
}

/// `name` is `expected` (lower case), ignoring ASCII case. Both are fixed-size here, so the
/// compare is a few word loads; producers write these names in lower case, so the exact compare
/// settles most.
#[inline]
fn is<const N: usize>(name: &[u8], expected: &[u8; N]) -> bool {
    <&[u8; N]>::try_from(name)
        .is_ok_and(|name| name == expected || name.eq_ignore_ascii_case(expected))
}

/// `true` when `id` may be propagated: not empty, at most [`MAX_ID_BYTES`], no control
/// character.
pub(crate) fn id_ok(id: &str) -> bool {
    usable_id(id.as_bytes()).is_some()
}

/// `value` as an id that may be propagated (SPEC §2): not empty, at most [`MAX_ID_BYTES`],
/// UTF-8 without control characters. The length is checked first, so an oversized value is
/// never scanned.
#[inline]
pub(crate) fn usable_id(value: &[u8]) -> Option<&str> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return None;
    }
    crate::text::id_text(value)
}

/// Room for one generated id (a hyphenated UUID), so generating one allocates nothing.
pub(crate) struct IdBuffer([u8; 36]);

impl IdBuffer {
    pub(crate) fn new() -> Self {
        Self([b'-'; 36])
    }

    /// A new UUIDv7, written into this buffer as lower-case hyphenated text.
    pub(crate) fn new_id(&mut self) -> &str {
        let (high, low) = new_uuid_v7();
        // The 32 digits at once, then set out 8-4-4-4-12 around the hyphens.
        let digits =
            crate::hex::encode_16(((u128::from(high) << 64) | u128::from(low)).to_be_bytes());
        let out = &mut self.0;
        out[..8].copy_from_slice(&digits[..8]);
        out[9..13].copy_from_slice(&digits[8..12]);
        out[14..18].copy_from_slice(&digits[12..16]);
        out[19..23].copy_from_slice(&digits[16..20]);
        out[24..36].copy_from_slice(&digits[20..]);
        crate::text::ascii(out)
    }
}

/// A UUIDv7 as its two big-endian words: the Unix time in milliseconds (48 bits), the version
/// (7), 12 random bits, the variant (`10`) and 62 random bits (RFC 9562 §5.7).
///
/// The random bits come from `fastrand`'s per-thread generator: ids need to be unique, not
/// unpredictable, and this is several times cheaper than `uuid`'s own v7 path (a shared clock
/// sequence and a cryptographic generator).
fn new_uuid_v7() -> (u64, u64) {
    let millis = crate::clock::unix_nanos_now() / 1_000_000;
    let high = (millis << 16) | 0x7000 | (fastrand::u64(..) & 0x0fff);
    let low = (1 << 63) | (fastrand::u64(..) >> 2);
    (high, low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_in_any_case_and_nothing_else() {
        for (name, known) in [
            (TRACEPARENT, Known::Traceparent),
            (TRACESTATE, Known::Tracestate),
            (BAGGAGE, Known::Baggage),
            (CORRELATION_ID, Known::CorrelationId),
            (CAUSATION_ID, Known::CausationId),
            (MESSAGE_ID, Known::MessageId),
        ] {
            assert_eq!(Known::of(name), Some(known));
            assert_eq!(Known::of(&name.to_ascii_uppercase()), Some(known));
            let mut other = name.to_owned().into_bytes();
            other[name.len() / 2] = b'_';
            assert_eq!(Known::of(std::str::from_utf8(&other).unwrap()), None);
        }
        for name in ["", "trace", "content-type", "message-ids", "x-message-id"] {
            assert_eq!(Known::of(name), None, "{name}");
        }
    }

    #[test]
    fn ids_with_control_characters_are_not_usable() {
        assert_eq!(usable_id(b"order-42"), Some("order-42"));
        assert_eq!(usable_id("caf\u{e9}".as_bytes()), Some("caf\u{e9}"));
        for bad in [
            &b""[..],
            b"abc\r\nX-Injected: 1",
            b"abc\0def",
            b"tab\there",
            b"del\x7f",
            b"\xff\xfe",
        ] {
            assert_eq!(usable_id(bad), None, "{bad:?}");
        }
        assert!(usable_id("x".repeat(MAX_ID_BYTES).as_bytes()).is_some());
        assert!(usable_id("x".repeat(MAX_ID_BYTES + 1).as_bytes()).is_none());
        assert!(!id_ok("a\nb") && id_ok("a-b"));
    }

    #[test]
    fn generated_ids_are_hyphenated_uuid_v7() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = IdBuffer::new().new_id().to_owned();
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 7);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(parsed.hyphenated().to_string(), id, "lower-case hyphenated");
            let (secs, nanos) = parsed.get_timestamp().expect("v7 has one").to_unix();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(millis >= before && millis < before + 60_000);
            assert!(seen.insert(id));
        }
    }
}
