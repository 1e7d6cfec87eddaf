//! RFC 4733 telephone-event (DTMF) reception.
//!
//! A key press is sent as a series of packets sharing one RTP timestamp (the event start):
//! a first packet with the marker bit, updates with growing duration, and usually three
//! copies of the final packet with the E bit. We report a digit as soon as the *first*
//! packet of an event is seen (for barge-in), whichever packet that is, and ignore every
//! later packet with the same (SSRC, timestamp). A recent-event window keeps that state
//! bounded; keys compare by equality only, so timestamp wrap needs no special handling.
use std::collections::VecDeque;

/// Events remembered for de-duplication. Retransmissions of an event arrive within a
/// few hundred milliseconds, long before 32 newer events could push it out.
const RECENT_EVENTS: usize = 32;
/// Maximum duration field value; longer events are split into segments (RFC 4733 §2.5.2.3).
const MAX_DURATION: u16 = u16::MAX;
/// How far below the maximum an event must have grown before a new timestamp without marker
/// is taken as its next segment rather than a new press (two 50 ms update periods at 48 kHz).
const SEGMENT_SLACK: u32 = 4800;

/// One key press, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfDigit {
    /// '0'-'9', '*', '#', 'A'-'D'.
    pub digit: char,
    /// RFC 4733 event code (0-15).
    pub event: u8,
    pub ssrc: u32,
    /// RTP timestamp of the event start.
    pub timestamp: u32,
    /// Duration so far in RTP timestamp units, from the packet that reported the digit.
    pub duration: u16,
    /// Whether that packet already had the E (end) bit: the start packets were lost.
    pub end: bool,
    /// Power level in -dBm0 (0-63).
    pub volume: u8,
}

/// Maps an RFC 4733 event code to its key, or `None` for non-DTMF events.
pub fn event_to_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        _ => None,
    }
}

/// Maps a key ('0'-'9', '*', '#', 'A'-'D', case-insensitive) to its RFC 4733 event code.
pub fn digit_to_event(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        '*' => Some(10),
        '#' => Some(11),
        c @ 'A'..='D' => Some(c as u8 - b'A' + 12),
        c => c.to_digit(10).and_then(|d| u8::try_from(d).ok()),
    }
}

/// Builds a 4-byte RFC 4733 event payload.
pub fn encode_event(event: u8, end: bool, volume: u8, duration: u16) -> [u8; 4] {
    let [d0, d1] = duration.to_be_bytes();
    [event, (u8::from(end) << 7) | (volume & 0x3F), d0, d1]
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    ssrc: u32,
    timestamp: u32,
    event: u8,
    ended: bool,
    max_duration: u16,
}

/// De-duplicating RFC 4733 receiver; one per call, fed every telephone-event packet
/// regardless of SSRC.
#[derive(Debug, Default)]
pub struct Rfc4733Detector {
    recent: VecDeque<Seen>,
}

impl Rfc4733Detector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles one telephone-event payload; returns the digit the first time an event is seen.
    pub fn handle(
        &mut self,
        ssrc: u32,
        rtp_ts: u32,
        marker: bool,
        payload: &[u8],
    ) -> Option<DtmfDigit> {
        let &[event, flags, d0, d1, ..] = payload else {
            return None;
        };
        let digit = event_to_digit(event)?;
        let end = flags & 0x80 != 0;
        let volume = flags & 0x3F;
        let duration = u16::from_be_bytes([d0, d1]);

        if let Some(seen) = self
            .recent
            .iter_mut()
            .find(|s| s.ssrc == ssrc && s.timestamp == rtp_ts)
        {
            seen.ended |= end;
            seen.max_duration = seen.max_duration.max(duration);
            return None;
        }
        let continues_long_event = !marker
            && self
                .recent
                .iter()
                .rev()
                .find(|s| s.ssrc == ssrc)
                .is_some_and(|prev| {
                    let gap = rtp_ts.wrapping_sub(prev.timestamp);
                    let grown = u32::from(prev.max_duration);
                    prev.event == event
                        && !prev.ended
                        && grown + SEGMENT_SLACK >= u32::from(MAX_DURATION)
                        && gap >= grown
                        && gap <= u32::from(MAX_DURATION) + SEGMENT_SLACK
                });
        if self.recent.len() >= RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(Seen {
            ssrc,
            timestamp: rtp_ts,
            event,
            ended: end,
            max_duration: duration,
        });
        if continues_long_event {
            return None;
        }
        Some(DtmfDigit {
            digit,
            event,
            ssrc,
            timestamp: rtp_ts,
            duration,
            end,
            volume,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5678;

    /// The packets a typical sender emits for one press: start (marker), two updates,
    /// three end packets.
    fn press(event: u8) -> Vec<(bool, [u8; 4])> {
        vec![
            (true, encode_event(event, false, 10, 0)),
            (false, encode_event(event, false, 10, 400)),
            (false, encode_event(event, false, 10, 800)),
            (false, encode_event(event, true, 10, 1000)),
            (false, encode_event(event, true, 10, 1000)),
            (false, encode_event(event, true, 10, 1000)),
        ]
    }

    fn digits(
        det: &mut Rfc4733Detector,
        ssrc: u32,
        ts: u32,
        packets: &[(bool, [u8; 4])],
    ) -> String {
        packets
            .iter()
            .filter_map(|(m, p)| det.handle(ssrc, ts, *m, p))
            .map(|d| d.digit)
            .collect()
    }

    #[test]
    fn full_press_reports_once_at_the_start_packet() {
        let mut det = Rfc4733Detector::new();
        let packets = press(5);
        let first = det
            .handle(SSRC, 1000, true, &packets[0].1)
            .expect("digit at start");
        assert_eq!(
            (first.digit, first.end, first.duration, first.volume),
            ('5', false, 0, 10)
        );
        assert_eq!(digits(&mut det, SSRC, 1000, &packets[1..]), "");
    }

    #[test]
    fn start_only_press_is_reported() {
        let mut det = Rfc4733Detector::new();
        assert_eq!(digits(&mut det, SSRC, 10, &press(1)[..1]), "1");
    }

    #[test]
    fn end_only_press_is_reported_once() {
        let mut det = Rfc4733Detector::new();
        let d = det
            .handle(SSRC, 77, false, &encode_event(11, true, 10, 1000))
            .expect("digit from a lone end packet");
        assert_eq!((d.digit, d.end), ('#', true));
        // Its two redundant copies do not repeat it.
        assert_eq!(digits(&mut det, SSRC, 77, &press(11)[4..]), "");
    }

    #[test]
    fn retransmission_after_other_events_is_ignored() {
        let mut det = Rfc4733Detector::new();
        assert_eq!(digits(&mut det, SSRC, 1000, &press(1)), "1");
        assert_eq!(digits(&mut det, SSRC, 5000, &press(2)), "2");
        // A late copy of the first event's end packet.
        assert_eq!(digits(&mut det, SSRC, 1000, &press(1)[5..]), "");
    }

    #[test]
    fn same_digit_twice_gives_two_digits() {
        let mut det = Rfc4733Detector::new();
        assert_eq!(digits(&mut det, SSRC, 1000, &press(7)), "7");
        assert_eq!(digits(&mut det, SSRC, 3000, &press(7)), "7");
    }

    #[test]
    fn events_on_another_ssrc_are_separate() {
        let mut det = Rfc4733Detector::new();
        assert_eq!(digits(&mut det, SSRC, 1000, &press(3)), "3");
        // Same timestamp, different SSRC (digits sent by a separate RTP source).
        assert_eq!(digits(&mut det, SSRC ^ 1, 1000, &press(3)), "3");
    }

    #[test]
    fn timestamp_wrap_is_harmless() {
        let mut det = Rfc4733Detector::new();
        assert_eq!(digits(&mut det, SSRC, u32::MAX - 100, &press(4)), "4");
        assert_eq!(digits(&mut det, SSRC, 700, &press(4)), "4");
    }

    #[test]
    fn long_event_segments_are_one_press() {
        let mut det = Rfc4733Detector::new();
        let ts = u32::MAX - 1000;
        assert!(det
            .handle(SSRC, ts, true, &encode_event(0, false, 10, 0))
            .is_some());
        assert!(det
            .handle(SSRC, ts, false, &encode_event(0, false, 10, u16::MAX))
            .is_none());
        let next_segment = ts.wrapping_add(u32::from(u16::MAX));
        assert!(det
            .handle(SSRC, next_segment, false, &encode_event(0, false, 10, 400))
            .is_none());
        // A real new press of the same key carries the marker bit.
        assert!(det
            .handle(
                SSRC,
                next_segment.wrapping_add(9000),
                true,
                &encode_event(0, false, 10, 0)
            )
            .is_some());
    }

    #[test]
    fn all_sixteen_keys_and_nothing_else() {
        let mut det = Rfc4733Detector::new();
        let mut got = String::new();
        for event in 0..=20u8 {
            if let Some(d) = det.handle(
                SSRC,
                u32::from(event) * 2000,
                true,
                &encode_event(event, false, 0, 0),
            ) {
                got.push(d.digit);
                assert_eq!(digit_to_event(d.digit), Some(event));
            }
        }
        assert_eq!(got, "0123456789*#ABCD");
        assert_eq!(digit_to_event('x'), None);
        assert_eq!(digit_to_event('d'), Some(15));
    }

    #[test]
    fn garbage_payloads_are_ignored() {
        let mut det = Rfc4733Detector::new();
        assert!(det.handle(SSRC, 1, true, &[]).is_none());
        assert!(det.handle(SSRC, 1, true, &[1, 2, 3]).is_none());
        assert!(det.handle(SSRC, 1, true, &[200, 0, 0, 0]).is_none());
        // A valid event after garbage on the same timestamp still counts.
        assert!(det
            .handle(SSRC, 1, true, &encode_event(9, false, 0, 0))
            .is_some());
    }

    #[test]
    fn state_is_bounded() {
        let mut det = Rfc4733Detector::new();
        for i in 0..10_000u32 {
            det.handle(i, i, true, &encode_event(1, true, 0, 100));
        }
        assert!(det.recent.len() <= RECENT_EVENTS);
    }

    proptest::proptest! {
        #[test]
        fn random_packets_never_panic(
            packets in proptest::collection::vec(
                (0u32..4, proptest::num::u32::ANY, proptest::bool::ANY,
                 proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
                0..100)
        ) {
            let mut det = Rfc4733Detector::new();
            for (ssrc, ts, marker, payload) in packets {
                if let Some(d) = det.handle(ssrc, ts, marker, &payload) {
                    proptest::prop_assert!(digit_to_event(d.digit).is_some());
                }
            }
        }
    }
}
