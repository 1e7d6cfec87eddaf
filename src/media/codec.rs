//! Audio codecs: G.711 μ-law/A-law and Opus, behind one encoder/decoder pair.
//!
//! The rest of warmline works on 8 kHz mono 16-bit PCM in 20 ms frames of 160 samples.
//! Opus runs at 8 kHz internally too (narrowband, `Application::Voip`); only its RTP clock
//! is 48 kHz, as RFC 7587 requires.
use crate::media::error::MediaError;
use crate::media::g711;

/// Internal sample rate of all audio in warmline.
pub const SAMPLE_RATE: u32 = 8000;
/// Samples in one 20 ms frame at [`SAMPLE_RATE`].
pub const FRAME_SAMPLES: usize = 160;
/// Largest Opus packet duration (120 ms) in samples at [`SAMPLE_RATE`].
const OPUS_MAX_FRAME_SAMPLES: usize = 960;
/// Upper bound for one encoded Opus frame; RFC 6716 packets stay far below this.
const OPUS_MAX_PACKET: usize = 1275;
/// Opus target bitrate: narrowband SILK with in-band FEC sounds clean at 20 kbit/s.
const OPUS_BITRATE: i32 = 20_000;
/// Expected loss we tell the Opus encoder about, so it spends bits on in-band FEC.
const OPUS_EXPECTED_LOSS_PERCENT: i32 = 5;

/// The codecs warmline can negotiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodecKind {
    Pcmu,
    Pcma,
    Opus,
}

impl CodecKind {
    /// RTP clock rate (Hz) for this codec's timestamps.
    pub fn clock_rate(self) -> u32 {
        match self {
            CodecKind::Pcmu | CodecKind::Pcma => 8000,
            CodecKind::Opus => 48_000,
        }
    }

    /// RTP timestamp increment of one 20 ms frame.
    pub fn rtp_timestamp_step_20ms(self) -> u32 {
        self.clock_rate() / 50
    }

    /// Encoding name as written in `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
            CodecKind::Opus => "opus",
        }
    }

    /// The RFC 3551 static payload type, if the codec has one.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            CodecKind::Pcmu => Some(0),
            CodecKind::Pcma => Some(8),
            CodecKind::Opus => None,
        }
    }

    /// Channel count as written in `a=rtpmap` (Opus is always signalled as 2, RFC 7587).
    pub fn sdp_channels(self) -> u16 {
        match self {
            CodecKind::Pcmu | CodecKind::Pcma => 1,
            CodecKind::Opus => 2,
        }
    }

    /// Recognises an `a=rtpmap` encoding (case-insensitive) with its clock rate and channels.
    pub fn from_rtpmap(encoding: &str, clock_rate: u32, channels: u16) -> Option<Self> {
        let kind = if encoding.eq_ignore_ascii_case("PCMU") {
            CodecKind::Pcmu
        } else if encoding.eq_ignore_ascii_case("PCMA") {
            CodecKind::Pcma
        } else if encoding.eq_ignore_ascii_case("opus") {
            CodecKind::Opus
        } else {
            return None;
        };
        let channels_ok = match kind {
            CodecKind::Pcmu | CodecKind::Pcma => channels == 1,
            // RFC 7587 mandates "/2"; accept a missing or "/1" channel count from sloppy peers.
            CodecKind::Opus => channels == 1 || channels == 2,
        };
        (clock_rate == kind.clock_rate() && channels_ok).then_some(kind)
    }
}

fn opus_error(codec: CodecKind, operation: &'static str) -> impl FnOnce(opus::Error) -> MediaError {
    move |source| MediaError::Codec {
        codec,
        operation,
        source,
    }
}

/// Encodes 20 ms frames of 8 kHz mono PCM into RTP payloads.
pub enum Encoder {
    Pcmu,
    Pcma,
    Opus(Box<opus::Encoder>),
}

impl Encoder {
    pub fn new(kind: CodecKind) -> Result<Self, MediaError> {
        match kind {
            CodecKind::Pcmu => Ok(Encoder::Pcmu),
            CodecKind::Pcma => Ok(Encoder::Pcma),
            CodecKind::Opus => {
                let err = |op| opus_error(CodecKind::Opus, op);
                let mut enc =
                    opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                        .map_err(err("encoder creation"))?;
                enc.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))
                    .map_err(err("setting the bitrate"))?;
                enc.set_inband_fec(true)
                    .map_err(err("enabling in-band FEC"))?;
                enc.set_packet_loss_perc(OPUS_EXPECTED_LOSS_PERCENT)
                    .map_err(err("setting the expected loss"))?;
                Ok(Encoder::Opus(Box::new(enc)))
            }
        }
    }

    pub fn kind(&self) -> CodecKind {
        match self {
            Encoder::Pcmu => CodecKind::Pcmu,
            Encoder::Pcma => CodecKind::Pcma,
            Encoder::Opus(_) => CodecKind::Opus,
        }
    }

    /// Encodes one 20 ms frame and *appends* the payload to `out`.
    pub fn encode(
        &mut self,
        pcm: &[i16; FRAME_SAMPLES],
        out: &mut Vec<u8>,
    ) -> Result<(), MediaError> {
        match self {
            Encoder::Pcmu => out.extend(pcm.iter().map(|&s| g711::linear_to_ulaw(s))),
            Encoder::Pcma => out.extend(pcm.iter().map(|&s| g711::linear_to_alaw(s))),
            Encoder::Opus(enc) => {
                let start = out.len();
                out.resize(start + OPUS_MAX_PACKET, 0);
                let written = out
                    .get_mut(start..)
                    .map(|buf| enc.encode(pcm, buf))
                    .unwrap_or(Ok(0));
                match written {
                    Ok(n) => out.truncate(start + n.min(OPUS_MAX_PACKET)),
                    Err(e) => {
                        out.truncate(start);
                        return Err(opus_error(CodecKind::Opus, "encoding")(e));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decodes RTP payloads into 8 kHz mono PCM.
pub enum Decoder {
    Pcmu,
    Pcma,
    Opus(Box<opus::Decoder>),
}

impl Decoder {
    pub fn new(kind: CodecKind) -> Result<Self, MediaError> {
        match kind {
            CodecKind::Pcmu => Ok(Decoder::Pcmu),
            CodecKind::Pcma => Ok(Decoder::Pcma),
            CodecKind::Opus => opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
                .map(|d| Decoder::Opus(Box::new(d)))
                .map_err(opus_error(CodecKind::Opus, "decoder creation")),
        }
    }

    pub fn kind(&self) -> CodecKind {
        match self {
            Decoder::Pcmu => CodecKind::Pcmu,
            Decoder::Pcma => CodecKind::Pcma,
            Decoder::Opus(_) => CodecKind::Opus,
        }
    }

    /// Decodes one payload and *appends* its samples to `out` (G.711: one per byte;
    /// Opus: whatever duration the packet carries, up to 120 ms).
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), MediaError> {
        match self {
            Decoder::Pcmu => out.extend(payload.iter().map(|&c| g711::ulaw_to_linear(c))),
            Decoder::Pcma => out.extend(payload.iter().map(|&c| g711::alaw_to_linear(c))),
            Decoder::Opus(dec) => {
                if payload.is_empty() {
                    return Err(MediaError::BadPayload {
                        codec: CodecKind::Opus,
                        len: 0,
                        reason: "empty Opus payload",
                    });
                }
                opus_decode_into(dec, payload, false, OPUS_MAX_FRAME_SAMPLES, out)?;
            }
        }
        Ok(())
    }

    /// Appends 20 ms standing in for one lost frame: Opus packet-loss concealment, silence
    /// for G.711.
    pub fn conceal(&mut self, out: &mut Vec<i16>) {
        if let Decoder::Opus(dec) = self {
            if opus_decode_into(dec, &[], false, FRAME_SAMPLES, out).is_ok() {
                return;
            }
        }
        out.extend([0i16; FRAME_SAMPLES]);
    }

    /// Appends 20 ms standing in for a lost frame, recovered from the in-band FEC data of
    /// the packet that followed it (`next_payload`). Falls back to [`Decoder::conceal`] for
    /// G.711 or when the packet carries no usable FEC.
    pub fn recover(&mut self, next_payload: &[u8], out: &mut Vec<i16>) {
        if let Decoder::Opus(dec) = self {
            if !next_payload.is_empty()
                && opus_decode_into(dec, next_payload, true, FRAME_SAMPLES, out).is_ok()
            {
                return;
            }
        }
        self.conceal(out);
    }
}

fn opus_decode_into(
    dec: &mut opus::Decoder,
    payload: &[u8],
    fec: bool,
    max_samples: usize,
    out: &mut Vec<i16>,
) -> Result<(), MediaError> {
    let start = out.len();
    out.resize(start + max_samples, 0);
    let decoded = out
        .get_mut(start..)
        .map(|buf| dec.decode(payload, buf, fec))
        .unwrap_or(Ok(0));
    match decoded {
        Ok(n) => {
            out.truncate(start + n.min(max_samples));
            Ok(())
        }
        Err(source) => {
            out.truncate(start);
            Err(MediaError::Codec {
                codec: CodecKind::Opus,
                operation: "decoding",
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, amplitude: f64, frames: usize) -> Vec<[i16; FRAME_SAMPLES]> {
        (0..frames)
            .map(|f| {
                let mut frame = [0i16; FRAME_SAMPLES];
                for (i, s) in frame.iter_mut().enumerate() {
                    let n = (f * FRAME_SAMPLES + i) as f64;
                    let t = n / f64::from(SAMPLE_RATE);
                    *s = (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16;
                }
                frame
            })
            .collect()
    }

    fn roundtrip(kind: CodecKind, frames: &[[i16; FRAME_SAMPLES]]) -> Vec<i16> {
        let mut enc = Encoder::new(kind).expect("encoder");
        let mut dec = Decoder::new(kind).expect("decoder");
        let mut out = Vec::new();
        for frame in frames {
            let mut payload = Vec::new();
            enc.encode(frame, &mut payload).expect("encode");
            let before = out.len();
            dec.decode(&payload, &mut out).expect("decode");
            assert_eq!(out.len() - before, FRAME_SAMPLES, "{kind:?} frame length");
        }
        out
    }

    /// SNR in dB of `got` against `want`, after finding the codec delay (0..=lag_max samples)
    /// that lines them up best.
    fn snr_db(want: &[i16], got: &[i16], lag_max: usize) -> f64 {
        (0..=lag_max)
            .map(|lag| {
                let n = want.len().saturating_sub(lag);
                let (mut sig, mut noise) = (0.0f64, 0.0f64);
                // Skip the first 200 ms so the codec's start-up transient does not count.
                for i in 1600..n {
                    let w = f64::from(want[i]);
                    let g = f64::from(got[i + lag]);
                    sig += w * w;
                    noise += (w - g) * (w - g);
                }
                10.0 * (sig / noise.max(1.0)).log10()
            })
            .fold(f64::MIN, f64::max)
    }

    #[test]
    fn g711_roundtrip_snr_of_440hz_sine() {
        let frames = sine(440.0, 10_000.0, 50);
        let want: Vec<i16> = frames.iter().flatten().copied().collect();
        for kind in [CodecKind::Pcmu, CodecKind::Pcma] {
            let got = roundtrip(kind, &frames);
            let snr = snr_db(&want, &got, 0);
            // G.711 gives about 38 dB SNR over its range.
            assert!(snr > 33.0, "{kind:?} SNR {snr:.1} dB");
        }
    }

    #[test]
    fn g711_payload_is_one_byte_per_sample() {
        let frame = sine(1000.0, 5000.0, 1)[0];
        for kind in [CodecKind::Pcmu, CodecKind::Pcma] {
            let mut enc = Encoder::new(kind).expect("encoder");
            let mut payload = vec![0xAA];
            enc.encode(&frame, &mut payload).expect("encode");
            assert_eq!(
                payload.len(),
                1 + FRAME_SAMPLES,
                "appends after existing bytes"
            );
            assert_eq!(payload[0], 0xAA);
        }
    }

    #[test]
    fn opus_roundtrip_keeps_a_440hz_sine() {
        let frames = sine(440.0, 10_000.0, 100);
        let want: Vec<i16> = frames.iter().flatten().copied().collect();
        let got = roundtrip(CodecKind::Opus, &frames);
        let energy = |s: &[i16]| s.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
        let ratio = energy(&got[1600..]) / energy(&want[1600..]);
        assert!((0.5..2.0).contains(&ratio), "energy ratio {ratio:.2}");
        let snr = snr_db(&want, &got, 200);
        assert!(snr > 10.0, "Opus SNR {snr:.1} dB");
    }

    #[test]
    fn opus_conceal_and_fec_produce_one_frame() {
        let frames = sine(440.0, 8000.0, 10);
        let mut enc = Encoder::new(CodecKind::Opus).expect("encoder");
        let mut dec = Decoder::new(CodecKind::Opus).expect("decoder");
        let mut payloads = Vec::new();
        for frame in &frames {
            let mut p = Vec::new();
            enc.encode(frame, &mut p).expect("encode");
            payloads.push(p);
        }
        let mut out = Vec::new();
        dec.decode(&payloads[0], &mut out).expect("decode");
        dec.conceal(&mut out);
        assert_eq!(out.len(), 2 * FRAME_SAMPLES);
        dec.recover(&payloads[3], &mut out);
        assert_eq!(out.len(), 3 * FRAME_SAMPLES);
        // Concealment continues the tone rather than dropping to silence.
        let tail_energy: f64 = out[FRAME_SAMPLES..]
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum();
        assert!(tail_energy > 0.0);
    }

    #[test]
    fn g711_conceal_is_silence_and_garbage_opus_is_an_error() {
        let mut dec = Decoder::new(CodecKind::Pcmu).expect("decoder");
        let mut out = Vec::new();
        dec.conceal(&mut out);
        assert_eq!(out, vec![0i16; FRAME_SAMPLES]);
        let mut opus = Decoder::new(CodecKind::Opus).expect("decoder");
        let mut out = Vec::new();
        assert!(opus.decode(&[], &mut out).is_err());
        // A TOC byte announcing a code-3 packet with an impossible frame count.
        let bad = opus.decode(&[0x03, 0xFF], &mut out);
        assert!(bad.is_err(), "got {bad:?} with {} samples", out.len());
        assert!(out.is_empty());
    }

    #[test]
    fn codec_kind_properties_and_rtpmap_matching() {
        assert_eq!(CodecKind::Pcmu.rtp_timestamp_step_20ms(), 160);
        assert_eq!(CodecKind::Pcma.rtp_timestamp_step_20ms(), 160);
        assert_eq!(CodecKind::Opus.rtp_timestamp_step_20ms(), 960);
        assert_eq!(CodecKind::Pcmu.static_payload_type(), Some(0));
        assert_eq!(CodecKind::Pcma.static_payload_type(), Some(8));
        assert_eq!(CodecKind::Opus.static_payload_type(), None);
        assert_eq!(
            CodecKind::from_rtpmap("pcmu", 8000, 1),
            Some(CodecKind::Pcmu)
        );
        assert_eq!(
            CodecKind::from_rtpmap("OPUS", 48000, 2),
            Some(CodecKind::Opus)
        );
        assert_eq!(CodecKind::from_rtpmap("opus", 16000, 2), None);
        assert_eq!(CodecKind::from_rtpmap("PCMA", 16000, 1), None);
        assert_eq!(CodecKind::from_rtpmap("G722", 8000, 1), None);
    }
}
