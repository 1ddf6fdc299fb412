//! NATS headers ⇄ the carrier the layers read and write through.
//!
//! Outgoing: a [`NatsRecord`] keeps its headers as a [`HeaderList`] (so injection replaces
//! same-named headers, which a NATS `HeaderMap` cannot remove) and becomes a `HeaderMap` only
//! when it is sent, through the fallible constructors: `HeaderMap::insert` with a `&str` name
//! panics on a name NATS cannot carry, these return an error instead.
//!
//! Incoming: the client's `HeaderMap` is read in place. NATS header names are case-sensitive
//! on the wire (Go clients write `Traceparent`), eventscope's reading is not. A value is always
//! UTF-8 text there (the client refuses anything else, see the module docs); whether it is
//! usable is the propagation's call (SPEC §2).

use std::borrow::Cow;

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use super::error::{PublishError, PublishErrorKind};
use super::record::NatsRecord;
use crate::message::HeaderList;

crate::message::header_list_carrier!(NatsRecord);

/// The header JetStream deduplicates by (matched case-sensitively by the server).
pub(crate) const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// The first value of header `name` (ASCII case-insensitive).
pub(crate) fn header_value<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    super::record::header_pairs(headers)
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

/// `Nats-*` headers are the server's: directives for a publish and annotations it adds.
pub(crate) fn is_server_header(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
}

/// A name NATS can carry: visible ASCII without `:`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The `HeaderMap` sent for `headers`, `None` when there are none. A record with a usable
/// `message-id` header and no `Nats-Msg-Id` is sent with `Nats-Msg-Id` set to it, so JetStream
/// deduplicates by the message's id.
///
/// # Errors
///
/// [`PublishErrorKind::InvalidHeader`] for a name NATS cannot carry or a value with CR, LF
/// or bytes that are not UTF-8.
pub(crate) fn to_header_map(headers: HeaderList) -> Result<Option<HeaderMap>, PublishError> {
    if headers.is_empty() {
        return Ok(None);
    }
    let mut native = false;
    let mut id = None;
    let mut map = HeaderMap::new();
    for (name, value) in headers.into_parts() {
        if !valid_name(&name) {
            return Err(invalid(format!(
                "header name {name:?} cannot be sent over NATS"
            )));
        }
        if name == NATS_MSG_ID {
            native = true;
        }
        let value = String::from_utf8(value)
            .map_err(|_| invalid(format!("header {name} is not UTF-8 text")))?;
        if id.is_none() && name.eq_ignore_ascii_case(crate::header::MESSAGE_ID) {
            id = crate::header::id_ok(&value).then(|| value.clone());
        }
        let value = HeaderValue::try_from(value)
            .map_err(|_| invalid(format!("header {name} holds a line break")))?;
        let name = match name {
            // Checked above; a name known at compile time is not copied.
            Cow::Borrowed(name) => HeaderName::from_static(name),
            Cow::Owned(name) => HeaderName::try_from(name)
                .map_err(|_| invalid("header name cannot be sent over NATS".to_owned()))?,
        };
        map.append(name, value);
    }
    if let (false, Some(id)) = (native, id) {
        if let Ok(id) = HeaderValue::try_from(id) {
            map.insert(HeaderName::from_static(NATS_MSG_ID), id);
        }
    }
    Ok(Some(map))
}

fn invalid(why: String) -> PublishError {
    PublishError::new(PublishErrorKind::InvalidHeader, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Headers, HeadersMut};

    #[test]
    fn names_and_values_nats_cannot_carry_are_errors_not_panics() {
        for (name, value) in [
            ("bad name", &b"v"[..]),
            ("bad:name", b"v"),
            ("caf\u{e9}", b"v"),
            ("", b"v"),
            ("ok", b"a\r\nInjected: 1"),
            ("ok", b"\xff\xfe"),
        ] {
            let mut list = HeaderList::new();
            list.push_bytes(name, value.to_vec());
            let error = to_header_map(list).unwrap_err();
            assert_eq!(error.kind(), PublishErrorKind::InvalidHeader, "{name:?}");
        }
    }

    #[test]
    fn headers_go_over_as_written_and_message_id_becomes_the_native_id() {
        let mut record = NatsRecord::new("orders", "{}")
            .header("Traceparent", "00-aa-bb-01")
            .header("x-dup", "1")
            .header("x-dup", "2");
        record.set_static_header(crate::header::CORRELATION_ID, "flow");
        record.set_header("message-id", "m-1");
        let map = to_header_map(record.headers.clone()).unwrap().unwrap();
        assert_eq!(
            map.get("Traceparent").map(HeaderValue::as_str),
            Some("00-aa-bb-01")
        );
        assert_eq!(map.get_all("x-dup").count(), 2);
        assert_eq!(map.get(NATS_MSG_ID).map(HeaderValue::as_str), Some("m-1"));
        assert_eq!(header_value(Some(&map), "traceparent"), Some("00-aa-bb-01"));
        assert_eq!(record.header_str("CORRELATION-ID"), Some("flow"));
        assert!(to_header_map(HeaderList::new()).unwrap().is_none());
    }

    #[test]
    fn server_headers_by_prefix() {
        assert!(is_server_header("Nats-Msg-Id"));
        assert!(is_server_header("nats-rollup"));
        assert!(!is_server_header("natsy"));
        assert!(!is_server_header("traceparent"));
    }
}
