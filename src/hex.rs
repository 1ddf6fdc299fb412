//! Lower-case hex for trace context and ids, eight digits at a time in one `u64`.
//!
//! `traceparent` is written and read for every message, and its 52 hex digits were the largest
//! single cost of propagation when done a byte at a time. Here each group of eight digits is
//! one word: the nibbles are spread to (or gathered from) bytes with three shift-and-mask
//! steps, and validation checks all eight bytes at once. Decoding is strict: only `0-9a-f`,
//! as W3C Trace Context requires (upper case is invalid there).
//!
//! Crates such as `const-hex` or `faster-hex` decode upper case as well, so strict parsing
//! would need a second pass over the input; for 32 digits this is shorter and faster.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The eight lower-case hex digits of `x`, most significant first.
#[inline]
pub(crate) fn encode_u32(x: u32) -> [u8; 8] {
    // Spread the nibbles so that byte i (big-endian) holds nibble i.
    let mut v = u64::from(x);
    v = (v | (v << 16)) & 0x0000_ffff_0000_ffff;
    v = (v | (v << 8)) & 0x00ff_00ff_00ff_00ff;
    v = (v | (v << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more; such a byte becomes `'a' + n - 10`, which is
    // `'0' + n + 39`.
    let letters = ((v + ONES * 6) >> 4) & ONES;
    (v + ONES * u64::from(b'0') + letters * 39).to_be_bytes()
}

/// The sixteen lower-case hex digits of `x`.
#[inline]
pub(crate) fn encode_u64(x: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&encode_u32((x >> 32) as u32));
    out[8..].copy_from_slice(&encode_u32(x as u32));
    out
}

/// The two lower-case hex digits of `byte`.
#[inline]
pub(crate) fn encode_u8(byte: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [
        DIGITS[usize::from(byte >> 4)],
        DIGITS[usize::from(byte & 0x0f)],
    ]
}

/// The value of eight lower-case hex digits; `None` when any byte is not one.
#[cfg(test)]
fn decode_u32(digits: [u8; 8]) -> Option<u32> {
    let (value, bad) = decode_word(digits);
    (bad == 0).then_some(value)
}

/// The value of eight hex digits and a mask that is non-zero when any byte is not a lower-case
/// hex digit (the value is then meaningless). A caller decoding several words ORs the masks and
/// checks once.
#[inline(always)]
pub(crate) fn decode_word(digits: [u8; 8]) -> (u32, u64) {
    let v = u64::from_be_bytes(digits);
    // For bytes below 0x80, adding at most 0x7f to each cannot carry into the next: the high
    // bit of `byte + (0x80 - lo)` says `byte >= lo`. A byte of 0x80 or more is flagged by `v`
    // itself, and whatever its carries did to the other bytes no longer matters.
    let at_least = |lo: u8| v.wrapping_add(ONES * u64::from(0x80 - lo));
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1) & HIGH_BITS;
    let bad = (v | !(digit | letter)) & HIGH_BITS;
    // `'0'..='9'` and `'a'..='f'` end in their value and their value minus 9.
    let mut n = (v & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Gather the nibbles: byte pairs, then pairs of pairs, then the two halves.
    n = (n | (n >> 4)) & 0x00ff_00ff_00ff_00ff;
    n = (n | (n >> 8)) & 0x0000_ffff_0000_ffff;
    n = (n | (n >> 16)) & 0x0000_0000_ffff_ffff;
    (n as u32, bad)
}

/// The value of sixteen lower-case hex digits.
#[cfg(test)]
fn decode_u64(digits: &[u8; 16]) -> Option<u64> {
    let (high, low) = digits.split_at(8);
    let high = decode_u32(high.try_into().ok()?)?;
    let low = decode_u32(low.try_into().ok()?)?;
    Some((u64::from(high) << 32) | u64::from(low))
}

/// The value of two lower-case hex digits.
#[inline]
pub(crate) fn decode_u8(digits: [u8; 2]) -> Option<u8> {
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    Some((nibble(digits[0])? << 4) | nibble(digits[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_digit(d: u8) -> Option<u8> {
        (d.is_ascii_digit() || (b'a'..=b'f').contains(&d))
            .then(|| u8::from_str_radix(std::str::from_utf8(&[d]).unwrap(), 16).unwrap())
    }

    #[test]
    fn encodes_like_the_formatter() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            assert_eq!(encode_u64(x), format!("{x:016x}").as_bytes());
            let y = (x >> 17) as u32;
            assert_eq!(encode_u32(y), format!("{y:08x}").as_bytes());
            assert_eq!(decode_u64(&encode_u64(x)), Some(x));
        }
        for byte in 0..=255u8 {
            assert_eq!(encode_u8(byte), format!("{byte:02x}").as_bytes());
            assert_eq!(decode_u8(encode_u8(byte)), Some(byte));
        }
        assert_eq!(encode_u32(0), *b"00000000");
        assert_eq!(encode_u32(u32::MAX), *b"ffffffff");
    }

    #[test]
    fn every_byte_at_every_position_is_judged_like_the_reference() {
        for position in 0..8 {
            for byte in 0..=255u8 {
                let mut digits = *b"0a1b2c3d";
                digits[position] = byte;
                let expected = reference_digit(byte).map(|_| {
                    u32::from_str_radix(std::str::from_utf8(&digits).unwrap(), 16).unwrap()
                });
                assert_eq!(decode_u32(digits), expected, "{digits:?}");
            }
        }
        for first in 0..=255u8 {
            for second in [b'0', b'f', b'g', b'A', 0xff] {
                let expected = reference_digit(first)
                    .zip(reference_digit(second))
                    .map(|(h, l)| (h << 4) | l);
                assert_eq!(decode_u8([first, second]), expected);
            }
        }
    }

    #[test]
    fn upper_case_is_rejected() {
        assert_eq!(decode_u32(*b"0000000A"), None);
        assert_eq!(decode_u64(b"00f067aa0ba902b7"), Some(0x00f0_67aa_0ba9_02b7));
        assert_eq!(decode_u64(b"00F067AA0BA902B7"), None);
    }
}
