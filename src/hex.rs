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
//!
//! On x86_64 the sixteen-byte ids (a trace id, a UUID) and eight-byte span ids go through SSE2,
//! which every x86_64 CPU has: sixteen digits per instruction instead of eight per word. The
//! word-at-a-time code stays the reference and the path of other targets; the tests hold the
//! two to the same answers.

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

/// Sixteen bytes as 32 lower-case hex digits.
#[inline]
pub(crate) fn encode_16(bytes: [u8; 16]) -> [u8; 32] {
    #[cfg(target_arch = "x86_64")]
    return sse2::encode_16(bytes);
    #[cfg(not(target_arch = "x86_64"))]
    return encode_16_words(bytes);
}

/// Eight bytes (a span id) as 16 lower-case hex digits.
#[inline]
pub(crate) fn encode_8(bytes: [u8; 8]) -> [u8; 16] {
    #[cfg(target_arch = "x86_64")]
    return sse2::encode_8(bytes);
    #[cfg(not(target_arch = "x86_64"))]
    return encode_u64(u64::from_be_bytes(bytes));
}

/// [`encode_16`] a word at a time: the reference, and the path of other targets.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn encode_16_words(bytes: [u8; 16]) -> [u8; 32] {
    let value = u128::from_be_bytes(bytes);
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&encode_u64((value >> 64) as u64));
    out[16..].copy_from_slice(&encode_u64(value as u64));
    out
}

/// 32 lower-case hex digits as sixteen bytes; `None` if any is not `0-9a-f`.
#[inline]
pub(crate) fn decode_32(digits: &[u8; 32]) -> Option<[u8; 16]> {
    #[cfg(target_arch = "x86_64")]
    return sse2::decode_32(digits);
    #[cfg(not(target_arch = "x86_64"))]
    return decode_words(digits);
}

/// Sixteen lower-case hex digits as eight bytes; `None` if any is not `0-9a-f`.
#[inline]
pub(crate) fn decode_16(digits: &[u8; 16]) -> Option<[u8; 8]> {
    #[cfg(target_arch = "x86_64")]
    return sse2::decode_16(digits);
    #[cfg(not(target_arch = "x86_64"))]
    return decode_words(digits);
}

/// `2 * N` digits as `N` bytes, a word at a time: the reference, and the path of other targets.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn decode_words<const D: usize, const N: usize>(digits: &[u8; D]) -> Option<[u8; N]> {
    debug_assert_eq!(D, 2 * N, "two digits per byte");
    let mut out = [0u8; N];
    let mut bad = 0;
    for (chunk, bytes) in digits.chunks_exact(8).zip(out.chunks_exact_mut(4)) {
        let (value, flagged) = decode_word(chunk.try_into().ok()?);
        bad |= flagged;
        bytes.copy_from_slice(&value.to_be_bytes());
    }
    (bad == 0).then_some(out)
}

/// The SSE2 forms. Every intrinsic here is part of x86_64's baseline instruction set, so no
/// CPU check is needed; loads and stores are unaligned ones of exactly the arrays' sizes.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_loadl_epi64,
        _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_packus_epi16, _mm_set1_epi16,
        _mm_set1_epi8, _mm_setzero_si128, _mm_slli_epi16, _mm_srli_epi16, _mm_storel_epi64,
        _mm_storeu_si128, _mm_sub_epi8, _mm_subs_epu8, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };

    /// A nibble n of each byte as its digit: `'0' + n`, and 39 more (`'a' - '0' - 10`) when it
    /// is over 9.
    ///
    /// # Safety
    /// Only SSE2, which x86_64 always has.
    #[inline]
    unsafe fn ascii(n: __m128i) -> __m128i {
        // SAFETY: as above (the caller's contract is only SSE2's presence).
        unsafe {
            let letters = _mm_and_si128(_mm_cmpgt_epi8(n, _mm_set1_epi8(9)), _mm_set1_epi8(39));
            _mm_add_epi8(_mm_add_epi8(n, _mm_set1_epi8(b'0' as i8)), letters)
        }
    }

    /// The high and the low nibble of each byte of `x`, each in a byte of its own.
    ///
    /// # Safety
    /// Only SSE2, which x86_64 always has.
    #[inline]
    unsafe fn nibbles(x: __m128i) -> (__m128i, __m128i) {
        // SAFETY: as above.
        unsafe {
            let nibble = _mm_set1_epi8(0x0f);
            (
                _mm_and_si128(_mm_srli_epi16::<4>(x), nibble),
                _mm_and_si128(x, nibble),
            )
        }
    }

    #[inline]
    pub(super) fn encode_16(bytes: [u8; 16]) -> [u8; 32] {
        let mut out = [0u8; 32];
        // SAFETY: SSE2 is always present on x86_64; the load reads the 16 bytes of `bytes`,
        // the stores write the 32 of `out`.
        unsafe {
            let (high, low) = nibbles(_mm_loadu_si128(bytes.as_ptr().cast()));
            // Each byte's high nibble first.
            _mm_storeu_si128(out.as_mut_ptr().cast(), ascii(_mm_unpacklo_epi8(high, low)));
            _mm_storeu_si128(
                out.as_mut_ptr().add(16).cast(),
                ascii(_mm_unpackhi_epi8(high, low)),
            );
        }
        out
    }

    #[inline]
    pub(super) fn encode_8(bytes: [u8; 8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        // SAFETY: SSE2 is always present on x86_64; the load reads the 8 bytes of `bytes`, the
        // store writes the 16 of `out`.
        unsafe {
            let (high, low) = nibbles(_mm_loadl_epi64(bytes.as_ptr().cast()));
            _mm_storeu_si128(out.as_mut_ptr().cast(), ascii(_mm_unpacklo_epi8(high, low)));
        }
        out
    }

    /// Sixteen digits as eight bytes (in the low half of the result), and whether all sixteen
    /// were `0-9a-f`.
    ///
    /// # Safety
    /// Only SSE2, which x86_64 always has.
    #[inline]
    unsafe fn decode_lane(digits: __m128i) -> (__m128i, bool) {
        // SAFETY: as above (the caller's contract is only SSE2's presence).
        unsafe {
            let digit = _mm_sub_epi8(digits, _mm_set1_epi8(b'0' as i8));
            let letter = _mm_sub_epi8(digits, _mm_set1_epi8(b'a' as i8));
            let zero = _mm_setzero_si128();
            // Unsigned `d <= 9` and `l <= 5`: a saturating subtraction leaves zero.
            let is_digit = _mm_cmpeq_epi8(_mm_subs_epu8(digit, _mm_set1_epi8(9)), zero);
            let is_letter = _mm_cmpeq_epi8(_mm_subs_epu8(letter, _mm_set1_epi8(5)), zero);
            let valid = _mm_movemask_epi8(_mm_or_si128(is_digit, is_letter)) == 0xffff;
            let value = _mm_or_si128(
                _mm_and_si128(digit, is_digit),
                _mm_and_si128(_mm_add_epi8(letter, _mm_set1_epi8(10)), is_letter),
            );
            // Little-endian 16-bit lanes hold (high nibble, low nibble) as (low byte, high
            // byte): the byte is the low one shifted left by 4, or-ed with the high one.
            let byte_mask = _mm_set1_epi16(0x00ff);
            let high = _mm_slli_epi16::<4>(_mm_and_si128(value, byte_mask));
            let low = _mm_srli_epi16::<8>(value);
            let bytes = _mm_packus_epi16(_mm_or_si128(high, low), zero);
            (bytes, valid)
        }
    }

    #[inline]
    pub(super) fn decode_32(digits: &[u8; 32]) -> Option<[u8; 16]> {
        let mut out = [0u8; 16];
        // SAFETY: SSE2 is always present on x86_64; the loads read the 32 bytes of `digits`,
        // the stores write 8 bytes each into the 16 of `out`.
        let valid = unsafe {
            let (first, a) = decode_lane(_mm_loadu_si128(digits.as_ptr().cast()));
            let (second, b) = decode_lane(_mm_loadu_si128(digits.as_ptr().add(16).cast()));
            _mm_storel_epi64(out.as_mut_ptr().cast(), first);
            _mm_storel_epi64(out.as_mut_ptr().add(8).cast(), second);
            a & b
        };
        valid.then_some(out)
    }

    #[inline]
    pub(super) fn decode_16(digits: &[u8; 16]) -> Option<[u8; 8]> {
        let mut out = [0u8; 8];
        // SAFETY: SSE2 is always present on x86_64; the load reads the 16 bytes of `digits`,
        // the store writes the 8 of `out`.
        let valid = unsafe {
            let (bytes, valid) = decode_lane(_mm_loadu_si128(digits.as_ptr().cast()));
            _mm_storel_epi64(out.as_mut_ptr().cast(), bytes);
            valid
        };
        valid.then_some(out)
    }
}

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

    /// Sixteen and 32 digits at once (SSE2 on x86_64) answer as the word-at-a-time reference
    /// and as the formatter, for every byte at every position.
    #[test]
    fn sixteen_bytes_at_once_agree_with_the_reference() {
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
                .wrapping_add(1);
            let bytes = x.to_be_bytes();
            let digits = encode_16(bytes);
            assert_eq!(digits, format!("{x:032x}").as_bytes());
            assert_eq!(digits, encode_16_words(bytes));
            assert_eq!(decode_32(&digits), Some(bytes));
            let half: [u8; 16] = digits[..16].try_into().unwrap();
            assert_eq!(decode_16(&half), Some(bytes[..8].try_into().unwrap()));
            let low: [u8; 8] = bytes[8..].try_into().unwrap();
            assert_eq!(encode_8(low), encode_u64(x as u64));
            assert_eq!(&encode_8(low), &digits[16..]);
        }
        assert_eq!(encode_16([0; 16]), [b'0'; 32]);
        assert_eq!(encode_16([0xff; 16]), [b'f'; 32]);
        assert_eq!(encode_8([0; 8]), [b'0'; 16]);
        assert_eq!(encode_8([0xff; 8]), [b'f'; 16]);
        let base = *b"0123456789abcdef0a1b2c3d4e5f6789";
        for position in 0..32 {
            for byte in 0..=255u8 {
                let mut digits = base;
                digits[position] = byte;
                let expected = reference_digit(byte).map(|_| {
                    u128::from_str_radix(std::str::from_utf8(&digits).unwrap(), 16)
                        .unwrap()
                        .to_be_bytes()
                });
                assert_eq!(decode_32(&digits), expected, "{digits:?}");
                assert_eq!(decode_words::<32, 16>(&digits), expected, "{digits:?}");
                if position < 16 {
                    let half: [u8; 16] = digits[..16].try_into().unwrap();
                    let expected = reference_digit(byte).map(|_| {
                        u64::from_str_radix(std::str::from_utf8(&half).unwrap(), 16)
                            .unwrap()
                            .to_be_bytes()
                    });
                    assert_eq!(decode_16(&half), expected, "{half:?}");
                }
            }
        }
    }

    #[test]
    fn upper_case_is_rejected() {
        assert_eq!(
            decode_32(b"4bf92f3577b34da6a3ce929d0e0e4736"),
            Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128.to_be_bytes())
        );
        assert_eq!(decode_32(b"4BF92F3577B34DA6A3CE929D0E0E4736"), None);
        assert_eq!(decode_16(b"00F067AA0BA902B7"), None);
        assert_eq!(decode_u32(*b"0000000A"), None);
        assert_eq!(decode_u64(b"00f067aa0ba902b7"), Some(0x00f0_67aa_0ba9_02b7));
        assert_eq!(decode_u64(b"00F067AA0BA902B7"), None);
    }
}
