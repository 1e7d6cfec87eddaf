//! SDP offer/answer for one audio stream (RFC 4566 syntax, RFC 3264 semantics).
//!
//! Parsing is hand-written and lenient rather than webrtc-rs `sdp` 0.17: that parser
//! enforces the RFC 4566 line order and fixed token lists, so a whole offer is rejected
//! for things a SIP peer legitimately sends next to its audio — an `m=application … TCP/BFCP`
//! or `m=message … TCP/MSRP` stream, a missing `t=` line, an unknown line type — which
//! would turn a good call into a 488 (see `webrtc_sdp_crate_rejects_real_sip_offers`).
//! We read only what matters for audio and ignore the rest; the tests cross-check that
//! every SDP we *build* is accepted by the webrtc-rs parser.
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::media::codec::CodecKind;
use crate::media::session::MediaConfig;
use crate::media::srtp::{CryptoAttribute, SrtpKey, SrtpKeys, SrtpPolicy, SrtpSuite};

/// Largest SDP body accepted.
const MAX_SDP_LEN: usize = 64 * 1024;
/// Payload type we offer for Opus and telephone-event in our own offers.
pub const OFFER_OPUS_PT: u8 = 111;
pub const OFFER_TELEPHONE_EVENT_PT: u8 = 101;

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Our direction in an answer to a peer that declared `self`.
    pub fn mirror(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Whether the party with this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the party with this direction receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attribute(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| name.eq_ignore_ascii_case(d.attribute()))
    }
}

/// One payload format the remote offered (or answered), in its order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFormat {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: Option<String>,
}

/// An `m=` line of the remote SDP, kept so the answer can reject the streams we do not take
/// (RFC 3264 §6: the answer has exactly as many `m=` lines, in the same order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaLine {
    pub media: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
}

/// What we learned about the remote's audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMedia {
    pub rtp_addr: SocketAddr,
    pub rtcp_addr: SocketAddr,
    pub formats: Vec<RemoteFormat>,
    /// Remote's declared direction; `Inactive` for the old-style hold address 0.0.0.0.
    pub direction: Direction,
    pub ptime_ms: Option<u32>,
    /// All `m=` lines in order, and which one is the audio stream we use.
    pub media_lines: Vec<MediaLine>,
    pub audio_index: usize,
    /// The audio stream's transport is RTP/SAVP or RTP/SAVPF.
    pub secure_transport: bool,
    /// The stream's `a=crypto:` lines we can use, in the remote's order.
    pub crypto: Vec<CryptoAttribute>,
    /// Why the other `a=crypto:` lines were skipped (`line 9: ...`), for the logs and errors.
    pub crypto_skipped: Vec<String>,
}

/// Whose SDP [`negotiate_crypto`] looks at.
#[derive(Debug, Clone, Copy)]
pub enum SrtpRole<'a> {
    /// The remote SDP is an offer. `keep` is the key we use now (re-INVITE): kept when the
    /// suite stays, so the remote need not switch keys mid-call.
    Answering {
        policy: SrtpPolicy,
        keep: Option<&'a SrtpKey>,
    },
    /// The remote SDP answers our offer, which carried these `a=crypto:` lines (none: we
    /// offered plain RTP).
    Answered {
        policy: SrtpPolicy,
        offered: &'a [CryptoAttribute],
    },
}

/// The outcome of offer/answer for the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: CodecKind,
    pub payload_type: u8,
    pub telephone_event_pt: Option<u8>,
    /// Clock rate of the chosen telephone-event format (echoed in the answer).
    pub telephone_event_clock: u32,
    pub remote_rtp: SocketAddr,
    pub remote_rtcp: SocketAddr,
    pub remote_direction: Direction,
    pub media_lines: Vec<MediaLine>,
    pub audio_index: usize,
    /// SDES-keyed SRTP for this stream, when negotiated.
    pub srtp: Option<SrtpKeys>,
}

impl Negotiated {
    /// Our direction for this stream.
    pub fn local_direction(&self) -> Direction {
        self.remote_direction.mirror()
    }

    /// Media session settings for this outcome (symmetric RTP on, 60 ms jitter buffer).
    /// Whether to send is `local_direction().sends()`, for `MediaSession::set_sending`.
    pub fn media_config(&self) -> MediaConfig {
        let mut cfg = MediaConfig::new(
            self.codec,
            self.payload_type,
            self.telephone_event_pt,
            self.remote_rtp,
            self.remote_rtcp,
        );
        cfg.srtp = self.srtp.clone();
        cfg
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP body of {0} bytes exceeds the {MAX_SDP_LEN}-byte limit")]
    TooLarge(usize),
    #[error("SDP line {line} ({text:?}): {reason}")]
    BadLine {
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error("SDP has no usable audio stream (no m=audio line with a non-zero port)")]
    NoAudio,
    #[error("SDP audio stream uses transport {0:?}; only RTP/AVP, RTP/AVPF, RTP/SAVP and RTP/SAVPF are supported")]
    UnsupportedTransport(String),
    #[error("SRTP offered ({0}) but [rtp] srtp = \"off\"")]
    SrtpDisabled(String),
    #[error("plain RTP offered (no usable a=crypto line) but [rtp] srtp = \"required\"{}", skipped_note(.0))]
    SrtpRequired(Vec<String>),
    #[error("{proto} stream has no usable a=crypto line{}", skipped_note(.skipped))]
    NoUsableCrypto { proto: String, skipped: Vec<String> },
    #[error("SRTP answer does not match our offer: {0}")]
    CryptoAnswer(String),
    #[error("SDP audio stream has no connection address (no c= line at session or media level)")]
    NoConnection,
    #[error("no common codec: remote offers [{offered}], we accept [{supported}]")]
    NoCommonCodec { offered: String, supported: String },
}

fn skipped_note(skipped: &[String]) -> String {
    if skipped.is_empty() {
        String::new()
    } else {
        format!(" (skipped: {})", skipped.join("; "))
    }
}

impl SdpError {
    /// The SIP status that refuses an offer with this error: 488 for media we cannot or may
    /// not use, 400 for SDP we cannot read.
    pub fn status(&self) -> u16 {
        match self {
            SdpError::TooLarge(_) | SdpError::BadLine { .. } | SdpError::NoConnection => 400,
            _ => 488,
        }
    }
}

#[derive(Default)]
struct Section {
    line: MediaLine,
    connection: Option<(IpAddr, usize)>,
    direction: Option<Direction>,
    ptime: Option<u32>,
    rtcp: Option<(u16, Option<IpAddr>)>,
    rtpmaps: Vec<(u8, String, u32, u16)>,
    fmtps: Vec<(u8, String)>,
    /// `a=crypto:` values with their line numbers.
    crypto: Vec<(usize, String)>,
}

/// Encoding of the RFC 3551 static payload types, for formats listed without `a=rtpmap`.
fn static_format(pt: u8) -> Option<(&'static str, u32, u16)> {
    Some(match pt {
        0 => ("PCMU", 8000, 1),
        3 => ("GSM", 8000, 1),
        4 => ("G723", 8000, 1),
        8 => ("PCMA", 8000, 1),
        9 => ("G722", 8000, 1),
        13 => ("CN", 8000, 1),
        18 => ("G729", 8000, 1),
        _ => return None,
    })
}

fn bad(line: usize, text: &str, reason: &'static str) -> SdpError {
    SdpError::BadLine {
        line,
        text: text.chars().take(80).collect(),
        reason,
    }
}

/// Parses `IN IP4 <addr>[/ttl[/n]]` (or IP6).
fn parse_connection(value: &str, line: usize, text: &str) -> Result<IpAddr, SdpError> {
    let mut fields = value.split_ascii_whitespace();
    let (Some(net), Some(addr_type), Some(addr)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(bad(
            line,
            text,
            "c= needs network type, address type and address",
        ));
    };
    if !net.eq_ignore_ascii_case("IN") {
        return Err(bad(line, text, "c= network type is not IN"));
    }
    let host = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = host
        .parse()
        .map_err(|_| bad(line, text, "c= address is not an IP address"))?;
    let type_ok = match ip {
        IpAddr::V4(_) => addr_type.eq_ignore_ascii_case("IP4"),
        IpAddr::V6(_) => addr_type.eq_ignore_ascii_case("IP6"),
    };
    if !type_ok {
        return Err(bad(
            line,
            text,
            "c= address does not match its address type",
        ));
    }
    Ok(ip)
}

fn parse_media_line(value: &str, line: usize, text: &str) -> Result<MediaLine, SdpError> {
    let mut fields = value.split_ascii_whitespace();
    let (Some(media), Some(port), Some(proto)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(bad(line, text, "m= needs media, port and transport"));
    };
    let port = port
        .split('/')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| bad(line, text, "m= port is not a number 0-65535"))?;
    Ok(MediaLine {
        media: media.to_string(),
        port,
        proto: proto.to_string(),
        formats: fields.map(str::to_string).collect(),
    })
}

/// `<pt> <encoding>/<clock>[/<channels>]`
fn parse_rtpmap(value: &str) -> Option<(u8, String, u32, u16)> {
    let (pt, rest) = value.trim().split_once(char::is_whitespace)?;
    let pt = pt.parse::<u8>().ok().filter(|&p| p < 128)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.trim().to_string();
    let clock = parts.next()?.trim().parse::<u32>().ok()?;
    let channels = match parts.next() {
        Some(c) => c.trim().parse::<u16>().ok()?,
        None => 1,
    };
    Some((pt, encoding, clock, channels))
}

/// `<port> [IN IP4 <addr>]` (RFC 3605)
fn parse_rtcp_attr(
    value: &str,
    line: usize,
    text: &str,
) -> Result<(u16, Option<IpAddr>), SdpError> {
    let value = value.trim();
    let (port, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let port = port
        .parse::<u16>()
        .map_err(|_| bad(line, text, "a=rtcp port is not a number 0-65535"))?;
    let rest = rest.trim();
    let addr = if rest.is_empty() {
        None
    } else {
        Some(parse_connection(rest, line, text)?)
    };
    Ok((port, addr))
}

/// Parses a remote SDP body and extracts its first usable audio stream: the first
/// `m=audio` line with a non-zero port and an RTP/AVP(F) transport.
pub fn parse_remote(sdp: &[u8]) -> Result<RemoteMedia, SdpError> {
    if sdp.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge(sdp.len()));
    }
    let body = String::from_utf8_lossy(sdp);
    let mut session = Section::default();
    let mut sections: Vec<Section> = Vec::new();
    for (index, raw) in body.split('\n').enumerate() {
        let line = index + 1;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        if text.trim().is_empty() {
            continue;
        }
        let Some((kind, value)) = text.split_once('=') else {
            return Err(bad(line, text, "not a <type>=<value> line"));
        };
        let kind = kind.trim();
        if kind == "m" {
            sections.push(Section {
                line: parse_media_line(value, line, text)?,
                ..Section::default()
            });
            continue;
        }
        let current = sections.last_mut().unwrap_or(&mut session);
        match kind {
            "c" => current.connection = Some((parse_connection(value, line, text)?, line)),
            "a" => {
                let (name, attr_value) = value.split_once(':').unwrap_or((value, ""));
                let name = name.trim();
                if let Some(direction) = Direction::from_attribute(name) {
                    current.direction = Some(direction);
                } else if name.eq_ignore_ascii_case("rtpmap") {
                    // An rtpmap we cannot read leaves the format unknown; it is not fatal.
                    current.rtpmaps.extend(parse_rtpmap(attr_value));
                } else if name.eq_ignore_ascii_case("fmtp") {
                    let v = attr_value.trim();
                    if let Some((pt, params)) = v.split_once(char::is_whitespace) {
                        if let Ok(pt) = pt.parse::<u8>() {
                            current.fmtps.push((pt, params.trim().to_string()));
                        }
                    }
                } else if name.eq_ignore_ascii_case("ptime") {
                    current.ptime = attr_value.trim().parse::<u32>().ok().filter(|&p| p > 0);
                } else if name.eq_ignore_ascii_case("rtcp") {
                    current.rtcp = Some(parse_rtcp_attr(attr_value, line, text)?);
                } else if name.eq_ignore_ascii_case("crypto") && current.crypto.len() < 32 {
                    current.crypto.push((line, attr_value.to_string()));
                }
            }
            // v, o, s, t, b, i, u, e, p, z, k, r and unknown types carry nothing we need.
            _ => {}
        }
    }

    let audio_with_port =
        |s: &&Section| s.line.media.eq_ignore_ascii_case("audio") && s.line.port != 0;
    let is_rtp = |s: &&Section| {
        ["RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"]
            .iter()
            .any(|p| s.line.proto.eq_ignore_ascii_case(p))
    };
    let Some((audio_index, audio)) = sections
        .iter()
        .enumerate()
        .find(|(_, s)| audio_with_port(s) && is_rtp(s))
    else {
        return Err(match sections.iter().find(audio_with_port) {
            Some(s) => SdpError::UnsupportedTransport(s.line.proto.clone()),
            None => SdpError::NoAudio,
        });
    };

    let (ip, _) = audio
        .connection
        .or(session.connection)
        .ok_or(SdpError::NoConnection)?;
    let rtp_addr = SocketAddr::new(ip, audio.line.port);
    let rtcp_addr = match audio.rtcp.or(session.rtcp) {
        Some((port, addr)) => SocketAddr::new(addr.unwrap_or(ip), port),
        None => SocketAddr::new(ip, audio.line.port.saturating_add(1)),
    };
    let direction = if ip.is_unspecified() {
        Direction::Inactive
    } else {
        audio
            .direction
            .or(session.direction)
            .unwrap_or(Direction::SendRecv)
    };
    let formats = audio
        .line
        .formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok().filter(|&p| p < 128))
        .filter_map(|pt| {
            let (encoding, clock_rate, channels) = match audio.rtpmaps.iter().find(|m| m.0 == pt) {
                Some((_, enc, clock, ch)) => (enc.clone(), *clock, *ch),
                None => {
                    let (enc, clock, ch) = static_format(pt)?;
                    (enc.to_string(), clock, ch)
                }
            };
            let fmtp = audio.fmtps.iter().find(|f| f.0 == pt).map(|f| f.1.clone());
            Some(RemoteFormat {
                payload_type: pt,
                encoding,
                clock_rate,
                channels,
                fmtp,
            })
        })
        .collect();
    let mut crypto = Vec::new();
    let mut crypto_skipped = Vec::new();
    for (line, value) in &audio.crypto {
        match CryptoAttribute::parse(value) {
            Ok(c) => crypto.push(c),
            Err(e) => crypto_skipped.push(format!("line {line}: {e}")),
        }
    }
    let secure_transport = audio
        .line
        .proto
        .to_ascii_uppercase()
        .starts_with("RTP/SAVP");
    Ok(RemoteMedia {
        rtp_addr,
        rtcp_addr,
        formats,
        direction,
        ptime_ms: audio.ptime.or(session.ptime),
        secure_transport,
        crypto,
        crypto_skipped,
        media_lines: sections.into_iter().map(|s| s.line).collect(),
        audio_index,
    })
}

/// SDES (RFC 4568) for the remote's audio stream under our policy: the keys to use, `None`
/// for plain RTP, or why the SDP is not acceptable (a 488).
///
/// Answering an offer: the first `a=crypto:` line with a suite we support wins (their
/// order), and our answer carries the same tag and suite with our own key. An RTP/AVP offer
/// with `a=crypto:` lines (best-effort SRTP, as baresip's `mediaenc=srtp` and FreeSWITCH's
/// optional mode send) gets SRTP too unless the policy is off.
/// Reading an answer to our offer: its line must name a tag we offered with the same suite.
pub fn negotiate_crypto(
    remote: &RemoteMedia,
    role: SrtpRole<'_>,
) -> Result<Option<SrtpKeys>, SdpError> {
    let proto = || {
        remote
            .media_lines
            .get(remote.audio_index)
            .map_or_else(|| "RTP/SAVP".to_string(), |l| l.proto.clone())
    };
    match role {
        SrtpRole::Answering { policy, keep } => {
            if policy == SrtpPolicy::Off {
                return if remote.secure_transport {
                    Err(SdpError::SrtpDisabled(proto()))
                } else {
                    Ok(None)
                };
            }
            let Some(c) = remote.crypto.first() else {
                return if remote.secure_transport {
                    Err(SdpError::NoUsableCrypto {
                        proto: proto(),
                        skipped: remote.crypto_skipped.clone(),
                    })
                } else if policy == SrtpPolicy::Required {
                    Err(SdpError::SrtpRequired(remote.crypto_skipped.clone()))
                } else {
                    Ok(None)
                };
            };
            let local = match keep {
                Some(k) if k.suite() == c.suite => k.clone(),
                _ => SrtpKey::generate(c.suite),
            };
            Ok(Some(SrtpKeys {
                tag: c.tag,
                suite: c.suite,
                local,
                remote: c.key.clone(),
            }))
        }
        SrtpRole::Answered { policy, offered } => {
            if offered.is_empty() {
                // We offered plain RTP: crypto in the answer is not something we asked for.
                return if remote.secure_transport {
                    Err(SdpError::CryptoAnswer(format!(
                        "{} answer to a plain RTP offer",
                        proto()
                    )))
                } else {
                    Ok(None)
                };
            }
            let Some(c) = remote.crypto.first() else {
                return if policy == SrtpPolicy::Required || remote.secure_transport {
                    Err(SdpError::CryptoAnswer(format!(
                        "no usable a=crypto line in the answer{}",
                        skipped_note(&remote.crypto_skipped)
                    )))
                } else {
                    Ok(None)
                };
            };
            let ours = offered
                .iter()
                .find(|o| o.tag == c.tag && o.suite == c.suite)
                .ok_or_else(|| {
                    SdpError::CryptoAnswer(format!(
                        "tag {} with {} was not offered",
                        c.tag, c.suite
                    ))
                })?;
            Ok(Some(SrtpKeys {
                tag: c.tag,
                suite: c.suite,
                local: ours.key.clone(),
                remote: c.key.clone(),
            }))
        }
    }
}

/// The `a=crypto:` lines of an offer we make under `policy`: fresh keys for the suites we
/// offer when SRTP is required, none otherwise (we offer plain RTP unless told to insist).
pub fn offer_crypto(policy: SrtpPolicy) -> Vec<CryptoAttribute> {
    if policy != SrtpPolicy::Required {
        return Vec::new();
    }
    SrtpSuite::OFFERED
        .iter()
        .zip(1u32..)
        .map(|(&suite, tag)| CryptoAttribute::generate(tag, suite))
        .collect()
}

fn is_telephone_event(f: &RemoteFormat) -> bool {
    f.encoding.eq_ignore_ascii_case("telephone-event")
}

/// Picks the first of the remote's formats (in *their* order) that is in `preference`,
/// plus their telephone-event format (preferring the codec's clock rate, then 8 kHz).
/// Codecs only: `srtp` stays `None` (see [`negotiate_secure`]).
pub fn negotiate(remote: &RemoteMedia, preference: &[CodecKind]) -> Result<Negotiated, SdpError> {
    let chosen = remote.formats.iter().find_map(|f| {
        CodecKind::from_rtpmap(&f.encoding, f.clock_rate, f.channels)
            .filter(|k| preference.contains(k))
            .map(|k| (k, f.payload_type))
    });
    let Some((codec, payload_type)) = chosen else {
        let offered = remote
            .formats
            .iter()
            .map(|f| format!("{}/{}", f.encoding, f.clock_rate))
            .collect::<Vec<_>>()
            .join(", ");
        let supported = preference
            .iter()
            .map(|k| k.encoding_name())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SdpError::NoCommonCodec { offered, supported });
    };
    let events: Vec<&RemoteFormat> = remote
        .formats
        .iter()
        .filter(|f| is_telephone_event(f))
        .collect();
    let event = events
        .iter()
        .find(|f| f.clock_rate == codec.clock_rate())
        .or_else(|| events.iter().find(|f| f.clock_rate == 8000))
        .or_else(|| events.first());
    Ok(Negotiated {
        codec,
        payload_type,
        telephone_event_pt: event.map(|f| f.payload_type),
        telephone_event_clock: event.map_or(8000, |f| f.clock_rate),
        remote_rtp: remote.rtp_addr,
        remote_rtcp: remote.rtcp_addr,
        remote_direction: remote.direction,
        media_lines: remote.media_lines.clone(),
        audio_index: remote.audio_index,
        srtp: None,
    })
}

/// [`negotiate`] and [`negotiate_crypto`] together: the codec and the SRTP keys.
pub fn negotiate_secure(
    remote: &RemoteMedia,
    preference: &[CodecKind],
    role: SrtpRole<'_>,
) -> Result<Negotiated, SdpError> {
    let srtp = negotiate_crypto(remote, role)?;
    let mut neg = negotiate(remote, preference)?;
    neg.srtp = srtp;
    Ok(neg)
}

fn addr_type(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn session_header(out: &mut String, local_ip: IpAddr, session_id: u64, version: u64) {
    let t = addr_type(local_ip);
    let _ = write!(
        out,
        "v=0\r\no=warmline {session_id} {version} IN {t} {local_ip}\r\ns=warmline\r\nc=IN {t} {local_ip}\r\nt=0 0\r\n"
    );
}

fn rtpmap_line(out: &mut String, pt: u8, codec: CodecKind) {
    let _ = write!(
        out,
        "a=rtpmap:{pt} {}/{}",
        codec.encoding_name(),
        codec.clock_rate()
    );
    if codec.sdp_channels() != 1 {
        let _ = write!(out, "/{}", codec.sdp_channels());
    }
    out.push_str("\r\n");
    if codec == CodecKind::Opus {
        let _ = write!(out, "a=fmtp:{pt} useinbandfec=1\r\n");
    }
}

/// Builds our answer (RFC 3264 §6): one `m=` line per offered line, the audio stream with
/// the negotiated codec and telephone-event (their payload types), the others rejected with
/// port 0. Our direction mirrors theirs.
pub fn build_answer(
    local_ip: IpAddr,
    local_rtp_port: u16,
    neg: &Negotiated,
    session_id: u64,
    version: u64,
) -> String {
    let mut out = String::with_capacity(512);
    session_header(&mut out, local_ip, session_id, version);
    let audio_line;
    let lines: &[MediaLine] = if neg.media_lines.is_empty() {
        audio_line = [MediaLine {
            media: "audio".into(),
            port: 0,
            proto: "RTP/AVP".into(),
            formats: Vec::new(),
        }];
        &audio_line
    } else {
        &neg.media_lines
    };
    let audio_index = if neg.media_lines.is_empty() {
        0
    } else {
        neg.audio_index
    };
    for (i, line) in lines.iter().enumerate() {
        if i != audio_index {
            let fmt = line.formats.first().map_or("0", String::as_str);
            let _ = write!(out, "m={} 0 {} {fmt}\r\n", line.media, line.proto);
            continue;
        }
        let _ = write!(
            out,
            "m=audio {local_rtp_port} {} {}",
            line.proto, neg.payload_type
        );
        if let Some(te) = neg.telephone_event_pt {
            let _ = write!(out, " {te}");
        }
        out.push_str("\r\n");
        rtpmap_line(&mut out, neg.payload_type, neg.codec);
        if let Some(te) = neg.telephone_event_pt {
            let _ = write!(
                out,
                "a=rtpmap:{te} telephone-event/{}\r\na=fmtp:{te} 0-16\r\n",
                neg.telephone_event_clock
            );
        }
        if let Some(keys) = &neg.srtp {
            let _ = write!(out, "a=crypto:{}\r\n", keys.local_attribute());
        }
        let _ = write!(
            out,
            "a=ptime:20\r\na={}\r\n",
            neg.local_direction().attribute()
        );
    }
    out
}

/// Builds an offer (for INVITEs without SDP, re-INVITEs, outbound calls): the codecs of
/// `preference` in that order (PCMU 0, PCMA 8, opus 111; PCMU and PCMA if it is empty) and
/// telephone-event 101.
pub fn build_offer(
    local_ip: IpAddr,
    local_rtp_port: u16,
    preference: &[CodecKind],
    session_id: u64,
    version: u64,
) -> String {
    build_secure_offer(
        local_ip,
        local_rtp_port,
        preference,
        &[],
        session_id,
        version,
    )
}

/// [`build_offer`] with SDES: with `crypto` lines the transport is RTP/SAVP and the lines
/// follow the formats (see [`offer_crypto`]).
pub fn build_secure_offer(
    local_ip: IpAddr,
    local_rtp_port: u16,
    preference: &[CodecKind],
    crypto: &[CryptoAttribute],
    session_id: u64,
    version: u64,
) -> String {
    let mut codecs: Vec<CodecKind> = Vec::new();
    for &k in preference {
        if !codecs.contains(&k) {
            codecs.push(k);
        }
    }
    if codecs.is_empty() {
        codecs = vec![CodecKind::Pcmu, CodecKind::Pcma];
    }
    let pt = |k: CodecKind| k.static_payload_type().unwrap_or(OFFER_OPUS_PT);
    let mut out = String::with_capacity(512);
    session_header(&mut out, local_ip, session_id, version);
    let proto = if crypto.is_empty() {
        "RTP/AVP"
    } else {
        "RTP/SAVP"
    };
    let _ = write!(out, "m=audio {local_rtp_port} {proto}");
    for &k in &codecs {
        let _ = write!(out, " {}", pt(k));
    }
    let _ = write!(out, " {OFFER_TELEPHONE_EVENT_PT}\r\n");
    for &k in &codecs {
        rtpmap_line(&mut out, pt(k), k);
    }
    let _ = write!(
        out,
        "a=rtpmap:{OFFER_TELEPHONE_EVENT_PT} telephone-event/8000\r\na=fmtp:{OFFER_TELEPHONE_EVENT_PT} 0-16\r\n"
    );
    for c in crypto {
        let _ = write!(out, "a=crypto:{c}\r\n");
    }
    out.push_str("a=ptime:20\r\na=sendrecv\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const ALL: &[CodecKind] = &[CodecKind::Opus, CodecKind::Pcmu, CodecKind::Pcma];
    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));

    const SIPP_OFFER: &str = "v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-11,16\r\n";

    /// SIPp's uac scenario: static PT without rtpmap, telephone-event on 96.
    const SIPP_OFFER_PT96: &str = "v=0\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\n\
        s=-\n\
        c=IN IP4 127.0.0.1\n\
        t=0 0\n\
        m=audio 6000 RTP/AVP 8 96\n\
        a=rtpmap:96 telephone-event/8000\n";

    const BARESIP_OFFER: &str = "v=0\r\n\
        o=- 1263453823 3581734567 IN IP4 192.168.1.20\r\n\
        s=-\r\n\
        c=IN IP4 192.168.1.20\r\n\
        t=0 0\r\n\
        a=tool:baresip 3.10.1\r\n\
        m=audio 10470 RTP/AVP 111 9 0 8 101\r\n\
        b=AS:128\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=fmtp:111 stereo=1;sprop-stereo=1;useinbandfec=1\r\n\
        a=rtpmap:9 G722/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=rtcp-rsize\r\n\
        a=sendrecv\r\n\
        a=label:1\r\n\
        a=ssrc:2512341211 cname:7d3e1e5c-0a4d-4b1f\r\n\
        a=mid:1\r\n\
        a=ptime:20\r\n\
        m=video 10472 RTP/AVP 96\r\n\
        a=rtpmap:96 H264/90000\r\n\
        a=sendrecv\r\n";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn parses_sipp_offer() {
        let r = parse_remote(SIPP_OFFER.as_bytes()).expect("parse");
        assert_eq!(r.rtp_addr, addr("127.0.0.1:6000"));
        assert_eq!(r.rtcp_addr, addr("127.0.0.1:6001"));
        assert_eq!(r.direction, Direction::SendRecv);
        assert_eq!(r.ptime_ms, None);
        assert_eq!(
            r.formats,
            vec![
                RemoteFormat {
                    payload_type: 0,
                    encoding: "PCMU".into(),
                    clock_rate: 8000,
                    channels: 1,
                    fmtp: None
                },
                RemoteFormat {
                    payload_type: 101,
                    encoding: "telephone-event".into(),
                    clock_rate: 8000,
                    channels: 1,
                    fmtp: Some("0-11,16".into())
                },
            ]
        );
        let n = negotiate(&r, ALL).expect("negotiate");
        assert_eq!(
            (n.codec, n.payload_type, n.telephone_event_pt),
            (CodecKind::Pcmu, 0, Some(101))
        );
        let cfg = n.media_config();
        assert_eq!((cfg.remote_rtp, cfg.remote_rtcp), (r.rtp_addr, r.rtcp_addr));
        assert_eq!((cfg.payload_type, cfg.telephone_event_pt), (0, Some(101)));
        assert!(cfg.symmetric);
    }

    #[test]
    fn sipp_static_pt_without_rtpmap_and_event_on_96() {
        let r = parse_remote(SIPP_OFFER_PT96.as_bytes()).expect("parse");
        let n = negotiate(&r, ALL).expect("negotiate");
        assert_eq!(
            (n.codec, n.payload_type, n.telephone_event_pt),
            (CodecKind::Pcma, 8, Some(96))
        );
        let answer = build_answer(LOCAL, 20_000, &n, 42, 1);
        assert!(
            answer.contains("m=audio 20000 RTP/AVP 8 96\r\n"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:8 PCMA/8000\r\n"));
        assert!(answer.contains("a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-16\r\n"));
    }

    #[test]
    fn baresip_offer_picks_opus_first_and_rejects_video() {
        let r = parse_remote(BARESIP_OFFER.as_bytes()).expect("parse");
        assert_eq!(r.rtp_addr, addr("192.168.1.20:10470"));
        assert_eq!(r.ptime_ms, Some(20));
        assert_eq!(r.formats.len(), 5);
        assert_eq!(r.media_lines.len(), 2);
        let n = negotiate(&r, ALL).expect("negotiate");
        assert_eq!(
            (n.codec, n.payload_type, n.telephone_event_pt),
            (CodecKind::Opus, 111, Some(101))
        );
        // Without Opus enabled, their next supported format wins (G722 is skipped).
        let n = negotiate(&r, &[CodecKind::Pcma, CodecKind::Pcmu]).expect("negotiate");
        assert_eq!((n.codec, n.payload_type), (CodecKind::Pcmu, 0));

        let n = negotiate(&r, ALL).expect("negotiate");
        let answer = build_answer(LOCAL, 30_000, &n, 7, 2);
        let expected = "v=0\r\n\
            o=warmline 7 2 IN IP4 10.0.0.5\r\n\
            s=warmline\r\n\
            c=IN IP4 10.0.0.5\r\n\
            t=0 0\r\n\
            m=audio 30000 RTP/AVP 111 101\r\n\
            a=rtpmap:111 opus/48000/2\r\n\
            a=fmtp:111 useinbandfec=1\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            a=fmtp:101 0-16\r\n\
            a=ptime:20\r\n\
            a=sendrecv\r\n\
            m=video 0 RTP/AVP 96\r\n";
        assert_eq!(answer, expected);
    }

    #[test]
    fn no_common_codec_is_an_error_naming_both_sides() {
        let offer = SIPP_OFFER.replace("RTP/AVP 0 101", "RTP/AVP 18 9 101");
        let r = parse_remote(offer.as_bytes()).expect("parse");
        let err = negotiate(&r, ALL).expect_err("no codec");
        assert_eq!(
            err,
            SdpError::NoCommonCodec {
                offered: "G729/8000, G722/8000, telephone-event/8000".into(),
                supported: "opus, PCMU, PCMA".into()
            }
        );
        // Opus at the wrong clock rate is not Opus.
        let offer = SIPP_OFFER
            .replace("RTP/AVP 0 101", "RTP/AVP 97")
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:97 OPUS/16000/2");
        let r = parse_remote(offer.as_bytes()).expect("parse");
        assert!(matches!(
            negotiate(&r, ALL),
            Err(SdpError::NoCommonCodec { .. })
        ));
    }

    #[test]
    fn hold_offers_are_mirrored() {
        let sendonly =
            SIPP_OFFER.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/8000\r\na=sendonly");
        let r = parse_remote(sendonly.as_bytes()).expect("parse");
        assert_eq!(r.direction, Direction::SendOnly);
        let n = negotiate(&r, ALL).expect("negotiate");
        assert_eq!(n.local_direction(), Direction::RecvOnly);
        assert!(build_answer(LOCAL, 4000, &n, 1, 2).contains("a=recvonly\r\n"));

        // Old-style hold: c=0.0.0.0 (session-level direction says sendrecv, still inactive).
        let old = SIPP_OFFER
            .replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
            .replace("t=0 0\r\n", "t=0 0\r\na=sendrecv\r\n");
        let r = parse_remote(old.as_bytes()).expect("parse");
        assert_eq!(r.direction, Direction::Inactive);
        assert!(r.rtp_addr.ip().is_unspecified());
        let n = negotiate(&r, ALL).expect("negotiate");
        assert!(build_answer(LOCAL, 4000, &n, 1, 2).contains("a=inactive\r\n"));

        let recvonly = SIPP_OFFER.replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n");
        let r = parse_remote(recvonly.as_bytes()).expect("parse");
        assert_eq!(r.direction, Direction::RecvOnly);
        assert_eq!(r.direction.mirror(), Direction::SendOnly);
        assert!(Direction::SendOnly.sends() && !Direction::SendOnly.receives());
    }

    #[test]
    fn media_level_connection_and_rtcp_attribute() {
        let offer = "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n\
            m=audio 0 RTP/AVP 0\r\n\
            m=audio 7000 RTP/AVP 0\r\nc=IN IP4 203.0.113.9/127\r\na=rtcp:7011 IN IP4 203.0.113.10\r\n";
        let r = parse_remote(offer.as_bytes()).expect("parse");
        assert_eq!(r.audio_index, 1, "the port-0 audio line is skipped");
        assert_eq!(r.rtp_addr, addr("203.0.113.9:7000"));
        assert_eq!(r.rtcp_addr, addr("203.0.113.10:7011"));
        let r = parse_remote(offer.replace(" IN IP4 203.0.113.10", "").as_bytes()).expect("parse");
        assert_eq!(r.rtcp_addr, addr("203.0.113.9:7011"));
        let n = negotiate(&r, ALL).expect("negotiate");
        let answer = build_answer(LOCAL, 5000, &n, 1, 1);
        assert!(
            answer.contains("m=audio 0 RTP/AVP 0\r\nm=audio 5000 RTP/AVP 0\r\n"),
            "{answer}"
        );
    }

    #[test]
    fn ipv6_and_lowercase_names() {
        let offer = "v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\n\
            m=audio 9000 RTP/AVPF 8\na=rtpmap:8 pcma/8000\n";
        let r = parse_remote(offer.as_bytes()).expect("parse");
        assert_eq!(r.rtp_addr, addr("[2001:db8::1]:9000"));
        let n = negotiate(&r, ALL).expect("negotiate");
        assert_eq!(n.codec, CodecKind::Pcma);
        assert_eq!(n.telephone_event_pt, None);
        let local6: IpAddr = "2001:db8::5".parse().expect("ip");
        let answer = build_answer(local6, 9002, &n, 3, 4);
        assert!(answer.contains("c=IN IP6 2001:db8::5\r\n"));
        assert!(answer.contains("m=audio 9002 RTP/AVPF 8\r\n"), "{answer}");
        assert!(!answer.contains("telephone-event"));
    }

    #[test]
    fn telephone_event_prefers_the_codec_clock_rate() {
        let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
            m=audio 5004 RTP/AVP 111 0 126 110\r\na=rtpmap:111 opus/48000/2\r\n\
            a=rtpmap:126 telephone-event/8000\r\na=rtpmap:110 telephone-event/48000\r\n";
        let r = parse_remote(offer.as_bytes()).expect("parse");
        let n = negotiate(&r, ALL).expect("negotiate");
        assert_eq!(
            (n.telephone_event_pt, n.telephone_event_clock),
            (Some(110), 48_000)
        );
        assert!(build_answer(LOCAL, 1, &n, 1, 1).contains("a=rtpmap:110 telephone-event/48000\r\n"));
        let n = negotiate(&r, &[CodecKind::Pcmu]).expect("negotiate");
        assert_eq!(
            (n.telephone_event_pt, n.telephone_event_clock),
            (Some(126), 8000)
        );
    }

    #[test]
    fn structural_errors() {
        assert_eq!(parse_remote(b""), Err(SdpError::NoAudio));
        let video_only = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=video 5000 RTP/AVP 96\r\n";
        assert_eq!(parse_remote(video_only.as_bytes()), Err(SdpError::NoAudio));
        let dtls = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 UDP/TLS/RTP/SAVP 0\r\n";
        assert_eq!(
            parse_remote(dtls.as_bytes()),
            Err(SdpError::UnsupportedTransport("UDP/TLS/RTP/SAVP".into()))
        );
        let no_c = "v=0\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert_eq!(parse_remote(no_c.as_bytes()), Err(SdpError::NoConnection));
        let host = "v=0\r\nc=IN IP4 pbx.example.com\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_remote(host.as_bytes()),
            Err(SdpError::BadLine { line: 2, .. })
        ));
        let port = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 70000 RTP/AVP 0\r\n";
        assert!(matches!(
            parse_remote(port.as_bytes()),
            Err(SdpError::BadLine { line: 3, .. })
        ));
        assert_eq!(
            parse_remote(&vec![b'a'; MAX_SDP_LEN + 1]),
            Err(SdpError::TooLarge(MAX_SDP_LEN + 1))
        );
    }

    /// Offers real SIP peers send that a strict RFC 4566 parser refuses.
    const TOLERATED: &[&str] = &[
        // BFCP stream next to audio (video conferencing endpoints).
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
         m=audio 5000 RTP/AVP 0\r\nm=application 5002 TCP/BFCP *\r\na=floorctrl:c-s\r\n",
        // MSRP chat stream next to audio (RCS clients).
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
         m=audio 5000 RTP/AVP 0\r\nm=message 5010 TCP/MSRP *\r\n",
        // No t= line.
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/AVP 0\r\n",
        // Session-level c= after t=.
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/AVP 0\r\n",
    ];

    #[test]
    fn tolerates_what_sip_peers_send() {
        for offer in TOLERATED {
            let r = parse_remote(offer.as_bytes()).unwrap_or_else(|e| panic!("{e}: {offer}"));
            assert_eq!(r.rtp_addr, addr("192.0.2.1:5000"));
        }
        let r = parse_remote(TOLERATED[0].as_bytes()).expect("parse");
        let n = negotiate(&r, ALL).expect("negotiate");
        assert!(build_answer(LOCAL, 1, &n, 1, 1).ends_with("m=application 0 TCP/BFCP *\r\n"));
    }

    /// Documents why this module does not use webrtc-rs `sdp` for parsing.
    #[test]
    fn webrtc_sdp_crate_rejects_real_sip_offers() {
        for offer in TOLERATED {
            let parsed = ::sdp::SessionDescription::try_from(offer.to_string());
            assert!(
                parsed.is_err(),
                "webrtc-rs sdp now accepts {offer:?}; reconsider using it"
            );
        }
    }

    /// baresip 1.x with `mediaenc=srtp-mand`: RTP/SAVP, its suites in its order. Line 9 is a
    /// suite we do not implement, line 10 has an MKI.
    const SRTP_OFFER: &str = "v=0\r\n\
        o=- 1 2 IN IP4 192.0.2.7\r\n\
        s=-\r\n\
        c=IN IP4 192.0.2.7\r\n\
        t=0 0\r\n\
        m=audio 7000 RTP/SAVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1Ng\r\n\
        a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n\
        a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^31\r\n\
        a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj\r\n\
        a=sendrecv\r\n";

    fn answering(policy: SrtpPolicy) -> SrtpRole<'static> {
        SrtpRole::Answering { policy, keep: None }
    }

    #[test]
    fn srtp_offer_gets_the_first_supported_suite_and_our_own_key() {
        let r = parse_remote(SRTP_OFFER.as_bytes()).expect("parse");
        assert!(r.secure_transport);
        assert_eq!(r.crypto.len(), 2);
        assert_eq!(r.crypto_skipped.len(), 2, "{:?}", r.crypto_skipped);
        assert!(
            r.crypto_skipped[0].starts_with("line 9:")
                && r.crypto_skipped[0].contains("AES_256_CM")
        );
        assert!(r.crypto_skipped[1].starts_with("line 10:") && r.crypto_skipped[1].contains("MKI"));
        let n = negotiate_secure(&r, ALL, answering(SrtpPolicy::Optional)).expect("negotiate");
        let keys = n.srtp.clone().expect("SRTP");
        assert_eq!((keys.tag, keys.suite), (3, SrtpSuite::AesCm128HmacSha1_32));
        assert_eq!(keys.remote, r.crypto[0].key);
        assert_ne!(keys.local, keys.remote, "our key is our own");
        assert_eq!(n.media_config().srtp, Some(keys.clone()));
        let answer = build_answer(LOCAL, 20_000, &n, 1, 1);
        assert!(
            answer.contains("m=audio 20000 RTP/SAVP 0 101\r\n"),
            "{answer}"
        );
        assert_eq!(answer.matches("a=crypto:").count(), 1, "{answer}");
        assert!(answer.contains(&format!(
            "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{}\r\n",
            keys.local.to_base64()
        )));
        ::sdp::SessionDescription::try_from(answer.clone()).expect("webrtc-rs parses the answer");
        // The caller reads our answer: it uses our key for what we send.
        let back = parse_remote(answer.as_bytes()).expect("reparse");
        let offered = r.crypto.clone();
        let theirs = negotiate_crypto(
            &back,
            SrtpRole::Answered {
                policy: SrtpPolicy::Optional,
                offered: &offered,
            },
        )
        .expect("answer matches")
        .expect("SRTP");
        assert_eq!((theirs.local, theirs.remote), (keys.remote, keys.local));
    }

    #[test]
    fn srtp_policies_refuse_with_488_and_say_why() {
        let savp_no_crypto = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/SAVP 0\r\n\
            a=crypto:1 F8_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let r = parse_remote(savp_no_crypto.as_bytes()).expect("parse");
        let e = negotiate_secure(&r, ALL, answering(SrtpPolicy::Required)).expect_err("no crypto");
        assert!(matches!(e, SdpError::NoUsableCrypto { .. }), "{e:?}");
        assert_eq!(e.status(), 488);
        assert!(e.to_string().contains("RTP/SAVP stream has no usable a=crypto line (skipped: line 4: crypto suite \"F8_128_HMAC_SHA1_80\" is not supported"), "{e}");

        let r = parse_remote(SRTP_OFFER.as_bytes()).expect("parse");
        let e = negotiate_secure(&r, ALL, answering(SrtpPolicy::Off)).expect_err("off");
        assert_eq!(e, SdpError::SrtpDisabled("RTP/SAVP".into()));
        assert_eq!(e.status(), 488);

        let plain = parse_remote(SIPP_OFFER.as_bytes()).expect("parse");
        let e = negotiate_secure(&plain, ALL, answering(SrtpPolicy::Required)).expect_err("plain");
        assert_eq!(e, SdpError::SrtpRequired(Vec::new()));
        assert_eq!(e.status(), 488);
        assert!(e.to_string().contains("srtp = \"required\""), "{e}");
        for policy in [SrtpPolicy::Off, SrtpPolicy::Optional] {
            let n = negotiate_secure(&plain, ALL, answering(policy)).expect("plain ok");
            assert_eq!(n.srtp, None);
            assert!(!build_answer(LOCAL, 1000, &n, 1, 1).contains("crypto"));
        }
        assert_eq!(parse_remote(b"junk").expect_err("bad").status(), 400);
    }

    #[test]
    fn best_effort_srtp_on_rtp_avp() {
        // baresip `mediaenc=srtp`, FreeSWITCH optional: RTP/AVP with a=crypto.
        let offer = SRTP_OFFER.replace("RTP/SAVP", "RTP/AVP");
        let r = parse_remote(offer.as_bytes()).expect("parse");
        assert!(!r.secure_transport);
        let n = negotiate_secure(&r, ALL, answering(SrtpPolicy::Optional)).expect("negotiate");
        assert_eq!(n.srtp.as_ref().map(|k| k.tag), Some(3));
        let answer = build_answer(LOCAL, 20_000, &n, 1, 1);
        assert!(
            answer.contains("RTP/AVP 0 101") && answer.contains("a=crypto:3 "),
            "{answer}"
        );
        let n = negotiate_secure(&r, ALL, answering(SrtpPolicy::Off)).expect("off: plain");
        assert_eq!(n.srtp, None);
        let n = negotiate_secure(&r, ALL, answering(SrtpPolicy::Required)).expect("required");
        assert!(n.srtp.is_some());
    }

    #[test]
    fn reinvite_keeps_our_key_while_the_suite_stays() {
        let r = parse_remote(SRTP_OFFER.as_bytes()).expect("parse");
        let first = negotiate_crypto(&r, answering(SrtpPolicy::Optional))
            .expect("ok")
            .expect("srtp");
        let role = SrtpRole::Answering {
            policy: SrtpPolicy::Optional,
            keep: Some(&first.local),
        };
        let again = negotiate_crypto(&r, role).expect("ok").expect("srtp");
        assert_eq!(again, first);
        // The peer now offers only the 80-bit suite: a fresh key for it.
        let only80 = SRTP_OFFER.replace("a=crypto:3 ", "a=x-crypto:3 ");
        let r80 = parse_remote(only80.as_bytes()).expect("parse");
        let role = SrtpRole::Answering {
            policy: SrtpPolicy::Optional,
            keep: Some(&first.local),
        };
        let switched = negotiate_crypto(&r80, role).expect("ok").expect("srtp");
        assert_eq!(
            (switched.tag, switched.suite),
            (4, SrtpSuite::AesCm128HmacSha1_80)
        );
        assert_ne!(switched.local, first.local);
    }

    #[test]
    fn our_srtp_offer_and_the_answers_to_it() {
        assert!(offer_crypto(SrtpPolicy::Optional).is_empty());
        assert!(offer_crypto(SrtpPolicy::Off).is_empty());
        let ours = offer_crypto(SrtpPolicy::Required);
        assert_eq!(
            ours.iter().map(|c| (c.tag, c.suite)).collect::<Vec<_>>(),
            vec![
                (1, SrtpSuite::AesCm128HmacSha1_80),
                (2, SrtpSuite::AesCm128HmacSha1_32)
            ]
        );
        let offer = build_secure_offer(LOCAL, 30_000, &[CodecKind::Pcmu], &ours, 5, 1);
        assert!(
            offer.contains("m=audio 30000 RTP/SAVP 0 101\r\n"),
            "{offer}"
        );
        ::sdp::SessionDescription::try_from(offer.clone()).expect("webrtc-rs parses the offer");
        assert!(build_offer(LOCAL, 30_000, ALL, 5, 1).contains(" RTP/AVP "));
        // The far end answers: it takes our tag 2 and sends its own key.
        let far = parse_remote(offer.as_bytes()).expect("parse our offer");
        assert_eq!(far.crypto, ours);
        let mut far_neg =
            negotiate_secure(&far, ALL, answering(SrtpPolicy::Optional)).expect("far");
        let mut k = far_neg.srtp.clone().expect("srtp");
        assert_eq!(k.tag, 1);
        k.tag = 2;
        k.suite = SrtpSuite::AesCm128HmacSha1_32;
        k.local = crate::media::srtp::SrtpKey::generate(k.suite);
        far_neg.srtp = Some(k.clone());
        let answer = build_answer(LOCAL, 7000, &far_neg, 1, 1);
        let back = parse_remote(answer.as_bytes()).expect("answer");
        let role = SrtpRole::Answered {
            policy: SrtpPolicy::Required,
            offered: &ours,
        };
        let got = negotiate_crypto(&back, role).expect("ok").expect("srtp");
        assert_eq!((got.tag, got.suite), (2, SrtpSuite::AesCm128HmacSha1_32));
        assert_eq!((&got.local, &got.remote), (&ours[1].key, &k.local));
        // A tag we never offered, or no crypto at all, is refused.
        let wrong = answer.replace("a=crypto:2 ", "a=crypto:9 ");
        let back = parse_remote(wrong.as_bytes()).expect("answer");
        assert!(matches!(
            negotiate_crypto(&back, role),
            Err(SdpError::CryptoAnswer(_))
        ));
        let plain = parse_remote(SIPP_OFFER.as_bytes()).expect("plain answer");
        assert!(matches!(
            negotiate_crypto(&plain, role),
            Err(SdpError::CryptoAnswer(_))
        ));
        // We offered plain RTP: an RTP/SAVP answer makes no sense.
        let none = SrtpRole::Answered {
            policy: SrtpPolicy::Optional,
            offered: &[],
        };
        assert!(matches!(
            negotiate_crypto(&far, none),
            Err(SdpError::CryptoAnswer(_))
        ));
        assert_eq!(negotiate_crypto(&plain, none), Ok(None));
    }

    #[test]
    fn our_sdp_is_accepted_by_webrtc_rs_and_by_ourselves() {
        let r = parse_remote(BARESIP_OFFER.as_bytes()).expect("parse");
        let n = negotiate(&r, ALL).expect("negotiate");
        let answer = build_answer(LOCAL, 30_000, &n, 7, 2);
        let offer = build_offer(LOCAL, 30_002, ALL, 8, 1);
        for text in [&answer, &offer] {
            let theirs = ::sdp::SessionDescription::try_from(text.clone())
                .expect("webrtc-rs parses our SDP");
            assert!(!theirs.media_descriptions.is_empty());
        }
        let back = parse_remote(answer.as_bytes()).expect("reparse answer");
        let n2 = negotiate(&back, ALL).expect("renegotiate");
        assert_eq!(
            (n2.codec, n2.payload_type, n2.telephone_event_pt),
            (CodecKind::Opus, 111, Some(101))
        );
    }

    #[test]
    fn late_offer_lists_preferred_codecs_and_events() {
        let offer = build_offer(
            LOCAL,
            40_000,
            &[CodecKind::Pcmu, CodecKind::Pcma, CodecKind::Opus],
            99,
            1,
        );
        let expected = "v=0\r\n\
            o=warmline 99 1 IN IP4 10.0.0.5\r\n\
            s=warmline\r\n\
            c=IN IP4 10.0.0.5\r\n\
            t=0 0\r\n\
            m=audio 40000 RTP/AVP 0 8 111 101\r\n\
            a=rtpmap:0 PCMU/8000\r\n\
            a=rtpmap:8 PCMA/8000\r\n\
            a=rtpmap:111 opus/48000/2\r\n\
            a=fmtp:111 useinbandfec=1\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            a=fmtp:101 0-16\r\n\
            a=ptime:20\r\n\
            a=sendrecv\r\n";
        assert_eq!(offer, expected);
        let without_opus = build_offer(LOCAL, 40_000, &[CodecKind::Pcma], 99, 1);
        assert!(without_opus.contains("m=audio 40000 RTP/AVP 8 101\r\n"));
        assert!(!without_opus.contains("opus"));
        let fallback = build_offer(LOCAL, 40_000, &[], 99, 1);
        assert!(fallback.contains("m=audio 40000 RTP/AVP 0 8 101\r\n"));
        // The peer's answer (here: our own offer echoed back) negotiates cleanly.
        let r = parse_remote(offer.as_bytes()).expect("parse");
        let n = negotiate(&r, &[CodecKind::Opus, CodecKind::Pcmu]).expect("negotiate");
        assert_eq!(n.codec, CodecKind::Pcmu, "their order wins");
    }

    proptest::proptest! {
        #[test]
        fn parse_remote_never_panics_on_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_remote(&data);
        }

        #[test]
        fn parse_remote_never_panics_on_sdp_like_text(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("m=audio 5000 RTP/AVP 0 8 101".to_string()),
                    proptest::strategy::Just("c=IN IP4 192.0.2.1".to_string()),
                    "[mcat]=[ -~]{0,40}",
                    "a=(rtpmap|fmtp|rtcp|ptime):[ -~]{0,30}",
                ],
                0..12)
        ) {
            if let Ok(r) = parse_remote(lines.join("\r\n").as_bytes()) {
                let _ = negotiate(&r, ALL).map(|n| build_answer(LOCAL, 1, &n, 1, 1));
            }
        }
    }
}
