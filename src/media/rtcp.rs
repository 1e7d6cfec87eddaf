//! RTCP (RFC 3550 §6): receiver statistics, SR/RR + SDES building, compound parsing.
//!
//! Packets are built and parsed with webrtc-rs `rtcp`. Incoming compound packets are
//! split by their common headers here first, and only SR, RR, SDES and BYE sub-packets are
//! handed to the crate, so feedback/XR parsers we have no use for never see network input.
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtcp::goodbye::Goodbye;
use rtcp::receiver_report::ReceiverReport;
use rtcp::reception_report::ReceptionReport;
use rtcp::sender_report::SenderReport;
use rtcp::source_description::{
    SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
};
use webrtc_util::marshal::Unmarshal;

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
/// RFC 3550 A.1: packets ahead of the highest sequence by more than this start a new cycle
/// only after confirmation; we simply do not count them as sequence progress.
const MAX_DROPOUT: u16 = 3000;
/// Minimum RTCP interval (RFC 3550 §6.2).
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Why an RTCP datagram was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP datagram of {0} bytes is too short for a header")]
    TooShort(usize),
    #[error("RTCP packet at offset {offset} has version {version}, expected 2")]
    BadVersion { offset: usize, version: u8 },
    #[error("RTCP packet at offset {offset} claims {claimed} bytes, only {available} left")]
    Truncated {
        offset: usize,
        claimed: usize,
        available: usize,
    },
    #[error("compound RTCP must start with SR or RR, found packet type {0}")]
    NotCompound(u8),
    #[error("malformed RTCP packet type {packet_type} at offset {offset}: {reason}")]
    Malformed {
        packet_type: u8,
        offset: usize,
        reason: String,
    },
    #[error("building RTCP failed: {0}")]
    Build(String),
}

/// Converts a monotonic instant to a 64-bit NTP timestamp, anchored by an optional wall
/// clock reading. Without one, NTP time counts from the clock's creation; RTT measurement
/// only needs consistency, not the true date.
#[derive(Debug, Clone, Copy)]
pub struct NtpClock {
    anchor: Instant,
    anchor_ntp: u64,
}

impl NtpClock {
    pub fn new(anchor: Instant) -> Self {
        NtpClock {
            anchor,
            anchor_ntp: 0,
        }
    }

    /// Anchors the clock: at `at`, the wall clock read `since_unix_epoch`.
    pub fn set_wall_clock(&mut self, since_unix_epoch: Duration, at: Instant) {
        let ntp = duration_to_ntp(since_unix_epoch).wrapping_add(NTP_UNIX_OFFSET_SECS << 32);
        self.anchor = at;
        self.anchor_ntp = ntp;
    }

    pub fn ntp(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.anchor);
        let before = self.anchor.saturating_duration_since(now);
        self.anchor_ntp
            .wrapping_add(duration_to_ntp(since))
            .wrapping_sub(duration_to_ntp(before))
    }
}

/// A duration as NTP 32.32 fixed point (wrapping past 136 years).
pub fn duration_to_ntp(d: Duration) -> u64 {
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (d.as_secs() << 32).wrapping_add(frac)
}

/// The middle 32 bits of an NTP timestamp (the LSR / "compact" format, 16.16 seconds).
pub fn ntp_mid32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

fn compact_to_duration(units: u32) -> Duration {
    Duration::from_micros(u64::from(units) * 1_000_000 / 65_536)
}

fn duration_to_compact(d: Duration) -> u32 {
    let units = d.as_micros().saturating_mul(65_536) / 1_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// One reception report block, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (negative when duplicates outnumber losses).
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    pub last_sr: u32,
    /// Delay since last SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn to_wire(self) -> ReceptionReport {
        ReceptionReport {
            ssrc: self.ssrc,
            fraction_lost: self.fraction_lost,
            // 24-bit two's complement on the wire.
            total_lost: (self.cumulative_lost as u32) & 0x00FF_FFFF,
            last_sequence_number: self.extended_highest_seq,
            jitter: self.jitter,
            last_sender_report: self.last_sr,
            delay: self.delay_since_last_sr,
        }
    }

    fn from_wire(r: &ReceptionReport) -> Self {
        let lost24 = r.total_lost & 0x00FF_FFFF;
        // Sign-extend the 24-bit field.
        let cumulative_lost = ((lost24 << 8) as i32) >> 8;
        ReportBlock {
            ssrc: r.ssrc,
            fraction_lost: r.fraction_lost,
            cumulative_lost,
            extended_highest_seq: r.last_sequence_number,
            jitter: r.jitter,
            last_sr: r.last_sender_report,
            delay_since_last_sr: r.delay,
        }
    }
}

/// Our sender information for an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    pub ntp_time: u64,
    pub rtp_time: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One sub-packet of a received compound packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpItem {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    SourceDescription {
        /// (SSRC, CNAME) pairs.
        cnames: Vec<(u32, String)>,
    },
    Goodbye {
        sources: Vec<u32>,
    },
    /// Any other packet type (APP, feedback, XR), skipped.
    Other {
        packet_type: u8,
    },
}

/// Builds a compound packet: SR (when `sender` is given) or RR, with at most one report
/// block, followed by SDES CNAME and, if `bye`, a BYE for `ssrc`.
pub fn build_compound(
    ssrc: u32,
    sender: Option<SenderInfo>,
    report: Option<ReportBlock>,
    cname: &str,
    bye: bool,
) -> Result<Vec<u8>, RtcpError> {
    let reports: Vec<ReceptionReport> = report.map(ReportBlock::to_wire).into_iter().collect();
    let first: Box<dyn rtcp::packet::Packet + Send + Sync> = match sender {
        Some(info) => Box::new(SenderReport {
            ssrc,
            ntp_time: info.ntp_time,
            rtp_time: info.rtp_time,
            packet_count: info.packet_count,
            octet_count: info.octet_count,
            reports,
            profile_extensions: Bytes::new(),
        }),
        None => Box::new(ReceiverReport {
            ssrc,
            reports,
            profile_extensions: Bytes::new(),
        }),
    };
    let mut packets = vec![
        first,
        Box::new(SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: ssrc,
                items: vec![SourceDescriptionItem {
                    sdes_type: SdesType::SdesCname,
                    text: Bytes::copy_from_slice(cname.as_bytes()),
                }],
            }],
        }),
    ];
    if bye {
        packets.push(Box::new(Goodbye {
            sources: vec![ssrc],
            reason: Bytes::new(),
        }));
    }
    rtcp::packet::marshal(&packets)
        .map(|b| b.to_vec())
        .map_err(|e| RtcpError::Build(e.to_string()))
}

/// Splits and decodes a (compound) RTCP datagram.
pub fn parse_compound(data: &[u8]) -> Result<Vec<RtcpItem>, RtcpError> {
    if data.len() < 4 {
        return Err(RtcpError::TooShort(data.len()));
    }
    let mut items = Vec::new();
    let mut offset = 0usize;
    while offset < data.len() {
        let rest = data.get(offset..).unwrap_or(&[]);
        let &[b0, packet_type, l0, l1, ..] = rest else {
            return Err(RtcpError::Truncated {
                offset,
                claimed: 4,
                available: rest.len(),
            });
        };
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { offset, version });
        }
        let len = (usize::from(u16::from_be_bytes([l0, l1])) + 1) * 4;
        let packet = rest.get(..len).ok_or(RtcpError::Truncated {
            offset,
            claimed: len,
            available: rest.len(),
        })?;
        if offset == 0 && packet_type != PT_SR && packet_type != PT_RR {
            return Err(RtcpError::NotCompound(packet_type));
        }
        items.push(parse_one(packet, packet_type, offset)?);
        offset += len;
    }
    Ok(items)
}

fn parse_one(packet: &[u8], packet_type: u8, offset: usize) -> Result<RtcpItem, RtcpError> {
    let malformed = |e: webrtc_util::Error| RtcpError::Malformed {
        packet_type,
        offset,
        reason: e.to_string(),
    };
    let mut buf = Bytes::copy_from_slice(packet);
    Ok(match packet_type {
        PT_SR => {
            let sr = SenderReport::unmarshal(&mut buf).map_err(malformed)?;
            RtcpItem::SenderReport {
                ssrc: sr.ssrc,
                info: SenderInfo {
                    ntp_time: sr.ntp_time,
                    rtp_time: sr.rtp_time,
                    packet_count: sr.packet_count,
                    octet_count: sr.octet_count,
                },
                reports: sr.reports.iter().map(ReportBlock::from_wire).collect(),
            }
        }
        PT_RR => {
            let rr = ReceiverReport::unmarshal(&mut buf).map_err(malformed)?;
            RtcpItem::ReceiverReport {
                ssrc: rr.ssrc,
                reports: rr.reports.iter().map(ReportBlock::from_wire).collect(),
            }
        }
        PT_SDES => {
            let sdes = SourceDescription::unmarshal(&mut buf).map_err(malformed)?;
            let cnames = sdes
                .chunks
                .iter()
                .flat_map(|c| {
                    c.items
                        .iter()
                        .filter(|i| i.sdes_type == SdesType::SdesCname)
                        .map(move |i| (c.source, String::from_utf8_lossy(&i.text).into_owned()))
                })
                .collect();
            RtcpItem::SourceDescription { cnames }
        }
        PT_BYE => {
            let bye = Goodbye::unmarshal(&mut buf).map_err(malformed)?;
            RtcpItem::Goodbye {
                sources: bye.sources,
            }
        }
        other => RtcpItem::Other { packet_type: other },
    })
}

/// RFC 3550 A.1/A.3/A.8 statistics about one remote source, for our report block.
#[derive(Debug, Clone)]
pub struct ReceptionStats {
    ssrc: u32,
    clock_rate: u32,
    epoch: Instant,
    base_seq: u16,
    max_seq: u16,
    cycles: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    last_transit: Option<i64>,
    /// Jitter in timestamp units, scaled by 16 (RFC 3550 A.8).
    jitter_x16: u64,
    last_sr: Option<(u32, Instant)>,
}

impl ReceptionStats {
    pub fn new(ssrc: u32, seq: u16, clock_rate: u32, epoch: Instant) -> Self {
        ReceptionStats {
            ssrc,
            clock_rate: clock_rate.max(1),
            epoch,
            base_seq: seq,
            max_seq: seq,
            cycles: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            last_transit: None,
            jitter_x16: 0,
            last_sr: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Records one received packet.
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival: Instant) {
        self.received = self.received.saturating_add(1);
        let delta = seq.wrapping_sub(self.max_seq);
        if delta != 0 && delta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_seq = seq;
        }
        let arrival_units = arrival
            .saturating_duration_since(self.epoch)
            .as_micros()
            .saturating_mul(u128::from(self.clock_rate))
            / 1_000_000;
        let arrival_units = i64::try_from(arrival_units).unwrap_or(i64::MAX);
        let transit = arrival_units.wrapping_sub(i64::from(rtp_ts));
        if let Some(prev) = self.last_transit {
            // Differences of 32-bit RTP timestamps: reduce modulo 2^32 as a signed value.
            let d = u64::from((transit.wrapping_sub(prev) as i32).unsigned_abs());
            self.jitter_x16 = self.jitter_x16 - self.jitter_x16 / 16 + d;
        }
        self.last_transit = Some(transit);
    }

    /// Remembers the remote's latest SR for LSR/DLSR.
    pub fn on_sender_report(&mut self, ntp_time: u64, now: Instant) {
        self.last_sr = Some((ntp_mid32(ntp_time), now));
    }

    pub fn extended_highest_seq(&self) -> u32 {
        self.cycles | u32::from(self.max_seq)
    }

    pub fn expected(&self) -> u64 {
        let ext_max = u64::from(self.extended_highest_seq());
        (ext_max + 1).saturating_sub(u64::from(self.base_seq))
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Cumulative lost (expected − received, negative with duplicates).
    pub fn cumulative_lost(&self) -> i64 {
        i64::try_from(self.expected()).unwrap_or(i64::MAX)
            - i64::try_from(self.received).unwrap_or(i64::MAX)
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter_units(&self) -> u32 {
        u32::try_from(self.jitter_x16 / 16).unwrap_or(u32::MAX)
    }

    pub fn jitter(&self) -> Duration {
        Duration::from_micros(
            u64::from(self.jitter_units()) * 1_000_000 / u64::from(self.clock_rate),
        )
    }

    /// Produces the report block and starts a new reporting interval.
    pub fn report_block(&mut self, now: Instant) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = (lost_interval << 8)
            .checked_div(expected_interval)
            .map_or(0, |f| u8::try_from(f).unwrap_or(u8::MAX));
        let cumulative_lost = self.cumulative_lost().clamp(-0x80_0000, 0x7F_FFFF) as i32;
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => (lsr, duration_to_compact(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost,
            extended_highest_seq: self.extended_highest_seq(),
            jitter: self.jitter_units(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

/// Round-trip time from a report block about our stream (RFC 3550 §6.4.1):
/// arrival time − LSR − DLSR, all in NTP compact format. `None` without an SR echo or
/// when the result is implausible (negative).
pub fn round_trip_time(block: &ReportBlock, arrival_ntp: u64) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let rtt = ntp_mid32(arrival_ntp)
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    (rtt < 1 << 31).then(|| compact_to_duration(rtt))
}

/// Next RTCP send time: the RFC 3550 §6.3 minimum interval (halved for the first report),
/// randomised to [0.5, 1.5] and divided by e − 3/2 to compensate for timer reconsideration.
pub fn next_interval(first: bool) -> Duration {
    const COMPENSATION: f64 = std::f64::consts::E - 1.5;
    let base = if first {
        MIN_INTERVAL / 2
    } else {
        MIN_INTERVAL
    };
    let factor: f64 = rand::random_range(0.5..1.5);
    base.mul_f64(factor / COMPENSATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_report_roundtrip() {
        let block = ReportBlock {
            ssrc: 0xAAAA_BBBB,
            fraction_lost: 64,
            cumulative_lost: -3,
            extended_highest_seq: 0x0001_0005,
            jitter: 42,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65_536,
        };
        let info = SenderInfo {
            ntp_time: 0xE000_0000_8000_0000,
            rtp_time: 16_000,
            packet_count: 100,
            octet_count: 16_000,
        };
        let bytes = build_compound(0x1111_2222, Some(info), Some(block), "warmline@test", false)
            .expect("build");
        assert_eq!(bytes.len() % 4, 0);
        let items = parse_compound(&bytes).expect("parse");
        assert_eq!(
            items,
            vec![
                RtcpItem::SenderReport {
                    ssrc: 0x1111_2222,
                    info,
                    reports: vec![block]
                },
                RtcpItem::SourceDescription {
                    cnames: vec![(0x1111_2222, "warmline@test".into())]
                },
            ]
        );
    }

    #[test]
    fn receiver_report_with_bye_roundtrip() {
        let bytes = build_compound(7, None, None, "x", true).expect("build");
        let items = parse_compound(&bytes).expect("parse");
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[0],
            RtcpItem::ReceiverReport {
                ssrc: 7,
                reports: vec![]
            }
        );
        assert_eq!(items[2], RtcpItem::Goodbye { sources: vec![7] });
    }

    #[test]
    fn parses_a_foreign_compound_packet() {
        // RR with one block + SDES CNAME + BYE + a PLI feedback packet, as captured from
        // a WebRTC-style endpoint (layout from the webrtc-rs test suite).
        let data: &[u8] = &[
            0x81, 0xc9, 0x0, 0x7, 0x90, 0x2f, 0x9e, 0x2e, 0xbc, 0x5e, 0x9a, 0x40, 0x0, 0x0, 0x0,
            0x2, 0x0, 0x0, 0x46, 0xe1, 0x0, 0x0, 0x1, 0x11, 0x9, 0xf3, 0x64, 0x32, 0x0, 0x2, 0x4a,
            0x79, // SDES: chunk = SSRC, CNAME item "abcd", END, one byte of padding.
            0x81, 0xca, 0x0, 0x3, 0x90, 0x2f, 0x9e, 0x2e, 0x1, 0x4, b'a', b'b', b'c', b'd', 0, 0,
            // BYE
            0x81, 0xcb, 0x0, 0x1, 0x90, 0x2f, 0x9e, 0x2e, // PLI
            0x81, 0xce, 0x0, 0x2, 0x90, 0x2f, 0x9e, 0x2e, 0x90, 0x2f, 0x9e, 0x2e,
        ];
        let items = parse_compound(data).expect("parse");
        let RtcpItem::ReceiverReport { ssrc, reports } = &items[0] else {
            panic!("first item {:?}", items[0]);
        };
        assert_eq!(*ssrc, 0x902f9e2e);
        assert_eq!(reports[0].ssrc, 0xbc5e9a40);
        assert_eq!(reports[0].cumulative_lost, 2);
        assert_eq!(reports[0].extended_highest_seq, 0x46e1);
        assert_eq!(reports[0].jitter, 273);
        assert_eq!(
            items[1],
            RtcpItem::SourceDescription {
                cnames: vec![(0x902f9e2e, "abcd".into())]
            }
        );
        assert_eq!(
            items[2],
            RtcpItem::Goodbye {
                sources: vec![0x902f9e2e]
            }
        );
        assert_eq!(items[3], RtcpItem::Other { packet_type: 206 });
    }

    #[test]
    fn rejects_malformed_compounds() {
        assert_eq!(parse_compound(&[0x80]), Err(RtcpError::TooShort(1)));
        assert!(matches!(
            parse_compound(&[0x40, 200, 0, 0]),
            Err(RtcpError::BadVersion { .. })
        ));
        assert!(matches!(
            parse_compound(&[0x80, 200, 0, 9, 0, 0, 0, 0]),
            Err(RtcpError::Truncated { .. })
        ));
        assert_eq!(
            parse_compound(&[0x81, 203, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::NotCompound(203))
        );
        // SR claiming one report block without room for it.
        let short_sr = [0x81, 200, 0, 1, 0, 0, 0, 1];
        assert!(matches!(
            parse_compound(&short_sr),
            Err(RtcpError::Malformed { .. })
        ));
    }

    #[test]
    fn negative_cumulative_loss_survives_the_wire() {
        let block = ReportBlock {
            ssrc: 1,
            fraction_lost: 0,
            cumulative_lost: -8_388_608,
            extended_highest_seq: 0,
            jitter: 0,
            last_sr: 0,
            delay_since_last_sr: 0,
        };
        assert_eq!(ReportBlock::from_wire(&block.to_wire()), block);
    }

    #[test]
    fn reception_stats_count_loss_wrap_and_jitter() {
        let t0 = Instant::now();
        let mut st = ReceptionStats::new(9, 65_530, 8000, t0);
        let ms20 = Duration::from_millis(20);
        let mut seq = 65_530u16;
        for i in 0..21u32 {
            // Lose every fifth packet; arrivals wobble by ±5 ms.
            if i % 5 != 4 {
                let wobble = if i % 2 == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_millis(5)
                };
                st.on_packet(seq, i * 160, t0 + ms20 * i + wobble);
            }
            seq = seq.wrapping_add(1);
        }
        assert_eq!(st.expected(), 21);
        assert_eq!(st.received(), 17);
        assert_eq!(st.cumulative_lost(), 4);
        assert_eq!(st.extended_highest_seq(), 0x1_0000 + 14);
        assert!(st.jitter_units() > 0 && st.jitter() < Duration::from_millis(10));
        let block = st.report_block(t0 + Duration::from_secs(1));
        assert_eq!(block.fraction_lost, 48); // 4/21 * 256
        assert_eq!(block.cumulative_lost, 4);
        assert_eq!(
            st.report_block(t0 + Duration::from_secs(2)).fraction_lost,
            0
        );
    }

    #[test]
    fn rtt_from_echoed_sender_report() {
        let t0 = Instant::now();
        let clock = NtpClock::new(t0);
        let sent_at = t0 + Duration::from_secs(10);
        let lsr = ntp_mid32(clock.ntp(sent_at));
        // The remote held our SR for 250 ms; the network adds 2 × 40 ms.
        let block = ReportBlock {
            ssrc: 1,
            fraction_lost: 0,
            cumulative_lost: 0,
            extended_highest_seq: 0,
            jitter: 0,
            last_sr: lsr,
            delay_since_last_sr: duration_to_compact(Duration::from_millis(250)),
        };
        let arrival = sent_at + Duration::from_millis(330);
        let rtt = round_trip_time(&block, clock.ntp(arrival)).expect("rtt");
        assert!((79..=81).contains(&rtt.as_millis()), "rtt {rtt:?}");
        assert_eq!(
            round_trip_time(
                &ReportBlock {
                    last_sr: 0,
                    ..block
                },
                clock.ntp(arrival)
            ),
            None
        );
    }

    #[test]
    fn wall_clock_anchor_gives_ntp_era_time() {
        let t0 = Instant::now();
        let mut clock = NtpClock::new(t0);
        clock.set_wall_clock(Duration::from_secs(1_700_000_000), t0);
        let ntp = clock.ntp(t0 + Duration::from_millis(500));
        assert_eq!(ntp >> 32, 1_700_000_000 + NTP_UNIX_OFFSET_SECS);
        assert_eq!(ntp & 0xFFFF_FFFF, 1 << 31);
    }

    #[test]
    fn interval_is_randomised_around_five_seconds() {
        for _ in 0..50 {
            let i = next_interval(false);
            assert!(
                i >= Duration::from_millis(2000) && i <= Duration::from_millis(6200),
                "{i:?}"
            );
            assert!(next_interval(true) <= Duration::from_millis(3100));
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_compound(&data);
        }

        #[test]
        fn parse_never_panics_on_valid_headers(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
            pt in 200u8..=206, count in 0u8..32,
        ) {
            // A well-formed common header in front of random content, to reach the crate parsers.
            let words = body.len() / 4;
            let mut data = vec![0x80 | count, pt, 0, words as u8];
            data.extend_from_slice(&body[..words * 4]);
            let mut compound = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
            compound.extend_from_slice(&data);
            let _ = parse_compound(&data);
            let _ = parse_compound(&compound);
        }
    }
}
