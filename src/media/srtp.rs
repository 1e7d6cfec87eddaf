//! SRTP and SRTCP (RFC 3711) keyed by SDP Security Descriptions (RFC 4568), sans-IO.
//!
//! [`CryptoAttribute`] reads and writes the `a=crypto:` line, [`SrtpKeys`] holds the two master
//! keys a negotiated call uses (ours for what we send, theirs for what we receive), and
//! [`SrtpPair`] protects outgoing and unprotects incoming RTP and RTCP datagrams. The ciphers
//! are webrtc-rs's `webrtc-srtp`; this module guards its inputs (it indexes SRTCP tails
//! without a length check, and passes SRTCP with the E bit clear through unauthenticated),
//! keeps its own replay windows, and turns its errors into [`SrtpError`]s the session counts.
//!
//! Replay windows are ours because the crate's start at the first packet *checked*, before
//! authentication: one forged packet with a sequence number far ahead would make the genuine
//! stream look "too old" until it caught up. Ours move only on authenticated packets.
use std::collections::HashMap;
use std::fmt;

use ::srtp::context::Context;
use ::srtp::protection_profile::ProtectionProfile;
use base64::Engine as _;

/// Packets accepted out of order behind the newest (the replay window, RFC 3711 §3.3.2).
const REPLAY_WINDOW: u64 = 128;
/// Remote SSRCs with a replay window at most (a peer changes SSRC rarely).
const MAX_SSRCS: usize = 32;
/// SRTCP index field (E bit and 31-bit index) that follows the encrypted RTCP.
const SRTCP_INDEX_LEN: usize = 4;
/// Fixed RTCP header and sender SSRC, left in the clear by SRTCP.
const RTCP_CLEAR_LEN: usize = 8;
/// Fixed RTP header.
const RTP_HEADER_LEN: usize = 12;

/// When calls use SRTP (`[rtp] srtp`), as Asterisk's `media_encryption` and FreeSWITCH's
/// `rtp_secure_media` decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// Plain RTP only: offers of RTP/SAVP are refused (488), `a=crypto:` lines ignored.
    Off,
    /// SRTP when the peer offers it (RTP/SAVP, or RTP/AVP with `a=crypto:`), plain RTP
    /// otherwise; our own offers are plain RTP.
    #[default]
    Optional,
    /// Plain-RTP offers are refused (488); our own offers are RTP/SAVP.
    Required,
}

impl SrtpPolicy {
    pub const NAMES: &'static str = "\"off\", \"optional\", \"required\"";

    pub fn from_name(name: &str) -> Option<SrtpPolicy> {
        match name.to_ascii_lowercase().as_str() {
            "off" => Some(SrtpPolicy::Off),
            "optional" => Some(SrtpPolicy::Optional),
            "required" => Some(SrtpPolicy::Required),
            _ => None,
        }
    }
}

/// A crypto suite we implement (RFC 4568 §6.2, RFC 7714 §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    /// The mandatory suite: AES-128 counter mode, 80-bit HMAC-SHA1 tag.
    AesCm128HmacSha1_80,
    /// The same with a 32-bit tag on RTP (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
    /// AES-128 GCM, 16-byte tag (RFC 7714).
    AeadAes128Gcm,
    /// AES-256 GCM, 16-byte tag (RFC 7714).
    AeadAes256Gcm,
}

impl SrtpSuite {
    pub const ALL: [SrtpSuite; 4] = [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
        SrtpSuite::AeadAes128Gcm,
        SrtpSuite::AeadAes256Gcm,
    ];

    /// The suites we put in our own offers, in order (what Asterisk offers).
    pub const OFFERED: [SrtpSuite; 2] = [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ];

    /// The name in `a=crypto:` lines.
    pub fn sdp_name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpSuite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    pub fn from_sdp_name(name: &str) -> Option<SrtpSuite> {
        Self::ALL
            .into_iter()
            .find(|s| s.sdp_name().eq_ignore_ascii_case(name))
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            SrtpSuite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            SrtpSuite::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
        }
    }

    pub fn key_len(self) -> usize {
        self.profile().key_len()
    }

    pub fn salt_len(self) -> usize {
        self.profile().salt_len()
    }

    /// Bytes of the `inline:` key parameter: master key then master salt.
    pub fn master_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// Bytes SRTP adds to an RTP packet (authentication tag).
    fn rtp_overhead(self) -> usize {
        let p = self.profile();
        p.rtp_auth_tag_len() + p.aead_auth_tag_len()
    }

    /// Bytes SRTCP adds to an RTCP compound (index and tag).
    fn rtcp_overhead(self) -> usize {
        let p = self.profile();
        SRTCP_INDEX_LEN + p.rtcp_auth_tag_len() + p.aead_auth_tag_len()
    }

    /// Where the SRTCP index (with the E bit) sits, counted from the end of the packet.
    fn rtcp_index_from_end(self) -> usize {
        SRTCP_INDEX_LEN + self.profile().rtcp_auth_tag_len()
    }
}

impl fmt::Display for SrtpSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sdp_name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("a=crypto line {0:?} is not `<tag> <suite> inline:<key>`")]
    Syntax(String),
    #[error("a=crypto tag {0:?} is not a number of up to 9 digits")]
    Tag(String),
    #[error("crypto suite {0:?} is not supported (supported: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM)")]
    UnknownSuite(String),
    #[error("a=crypto key for {suite} is not valid base64")]
    Base64 { suite: SrtpSuite },
    #[error("a=crypto key for {suite} is {got} bytes; the suite needs {expected} (key and salt)")]
    KeyLength {
        suite: SrtpSuite,
        expected: usize,
        got: usize,
    },
    #[error("a=crypto key lifetime {0:?} is not a number or 2^n")]
    Lifetime(String),
    #[error("a=crypto line uses an MKI ({0:?}); master key identifiers are not supported")]
    Mki(String),
    #[error("a=crypto line has {0} keys; only one key per line is supported")]
    SeveralKeys(usize),
    #[error("a=crypto session parameter {0:?} is not supported")]
    SessionParam(String),
    #[error("packet of {len} bytes is too short for {what}")]
    TooShort { what: &'static str, len: usize },
    #[error("SRTCP packet without the E bit (unencrypted SRTCP is not accepted)")]
    UnencryptedRtcp,
    #[error("SRTP header extension runs past its declared length")]
    BadHeaderExtension,
    #[error("authentication failed")]
    Auth,
    #[error("replayed packet")]
    Replay,
    #[error("SRTP: {0}")]
    Other(String),
}

impl SrtpError {
    /// A packet seen before (or older than the replay window).
    pub fn is_replay(&self) -> bool {
        matches!(self, SrtpError::Replay)
    }

    /// A packet long enough to check that failed the check: wrong key, tampering, plain RTP
    /// on an SRTP stream.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, SrtpError::Auth | SrtpError::Other(_))
    }
}

fn map_crate_error(e: ::srtp::Error) -> SrtpError {
    use ::srtp::Error as E;
    match e {
        E::SrtpSsrcDuplicated(..) | E::SrtcpSsrcDuplicated(..) => SrtpError::Replay,
        E::RtpFailedToVerifyAuthTag
        | E::RtcpFailedToVerifyAuthTag
        | E::ErrFailedToVerifyAuthTag
        | E::AesGcm(_) => SrtpError::Auth,
        E::ErrTooShortRtp | E::SrtpTooSmall(..) => SrtpError::TooShort {
            what: "SRTP",
            len: 0,
        },
        E::ErrTooShortRtcp | E::SrtcpTooSmall(..) => SrtpError::TooShort {
            what: "SRTCP",
            len: 0,
        },
        other => SrtpError::Other(other.to_string()),
    }
}

/// A master key and salt for one suite. `Debug` does not print the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKey {
    suite: SrtpSuite,
    material: Vec<u8>,
}

impl fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SrtpKey({}, <redacted>)", self.suite)
    }
}

impl SrtpKey {
    /// A fresh random key and salt from the operating system's generator.
    pub fn generate(suite: SrtpSuite) -> SrtpKey {
        let mut material = vec![0u8; suite.master_len()];
        rand::fill(material.as_mut_slice());
        SrtpKey { suite, material }
    }

    /// Key then salt, exactly `suite.master_len()` bytes.
    pub fn from_bytes(suite: SrtpSuite, material: &[u8]) -> Result<SrtpKey, SrtpError> {
        if material.len() != suite.master_len() {
            return Err(SrtpError::KeyLength {
                suite,
                expected: suite.master_len(),
                got: material.len(),
            });
        }
        Ok(SrtpKey {
            suite,
            material: material.to_vec(),
        })
    }

    /// The base64 of an `inline:` parameter (padding optional, RFC 4568 §6.1).
    pub fn from_base64(suite: SrtpSuite, text: &str) -> Result<SrtpKey, SrtpError> {
        let text = text.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .map_err(|_| SrtpError::Base64 { suite })?;
        Self::from_bytes(suite, &bytes)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.material)
    }

    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    fn split(&self) -> (&[u8], &[u8]) {
        self.material
            .split_at(self.suite.key_len().min(self.material.len()))
    }
}

/// One `a=crypto:` attribute value: `<tag> <suite> inline:<key>[|<lifetime>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttribute {
    pub tag: u32,
    pub suite: SrtpSuite,
    pub key: SrtpKey,
    /// The key's lifetime in packets, when the line states one (we never re-key; the limit
    /// of 2^48 packets is far beyond any call).
    pub lifetime: Option<u64>,
}

impl CryptoAttribute {
    /// A line with a fresh key.
    pub fn generate(tag: u32, suite: SrtpSuite) -> CryptoAttribute {
        CryptoAttribute {
            tag,
            suite,
            key: SrtpKey::generate(suite),
            lifetime: None,
        }
    }

    /// Parses the value after `a=crypto:`.
    pub fn parse(value: &str) -> Result<CryptoAttribute, SrtpError> {
        let mut fields = value.split_ascii_whitespace();
        let (Some(tag), Some(suite), Some(params)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(SrtpError::Syntax(value.chars().take(80).collect()));
        };
        if let Some(extra) = fields.next() {
            return Err(SrtpError::SessionParam(extra.chars().take(40).collect()));
        }
        let tag = Some(tag)
            .filter(|t| (1..=9).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or_else(|| SrtpError::Tag(tag.chars().take(20).collect()))?;
        let suite = SrtpSuite::from_sdp_name(suite)
            .ok_or_else(|| SrtpError::UnknownSuite(suite.chars().take(40).collect()))?;
        let keys: Vec<&str> = params.split(';').collect();
        if keys.len() > 1 {
            return Err(SrtpError::SeveralKeys(keys.len()));
        }
        let Some(inline) = params
            .get(..7)
            .filter(|m| m.eq_ignore_ascii_case("inline:"))
            .and_then(|_| params.get(7..))
        else {
            return Err(SrtpError::Syntax(value.chars().take(80).collect()));
        };
        let mut parts = inline.split('|');
        let key = SrtpKey::from_base64(suite, parts.next().unwrap_or_default())?;
        let mut lifetime = None;
        for part in parts {
            if part.contains(':') {
                return Err(SrtpError::Mki(part.chars().take(20).collect()));
            }
            if lifetime.is_some() {
                return Err(SrtpError::Syntax(value.chars().take(80).collect()));
            }
            lifetime = Some(parse_lifetime(part)?);
        }
        Ok(CryptoAttribute {
            tag,
            suite,
            key,
            lifetime,
        })
    }
}

/// `2^n` or a decimal number of packets.
fn parse_lifetime(text: &str) -> Result<u64, SrtpError> {
    let bad = || SrtpError::Lifetime(text.chars().take(20).collect());
    match text.strip_prefix("2^") {
        Some(exp) => {
            let n: u32 = exp.parse().map_err(|_| bad())?;
            1u64.checked_shl(n).filter(|_| n < 64).ok_or_else(bad)
        }
        None => text.parse::<u64>().map_err(|_| bad()),
    }
}

impl fmt::Display for CryptoAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} inline:{}",
            self.tag,
            self.suite,
            self.key.to_base64()
        )?;
        if let Some(l) = self.lifetime {
            if l.is_power_of_two() {
                write!(f, "|2^{}", l.trailing_zeros())?;
            } else {
                write!(f, "|{l}")?;
            }
        }
        Ok(())
    }
}

/// The outcome of SDES negotiation for one call: the suite, the tag of the accepted line,
/// our key (what we send) and the remote's (what we receive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub tag: u32,
    pub suite: SrtpSuite,
    pub local: SrtpKey,
    pub remote: SrtpKey,
}

impl SrtpKeys {
    /// Our `a=crypto:` line for these keys.
    pub fn local_attribute(&self) -> CryptoAttribute {
        CryptoAttribute {
            tag: self.tag,
            suite: self.suite,
            key: self.local.clone(),
            lifetime: None,
        }
    }
}

/// A sliding replay window over sequence numbers that wrap at `modulus` (RFC 3711 §3.3.2).
#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    latest: u64,
    /// Bit `n`: `latest - n` was accepted.
    mask: u128,
}

impl ReplayWindow {
    fn new(first: u64) -> Self {
        ReplayWindow {
            latest: first,
            mask: 1,
        }
    }

    /// Records `seq` of an authenticated packet; `false` if it was seen or is too old.
    fn accept(&mut self, seq: u64, modulus: u64) -> bool {
        let ahead = seq.wrapping_sub(self.latest) % modulus;
        if ahead != 0 && ahead < modulus / 2 {
            self.mask = u32::try_from(ahead)
                .ok()
                .and_then(|n| self.mask.checked_shl(n))
                .unwrap_or(0)
                | 1;
            self.latest = seq;
            return true;
        }
        let behind = self.latest.wrapping_sub(seq) % modulus;
        if behind >= REPLAY_WINDOW {
            return false;
        }
        let bit = 1u128 << behind;
        let fresh = self.mask & bit == 0;
        self.mask |= bit;
        fresh
    }
}

/// Replay windows per remote SSRC.
#[derive(Default)]
struct ReplayWindows(HashMap<u32, ReplayWindow>);

impl ReplayWindows {
    fn accept(&mut self, ssrc: u32, seq: u64, modulus: u64) -> bool {
        if let Some(w) = self.0.get_mut(&ssrc) {
            return w.accept(seq, modulus);
        }
        if self.0.len() >= MAX_SSRCS {
            self.0.clear();
        }
        self.0.insert(ssrc, ReplayWindow::new(seq));
        true
    }
}

/// Both directions of one call's SRTP: protects what we send with our key, unprotects what
/// we receive with the remote's. Replay protection is on for both RTP and RTCP.
pub struct SrtpPair {
    suite: SrtpSuite,
    tx: Context,
    rx: Context,
    rtp_replay: ReplayWindows,
    rtcp_replay: ReplayWindows,
}

impl SrtpPair {
    pub fn new(keys: &SrtpKeys) -> Result<SrtpPair, SrtpError> {
        let context = |key: &SrtpKey| {
            if key.suite != keys.suite {
                return Err(SrtpError::Other(format!(
                    "key for {} used with suite {}",
                    key.suite, keys.suite
                )));
            }
            let (master, salt) = key.split();
            // No replay protection in the crate: see the module documentation.
            Context::new(master, salt, keys.suite.profile(), None, None).map_err(map_crate_error)
        };
        Ok(SrtpPair {
            suite: keys.suite,
            tx: context(&keys.local)?,
            rx: context(&keys.remote)?,
            rtp_replay: ReplayWindows::default(),
            rtcp_replay: ReplayWindows::default(),
        })
    }

    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Encrypts and authenticates an RTP packet we built; the SRTP packet goes to `out`.
    pub fn protect_rtp(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        if packet.len() < RTP_HEADER_LEN {
            return Err(SrtpError::TooShort {
                what: "RTP",
                len: packet.len(),
            });
        }
        let protected = self.tx.encrypt_rtp(packet).map_err(map_crate_error)?;
        out.clear();
        out.extend_from_slice(&protected);
        Ok(())
    }

    /// Encrypts and authenticates an RTCP compound we built.
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if packet.len() < RTCP_CLEAR_LEN {
            return Err(SrtpError::TooShort {
                what: "RTCP",
                len: packet.len(),
            });
        }
        let protected = self.tx.encrypt_rtcp(packet).map_err(map_crate_error)?;
        Ok(protected.to_vec())
    }

    /// Checks and decrypts a received SRTP packet; returns the plain RTP packet.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if packet.len() < RTP_HEADER_LEN + self.suite.rtp_overhead() {
            return Err(SrtpError::TooShort {
                what: "SRTP",
                len: packet.len(),
            });
        }
        // The crate's header parser walks RFC 8285 extension elements without bounds checks
        // (an element longer than the packet panics, found by fuzz/fuzz_targets/srtp.rs).
        if !extension_elements_fit(packet) {
            return Err(SrtpError::BadHeaderExtension);
        }
        let plain = self.rx.decrypt_rtp(packet).map_err(map_crate_error)?;
        // Authenticated: the header is the sender's.
        let (Some(seq), Some(ssrc)) = (plain.get(2..4), plain.get(8..12)) else {
            return Err(SrtpError::TooShort {
                what: "SRTP",
                len: packet.len(),
            });
        };
        let seq = u64::from(u16::from_be_bytes([seq[0], seq[1]]));
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        if !self.rtp_replay.accept(ssrc, seq, 1 << 16) {
            return Err(SrtpError::Replay);
        }
        Ok(plain.to_vec())
    }

    /// Checks and decrypts a received SRTCP packet; returns the plain RTCP compound.
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        // The crate reads the SSRC and the trailing index without checking the length.
        let min = RTCP_CLEAR_LEN + self.suite.rtcp_overhead();
        if packet.len() < min {
            return Err(SrtpError::TooShort {
                what: "SRTCP",
                len: packet.len(),
            });
        }
        // The crate returns SRTCP with the E bit clear without checking its tag; we never
        // send such packets and accept none.
        let index = packet
            .len()
            .checked_sub(self.suite.rtcp_index_from_end())
            .and_then(|i| packet.get(i..i.checked_add(SRTCP_INDEX_LEN)?))
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        if index & 0x8000_0000 == 0 {
            return Err(SrtpError::UnencryptedRtcp);
        }
        let plain = self.rx.decrypt_rtcp(packet).map_err(map_crate_error)?;
        let ssrc = plain
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if !self
            .rtcp_replay
            .accept(ssrc, u64::from(index & 0x7fff_ffff), 1 << 31)
        {
            return Err(SrtpError::Replay);
        }
        Ok(plain.to_vec())
    }
}

/// Whether the RTP header's extension block, and every RFC 8285 element in it, lies inside the
/// packet (and inside the block). Mirrors the element walk of webrtc-rs `rtp` 0.17's
/// `Header::unmarshal` (one-byte profile 0xBEDE, two-byte 0x1000, any other profile opaque)
/// with the bounds checks it lacks; senders following RFC 8285 always pass.
fn extension_elements_fit(packet: &[u8]) -> bool {
    let Some(&b0) = packet.first() else {
        return false;
    };
    let csrc_end = RTP_HEADER_LEN + 4 * usize::from(b0 & 0x0F);
    if b0 & 0x10 == 0 {
        return packet.len() >= csrc_end;
    }
    let Some(&[p0, p1, l0, l1]) = packet.get(csrc_end..csrc_end + 4) else {
        return false;
    };
    let start = csrc_end + 4;
    let end = start + 4 * usize::from(u16::from_be_bytes([l0, l1]));
    if end > packet.len() {
        return false;
    }
    let (one_byte, two_byte) = match u16::from_be_bytes([p0, p1]) {
        0xBEDE => (true, false),
        0x1000 => (false, true),
        _ => return true,
    };
    let mut at = start;
    while at < end {
        let Some(&b) = packet.get(at) else {
            return false;
        };
        at += 1;
        if b == 0 {
            continue; // padding
        }
        let len = if one_byte {
            if b >> 4 == 0x0F {
                return true; // reserved id: the walk stops here
            }
            usize::from(b & 0x0F) + 1
        } else {
            debug_assert!(two_byte);
            let Some(&l) = packet.get(at) else {
                return false;
            };
            at += 1;
            usize::from(l)
        };
        at += len;
        if at > end {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Found by the `srtp` fuzz target: a one-byte extension element longer than the packet
    /// made webrtc-rs's header parser panic inside `decrypt_rtp`.
    #[test]
    fn extension_elements_past_the_packet_are_refused_before_the_crate() {
        let keys = SrtpKeys {
            tag: 1,
            suite: SrtpSuite::AesCm128HmacSha1_80,
            local: vector_key(SrtpSuite::AesCm128HmacSha1_80),
            remote: vector_key(SrtpSuite::AesCm128HmacSha1_80),
        };
        let mut rx = SrtpPair::new(&keys).expect("pair");
        // X bit, profile 0xBEDE, 1 word of extension: element id 1 claiming 16 bytes.
        let mut p = vec![
            0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0xBE, 0xDE, 0, 1, 0x1F, 0, 0, 0,
        ];
        p.extend([0u8; 10]); // the auth tag's room
        assert_eq!(rx.unprotect_rtp(&p), Err(SrtpError::BadHeaderExtension));
        // Two-byte profile: an element length past the block.
        let mut q = vec![
            0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0x10, 0x00, 0, 1, 1, 200, 0, 0,
        ];
        q.extend([0u8; 10]);
        assert_eq!(rx.unprotect_rtp(&q), Err(SrtpError::BadHeaderExtension));
        // Well-formed elements, padding and the reserved id pass (then fail authentication).
        for ext in [
            [0x10, 0xAA, 0, 0],
            [0, 0, 0x10, 0xAA],
            [0xF0, 0xFF, 0xFF, 0xFF],
        ] {
            let mut ok = vec![0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0xBE, 0xDE, 0, 1];
            ok.extend(ext);
            ok.extend([0u8; 14]);
            assert!(extension_elements_fit(&ok), "{ext:?}");
            assert!(rx.unprotect_rtp(&ok).is_err_and(|e| e.is_auth_failure()));
        }
    }

    /// Key `i * 7 + 3`, as in the vectors below.
    fn vector_key(suite: SrtpSuite) -> SrtpKey {
        let m: Vec<u8> = (0..suite.master_len())
            .map(|i| ((i * 7 + 3) & 0xff) as u8)
            .collect();
        SrtpKey::from_bytes(suite, &m).expect("key")
    }

    const PLAIN_RTP: &str = "80000d05000003e8cafebabe101112131415161718191a1b1c1d1e1f20212223";
    const PLAIN_RTCP: &str = "81c90007cafebabe123456780000000100000002000000030000000400000005";

    /// Known answers from libsrtp 2 (through the pylibsrtp 1.0.0 wrapper), an implementation
    /// independent of the one we use: `Session.protect` / `protect_rtcp` of PLAIN_RTP and
    /// PLAIN_RTCP with `vector_key`.
    const VECTORS: [(SrtpSuite, &str, &str); 4] = [
        (
            SrtpSuite::AesCm128HmacSha1_80,
            "80000d05000003e8cafebabe629919f68f59370308803cd8bd68599b048f5a68f4c72184ed3f2cf99c21",
            "81c90007cafebabe257f09058c73b4c6e55eb9f2f57e5aa4423257dc26f8da9780000001317d127e5b11d4abac09",
        ),
        (
            SrtpSuite::AesCm128HmacSha1_32,
            "80000d05000003e8cafebabe629919f68f59370308803cd8bd68599b048f5a68f4c72184",
            "81c90007cafebabe257f09058c73b4c6e55eb9f2f57e5aa4423257dc26f8da9780000001317d127e5b11d4abac09",
        ),
        (
            SrtpSuite::AeadAes128Gcm,
            "80000d05000003e8cafebabeed1c54915997fa431582be665004e3783b43fd3fdad4b0df88ae37625e1831757644787a",
            "81c90007cafebabef74cd32c7d5517dcf611ab45f31affed5d7b4b9bc81dbe3e59d2249ebf24c3e4c22b4aa950af775580000001",
        ),
        (
            SrtpSuite::AeadAes256Gcm,
            "80000d05000003e8cafebabe2ad7cbcfb0843653d73cf90860550bbdd9717c95dc5a9ca4710fdde6b8e10c8e3bf0923b",
            "81c90007cafebabe1644145d11c9298e5d49aedebe75e35ebdb6b459ba6a12e337a03f0b939d08b509f22a8317bca0ec80000001",
        ),
    ];

    fn pair(suite: SrtpSuite, local: SrtpKey, remote: SrtpKey) -> SrtpPair {
        SrtpPair::new(&SrtpKeys {
            tag: 1,
            suite,
            local,
            remote,
        })
        .expect("pair")
    }

    /// Two ends of one call: a's local key is b's remote key and the other way round.
    fn ends(suite: SrtpSuite) -> (SrtpPair, SrtpPair) {
        let (ka, kb) = (SrtpKey::generate(suite), SrtpKey::generate(suite));
        (pair(suite, ka.clone(), kb.clone()), pair(suite, kb, ka))
    }

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(&0xcafe_babeu32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn matches_libsrtp_known_answers() {
        for (suite, srtp, srtcp) in VECTORS {
            let key = vector_key(suite);
            let mut tx = pair(suite, key.clone(), key.clone());
            let mut out = Vec::new();
            tx.protect_rtp(&hex(PLAIN_RTP), &mut out).expect("protect");
            assert_eq!(out, hex(srtp), "{suite} SRTP");
            assert_eq!(
                tx.protect_rtcp(&hex(PLAIN_RTCP)).expect("protect rtcp"),
                hex(srtcp),
                "{suite} SRTCP"
            );
            let mut rx = pair(suite, key.clone(), key);
            assert_eq!(
                rx.unprotect_rtp(&hex(srtp)).expect("unprotect"),
                hex(PLAIN_RTP)
            );
            assert_eq!(
                rx.unprotect_rtcp(&hex(srtcp)).expect("unprotect rtcp"),
                hex(PLAIN_RTCP)
            );
        }
    }

    #[test]
    fn round_trip_tamper_and_replay_for_every_suite() {
        for suite in SrtpSuite::ALL {
            let (mut a, mut b) = ends(suite);
            let mut wire = Vec::new();
            for seq in 100..110u16 {
                let plain = rtp(seq, &[seq as u8; 160]);
                a.protect_rtp(&plain, &mut wire).expect("protect");
                assert_ne!(
                    wire.get(12..172),
                    plain.get(12..172),
                    "{suite}: payload in clear"
                );
                assert_eq!(b.unprotect_rtp(&wire).expect("unprotect"), plain, "{suite}");
            }
            // The last packet again: a replay.
            assert_eq!(b.unprotect_rtp(&wire), Err(SrtpError::Replay), "{suite}");
            // One flipped payload bit: refused, and the sequence number is not burnt.
            let plain = rtp(110, &[7; 160]);
            a.protect_rtp(&plain, &mut wire).expect("protect");
            let mut tampered = wire.clone();
            tampered[20] ^= 0x01;
            assert_eq!(b.unprotect_rtp(&tampered), Err(SrtpError::Auth), "{suite}");
            assert_eq!(b.unprotect_rtp(&wire).expect("genuine after tamper"), plain);

            let report = hex(PLAIN_RTCP);
            let sr = a.protect_rtcp(&report).expect("protect rtcp");
            assert_eq!(b.unprotect_rtcp(&sr).expect("unprotect rtcp"), report);
            assert_eq!(b.unprotect_rtcp(&sr), Err(SrtpError::Replay), "{suite}");
            let mut bad = a.protect_rtcp(&report).expect("protect rtcp");
            bad[9] ^= 0x40;
            assert_eq!(b.unprotect_rtcp(&bad), Err(SrtpError::Auth), "{suite}");
        }
    }

    #[test]
    fn forged_packets_do_not_move_the_replay_window() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (mut a, mut b) = ends(suite);
        let mut wire = Vec::new();
        // Forged packets far ahead of the genuine stream (the crate's own window would have
        // started there and refused the genuine packets below as too old).
        for seq in [30_000u16, 60_000, 1_000] {
            let mut forged = rtp(seq, &[0; 160]);
            forged.extend_from_slice(&[0; 10]);
            assert_eq!(b.unprotect_rtp(&forged), Err(SrtpError::Auth));
        }
        for seq in [100u16, 102, 101, 103] {
            a.protect_rtp(&rtp(seq, &[1; 160]), &mut wire)
                .expect("protect");
            assert!(
                b.unprotect_rtp(&wire).is_ok(),
                "genuine {seq} after forgeries"
            );
        }
        // Older than the window: refused as a replay.
        let mut old = Vec::new();
        a.protect_rtp(&rtp(65_000, &[1; 160]), &mut old)
            .expect("protect");
        assert_eq!(b.unprotect_rtp(&old), Err(SrtpError::Replay));
    }

    #[test]
    fn replay_window_slides_and_wraps() {
        let m = 1 << 16;
        let mut w = ReplayWindow::new(65_530);
        assert!(!w.accept(65_530, m), "duplicate");
        assert!(w.accept(65_528, m), "late but in the window");
        assert!(!w.accept(65_528, m));
        assert!(w.accept(3, m), "wrapped ahead");
        assert!(w.accept(65_535, m), "behind across the wrap");
        assert!(!w.accept(65_535, m));
        assert!(w.accept(400, m));
        assert!(!w.accept(3, m), "397 behind: too old");
        assert!(w.accept(300, m), "100 behind: in the window");
        assert!(!w.accept(272, m), "128 behind: too old");
        assert!(w.accept(273, m), "127 behind");
    }

    #[test]
    fn wrong_key_fails_authentication() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let mut a = pair(suite, SrtpKey::generate(suite), SrtpKey::generate(suite));
        let mut b = pair(suite, SrtpKey::generate(suite), SrtpKey::generate(suite));
        let mut wire = Vec::new();
        a.protect_rtp(&rtp(1, &[1; 160]), &mut wire)
            .expect("protect");
        assert_eq!(b.unprotect_rtp(&wire), Err(SrtpError::Auth));
        // Plain RTP sent to an SRTP session is refused too.
        assert_eq!(b.unprotect_rtp(&rtp(2, &[1; 160])), Err(SrtpError::Auth));
    }

    #[test]
    fn short_and_unencrypted_srtcp_are_refused_before_the_crate() {
        // The crate indexes the SRTCP tail without a length check: with webrtc-srtp 0.17.2,
        // unguarded `decrypt_rtcp` panicked (subtract with overflow) on every RTCP-looking
        // packet under 14 bytes.
        for suite in SrtpSuite::ALL {
            let (_, mut b) = ends(suite);
            for len in 0..40 {
                let mut p = vec![0x81u8, 0xc9, 0x00, 0x07];
                p.resize(len, 0xff);
                let _ = b.unprotect_rtcp(&p);
                let mut p = vec![0x80u8, 0x00];
                p.resize(len, 0xff);
                let _ = b.unprotect_rtp(&p);
            }
        }
        // A valid-looking SRTCP packet with the E bit clear: the crate (0.17.2) hands back
        // its first bytes without checking the tag.
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (mut a, mut b) = ends(suite);
        let mut sr = a.protect_rtcp(&hex(PLAIN_RTCP)).expect("protect");
        let e = sr.len() - 14;
        sr[e] &= 0x7f;
        assert_eq!(b.unprotect_rtcp(&sr), Err(SrtpError::UnencryptedRtcp));
    }

    #[test]
    fn crypto_attribute_round_trip() {
        let line = "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20";
        let a = CryptoAttribute::parse(line).expect("parse");
        assert_eq!(
            (a.tag, a.suite, a.lifetime),
            (1, SrtpSuite::AesCm128HmacSha1_80, Some(1 << 20))
        );
        assert_eq!(a.to_string(), line);
        assert_eq!(CryptoAttribute::parse(&a.to_string()), Ok(a));
        for suite in SrtpSuite::ALL {
            let g = CryptoAttribute::generate(7, suite);
            assert_eq!(CryptoAttribute::parse(&g.to_string()), Ok(g.clone()));
            assert_ne!(g.key, SrtpKey::generate(suite), "keys are random");
        }
        // Decimal lifetime, lower-case `inline:`, no base64 padding.
        let a = CryptoAttribute::parse(
            "22 aead_aes_128_gcm INLINE:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw|1000",
        )
        .expect("parse");
        assert_eq!(
            (a.tag, a.suite, a.lifetime),
            (22, SrtpSuite::AeadAes128Gcm, Some(1000))
        );
        assert!(
            !format!("{a:?}").contains("AAEC"),
            "Debug must not show the key"
        );
    }

    #[test]
    fn crypto_attribute_errors_name_the_problem() {
        let key30 = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let cases = [
            ("1 AES_CM_128_HMAC_SHA1_80", "Syntax"),
            (&*format!("x AES_CM_128_HMAC_SHA1_80 inline:{key30}"), "Tag"),
            (
                &*format!("1 F8_128_HMAC_SHA1_80 inline:{key30}"),
                "UnknownSuite",
            ),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!notbase64!!!", "Base64"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQF", "KeyLength"),
            (&*format!("1 AEAD_AES_128_GCM inline:{key30}"), "KeyLength"),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key30}|2^20|1:4"),
                "Mki",
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key30}|1:4"),
                "Mki",
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key30}|2^99"),
                "Lifetime",
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key30};inline:{key30}"),
                "SeveralKeys",
            ),
            (
                &*format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key30} UNENCRYPTED_SRTP"),
                "SessionParam",
            ),
            (&*format!("1 AES_CM_128_HMAC_SHA1_80 key:{key30}"), "Syntax"),
        ];
        for (line, want) in cases {
            let err = CryptoAttribute::parse(line).expect_err(line);
            assert!(format!("{err:?}").starts_with(want), "{line}: {err:?}");
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(
            CryptoAttribute::parse("1 AES_CM_128_HMAC_SHA1_80 inline:AAECAwQF")
                .expect_err("short")
                .to_string(),
            "a=crypto key for AES_CM_128_HMAC_SHA1_80 is 6 bytes; the suite needs 30 (key and salt)"
        );
    }

    proptest::proptest! {
        #[test]
        fn random_datagrams_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300), rtcp in proptest::bool::ANY) {
            for suite in SrtpSuite::ALL {
                let (_, mut b) = ends(suite);
                let _ = if rtcp { b.unprotect_rtcp(&data) } else { b.unprotect_rtp(&data) };
            }
        }

        #[test]
        fn random_attributes_never_panic(text in "\\PC{0,120}") {
            let _ = CryptoAttribute::parse(&text);
            let _ = CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{text}"));
        }
    }
}
