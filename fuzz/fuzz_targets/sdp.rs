//! The remote SDP parser, offer/answer negotiation and our answer built from the result.
#![no_main]
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use warmline::media::codec::CodecKind;
use warmline::media::srtp::SrtpPolicy;
use warmline::sip::sdp::{build_answer, negotiate, negotiate_secure, parse_remote, SrtpRole};

fuzz_target!(|data: &[u8]| {
    let Ok(remote) = parse_remote(data) else {
        return;
    };
    for pref in [
        &[CodecKind::Pcmu, CodecKind::Pcma, CodecKind::Opus][..],
        &[CodecKind::Opus][..],
    ] {
        if let Ok(neg) = negotiate(&remote, pref) {
            let answer = build_answer(IpAddr::from([192, 0, 2, 1]), 20000, &neg, 1, 1);
            // Our own answer must parse again.
            assert!(
                parse_remote(answer.as_bytes()).is_ok(),
                "own answer does not parse: {answer}"
            );
        }
        // SDES: every policy answers or refuses; an answer with keys parses again.
        for policy in [SrtpPolicy::Off, SrtpPolicy::Optional, SrtpPolicy::Required] {
            let role = SrtpRole::Answering { policy, keep: None };
            if let Ok(neg) = negotiate_secure(&remote, pref, role) {
                let answer = build_answer(IpAddr::from([192, 0, 2, 1]), 20000, &neg, 1, 1);
                assert!(
                    parse_remote(answer.as_bytes()).is_ok(),
                    "own SRTP answer does not parse: {answer}"
                );
            }
        }
    }
});
