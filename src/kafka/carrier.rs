//! Kafka headers ⇄ [`HeaderList`]: the carrier the layers read and write through.
//!
//! Outgoing records keep their headers as a [`HeaderList`] (so injection replaces same-named
//! headers) and become librdkafka headers only at send time. Incoming headers are copied once,
//! when the message is taken from the consumer, into the one buffer that also holds its key and
//! payload.

use std::ffi::{c_char, c_void, CStr};

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};

#[cfg(test)]
use super::record::Data;
use super::record::KafkaRecord;
use crate::message::HeaderList;

crate::message::header_list_carrier!(KafkaRecord);

/// The headers librdkafka will send for `headers`.
pub(crate) fn to_owned_headers(headers: &HeaderList) -> Option<OwnedHeaders> {
    if headers.is_empty() {
        return None;
    }
    let owned = headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |owned, (key, value)| {
            owned.insert(Header {
                key,
                value: Some(value),
            })
        },
    );
    Some(owned)
}

/// Calls `each` with the raw name and value of every header of `message`, in order; a header
/// without value has `None`.
///
/// Kafka header names are bytes on the wire; only a hand-written client sends names that are
/// not UTF-8, but such a record must neither panic nor abort the consumer (it would never be
/// committed, so every restart would die on it again). The names are therefore read as bytes,
/// not through `rdkafka`'s `Headers::try_get`, which `unwrap`s their UTF-8 conversion; the
/// consumer skips and counts those names (`Data::copy`).
///
/// The one place eventscope calls librdkafka itself: `rdkafka` 0.39 has no way to read a
/// header name as bytes (`Headers::try_get` and everything built on it, `get`, `get_as`,
/// `iter`, convert the name with `CStr::to_str().unwrap()`), and a panic is no answer under
/// `panic = "abort"`. The fix upstream would be a byte-named accessor next to `try_get`
/// (e.g. `Headers::try_get_raw(idx) -> Option<(&[u8], Option<&[u8]>)>`), or `try_get`
/// returning `None` / an error for such a name instead of panicking; with it, this function
/// becomes safe code.
#[allow(unsafe_code)]
pub(crate) fn for_each_raw_header(
    message: &BorrowedMessage<'_>,
    mut each: impl FnMut(&[u8], Option<&[u8]>),
) {
    let mut headers: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is the live `rd_kafka_message_t` that `message` borrows from the
    // consumer; `rd_kafka_message_headers` only reads it (parsing the headers on first use, as
    // `Message::headers` does) and stores in `headers` a pointer owned by the message, valid
    // while the message is, or leaves an error code (`NOENT`: no headers).
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut headers) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return;
    }
    // SAFETY: `headers` is a valid header list owned by `message` (above).
    let count = unsafe { rdsys::rd_kafka_header_cnt(headers) };
    for index in 0..count {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `headers` is valid and `index < count`; on success librdkafka points `name`
        // at the header's NUL-terminated name and `value` at its `size` value bytes (NULL for a
        // null value), both owned by the header list. The list is not modified while `message`
        // is borrowed, so the slices below live as long as this loop body, and `each` only
        // copies them: no reference outlives the borrow of `message`.
        unsafe {
            let err =
                rdsys::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size);
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                continue;
            }
            let name = CStr::from_ptr(name).to_bytes();
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
            each(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    fn to_list(data: &Data) -> HeaderList {
        let pairs = data
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_vec()))
            .collect::<Vec<_>>();
        HeaderList::from(pairs)
    }

    /// `headers` copied as the consumer copies a message's, and how many were skipped.
    fn copied(headers: &[(&[u8], Option<&[u8]>)]) -> (Data, usize) {
        Data::copy(None, None, |each| {
            for (name, value) in headers {
                each(name, *value);
            }
        })
    }

    #[test]
    fn round_trip_keeps_order_duplicates_and_bytes() {
        let mut list = HeaderList::new();
        list.push(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        list.push_bytes("bin", vec![0xff, 0x00, 0xfe]);
        list.push("dup", "a").push("dup", "b");
        let owned = to_owned_headers(&list).expect("non-empty");
        let raw: Vec<(&[u8], Option<&[u8]>)> = owned
            .iter()
            .map(|header| (header.key.as_bytes(), header.value))
            .collect();
        let (data, skipped) = copied(&raw);
        assert_eq!(skipped, 0);
        assert_eq!(to_list(&data), list);
    }

    #[test]
    fn many_headers_keep_their_order() {
        let names: Vec<String> = (0..20).map(|i| format!("h-{i}")).collect();
        let values: Vec<[u8; 1]> = (0..20).map(|i| [i as u8]).collect();
        let raw: Vec<(&[u8], Option<&[u8]>)> = names
            .iter()
            .zip(&values)
            .map(|(name, value)| (name.as_bytes(), Some(&value[..])))
            .collect();
        let (data, _) = copied(&raw);
        let read: Vec<(&str, &[u8])> = data.headers().collect();
        assert_eq!(read.len(), names.len());
        for (i, (name, value)) in read.into_iter().enumerate() {
            assert_eq!((name, value), (names[i].as_str(), &[i as u8][..]));
        }
    }

    #[test]
    fn no_headers_is_none() {
        assert!(to_owned_headers(&HeaderList::new()).is_none());
    }

    #[test]
    fn header_without_value_reads_empty() {
        let (data, _) = copied(&[(b"flag", None)]);
        assert_eq!(to_list(&data).get("flag"), Some(&b""[..]));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_skipped_and_the_rest_kept() {
        let (data, skipped) = copied(&[
            (&[0xff, 0xfe, b'x'], Some(b"v")),
            (b"message-id", Some(b"m-1")),
        ]);
        assert_eq!(skipped, 1);
        assert_eq!(
            to_list(&data),
            HeaderList::from(vec![("message-id".to_owned(), b"m-1".to_vec())])
        );
    }

    #[test]
    fn key_payload_and_headers_read_back_absent_empty_or_full() {
        let headers: [(&[u8], Option<&[u8]>); 2] = [(b"a", Some(b"1")), (b"", Some(b""))];
        for key in [None, Some(&b""[..]), Some(&[0xff, 0x00][..])] {
            for payload in [None, Some(&b""[..]), Some(&b"{\"id\":7}"[..])] {
                let (data, _) = Data::copy(key, payload, |each| {
                    for (name, value) in headers {
                        each(name, value);
                    }
                });
                assert_eq!(data.key(), key);
                assert_eq!(data.payload(), payload);
                assert_eq!(data.payload_len(), payload.map(<[u8]>::len));
                let read: Vec<(&str, &[u8])> = data.headers().collect();
                assert_eq!(read, vec![("a", &b"1"[..]), ("", &b""[..])]);
            }
        }
        let empty = Data::default();
        assert_eq!((empty.key(), empty.payload()), (None, None));
        assert_eq!(empty.headers().count(), 0);
    }
}
