//! The SIP parser on one datagram, and the TCP framer on the same bytes cut into two reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warmline::sip::message::{parse, Limits, StreamFramer};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = parse(data, &limits);
    let mut framer = StreamFramer::new(limits);
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (a, b) = data.split_at(cut);
    for part in [a, b] {
        if framer.push(part).is_err() {
            return;
        }
        while let Some(m) = framer.next_message() {
            match m {
                Ok(msg) => {
                    let _ = parse(&msg, &limits);
                }
                Err(_) => return,
            }
        }
    }
});
