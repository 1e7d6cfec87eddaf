//! RTP and RTCP parsing of one datagram, as the media port demultiplexes it (RFC 5761).
#![no_main]
use libfuzzer_sys::fuzz_target;
use warmline::media::{rtcp, rtp};

fuzz_target!(|data: &[u8]| {
    if rtp::looks_like_rtcp(data) {
        let _ = rtcp::parse_compound(data);
    } else if let Ok(p) = rtp::parse(data) {
        assert!(p.payload.len() <= data.len().saturating_sub(rtp::HEADER_LEN));
    }
    // Both parsers must survive anything, whatever the first bytes say.
    let _ = rtcp::parse_compound(data);
    let _ = rtp::parse(data);
});
