//! The whole sans-IO SIP endpoint driven by a script: datagrams from two peers over UDP or TCP,
//! time passing (timers fire), and the application ringing, answering, hanging up or rejecting
//! the newest incoming call. Any panic, or a transaction that outlives every timer, is a bug.
//!
//! Input: steps separated by `\0\0`. A step's first byte is the operation, the rest its data:
//! `0..=3` a SIP message (bit 0: second peer, bit 1: TCP), `4` wait (2 bytes: ms, big endian),
//! `5` ring, `6` answer, `7` hang up, `8` reject (2 bytes: status). Other values are messages.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use warmline::sip::endpoint::{Endpoint, EndpointConfig, Event, Transport};

const SDP: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

fn steps(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.windows(2).position(|w| w == b"\0\0") {
            Some(i) => {
                let (step, tail) = rest.split_at(i);
                rest = tail.get(2..).unwrap_or_default();
                Some(step)
            }
            None => Some(std::mem::take(&mut rest)),
        }
    })
}

fn be16(b: &[u8]) -> u16 {
    match b {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        [lo] => u16::from(*lo),
        [] => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let local: SocketAddr = ([192, 0, 2, 1], 5060).into();
    let peers: [SocketAddr; 2] = [
        ([198, 51, 100, 7], 5060).into(),
        ([203, 0, 113, 9], 40000).into(),
    ];
    let mut ep = Endpoint::new(EndpointConfig::new(local));
    let mut now = Instant::now();
    let mut calls = Vec::new();
    for step in steps(data).take(64) {
        let Some((&op, body)) = step.split_first() else {
            continue;
        };
        let newest = calls.last().copied();
        match (op, newest) {
            (4, _) => {
                now += Duration::from_millis(u64::from(be16(body)));
                ep.handle_timeout(now);
            }
            (5, Some(c)) => ep.ring(c, now),
            (6, Some(c)) => {
                let _ = ep.answer(c, SDP.to_vec(), now);
            }
            (7, Some(c)) => {
                let _ = ep.hangup(c, now);
            }
            (8, Some(c)) => {
                let _ = ep.reject(c, be16(body), now);
            }
            (5..=8, None) => {}
            (op, _) => {
                let transport = if op & 2 != 0 {
                    Transport::Tcp
                } else {
                    Transport::Udp
                };
                let src = peers[usize::from(op & 1)];
                let msg = if op <= 3 { body } else { step };
                ep.handle_input(now, src, transport, msg);
            }
        }
        while ep.poll_transmit().is_some() {}
        while let Some(ev) = ep.poll_event() {
            if let Event::IncomingCall(inc) = ev {
                calls.push(inc.call);
            }
        }
    }
    // The application ends every call it was given, as a call task always does (an INVITE
    // server transaction waits for its final response without a timer, RFC 3261 §17.2.1).
    for &c in &calls {
        let _ = ep.reject(c, 480, now);
        let _ = ep.hangup(c, now);
    }
    // Then every transaction ends once its timers have run (Timer B/F/H are 64*T1 = 32 s).
    for _ in 0..4 {
        now += Duration::from_secs(40);
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
    }
    assert_eq!(
        ep.transaction_count(),
        0,
        "transactions left after every timer expired"
    );
});
