//! Kafka headers ⇄ [`HeaderList`]: the carrier the layers read and write through.
//!
//! Outgoing records keep their headers as a [`HeaderList`] (so injection replaces same-named
//! headers) and become librdkafka headers only at send time. Incoming headers are copied into a
//! [`HeaderList`] once, when the message is taken from the consumer.

use std::ffi::{c_char, c_void, CStr};

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};

use super::record::{Data, KafkaRecord};
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

/// How many bytes the names and values of `message`'s headers take, to size the one buffer
/// [`read_headers`] copies them into.
pub(crate) fn header_bytes(message: &BorrowedMessage<'_>) -> usize {
    let mut total = 0;
    for_each_raw_header(message, |name, value| {
        total += name.len() + value.map_or(0, <[u8]>::len);
    });
    total
}

/// Copies the headers of `message` into `data`; a header without value reads as an empty
/// value. Returns how many headers were skipped because their name is not UTF-8.
///
/// Kafka header names are bytes on the wire; only a hand-written client sends names that are
/// not UTF-8, but such a record must neither panic nor abort the consumer (it would never be
/// committed, so every restart would die on it again). The names are therefore read as bytes,
/// not through `rdkafka`'s `Headers::try_get`, which `unwrap`s their UTF-8 conversion.
pub(crate) fn read_headers(message: &BorrowedMessage<'_>, data: &mut Data) -> usize {
    let mut skipped = 0;
    for_each_raw_header(message, |name, value| {
        if !copy_header(data, name, value) {
            skipped += 1;
        }
    });
    skipped
}

/// Appends one header to `data`; `false` (and nothing appended) when `name` is not UTF-8.
fn copy_header(data: &mut Data, name: &[u8], value: Option<&[u8]>) -> bool {
    match std::str::from_utf8(name) {
        Ok(name) => {
            data.push_header(name, value.unwrap_or_default());
            true
        }
        Err(_) => false,
    }
}

/// Calls `each` with the raw name and value of every header of `message`, in order.
///
/// The one place eventscope calls librdkafka itself: `rdkafka` 0.39 has no way to read a
/// header name as bytes (`Headers::try_get` and everything built on it, `get`, `get_as`,
/// `iter`, convert the name with `CStr::to_str().unwrap()`), and a panic is no answer under
/// `panic = "abort"`. The fix upstream would be a byte-named accessor next to `try_get`
/// (e.g. `Headers::try_get_raw(idx) -> Option<(&[u8], Option<&[u8]>)>`), or `try_get`
/// returning `None` / an error for such a name instead of panicking; with it, this function
/// becomes safe code.
#[allow(unsafe_code)]
fn for_each_raw_header(message: &BorrowedMessage<'_>, mut each: impl FnMut(&[u8], Option<&[u8]>)) {
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
        let mut data = Data::default();
        for header in owned.iter() {
            assert!(copy_header(&mut data, header.key.as_bytes(), header.value));
        }
        assert_eq!(to_list(&data), list);
    }

    #[test]
    fn headers_past_the_inline_ones_keep_their_order() {
        let mut data = Data::default();
        let names: Vec<String> = (0..20).map(|i| format!("h-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            assert!(copy_header(&mut data, name.as_bytes(), Some(&[i as u8])));
        }
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
        let mut data = Data::default();
        assert!(copy_header(&mut data, b"flag", None));
        assert_eq!(to_list(&data).get("flag"), Some(&b""[..]));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_skipped_and_the_rest_kept() {
        let mut data = Data::default();
        assert!(!copy_header(&mut data, &[0xff, 0xfe, b'x'], Some(b"v")));
        assert!(copy_header(&mut data, b"message-id", Some(b"m-1")));
        assert_eq!(
            to_list(&data),
            HeaderList::from(vec![("message-id".to_owned(), b"m-1".to_vec())])
        );
    }
}
