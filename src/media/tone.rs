//! Tones: a phase-continuous sine generator (test tones, in-band DTMF, ringback) and a
//! single-frequency power detector (Goertzel).
//!
//! The detector lets tests prove which party hears what ("the caller sends 1000 Hz, the agent
//! hears 1000 Hz"). Run on the eight DTMF frequencies with twist and duration checks, it would
//! also make an in-band DTMF detector for callers whose phones send no RFC 4733 events; that
//! detector is not built here.
use crate::media::codec::{FRAME_SAMPLES, SAMPLE_RATE};

const TAU: f64 = std::f64::consts::TAU;

/// A phase-continuous generator of one or two summed sines, 20 ms at a time.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    /// (phase increment per sample, current phase) of each sine, in radians.
    sines: Vec<(f64, f64)>,
    amplitude: f64,
}

impl ToneGenerator {
    /// A sine at `freq_hz` with peak `amplitude` (in sample units, clamped to 0..=32767).
    pub fn new(freq_hz: f64, amplitude: f64) -> Self {
        Self::with_frequencies(&[freq_hz], amplitude)
    }

    /// Two sines summed (DTMF, North American ringback), each with peak `amplitude`.
    pub fn dual(low_hz: f64, high_hz: f64, amplitude: f64) -> Self {
        Self::with_frequencies(&[low_hz, high_hz], amplitude)
    }

    fn with_frequencies(freqs: &[f64], amplitude: f64) -> Self {
        let rate = f64::from(SAMPLE_RATE);
        ToneGenerator {
            sines: freqs
                .iter()
                .map(|&f| (TAU * if f.is_finite() { f } else { 0.0 } / rate, 0.0))
                .collect(),
            amplitude: if amplitude.is_finite() {
                amplitude.clamp(0.0, 32767.0)
            } else {
                0.0
            },
        }
    }

    /// The next sample.
    pub fn next_sample(&mut self) -> i16 {
        let mut v = 0.0;
        for (step, phase) in &mut self.sines {
            v += phase.sin();
            *phase = (*phase + *step) % TAU;
        }
        (v * self.amplitude).round().clamp(-32768.0, 32767.0) as i16
    }

    /// The next 20 ms; consecutive frames join without a phase jump.
    pub fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        let mut frame = [0i16; FRAME_SAMPLES];
        for s in &mut frame {
            *s = self.next_sample();
        }
        frame
    }

    /// `n` samples.
    pub fn samples(&mut self, n: usize) -> Vec<i16> {
        (0..n).map(|_| self.next_sample()).collect()
    }
}

/// Power of the `freq_hz` component of `samples` (Goertzel algorithm), scaled so that a sine
/// of peak amplitude A centred on the analysis frequency gives about A². Works for any
/// frequency, not only DFT bin centres; 0 for an empty slice.
pub fn tone_power(samples: &[i16], freq_hz: f64) -> f64 {
    if samples.is_empty() || !freq_hz.is_finite() {
        return 0.0;
    }
    let coeff = 2.0 * (TAU * freq_hz / f64::from(SAMPLE_RATE)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    // |X(ω)|² of the whole slice, normalised by (N/2)².
    let magnitude_sq = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    let n = samples.len() as f64;
    magnitude_sq * 4.0 / (n * n)
}

/// Share of the energy of `samples` that sits at `freq_hz`: about 1 for a pure tone at that
/// frequency, near 0 for a tone elsewhere or for silence.
pub fn tone_fraction(samples: &[i16], freq_hz: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mean_square =
        samples.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / samples.len() as f64;
    if mean_square < 1.0 {
        return 0.0;
    }
    tone_power(samples, freq_hz) / (2.0 * mean_square)
}

/// The (low, high) frequency pair of a DTMF key ('0'-'9', '*', '#', 'A'-'D').
pub fn dtmf_frequencies(digit: char) -> Option<(f64, f64)> {
    const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    let (row, col) = match digit.to_ascii_uppercase() {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    Some((*ROWS.get(row)?, *COLS.get(col)?))
}

/// Ringback (the "it is ringing" tone) of a telephone network, for callers waiting while an
/// agent is alerted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ringback {
    /// 440 + 480 Hz, 2 s on, 4 s off.
    NorthAmerica,
    /// 425 Hz, 1 s on, 4 s off (ETSI, most of Europe; the ITU-T E.180 frequency).
    #[default]
    Europe,
    /// 400 + 450 Hz, 0.4 s on, 0.2 s off, 0.4 s on, 2 s off.
    Uk,
}

/// One cadence cycle of ringback at 8 kHz, to be looped.
pub fn ringback(kind: Ringback) -> Vec<i16> {
    // About -16 dBm0 per tone: audible, well below speech peaks.
    const AMPLITUDE: f64 = 2600.0;
    let ms = |m: usize| m * SAMPLE_RATE as usize / 1000;
    let (mut generator, cadence): (ToneGenerator, &[(usize, bool)]) = match kind {
        Ringback::NorthAmerica => (
            ToneGenerator::dual(440.0, 480.0, AMPLITUDE),
            &[(2000, true), (4000, false)],
        ),
        Ringback::Europe => (
            ToneGenerator::new(425.0, AMPLITUDE),
            &[(1000, true), (4000, false)],
        ),
        Ringback::Uk => (
            ToneGenerator::dual(400.0, 450.0, AMPLITUDE),
            &[(400, true), (200, false), (400, true), (2000, false)],
        ),
    };
    let mut out = Vec::new();
    for &(duration, on) in cadence {
        if on {
            out.extend(generator.samples(ms(duration)));
        } else {
            out.extend(std::iter::repeat_n(0i16, ms(duration)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711;

    fn through_g711(frame: &[i16], alaw: bool) -> Vec<i16> {
        frame
            .iter()
            .map(|&s| {
                if alaw {
                    g711::alaw_to_linear(g711::linear_to_alaw(s))
                } else {
                    g711::ulaw_to_linear(g711::linear_to_ulaw(s))
                }
            })
            .collect()
    }

    #[test]
    fn detector_tells_1000_from_1500_hz_through_g711() {
        for alaw in [false, true] {
            let mut a = ToneGenerator::new(1000.0, 8000.0);
            let mut b = ToneGenerator::new(1500.0, 8000.0);
            for _ in 0..5 {
                let fa = through_g711(&a.next_frame(), alaw);
                let fb = through_g711(&b.next_frame(), alaw);
                assert!(tone_fraction(&fa, 1000.0) > 0.95, "1000 Hz at 1000");
                assert!(tone_fraction(&fa, 1500.0) < 0.01, "1000 Hz at 1500");
                assert!(tone_fraction(&fb, 1500.0) > 0.95, "1500 Hz at 1500");
                assert!(tone_fraction(&fb, 1000.0) < 0.01, "1500 Hz at 1000");
                let p = tone_power(&fa, 1000.0);
                assert!((p / 64e6 - 1.0).abs() < 0.05, "power {p} ≈ amplitude²");
            }
        }
    }

    #[test]
    fn detector_works_off_bin_and_on_silence() {
        // 770 Hz is not a bin centre of a 160-sample frame (50 Hz bins).
        let frame = ToneGenerator::new(770.0, 5000.0).next_frame();
        assert!(tone_fraction(&frame, 770.0) > 0.95);
        assert!(tone_fraction(&frame, 1336.0) < 0.02);
        assert_eq!(tone_fraction(&[0; FRAME_SAMPLES], 1000.0), 0.0);
        assert_eq!(tone_power(&[], 1000.0), 0.0);
        assert_eq!(tone_power(&[1, 2, 3], f64::NAN), 0.0);
    }

    #[test]
    fn frames_join_without_phase_jump() {
        let mut g = ToneGenerator::new(1000.0, 10_000.0);
        let joined: Vec<i16> = (0..3).flat_map(|_| g.next_frame()).collect();
        let mut reference = ToneGenerator::new(1000.0, 10_000.0);
        let whole = reference.samples(3 * FRAME_SAMPLES);
        for (i, (a, b)) in joined.iter().zip(&whole).enumerate() {
            assert!((i32::from(*a) - i32::from(*b)).abs() <= 1, "sample {i}");
        }
        // 1000 Hz at 8 kHz repeats every 8 samples.
        assert!((i32::from(whole[2]) - 10_000).abs() <= 1);
        assert!((i32::from(whole[10]) - 10_000).abs() <= 1);
    }

    #[test]
    fn dtmf_pairs_and_ringback_cadence() {
        assert_eq!(dtmf_frequencies('5'), Some((770.0, 1336.0)));
        assert_eq!(dtmf_frequencies('#'), Some((941.0, 1477.0)));
        assert_eq!(dtmf_frequencies('d'), Some((941.0, 1633.0)));
        assert_eq!(dtmf_frequencies('x'), None);
        let dual = ToneGenerator::dual(770.0, 1336.0, 6000.0).next_frame();
        assert!(tone_fraction(&dual, 770.0) > 0.4 && tone_fraction(&dual, 1336.0) > 0.4);

        let na = ringback(Ringback::NorthAmerica);
        assert_eq!(na.len(), 6 * 8000);
        let on = na.get(8000..8160).expect("in the on part");
        assert!(tone_fraction(on, 440.0) > 0.4 && tone_fraction(on, 480.0) > 0.4);
        assert!(na[16_000..].iter().all(|&s| s == 0), "4 s off");
        assert_eq!(ringback(Ringback::default()).len(), 5 * 8000);
        assert_eq!(ringback(Ringback::Uk).len(), 3 * 8000);
    }

    #[test]
    fn silly_parameters_are_tamed() {
        let mut g = ToneGenerator::new(f64::INFINITY, f64::NAN);
        assert_eq!(g.next_frame(), [0; FRAME_SAMPLES]);
        let loud = ToneGenerator::dual(1000.0, 1000.0, 1e9).next_frame();
        assert!(loud.contains(&32767), "clipped, not wrapped");
    }
}
