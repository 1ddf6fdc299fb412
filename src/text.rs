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

/// `bytes` as an id's text: UTF-8 without control characters (U+0000 to U+001F and U+007F; a
/// CR/LF would forge headers on text-header brokers and lines in logs, SPEC §2).
#[inline]
#[allow(unsafe_code)]
pub(crate) fn id_text(bytes: &[u8]) -> Option<&str> {
    if is_printable_ascii(bytes) {
        // SAFETY: every byte is between 0x20 and 0x7e (checked just above): ASCII, which is
        // valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    // Not the common case: non-ASCII text, or a control character.
    if has_control(bytes) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Every byte is printable ASCII (0x20 to 0x7e), eight at a time: one pass where checking for
/// control characters and then for UTF-8 made two.
#[inline]
fn is_printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of 0x80 or more has its high bit set; 0x7f gains it by adding one; one below 0x20
    // gains it by subtracting 0x20. A carry or borrow crosses into the next byte only out of a
    // byte that is itself flagged, so a clean word is never flagged.
    let flagged = |x: u64| (x | x.wrapping_add(ONES) | x.wrapping_sub(ONES * 0x20)) & HIGH;
    let mut any = 0u64;
    for_words(bytes, |word| any |= flagged(word));
    any == 0
}

/// Some byte is below 0x20 or is 0x7f, eight bytes at a time. Bytes of multi-byte UTF-8
/// sequences are all 0x80 or more, so they never match.
#[inline]
fn has_control(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if bytes.len() < 8 {
        return bytes.iter().any(|b| *b < 0x20 || *b == 0x7f);
    }
    // A byte below 0x20 (high bit clear) borrows in `x - 0x20`; a 0x7f byte is zero in
    // `x ^ 0x7f`. Both tests may flag a byte of 0x80 or more falsely, so high bytes are masked
    // out with `!x`.
    let flagged = |x: u64| {
        let below = x.wrapping_sub(ONES * 0x20);
        let del = (x ^ (ONES * 0x7f)).wrapping_sub(ONES);
        (below | del) & !x & HIGH
    };
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let mut any = 0u64;
    let mut at = 0;
    while at + 8 <= bytes.len() {
        any |= flagged(word(at));
        at += 8;
    }
    any |= flagged(word(bytes.len() - 8));
    any != 0
}

/// Calls `f` with every byte of `bytes` in some little-endian word, eight at a time: whole
/// words, then the last eight bytes again (overlapping) for a tail. Fewer than eight bytes
/// make one word, of two overlapping halves or padded with `a` (printable, not a control
/// byte, not high). No variable-length copy, which would be a `memcpy` call.
#[inline]
pub(crate) fn for_words(bytes: &[u8], mut f: impl FnMut(u64)) {
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    if bytes.len() < 8 {
        let half = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|w| <[u8; 4]>::try_from(w).ok())
                .map_or(0, u32::from_le_bytes)
        };
        return f(match bytes.len() {
            // Two halves that overlap cover every byte.
            4.. => u64::from(half(0)) | (u64::from(half(bytes.len() - 4)) << 32),
            _ => {
                let mut padded = [b'a'; 8];
                for (to, byte) in padded.iter_mut().zip(bytes) {
                    *to = *byte;
                }
                u64::from_le_bytes(padded)
            }
        });
    }
    let mut at = 0;
    while at + 8 <= bytes.len() {
        f(word(at));
        at += 8;
    }
    if at < bytes.len() {
        f(word(bytes.len() - 8));
    }
}

/// `a == b` for the short texts compared per message (a memo's labels, a message's two ids),
/// inline and a word at a time: the slice compare calls `memcmp`, which costs more than the
/// compare itself at these lengths.
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    let u64_at = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_ne_bytes)
    };
    let u32_at = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map(u32::from_ne_bytes)
    };
    match len {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        // Two words that overlap cover every byte.
        4..=7 => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, len - 4) == u32_at(b, len - 4),
        _ => {
            let mut at = 0;
            while at + 8 <= len {
                if u64_at(a, at) != u64_at(b, at) {
                    return false;
                }
                at += 8;
            }
            at == len || u64_at(a, len - 8) == u64_at(b, len - 8)
        }
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
        assert_eq!(id_text(b"abc\r\nX-Injected: 1"), None);
        assert_eq!(id_text(b"abc\0def"), None);
        assert_eq!(
            id_text("caf\u{e9}-\u{1F600}".as_bytes()),
            Some("caf\u{e9}-\u{1F600}")
        );
        for len in 0..40 {
            for high in 0..len {
                let mut bytes = vec![b'a'; len];
                assert!(is_ascii(&bytes));
                bytes[high] = 0x80;
                assert!(!is_ascii(&bytes), "{len} {high}");
            }
        }
    }

    #[test]
    fn printable_ascii_agrees_with_a_byte_loop() {
        let slow = |bytes: &[u8]| bytes.iter().all(|b| (0x20..=0x7e).contains(b));
        for len in 0..40 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    assert_eq!(
                        is_printable_ascii(&bytes),
                        slow(&bytes),
                        "{len} {at} {byte}"
                    );
                    // Two odd bytes side by side, for carries and borrows between them.
                    if at + 1 < len {
                        bytes[at + 1] = byte.wrapping_add(0x41);
                        assert_eq!(
                            is_printable_ascii(&bytes),
                            slow(&bytes),
                            "{len} {at} {byte}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn control_bytes_agree_with_a_byte_loop() {
        let slow = |bytes: &[u8]| bytes.iter().any(|b| *b < 0x20 || *b == 0x7f);
        for len in 0..40 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    assert_eq!(has_control(&bytes), slow(&bytes), "{len} {at} {byte}");
                }
            }
        }
    }
}
