//! Property tests: what warmline's encoders write, its parsers read back unchanged (RTP,
//! RFC 4733 events, RTCP reports, SDP offers and answers).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use warmline::media::codec::CodecKind;
use warmline::media::dtmf::{digit_to_event, encode_event, event_to_digit, Rfc4733Detector};
use warmline::media::rtcp::{build_compound, parse_compound, ReportBlock, RtcpItem, SenderInfo};
use warmline::media::rtp::{self, RtpHeader, RtpSender};
use warmline::sip::sdp::{build_answer, build_offer, negotiate, parse_remote, Direction};

fn codec() -> impl Strategy<Value = CodecKind> {
    prop_oneof![
        Just(CodecKind::Pcmu),
        Just(CodecKind::Pcma),
        Just(CodecKind::Opus)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn rtp_header_and_payload_round_trip(
        marker: bool,
        pt in 0u8..128,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        payload in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let header = RtpHeader { marker, payload_type: pt, sequence, timestamp, ssrc };
        let mut buf = Vec::new();
        rtp::write_header(&header, &mut buf);
        buf.extend_from_slice(&payload);
        // Payload types 72..=95 with the marker set collide with RTCP (RFC 5761): such a
        // header is rejected, never misread.
        match rtp::parse(&buf) {
            Ok(p) => {
                prop_assert_eq!(p.header, header);
                prop_assert_eq!(p.payload, &payload[..]);
            }
            Err(_) => prop_assert!(rtp::looks_like_rtcp(&buf)),
        }
    }

    #[test]
    fn rtp_sender_numbers_packets_in_order(
        ssrc: u32,
        // RFC 5761 §4: 64..=95 are left out where RTP and RTCP share a port.
        pt in prop_oneof![0u8..64, 96u8..128],
        seq0: u16,
        ts0: u32,
        step in 1u32..2000,
        n in 1usize..50,
    ) {
        let mut s = RtpSender::with_initial(ssrc, pt, step, seq0, ts0);
        let mut buf = Vec::new();
        for i in 0..n {
            s.packet(&[0xD5; 160], &mut buf);
            let p = rtp::parse(&buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let i16_ = u16::try_from(i % 65_536).unwrap_or(0);
            prop_assert_eq!(p.header.sequence, seq0.wrapping_add(i16_));
            prop_assert_eq!(p.header.timestamp, ts0.wrapping_add(step.wrapping_mul(i as u32)));
            prop_assert_eq!(p.header.marker, i == 0);
            prop_assert_eq!(p.header.ssrc, ssrc);
            prop_assert_eq!(p.payload.len(), 160);
        }
    }

    #[test]
    fn rfc4733_event_round_trips_and_is_reported_once(
        event in 0u8..16,
        end: bool,
        volume in 0u8..64,
        duration: u16,
        ssrc: u32,
        ts: u32,
        repeats in 1usize..5,
    ) {
        let payload = encode_event(event, end, volume, duration);
        prop_assert_eq!(payload[0], event);
        prop_assert_eq!(payload[1] & 0x80 != 0, end);
        prop_assert_eq!(payload[1] & 0x3F, volume);
        prop_assert_eq!(u16::from_be_bytes([payload[2], payload[3]]), duration);
        let key = event_to_digit(event).ok_or_else(|| TestCaseError::fail("no key"))?;
        prop_assert_eq!(digit_to_event(key), Some(event));
        let mut det = Rfc4733Detector::new();
        let first = det.handle(ssrc, ts, true, &payload);
        let d = first.ok_or_else(|| TestCaseError::fail("event not reported"))?;
        prop_assert_eq!(d.digit, key);
        prop_assert_eq!((d.ssrc, d.timestamp, d.event), (ssrc, ts, event));
        // The retransmitted end packets of the same event are not new key presses.
        for _ in 0..repeats {
            prop_assert!(det.handle(ssrc, ts, false, &payload).is_none());
        }
    }

    #[test]
    fn rtcp_reports_round_trip(
        ssrc: u32,
        sender in proptest::option::of((any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>())),
        block in proptest::option::of((any::<u32>(), any::<u8>(), -0x80_0000i32..0x80_0000, any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>())),
        cname in "[a-z0-9@.]{1,40}",
        bye: bool,
    ) {
        let info = sender.map(|(ntp_time, rtp_time, packet_count, octet_count)| SenderInfo {
            ntp_time, rtp_time, packet_count, octet_count,
        });
        let report = block.map(|(s, fraction_lost, cumulative_lost, ext, jitter, last_sr, dlsr)| ReportBlock {
            ssrc: s,
            fraction_lost,
            cumulative_lost,
            extended_highest_seq: ext,
            jitter,
            last_sr,
            delay_since_last_sr: dlsr,
        });
        let bytes = build_compound(ssrc, info, report, &cname, bye)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let items = parse_compound(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let reports: Vec<ReportBlock> = report.into_iter().collect();
        let first = match info {
            Some(info) => RtcpItem::SenderReport { ssrc, info, reports },
            None => RtcpItem::ReceiverReport { ssrc, reports },
        };
        let mut want = vec![first, RtcpItem::SourceDescription { cnames: vec![(ssrc, cname.clone())] }];
        if bye {
            want.push(RtcpItem::Goodbye { sources: vec![ssrc] });
        }
        prop_assert_eq!(items, want);
    }

    #[test]
    fn sdp_offer_parses_back_and_negotiates_its_first_codec(
        ip: [u8; 4],
        port in 1024u16..65_000,
        prefs in proptest::collection::vec(codec(), 0..4),
        session: u64,
        version: u64,
    ) {
        let local = IpAddr::V4(Ipv4Addr::from(ip));
        let offer = build_offer(local, port, &prefs, session, version);
        let remote = parse_remote(offer.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {offer}")))?;
        prop_assert_eq!(remote.rtp_addr, SocketAddr::new(local, port));
        let expect_dir = if ip == [0, 0, 0, 0] { Direction::Inactive } else { Direction::SendRecv };
        prop_assert_eq!(remote.direction, expect_dir);
        let first = prefs.first().copied().unwrap_or(CodecKind::Pcmu);
        let all = [CodecKind::Pcmu, CodecKind::Pcma, CodecKind::Opus];
        let neg = negotiate(&remote, &all).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(neg.codec, first, "{}", offer);
        prop_assert_eq!(neg.telephone_event_pt, Some(101));
        // Our answer to our own offer parses back to the same choice.
        let answer = build_answer(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 30_000, &neg, 7, 1);
        let back = parse_remote(answer.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {answer}")))?;
        prop_assert_eq!(back.rtp_addr, SocketAddr::from(([10, 1, 2, 3], 30_000)));
        let again = negotiate(&back, &all).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again.codec, neg.codec);
        prop_assert_eq!(again.payload_type, neg.payload_type);
        prop_assert_eq!(again.telephone_event_pt, neg.telephone_event_pt);
    }
}
