//! The RFC 4733 telephone-event detector fed a stream of packets: it never panics and never
//! reports the same packet twice.
//!
//! Input: 13-byte records: SSRC (4), RTP timestamp (4), marker (1, low bit), payload (4).
#![no_main]
use libfuzzer_sys::fuzz_target;
use warmline::media::dtmf::Rfc4733Detector;

fuzz_target!(|data: &[u8]| {
    let mut det = Rfc4733Detector::new();
    for rec in data.chunks(13) {
        let word = |i: usize| {
            rec.get(i..i + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_be_bytes)
        };
        let (ssrc, ts) = (word(0), word(4));
        let marker = rec.get(8).is_some_and(|m| m & 1 == 1);
        let payload = rec.get(9..).unwrap_or_default();
        let _ = det.handle(ssrc, ts, marker, payload);
        // A retransmission of the same packet never reports a digit again.
        assert!(det.handle(ssrc, ts, marker, payload).is_none());
    }
});
