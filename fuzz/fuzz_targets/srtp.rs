//! SDES and SRTP input from the network: `a=crypto:` values, and SRTP/SRTCP packets through a
//! receiving context (authentication, replay windows, the length guards in front of
//! webrtc-srtp, which panics on short SRTCP).
#![no_main]
use libfuzzer_sys::fuzz_target;
use warmline::media::srtp::{CryptoAttribute, SrtpKey, SrtpKeys, SrtpPair, SrtpSuite};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // A crypto line: what parses must print and parse back to the same attribute.
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(attr) = CryptoAttribute::parse(text) {
            let again = CryptoAttribute::parse(&attr.to_string()).expect("own crypto line");
            assert_eq!(again, attr);
        }
        return;
    }
    // Packets: each record is a 2-byte length and that many bytes, fed to one receiving
    // context (RTP when the mode's bit 1 is clear, SRTCP otherwise).
    let suite = SrtpSuite::ALL[usize::from(mode >> 2) % SrtpSuite::ALL.len()];
    let key =
        |fill: u8| SrtpKey::from_bytes(suite, &vec![fill; suite.master_len()]).expect("key length");
    let keys = SrtpKeys {
        tag: 1,
        suite,
        local: key(1),
        remote: key(2),
    };
    let Ok(mut pair) = SrtpPair::new(&keys) else {
        return;
    };
    let mut input = rest;
    while let [hi, lo, tail @ ..] = input {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (packet, next) = tail.split_at(len);
        input = next;
        let out = if mode & 2 == 0 {
            pair.unprotect_rtp(packet)
        } else {
            pair.unprotect_rtcp(packet)
        };
        if let Ok(plain) = out {
            assert!(
                plain.len() <= packet.len(),
                "plaintext longer than the packet"
            );
        }
    }
});
