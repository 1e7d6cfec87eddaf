//! G.711 μ-law (PCMU) and A-law (PCMA) companding.
//!
//! Bit-exact with SoX 14.4 (the reference tables under `tests/data/g711/` are produced by
//! `scripts/make-g711-reference.sh`). SoX first rounds the 16-bit sample to the nearest
//! 14-bit (μ-law) or 13-bit (A-law) value, saturating at the top, and then applies the
//! classic Sun/CCITT segment encoder; the decoders are the standard expansion tables.

/// μ-law bias (33) in the 14-bit domain.
const ULAW_BIAS: i32 = 0x21;
/// Largest 14-bit magnitude μ-law can represent before the bias is added.
const ULAW_CLIP: i32 = 8159;

/// Rounds a 16-bit sample to `bits` bits the way SoX does: add half an LSB of the
/// target width, shift arithmetically, saturate at the positive end.
const fn round_to_bits(x: i16, bits: u32) -> i32 {
    let shift = 16 - bits;
    let half = 1i32 << (shift - 1);
    let max = (1i32 << (bits - 1)) - 1;
    let x = x as i32;
    if x > i16::MAX as i32 - half {
        max
    } else {
        (x + half) >> shift
    }
}

/// Segment number (0..=7) of a biased magnitude: the position of its highest set bit above
/// the 5-bit mantissa window. `value` is at most 0x1FFF here, so the result is at most 8.
const fn segment(value: i32, first_end: i32) -> i32 {
    let mut seg = 0;
    let mut end = first_end;
    while seg < 8 && value > end {
        seg += 1;
        end = (end << 1) | 1;
    }
    seg
}

/// μ-law code of a 14-bit sample (-8192..=8191).
const fn ulaw_code(s14: i32) -> u8 {
    let (magnitude, mask) = if s14 < 0 { (-s14, 0x7F) } else { (s14, 0xFF) };
    let clipped = if magnitude > ULAW_CLIP {
        ULAW_CLIP
    } else {
        magnitude
    };
    let biased = clipped + ULAW_BIAS;
    let seg = segment(biased, 0x3F);
    let code = if seg >= 8 {
        0x7F
    } else {
        (seg << 4) | ((biased >> (seg + 1)) & 0x0F)
    };
    // `code` and `mask` are both within 0..=0xFF.
    ((code ^ mask) & 0xFF) as u8
}

/// A-law code of a 13-bit sample (-4096..=4095).
const fn alaw_code(s13: i32) -> u8 {
    let (magnitude, mask) = if s13 >= 0 {
        (s13, 0xD5)
    } else {
        (-s13 - 1, 0x55)
    };
    let seg = segment(magnitude, 0x1F);
    let code = if seg >= 8 {
        0x7F
    } else {
        let mantissa = if seg < 2 {
            (magnitude >> 1) & 0x0F
        } else {
            (magnitude >> seg) & 0x0F
        };
        (seg << 4) | mantissa
    };
    ((code ^ mask) & 0xFF) as u8
}

/// Entries of the encoder tables: every 14-bit (μ-law) / 13-bit (A-law) value, offset so the
/// most negative one is index 0. Encoding is then a rounding shift and one lookup per sample
/// (the media clock encodes 8,000 samples a second per call).
const ULAW_TABLE_LEN: usize = 1 << 14;
const ALAW_TABLE_LEN: usize = 1 << 13;

const fn build_ulaw_encoder() -> [u8; ULAW_TABLE_LEN] {
    let mut table = [0u8; ULAW_TABLE_LEN];
    let mut i = 0;
    while i < ULAW_TABLE_LEN {
        table[i] = ulaw_code(i as i32 - (ULAW_TABLE_LEN as i32 / 2));
        i += 1;
    }
    table
}

const fn build_alaw_encoder() -> [u8; ALAW_TABLE_LEN] {
    let mut table = [0u8; ALAW_TABLE_LEN];
    let mut i = 0;
    while i < ALAW_TABLE_LEN {
        table[i] = alaw_code(i as i32 - (ALAW_TABLE_LEN as i32 / 2));
        i += 1;
    }
    table
}

static LINEAR_TO_ULAW: [u8; ULAW_TABLE_LEN] = build_ulaw_encoder();
static LINEAR_TO_ALAW: [u8; ALAW_TABLE_LEN] = build_alaw_encoder();

/// Encodes one 16-bit linear sample to μ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let s14 = round_to_bits(sample, 14);
    // s14 is within -8192..=8191, so the masked index is s14 + 8192 (and provably in range).
    LINEAR_TO_ULAW[(s14 + (ULAW_TABLE_LEN as i32 / 2)) as usize & (ULAW_TABLE_LEN - 1)]
}

/// Encodes one 16-bit linear sample to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let s13 = round_to_bits(sample, 13);
    LINEAR_TO_ALAW[(s13 + (ALAW_TABLE_LEN as i32 / 2)) as usize & (ALAW_TABLE_LEN - 1)]
}

const fn ulaw_expand(code: u8) -> i16 {
    let u = !code;
    let mantissa = ((u & 0x0F) as i32) << 3;
    let seg = ((u & 0x70) >> 4) as i32;
    let t = ((mantissa + ULAW_BIAS * 4) << seg) - ULAW_BIAS * 4;
    (if u & 0x80 != 0 { -t } else { t }) as i16
}

const fn alaw_expand(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    t = match seg {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (seg - 1),
    };
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw {
            alaw_expand(i as u8)
        } else {
            ulaw_expand(i as u8)
        };
        i += 1;
    }
    table
}

static ULAW_TO_LINEAR: [i16; 256] = build_table(false);
static ALAW_TO_LINEAR: [i16; 256] = build_table(true);

/// Decodes one μ-law code to a 16-bit linear sample.
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(code)]
}

/// Decodes one A-law code to a 16-bit linear sample.
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(code)]
}

/// μ-law code of digital silence (linear 0).
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law code of digital silence (linear 0).
pub const ALAW_SILENCE: u8 = 0xD5;

#[cfg(test)]
mod tests {
    use super::*;

    static ULAW_ENCODE: &[u8] = include_bytes!("../../tests/data/g711/ulaw_encode.bin");
    static ALAW_ENCODE: &[u8] = include_bytes!("../../tests/data/g711/alaw_encode.bin");
    static ULAW_DECODE: &[u8] = include_bytes!("../../tests/data/g711/ulaw_decode.s16le");
    static ALAW_DECODE: &[u8] = include_bytes!("../../tests/data/g711/alaw_decode.s16le");

    fn check_encoder(name: &str, table: &[u8], encode: fn(i16) -> u8) {
        assert_eq!(table.len(), 65_536, "{name} reference table size");
        let mismatches: Vec<(i16, u8, u8)> = (0..=u16::MAX)
            .map(|bits| bits as i16)
            .zip(table.iter().copied())
            .filter_map(|(x, want)| {
                let got = encode(x);
                (got != want).then_some((x, got, want))
            })
            .collect();
        assert!(
            mismatches.is_empty(),
            "{name}: {} of 65536 inputs differ from sox, first (input, ours, sox): {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(8)]
        );
    }

    fn check_decoder(name: &str, table: &[u8], decode: fn(u8) -> i16) {
        assert_eq!(table.len(), 512, "{name} reference table size");
        for (code, pair) in table.chunks_exact(2).enumerate() {
            let want = i16::from_le_bytes([pair[0], pair[1]]);
            let code = code as u8;
            assert_eq!(decode(code), want, "{name}: code {code:#04x}");
        }
    }

    #[test]
    fn ulaw_encoder_matches_sox_for_every_input() {
        check_encoder("μ-law", ULAW_ENCODE, linear_to_ulaw);
    }

    #[test]
    fn alaw_encoder_matches_sox_for_every_input() {
        check_encoder("A-law", ALAW_ENCODE, linear_to_alaw);
    }

    #[test]
    fn ulaw_decoder_matches_sox_for_every_code() {
        check_decoder("μ-law", ULAW_DECODE, ulaw_to_linear);
    }

    #[test]
    fn alaw_decoder_matches_sox_for_every_code() {
        check_decoder("A-law", ALAW_DECODE, alaw_to_linear);
    }

    #[test]
    fn silence_codes_decode_to_zero_and_roundtrip() {
        assert_eq!(linear_to_ulaw(0), ULAW_SILENCE);
        assert_eq!(linear_to_alaw(0), ALAW_SILENCE);
        assert_eq!(ulaw_to_linear(ULAW_SILENCE), 0);
        assert_eq!(alaw_to_linear(ALAW_SILENCE), 8);
        // Every code re-encodes to itself, except μ-law's negative zero (0x7F) which
        // decodes to 0 and therefore re-encodes as positive zero (0xFF).
        for code in 0..=255u8 {
            let want = if code == 0x7F { 0xFF } else { code };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(code)),
                want,
                "μ-law {code:#04x}"
            );
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
        }
    }
}
