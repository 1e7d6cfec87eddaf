//! RTP (RFC 3550) packet parsing and building.
//!
//! Hand-written rather than webrtc-rs `rtp` 0.17: its `Header::unmarshal` panics on a
//! crafted one-byte header extension whose element length runs past the datagram
//! (`copy_to_bytes` beyond the buffer; see `webrtc_rtp_crate_panics_on_crafted_extension`
//! below), it accepts any version, and it allocates (`Bytes`, CSRC `Vec`) per packet. A
//! voice call only needs the fixed header, so this module parses borrowed slices without
//! allocating and never panics. The tests cross-check our output with the webrtc-rs parser.

/// Length of the fixed RTP header.
pub const HEADER_LEN: usize = 12;
const VERSION: u8 = 2;

/// The fixed-header fields warmline uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// A parsed RTP packet borrowing the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    /// Payload with CSRCs, header extension and padding removed.
    pub payload: &'a [u8],
}

/// Why a datagram is not a usable RTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("datagram of {len} bytes is shorter than the {need}-byte RTP header")]
    TooShort { len: usize, need: usize },
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("header extension of {need} bytes runs past the {len}-byte datagram")]
    TruncatedExtension { len: usize, need: usize },
    #[error("padding count {padding} exceeds the {available} bytes after the header")]
    BadPadding { padding: usize, available: usize },
}

/// True when a datagram on a multiplexed port is RTCP (RFC 5761 §4: second byte 192..=223).
pub fn looks_like_rtcp(data: &[u8]) -> bool {
    matches!(data, [b0, b1, ..] if b0 >> 6 == VERSION && (192..=223).contains(b1))
}

/// RFC 5761 demultiplexing that knows the payload types negotiated for RTP: a packet of payload
/// type 64..=95 with its marker bit set has a second byte in the RTCP range, and peers that
/// put telephone-event on 64..=95 (allowed when RTCP is not multiplexed) set the marker on
/// every event start. Such a packet is RTP when its payload type is one we negotiated.
pub fn is_rtcp_given(data: &[u8], rtp_payload_types: &[u8]) -> bool {
    looks_like_rtcp(data)
        && !matches!(data, [_, b1, ..] if rtp_payload_types.contains(&(b1 & 0x7F)))
}

/// Parses one RTP datagram.
pub fn parse(data: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    let too_short = |need| RtpError::TooShort {
        len: data.len(),
        need,
    };
    let fixed: &[u8; HEADER_LEN] = data
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(too_short(HEADER_LEN))?;
    let [b0, b1, s0, s1, t0, t1, t2, t3, c0, c1, c2, c3] = *fixed;
    let version = b0 >> 6;
    if version != VERSION {
        return Err(RtpError::BadVersion(version));
    }
    let has_padding = b0 & 0x20 != 0;
    let has_extension = b0 & 0x10 != 0;
    let csrc_count = usize::from(b0 & 0x0F);

    let mut offset = HEADER_LEN + 4 * csrc_count;
    if data.len() < offset {
        return Err(too_short(offset));
    }
    if has_extension {
        let Some(&[_, _, w0, w1]) = data.get(offset..offset + 4) else {
            return Err(RtpError::TruncatedExtension {
                len: data.len(),
                need: offset + 4,
            });
        };
        let words = usize::from(u16::from_be_bytes([w0, w1]));
        offset += 4 + 4 * words;
        if data.len() < offset {
            return Err(RtpError::TruncatedExtension {
                len: data.len(),
                need: offset,
            });
        }
    }
    let mut end = data.len();
    if has_padding {
        let padding = usize::from(data.last().copied().unwrap_or(0));
        let available = end - offset;
        if padding == 0 || padding > available {
            return Err(RtpError::BadPadding { padding, available });
        }
        end -= padding;
    }
    Ok(RtpPacket {
        header: RtpHeader {
            marker: b1 & 0x80 != 0,
            payload_type: b1 & 0x7F,
            sequence: u16::from_be_bytes([s0, s1]),
            timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
            ssrc: u32::from_be_bytes([c0, c1, c2, c3]),
        },
        payload: data.get(offset..end).unwrap_or(&[]),
    })
}

/// Appends the 12-byte fixed header (no CSRC, no extension, no padding) to `out`.
pub fn write_header(header: &RtpHeader, out: &mut Vec<u8>) {
    out.push(VERSION << 6);
    out.push((u8::from(header.marker) << 7) | (header.payload_type & 0x7F));
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
}

/// Numbers and stamps our outgoing RTP stream.
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    payload_type: u8,
    ts_step: u32,
    next_sequence: u16,
    next_timestamp: u32,
    marker_next: bool,
    packets_sent: u64,
    octets_sent: u64,
    last_timestamp: Option<u32>,
}

impl RtpSender {
    /// A sender with random initial sequence number and timestamp (RFC 3550 §5.1).
    pub fn new(ssrc: u32, payload_type: u8, ts_step: u32) -> Self {
        Self::with_initial(ssrc, payload_type, ts_step, rand::random(), rand::random())
    }

    /// A sender starting at the given sequence number and timestamp.
    pub fn with_initial(
        ssrc: u32,
        payload_type: u8,
        ts_step: u32,
        sequence: u16,
        timestamp: u32,
    ) -> Self {
        RtpSender {
            ssrc,
            payload_type: payload_type & 0x7F,
            ts_step,
            next_sequence: sequence,
            next_timestamp: timestamp,
            marker_next: true,
            packets_sent: 0,
            octets_sent: 0,
            last_timestamp: None,
        }
    }

    /// Writes one packet carrying `payload` into `out` (cleared first) and advances the
    /// sequence number by one and the timestamp by one frame.
    pub fn packet(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let header = RtpHeader {
            marker: self.marker_next,
            payload_type: self.payload_type,
            sequence: self.next_sequence,
            timestamp: self.next_timestamp,
            ssrc: self.ssrc,
        };
        write_header(&header, out);
        out.extend_from_slice(payload);
        self.marker_next = false;
        self.last_timestamp = Some(self.next_timestamp);
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.next_timestamp = self.next_timestamp.wrapping_add(self.ts_step);
        self.packets_sent = self.packets_sent.saturating_add(1);
        self.octets_sent = self.octets_sent.saturating_add(payload.len() as u64);
    }

    /// Lets one frame of time pass without sending (hold): the timestamp advances, the
    /// sequence number does not, and the next packet carries the marker bit.
    pub fn skip(&mut self) {
        self.next_timestamp = self.next_timestamp.wrapping_add(self.ts_step);
        self.marker_next = true;
    }

    /// Sets the marker bit on the next packet (start of a talkspurt).
    pub fn set_marker_next(&mut self) {
        self.marker_next = true;
    }

    /// Switches codec (re-INVITE): new payload type and frame step, same SSRC and sequence.
    pub fn set_payload_type(&mut self, payload_type: u8, ts_step: u32) {
        self.payload_type = payload_type & 0x7F;
        self.ts_step = ts_step;
        self.marker_next = true;
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }
    pub fn next_sequence(&self) -> u16 {
        self.next_sequence
    }
    pub fn next_timestamp(&self) -> u32 {
        self.next_timestamp
    }
    /// Timestamp of the last packet actually sent, if any.
    pub fn last_timestamp(&self) -> Option<u32> {
        self.last_timestamp
    }
    pub fn packets_sent(&self) -> u64 {
        self.packets_sent
    }
    /// Payload octets sent (RFC 3550 sender octet count).
    pub fn octets_sent(&self) -> u64 {
        self.octets_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_util::marshal::Unmarshal;

    #[test]
    fn sender_numbers_stamps_and_marks_packets() {
        let mut tx = RtpSender::with_initial(0xDEAD_BEEF, 0, 160, 100, 1000);
        let mut buf = Vec::new();
        tx.packet(&[1, 2, 3], &mut buf);
        let p = parse(&buf).expect("parse");
        assert_eq!(
            p.header,
            RtpHeader {
                marker: true,
                payload_type: 0,
                sequence: 100,
                timestamp: 1000,
                ssrc: 0xDEAD_BEEF
            }
        );
        assert_eq!(p.payload, &[1, 2, 3]);
        tx.packet(&[4], &mut buf);
        let p = parse(&buf).expect("parse");
        assert!(!p.header.marker);
        assert_eq!((p.header.sequence, p.header.timestamp), (101, 1160));
        tx.skip();
        tx.skip();
        tx.packet(&[5], &mut buf);
        let p = parse(&buf).expect("parse");
        assert!(p.header.marker, "marker after hold");
        assert_eq!(
            (p.header.sequence, p.header.timestamp),
            (102, 1000 + 4 * 160)
        );
        tx.set_marker_next();
        tx.packet(&[6], &mut buf);
        assert!(parse(&buf).expect("parse").header.marker);
        assert_eq!(tx.packets_sent(), 4);
        assert_eq!(tx.octets_sent(), 6);
    }

    #[test]
    fn sender_wraps_sequence_and_timestamp() {
        let mut tx = RtpSender::with_initial(1, 111, 960, u16::MAX, u32::MAX - 500);
        let mut buf = Vec::new();
        tx.packet(&[0], &mut buf);
        tx.packet(&[0], &mut buf);
        let p = parse(&buf).expect("parse");
        assert_eq!(p.header.sequence, 0);
        assert_eq!(p.header.timestamp, 459);
        assert_eq!(p.header.payload_type, 111);
    }

    #[test]
    fn random_initial_values_differ_between_senders() {
        let firsts: Vec<(u16, u32)> = (0..8)
            .map(|_| {
                let tx = RtpSender::new(1, 0, 160);
                (tx.next_sequence(), tx.next_timestamp())
            })
            .collect();
        assert!(firsts.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn our_packets_parse_with_webrtc_rs() {
        let mut tx = RtpSender::with_initial(0x0102_0304, 8, 160, 7, 9);
        let mut buf = Vec::new();
        tx.packet(&[0xD5; 160], &mut buf);
        let mut raw = bytes::Bytes::copy_from_slice(&buf);
        let theirs = ::rtp::packet::Packet::unmarshal(&mut raw).expect("webrtc-rs parse");
        assert_eq!(theirs.header.version, 2);
        assert!(theirs.header.marker);
        assert_eq!(theirs.header.payload_type, 8);
        assert_eq!(theirs.header.sequence_number, 7);
        assert_eq!(theirs.header.timestamp, 9);
        assert_eq!(theirs.header.ssrc, 0x0102_0304);
        assert_eq!(&theirs.payload[..], &[0xD5; 160][..]);
    }

    #[test]
    fn parses_csrc_extension_and_padding() {
        // V=2 P=1 X=1 CC=1, M=1 PT=96, seq 0x1234, ts 5, ssrc 6, csrc 7,
        // extension profile 0xBEDE with 1 word, payload "hi", 2 bytes padding.
        let mut p = vec![0xB1, 0xE0, 0x12, 0x34, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7];
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]);
        p.extend_from_slice(b"hi");
        p.extend_from_slice(&[0, 2]);
        let pkt = parse(&p).expect("parse");
        assert_eq!(pkt.header.payload_type, 96);
        assert!(pkt.header.marker);
        assert_eq!(pkt.header.sequence, 0x1234);
        assert_eq!(pkt.payload, b"hi");
    }

    #[test]
    fn rejects_malformed_datagrams() {
        assert!(matches!(parse(&[0x80; 11]), Err(RtpError::TooShort { .. })));
        assert_eq!(parse(&[0x40; 12]), Err(RtpError::BadVersion(1)));
        let mut csrc = vec![0x8F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        csrc.extend_from_slice(&[0; 8]);
        assert!(matches!(
            parse(&csrc),
            Err(RtpError::TooShort { need: 72, .. })
        ));
        let ext = [
            0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0xFF, 0xFF,
        ];
        assert!(matches!(
            parse(&ext),
            Err(RtpError::TruncatedExtension { .. })
        ));
        let pad = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9];
        assert!(matches!(
            parse(&pad),
            Err(RtpError::BadPadding { padding: 9, .. })
        ));
        let rr = [0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(looks_like_rtcp(&rr));
        assert!(is_rtcp_given(&rr, &[0, 101]));
    }

    /// Telephone-event on payload type 73 with the marker set is 0x80|73 = 201 (an RR's type).
    #[test]
    fn marked_payload_type_in_rtcp_range_is_rtp_when_negotiated() {
        let event_start = [
            0x80,
            0x80 | 73,
            0,
            1,
            0,
            0,
            0,
            160,
            0,
            0,
            0,
            9,
            1,
            0x8A,
            0,
            160,
        ];
        assert!(looks_like_rtcp(&event_start));
        assert!(!is_rtcp_given(&event_start, &[0, 73]));
        assert!(is_rtcp_given(&event_start, &[0, 101]));
        let p = parse(&event_start).expect("RTP");
        assert_eq!((p.header.payload_type, p.header.marker), (73, true));
    }

    /// Documents why this module does not use webrtc-rs `rtp` for parsing untrusted input.
    #[test]
    fn webrtc_rtp_crate_panics_on_crafted_extension() {
        // One-byte extension profile, 1 word long, element header 0x1F = id 1, length 16.
        let crafted: &[u8] = &[
            0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xBE, 0xDE, 0x00, 0x01, 0x1F, 0, 0, 0,
        ];
        let outcome = std::panic::catch_unwind(|| {
            let mut raw = bytes::Bytes::copy_from_slice(crafted);
            ::rtp::packet::Packet::unmarshal(&mut raw).is_ok()
        });
        assert!(
            outcome.is_err(),
            "webrtc-rs rtp no longer panics here; reconsider using it"
        );
        assert!(
            parse(crafted).is_ok(),
            "ours parses it (the extension is skipped as a whole)"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(p) = parse(&data) {
                proptest::prop_assert!(p.payload.len() + HEADER_LEN <= data.len());
            }
        }
    }
}
