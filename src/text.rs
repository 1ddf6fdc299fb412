//! Bytes as text on the hot path.
//!
//! The ids and the trace context are ASCII almost always, and for ASCII a word-at-a-time check
//! is about a third of what [`std::str::from_utf8`] costs on a 36-byte id (and cheaper than
//! `<[u8]>::is_ascii`, which goes byte by byte below a few words); per message this runs four
//! to six times.

/// `bytes` as text when they are UTF-8, checked the cheap way first.
#[inline]
#[allow(unsafe_code)]
pub(crate) fn utf8(bytes: &[u8]) -> Option<&str> {
    if is_ascii(bytes) {
        // SAFETY: every byte is below 0x80 (checked just above), and a sequence of ASCII bytes
        // is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// `bytes`, which the caller wrote and knows to be ASCII (hex digits and dashes), as text.
#[inline]
pub(crate) fn ascii(bytes: &[u8]) -> &str {
    debug_assert!(is_ascii(bytes), "not ASCII: {bytes:?}");
    utf8(bytes).unwrap_or_default()
}

/// No byte has its high bit set, eight bytes at a time.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(u64::MAX, u64::from_ne_bytes)
    };
    if bytes.len() < 8 {
        return bytes.iter().all(u8::is_ascii);
    }
    let mut any = 0u64;
    let mut at = 0;
    while at + 8 <= bytes.len() {
        any |= word(at);
        at += 8;
    }
    // The tail as one word that overlaps the last full one.
    any |= word(bytes.len() - 8);
    any & 0x8080_8080_8080_8080 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_std() {
        for bytes in [
            &b""[..],
            b"order-42",
            b"0190f1c2-7d4e-7abc-9def-0123456789ab",
            "caf\u{e9}".as_bytes(),
            b"\xff\xfe",
            b"abc\x80",
            "\u{1F600} and more text after it".as_bytes(),
        ] {
            assert_eq!(utf8(bytes), std::str::from_utf8(bytes).ok(), "{bytes:?}");
        }
        assert_eq!(ascii(b"00-ab"), "00-ab");
        for len in 0..40 {
            for high in 0..len {
                let mut bytes = vec![b'a'; len];
                assert!(is_ascii(&bytes));
                bytes[high] = 0x80;
                assert!(!is_ascii(&bytes), "{len} {high}");
            }
        }
    }
}
