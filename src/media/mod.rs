//! Media: RTP/RTCP, codecs, jitter buffer, RFC 4733 DTMF, prompt loading and playback.
//! Everything here is sans-IO: packets and `Instant`s in, packets and events out.
pub mod amd;
pub mod bridge;
pub mod codec;
pub mod dtmf;
pub mod error;
pub mod g711;
pub mod jitter;
pub mod prompt;
pub mod recorder;
pub mod rtcp;
pub mod rtp;
pub mod session;
pub mod srtp;
pub mod tone;
