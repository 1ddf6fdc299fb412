//! Kafka headers ⇄ [`HeaderList`]: the carrier the layers read and write through.
//!
//! Outgoing records keep their headers as a [`HeaderList`] (so injection replaces same-named
//! headers) and become librdkafka headers only at send time. Incoming headers are copied into a
//! [`HeaderList`] once, when the message is taken from the consumer.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rdkafka::message::{Header, OwnedHeaders};

use super::record::Data;
use crate::message::HeaderList;

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

/// Copies incoming headers into `data`; a header without value reads as an empty value.
/// Returns how many headers were skipped.
///
/// `rdkafka` turns header names into `&str` with an `unwrap`, so a name that is not UTF-8
/// (which only a hand-written client can produce) would panic inside `rdkafka`. Each header is
/// therefore read behind `catch_unwind` and such a header is skipped: hostile input must never
/// take the consumer down.
pub(crate) fn read_headers<H: rdkafka::message::Headers>(headers: &H, data: &mut Data) -> usize {
    let mut skipped = 0;
    data.headers.reserve(headers.count());
    for index in 0..headers.count() {
        match catch_unwind(AssertUnwindSafe(|| headers.try_get(index))) {
            Ok(Some(header)) => data.push_header(header.key, header.value.unwrap_or_default()),
            Ok(None) => {}
            Err(_) => skipped += 1,
        }
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_list(data: &Data) -> HeaderList {
        let pairs = data
            .headers
            .iter()
            .map(|((ns, ne), (vs, ve))| {
                (
                    data.names[*ns..*ne].to_owned(),
                    data.bytes[*vs..*ve].to_vec(),
                )
            })
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
        assert_eq!(read_headers(&owned, &mut data), 0);
        assert_eq!(to_list(&data), list);
    }

    #[test]
    fn no_headers_is_none() {
        assert!(to_owned_headers(&HeaderList::new()).is_none());
    }

    #[test]
    fn header_without_value_reads_empty() {
        let owned = OwnedHeaders::new().insert(Header::<&[u8]> {
            key: "flag",
            value: None,
        });
        let mut data = Data::default();
        read_headers(&owned, &mut data);
        assert_eq!(to_list(&data).get("flag"), Some(&b""[..]));
    }
}
