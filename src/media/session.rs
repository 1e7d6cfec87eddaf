//! One call's media as a sans-IO object: datagrams and `Instant`s in, datagrams, decoded
//! audio and events out. The tokio shell owns the sockets and the 20 ms clock.
//!
//! Receive path: [`MediaSession::handle_rtp`] checks the source (symmetric RTP), sends
//! telephone-event packets of any SSRC to the RFC 4733 detector, audio of the current
//! audio SSRC to the jitter buffer, and [`MediaSession::pop_audio`] decodes in order with
//! concealment (Opus in-band FEC when the next packet is already there).
//! Send path: [`MediaSession::send_frame`] encodes and packetises, or lets the RTP clock
//! run silently while on hold. RTCP SR/RR + SDES go out about every 5 s.
use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::media::codec::{CodecKind, Decoder, Encoder, FRAME_SAMPLES};
use crate::media::dtmf::Rfc4733Detector;
use crate::media::error::MediaError;
use crate::media::jitter::{JitterBuffer, JitterConfig, JitterOutput};
use crate::media::rtcp::{self as rtcp_mod, NtpClock, ReceptionStats, RtcpItem, SenderInfo};
use crate::media::rtp::{self as rtp_mod, RtpHeader, RtpSender};
use crate::media::srtp::{SrtpError, SrtpKeys, SrtpPair, SrtpSuite};

/// A learned source that has been silent this long may be replaced by a new one
/// (NAT rebinding, media re-anchored by a proxy).
const RELEARN_AFTER: Duration = Duration::from_secs(2);
/// A new audio SSRC replaces the current one only once the current one paused this long,
/// so two interleaved streams cannot make us flip-flop.
const SSRC_SWITCH_AFTER: Duration = Duration::from_millis(60);
/// Largest RTP payload accepted (six 20 ms Opus frames at the maximum size fit easily).
const MAX_PAYLOAD: usize = 8192;
/// Decoded samples kept waiting for `pop_audio` at most (0.5 s).
const MAX_PENDING_SAMPLES: usize = 4000;
/// Events kept for `poll_event` at most.
const MAX_EVENTS: usize = 256;

/// Which kind of datagram [`MediaSession::unprotect`] checks.
#[derive(Debug, Clone, Copy)]
enum Packet {
    Rtp,
    Rtcp,
}

/// Everything the session needs from offer/answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    pub codec: CodecKind,
    pub payload_type: u8,
    pub telephone_event_pt: Option<u8>,
    pub remote_rtp: SocketAddr,
    pub remote_rtcp: SocketAddr,
    /// Once packets arrive, send to their source address (NAT traversal).
    pub symmetric: bool,
    pub jitter_depth: Duration,
    /// SDES-keyed SRTP/SRTCP for both directions; `None` for plain RTP.
    pub srtp: Option<SrtpKeys>,
}

impl MediaConfig {
    /// Config with the defaults: symmetric RTP on, 60 ms jitter buffer.
    pub fn new(
        codec: CodecKind,
        payload_type: u8,
        telephone_event_pt: Option<u8>,
        remote_rtp: SocketAddr,
        remote_rtcp: SocketAddr,
    ) -> Self {
        MediaConfig {
            codec,
            payload_type,
            telephone_event_pt,
            remote_rtp,
            remote_rtcp,
            symmetric: true,
            jitter_depth: Duration::from_millis(60),
            srtp: None,
        }
    }

    fn validate(&self) -> Result<(), MediaError> {
        if self.payload_type > 127 {
            return Err(MediaError::Config(format!(
                "audio payload type {} is above 127",
                self.payload_type
            )));
        }
        match self.telephone_event_pt {
            Some(pt) if pt > 127 => Err(MediaError::Config(format!(
                "telephone-event payload type {pt} is above 127"
            ))),
            Some(pt) if pt == self.payload_type => Err(MediaError::Config(format!(
                "telephone-event and audio share payload type {pt}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Something the shell should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A DTMF key press (RFC 4733), reported once at its first packet.
    Dtmf { digit: char },
    /// Symmetric RTP: we now send to this address (the source of the remote's packets).
    RemoteAddressLearned(SocketAddr),
}

/// Counters for logs and call records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaStats {
    pub packets_sent: u64,
    /// RTP packets accepted (audio and events, after source checks).
    pub packets_received: u64,
    /// Audio packets never received (RFC 3550 expected − received, at least 0).
    pub packets_lost: u64,
    /// Arrived after their playout time.
    pub packets_late: u64,
    pub duplicates: u64,
    /// Interarrival jitter of the remote audio stream.
    pub jitter_ms: f64,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
    /// Datagrams on the RTP port that were not valid RTP (or oversized), undecodable RTCP, and
    /// with SRTP datagrams too short to authenticate or SRTCP without encryption.
    pub invalid_packets: u64,
    /// Packets from an address other than the learned remote, dropped.
    pub foreign_source: u64,
    /// RTP packets with a payload type that is neither the codec nor telephone-event.
    pub unknown_payload_type: u64,
    /// 20 ms frames filled in by concealment or FEC.
    pub concealed_frames: u64,
    pub dtmf_digits: u64,
    /// What the remote's last report says about our stream.
    pub remote_fraction_lost: Option<f64>,
    pub remote_cumulative_lost: Option<i64>,
    pub remote_jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// The remote announced it is leaving (RTCP BYE for its audio SSRC).
    pub remote_bye: bool,
    /// The SRTP suite in use; `None` for plain RTP.
    pub srtp_suite: Option<SrtpSuite>,
    /// SRTP/SRTCP packets dropped because authentication failed (wrong key, tampering,
    /// plain RTP on an SRTP stream).
    pub srtp_auth_failures: u64,
    /// SRTP/SRTCP packets dropped as replays (or network duplicates).
    pub srtp_replays: u64,
}

#[derive(Debug, Clone, Copy)]
struct Learned {
    addr: SocketAddr,
    last_seen: Instant,
}

/// See the module documentation.
pub struct MediaSession {
    cfg: MediaConfig,
    ssrc: u32,
    srtp: Option<SrtpPair>,
    cname: String,
    sender: RtpSender,
    encoder: Encoder,
    decoder: Decoder,
    jitter: JitterBuffer,
    dtmf: Rfc4733Detector,
    sending: bool,
    rtp_learned: Option<Learned>,
    rtcp_learned: Option<SocketAddr>,
    audio_ssrc: Option<u32>,
    audio_last_seen: Option<Instant>,
    reception: Option<ReceptionStats>,
    epoch: Instant,
    ntp: NtpClock,
    next_rtcp: Instant,
    last_sent: Option<(Instant, u32)>,
    sent_since_report: bool,
    last_received: Option<Instant>,
    pending: VecDeque<i16>,
    payload_buf: Vec<u8>,
    packet_buf: Vec<u8>,
    /// The protected copy of `packet_buf` (SRTP), swapped in before sending.
    srtp_buf: Vec<u8>,
    decode_buf: Vec<i16>,
    events: VecDeque<MediaEvent>,
    stats: MediaStats,
    /// Loss counted by reception statistics that were replaced (new SSRC or codec).
    retired_lost: u64,
    /// Late/duplicate counts of jitter buffers that were replaced.
    retired_late: u64,
    retired_duplicates: u64,
    /// RTP timestamp of the telephone event being sent (RFC 4733: constant for the event).
    event_timestamp: Option<u32>,
}

fn jitter_config(cfg: &MediaConfig) -> JitterConfig {
    JitterConfig {
        target_depth: cfg.jitter_depth,
        max_depth: cfg.jitter_depth.max(Duration::from_millis(200)),
        clock_rate: cfg.codec.clock_rate(),
        ..JitterConfig::default()
    }
}

fn srtp_pair(cfg: &MediaConfig) -> Result<Option<SrtpPair>, MediaError> {
    cfg.srtp
        .as_ref()
        .map(SrtpPair::new)
        .transpose()
        .map_err(|e| MediaError::Config(format!("SRTP keys: {e}")))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl MediaSession {
    pub fn new(cfg: MediaConfig, ssrc: u32, now: Instant) -> Result<Self, MediaError> {
        cfg.validate()?;
        let encoder = Encoder::new(cfg.codec)?;
        let decoder = Decoder::new(cfg.codec)?;
        let sender = RtpSender::new(ssrc, cfg.payload_type, cfg.codec.rtp_timestamp_step_20ms());
        let srtp = srtp_pair(&cfg)?;
        Ok(MediaSession {
            srtp,
            jitter: JitterBuffer::new(jitter_config(&cfg)),
            cfg,
            ssrc,
            cname: format!("{:016x}@warmline", rand::random::<u64>()),
            sender,
            encoder,
            decoder,
            dtmf: Rfc4733Detector::new(),
            sending: true,
            rtp_learned: None,
            rtcp_learned: None,
            audio_ssrc: None,
            audio_last_seen: None,
            reception: None,
            epoch: now,
            ntp: NtpClock::new(now),
            next_rtcp: now + rtcp_mod::next_interval(true),
            last_sent: None,
            sent_since_report: false,
            last_received: None,
            pending: VecDeque::with_capacity(MAX_PENDING_SAMPLES),
            payload_buf: Vec::with_capacity(1500),
            packet_buf: Vec::with_capacity(1500),
            srtp_buf: Vec::new(),
            decode_buf: Vec::with_capacity(FRAME_SAMPLES * 6),
            events: VecDeque::new(),
            stats: MediaStats::default(),
            retired_lost: 0,
            retired_late: 0,
            retired_duplicates: 0,
            event_timestamp: None,
        })
    }

    /// Applies a new offer/answer (re-INVITE). SSRC and sequence numbering continue; a new
    /// codec restarts the codecs and the jitter buffer; a new remote address restarts
    /// symmetric-RTP learning.
    pub fn update(&mut self, cfg: MediaConfig) -> Result<(), MediaError> {
        cfg.validate()?;
        if cfg.srtp != self.cfg.srtp {
            // New keys (or SRTP switched on or off): fresh contexts, so rollover counts and
            // replay windows start over with them.
            self.srtp = srtp_pair(&cfg)?;
        }
        if cfg.codec != self.cfg.codec {
            self.encoder = Encoder::new(cfg.codec)?;
            self.decoder = Decoder::new(cfg.codec)?;
            self.retire_reception();
            self.audio_ssrc = None;
            self.pending.clear();
        }
        if cfg.codec != self.cfg.codec || cfg.jitter_depth != self.cfg.jitter_depth {
            self.retire_jitter_stats();
            self.jitter = JitterBuffer::new(jitter_config(&cfg));
        }
        if cfg.codec != self.cfg.codec || cfg.payload_type != self.cfg.payload_type {
            self.sender
                .set_payload_type(cfg.payload_type, cfg.codec.rtp_timestamp_step_20ms());
        }
        if cfg.remote_rtp != self.cfg.remote_rtp || !cfg.symmetric {
            self.rtp_learned = None;
        }
        if cfg.remote_rtcp != self.cfg.remote_rtcp || !cfg.symmetric {
            self.rtcp_learned = None;
        }
        self.cfg = cfg;
        Ok(())
    }

    /// Hold: while off, `send_frame` sends nothing but the RTP clock keeps running.
    pub fn set_sending(&mut self, on: bool) {
        self.sending = on;
    }

    /// Anchors RTCP sender-report timestamps to wall-clock time (`SystemTime` since the
    /// Unix epoch, read by the shell at `at`). Optional: without it NTP time counts from the
    /// session start, which is enough for round-trip times.
    pub fn set_wall_clock(&mut self, since_unix_epoch: Duration, at: Instant) {
        self.ntp.set_wall_clock(since_unix_epoch, at);
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn config(&self) -> &MediaConfig {
        &self.cfg
    }

    /// When the last valid RTP packet was accepted (for media-timeout checks).
    pub fn last_received(&self) -> Option<Instant> {
        self.last_received
    }

    /// Where RTP goes now: the learned source with symmetric RTP, else the SDP address.
    pub fn remote_rtp(&self) -> SocketAddr {
        self.rtp_learned.map_or(self.cfg.remote_rtp, |l| l.addr)
    }

    /// Where RTCP goes now.
    pub fn remote_rtcp(&self) -> SocketAddr {
        self.rtcp_learned.unwrap_or(self.cfg.remote_rtcp)
    }

    fn retire_reception(&mut self) {
        if let Some(rx) = self.reception.take() {
            let lost = u64::try_from(rx.cumulative_lost()).unwrap_or(0);
            self.retired_lost = self.retired_lost.saturating_add(lost);
        }
    }

    fn retire_jitter_stats(&mut self) {
        let jb = self.jitter.stats();
        self.retired_late = self.retired_late.saturating_add(jb.late);
        self.retired_duplicates = self.retired_duplicates.saturating_add(jb.duplicates);
    }

    /// The plain packet: `data` itself without SRTP, else decrypted and checked; `None` (and
    /// counted) when it fails the check.
    fn unprotect<'a>(&mut self, data: &'a [u8], kind: Packet) -> Option<Cow<'a, [u8]>> {
        let Some(srtp) = self.srtp.as_mut() else {
            return Some(Cow::Borrowed(data));
        };
        let plain = match kind {
            Packet::Rtp => srtp.unprotect_rtp(data),
            Packet::Rtcp => srtp.unprotect_rtcp(data),
        };
        match plain {
            Ok(p) => Some(Cow::Owned(p)),
            Err(e) => {
                self.count_srtp_error(&e);
                None
            }
        }
    }

    fn count_srtp_error(&mut self, e: &SrtpError) {
        let counter = if e.is_replay() {
            &mut self.stats.srtp_replays
        } else if e.is_auth_failure() {
            &mut self.stats.srtp_auth_failures
        } else {
            // Too short for SRTP, unencrypted SRTCP (baresip sends a plain RTCP APP "PING").
            &mut self.stats.invalid_packets
        };
        *counter = counter.saturating_add(1);
    }

    /// Protects the packet in `packet_buf` in place when SRTP is on. `false`: it could not
    /// be protected and must not be sent.
    fn protect_packet(&mut self) -> bool {
        let Some(srtp) = self.srtp.as_mut() else {
            return true;
        };
        let plain = std::mem::take(&mut self.packet_buf);
        let ok = srtp.protect_rtp(&plain, &mut self.srtp_buf).is_ok();
        self.packet_buf = plain;
        if ok {
            std::mem::swap(&mut self.packet_buf, &mut self.srtp_buf);
        }
        ok
    }

    fn push_event(&mut self, event: MediaEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Symmetric-RTP source check; learns the first source and re-learns after silence.
    fn accept_rtp_source(&mut self, from: SocketAddr, now: Instant) -> bool {
        if !self.cfg.symmetric {
            return true;
        }
        match self.rtp_learned {
            Some(l) if l.addr == from => {
                self.rtp_learned = Some(Learned {
                    addr: from,
                    last_seen: now,
                });
                true
            }
            Some(l) if now.saturating_duration_since(l.last_seen) < RELEARN_AFTER => {
                self.stats.foreign_source = self.stats.foreign_source.saturating_add(1);
                false
            }
            _ => {
                let before = self.remote_rtp();
                self.rtp_learned = Some(Learned {
                    addr: from,
                    last_seen: now,
                });
                if from != before {
                    self.push_event(MediaEvent::RemoteAddressLearned(from));
                }
                true
            }
        }
    }

    /// Feeds one datagram received on our RTP port.
    pub fn handle_rtp(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let rtp_pts = [
            self.cfg.payload_type,
            self.cfg.telephone_event_pt.unwrap_or(0),
        ];
        if rtp_mod::is_rtcp_given(data, &rtp_pts[..]) {
            // The peer multiplexes RTCP on the RTP port (RFC 5761); the packet type stays in
            // the clear under SRTCP, so the test works on protected packets too.
            self.handle_rtcp(data, from, now);
            return;
        }
        let Some(data) = self.unprotect(data, Packet::Rtp) else {
            return;
        };
        let data = &*data;
        let packet = match rtp_mod::parse(data) {
            Ok(p) if p.payload.len() <= MAX_PAYLOAD => p,
            _ => {
                self.stats.invalid_packets = self.stats.invalid_packets.saturating_add(1);
                return;
            }
        };
        let h = packet.header;
        let is_audio = h.payload_type == self.cfg.payload_type;
        let is_event = self.cfg.telephone_event_pt == Some(h.payload_type);
        if !is_audio && !is_event {
            self.stats.unknown_payload_type = self.stats.unknown_payload_type.saturating_add(1);
            // Comfort noise and the like still use sequence numbers of the audio stream.
            if Some(h.ssrc) == self.audio_ssrc && self.rtp_learned.is_none_or(|l| l.addr == from) {
                self.jitter.push_skip(h.sequence, h.timestamp, now);
            }
            return;
        }
        if !self.accept_rtp_source(from, now) {
            return;
        }
        self.stats.packets_received = self.stats.packets_received.saturating_add(1);
        self.last_received = Some(now);

        if is_event {
            if let Some(d) = self
                .dtmf
                .handle(h.ssrc, h.timestamp, h.marker, packet.payload)
            {
                self.stats.dtmf_digits = self.stats.dtmf_digits.saturating_add(1);
                self.push_event(MediaEvent::Dtmf { digit: d.digit });
            }
            if Some(h.ssrc) == self.audio_ssrc {
                if let Some(rx) = self.reception.as_mut() {
                    rx.on_packet(h.sequence, h.timestamp, now);
                }
                self.jitter.push_skip(h.sequence, h.timestamp, now);
            }
            return;
        }

        if self.audio_ssrc != Some(h.ssrc) {
            let current_paused = self
                .audio_last_seen
                .is_none_or(|t| now.saturating_duration_since(t) >= SSRC_SWITCH_AFTER);
            if self.audio_ssrc.is_some() && !current_paused {
                self.stats.foreign_source = self.stats.foreign_source.saturating_add(1);
                return;
            }
            if self.audio_ssrc.is_some() {
                self.jitter.reset();
                if let Ok(d) = Decoder::new(self.cfg.codec) {
                    self.decoder = d;
                }
            }
            self.retire_reception();
            self.audio_ssrc = Some(h.ssrc);
            self.reception = Some(ReceptionStats::new(
                h.ssrc,
                h.sequence,
                self.cfg.codec.clock_rate(),
                self.epoch,
            ));
        }
        self.audio_last_seen = Some(now);
        if let Some(rx) = self.reception.as_mut() {
            rx.on_packet(h.sequence, h.timestamp, now);
        }
        self.jitter
            .push(h.sequence, h.timestamp, packet.payload, now);
    }

    /// Feeds one datagram received on our RTCP port.
    pub fn handle_rtcp(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let Some(data) = self.unprotect(data, Packet::Rtcp) else {
            return;
        };
        let data = &*data;
        let Ok(items) = rtcp_mod::parse_compound(data) else {
            self.stats.invalid_packets = self.stats.invalid_packets.saturating_add(1);
            return;
        };
        if self.cfg.symmetric {
            // RTCP must come from the host our RTP comes from, once that is known.
            if self.rtp_learned.is_some_and(|l| l.addr.ip() != from.ip()) {
                self.stats.foreign_source = self.stats.foreign_source.saturating_add(1);
                return;
            }
            self.rtcp_learned = Some(from);
        }
        self.stats.rtcp_received = self.stats.rtcp_received.saturating_add(1);
        let arrival_ntp = self.ntp.ntp(now);
        for item in items {
            let reports = match item {
                RtcpItem::SenderReport {
                    ssrc,
                    info,
                    reports,
                } => {
                    if let Some(rx) = self.reception.as_mut().filter(|rx| rx.ssrc() == ssrc) {
                        rx.on_sender_report(info.ntp_time, now);
                    }
                    reports
                }
                RtcpItem::ReceiverReport { reports, .. } => reports,
                RtcpItem::Goodbye { sources } => {
                    if self.audio_ssrc.is_some_and(|s| sources.contains(&s)) {
                        self.stats.remote_bye = true;
                    }
                    continue;
                }
                RtcpItem::SourceDescription { .. } | RtcpItem::Other { .. } => continue,
            };
            for block in reports.iter().filter(|b| b.ssrc == self.ssrc) {
                self.stats.remote_fraction_lost = Some(f64::from(block.fraction_lost) / 256.0);
                self.stats.remote_cumulative_lost = Some(i64::from(block.cumulative_lost));
                let clock = f64::from(self.cfg.codec.clock_rate());
                self.stats.remote_jitter_ms = Some(f64::from(block.jitter) * 1000.0 / clock);
                if let Some(rtt) = rtcp_mod::round_trip_time(block, arrival_ntp) {
                    self.stats.rtt_ms = Some(ms(rtt));
                }
            }
        }
    }

    /// Called every 20 ms with the audio to send (`None` = silence). Returns the RTP
    /// datagram and its destination, or `None` while on hold.
    pub fn send_frame(
        &mut self,
        frame: Option<&[i16; FRAME_SAMPLES]>,
        now: Instant,
    ) -> Option<(&[u8], SocketAddr)> {
        let dest = self.remote_rtp();
        if !self.sending || dest.ip().is_unspecified() || dest.port() == 0 {
            self.sender.skip();
            return None;
        }
        const SILENCE: [i16; FRAME_SAMPLES] = [0; FRAME_SAMPLES];
        self.payload_buf.clear();
        if self
            .encoder
            .encode(frame.unwrap_or(&SILENCE), &mut self.payload_buf)
            .is_err()
        {
            self.sender.skip();
            return None;
        }
        let ts = self.sender.next_timestamp();
        self.sender.packet(&self.payload_buf, &mut self.packet_buf);
        if !self.protect_packet() {
            return None;
        }
        self.last_sent = Some((now, ts));
        self.sent_since_report = true;
        self.stats.packets_sent = self.stats.packets_sent.saturating_add(1);
        Some((self.packet_buf.as_slice(), dest))
    }

    /// Sends this tick's 20 ms as an RFC 4733 telephone-event packet instead of audio. The
    /// packet shares the audio stream's SSRC and sequence numbers, and the audio clock advances
    /// one frame as if audio had been sent. Its RTP timestamp is the event's start: the packet
    /// with `first` set (which also carries the marker bit) fixes it, the event's later packets
    /// repeat it. `None` (the clock still advances) without a negotiated telephone-event payload
    /// type, while on hold, or for a follow-up packet of an event that never started.
    pub fn send_event(
        &mut self,
        payload: &[u8; 4],
        first: bool,
        now: Instant,
    ) -> Option<(&[u8], SocketAddr)> {
        let dest = self.remote_rtp();
        let clock = self.sender.next_timestamp();
        if first {
            self.event_timestamp = Some(clock);
        }
        let (Some(pt), Some(event_ts)) = (self.cfg.telephone_event_pt, self.event_timestamp) else {
            self.sender.skip();
            return None;
        };
        if !self.sending || dest.ip().is_unspecified() || dest.port() == 0 {
            self.sender.skip();
            return None;
        }
        let sequence = self.sender.next_sequence();
        // The sender numbers the packet and counts it; the header is the event's own.
        self.sender.packet(payload, &mut self.packet_buf);
        self.packet_buf.clear();
        rtp_mod::write_header(
            &RtpHeader {
                marker: first,
                payload_type: pt,
                sequence,
                timestamp: event_ts,
                ssrc: self.ssrc,
            },
            &mut self.packet_buf,
        );
        self.packet_buf.extend_from_slice(payload);
        if !self.protect_packet() {
            return None;
        }
        self.last_sent = Some((now, clock));
        self.sent_since_report = true;
        self.stats.packets_sent = self.stats.packets_sent.saturating_add(1);
        Some((self.packet_buf.as_slice(), dest))
    }

    fn decode_due(&mut self, output: JitterOutput) {
        self.decode_buf.clear();
        match output {
            JitterOutput::Frame(payload) => {
                if self.decoder.decode(&payload, &mut self.decode_buf).is_err() {
                    self.decode_buf.clear();
                    self.decoder.conceal(&mut self.decode_buf);
                    self.stats.concealed_frames = self.stats.concealed_frames.saturating_add(1);
                }
            }
            JitterOutput::Lost => {
                match self.jitter.peek_due() {
                    Some(next) if self.decoder.kind() == CodecKind::Opus => {
                        let next = next.to_vec();
                        self.decoder.recover(&next, &mut self.decode_buf);
                    }
                    _ => self.decoder.conceal(&mut self.decode_buf),
                }
                self.stats.concealed_frames = self.stats.concealed_frames.saturating_add(1);
            }
            JitterOutput::Empty => {}
        }
        self.pending.extend(self.decode_buf.iter().copied());
        while self.pending.len() > MAX_PENDING_SAMPLES {
            self.pending.pop_front();
        }
    }

    /// Decoded remote audio, in order, 160 samples per call (call every 20 ms). Losses are
    /// concealed; `None` while nothing is buffered (not started, silence, hold).
    pub fn pop_audio(&mut self, now: Instant) -> Option<[i16; FRAME_SAMPLES]> {
        while self.pending.len() < FRAME_SAMPLES {
            let out = self.jitter.pop(now);
            if out == JitterOutput::Empty {
                break;
            }
            self.decode_due(out);
        }
        if self.pending.len() < FRAME_SAMPLES {
            return None;
        }
        let mut frame = [0i16; FRAME_SAMPLES];
        for (dst, src) in frame.iter_mut().zip(self.pending.drain(..FRAME_SAMPLES)) {
            *dst = src;
        }
        Some(frame)
    }

    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    fn rtcp_packet(&mut self, now: Instant, bye: bool) -> Option<(Vec<u8>, SocketAddr)> {
        let sender = match self.last_sent {
            Some((at, ts)) if self.sent_since_report => {
                let elapsed = now.saturating_duration_since(at);
                let ticks =
                    elapsed.as_micros() * u128::from(self.cfg.codec.clock_rate()) / 1_000_000;
                Some(SenderInfo {
                    ntp_time: self.ntp.ntp(now),
                    rtp_time: ts.wrapping_add(ticks as u32),
                    packet_count: self.sender.packets_sent() as u32,
                    octet_count: self.sender.octets_sent() as u32,
                })
            }
            _ => None,
        };
        let block = self.reception.as_mut().map(|rx| rx.report_block(now));
        let mut bytes =
            rtcp_mod::build_compound(self.ssrc, sender, block, &self.cname, bye).ok()?;
        if let Some(srtp) = self.srtp.as_mut() {
            bytes = srtp.protect_rtcp(&bytes).ok()?;
        }
        self.sent_since_report = false;
        let dest = self.remote_rtcp();
        if dest.ip().is_unspecified() || dest.port() == 0 {
            return None;
        }
        self.stats.rtcp_sent = self.stats.rtcp_sent.saturating_add(1);
        Some((bytes, dest))
    }

    /// An RTCP compound (SR while we send, else RR; plus SDES CNAME) when one is due,
    /// about every 5 s, randomised per RFC 3550.
    pub fn poll_rtcp(&mut self, now: Instant) -> Option<(Vec<u8>, SocketAddr)> {
        if now < self.next_rtcp {
            return None;
        }
        self.next_rtcp = now + rtcp_mod::next_interval(false);
        self.rtcp_packet(now, false)
    }

    /// When `poll_rtcp` next has something (for the shell's timer).
    pub fn next_rtcp_at(&self) -> Instant {
        self.next_rtcp
    }

    /// A final RTCP compound with BYE, for hang-up.
    pub fn bye(&mut self, now: Instant) -> Option<(Vec<u8>, SocketAddr)> {
        self.rtcp_packet(now, true)
    }

    pub fn stats(&self) -> MediaStats {
        let mut stats = self.stats.clone();
        stats.srtp_suite = self.srtp.as_ref().map(SrtpPair::suite);
        let jb = self.jitter.stats();
        stats.packets_late = self.retired_late.saturating_add(jb.late);
        stats.duplicates = self.retired_duplicates.saturating_add(jb.duplicates);
        stats.packets_lost = self.retired_lost;
        if let Some(rx) = &self.reception {
            let lost = u64::try_from(rx.cumulative_lost()).unwrap_or(0);
            stats.packets_lost = stats.packets_lost.saturating_add(lost);
            stats.jitter_ms = ms(rx.jitter());
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::encode_event;
    use crate::media::g711;
    use crate::media::rtp::{write_header, RtpHeader};

    const MS20: Duration = Duration::from_millis(20);

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn a_addr() -> SocketAddr {
        addr("10.0.0.1:4000")
    }

    fn b_addr() -> SocketAddr {
        addr("10.0.0.2:5000")
    }

    fn config(codec: CodecKind, remote: SocketAddr) -> MediaConfig {
        let pt = codec.static_payload_type().unwrap_or(111);
        let rtcp = SocketAddr::new(remote.ip(), remote.port() + 1);
        MediaConfig::new(codec, pt, Some(101), remote, rtcp)
    }

    fn pair(codec: CodecKind, t0: Instant) -> (MediaSession, MediaSession) {
        let a = MediaSession::new(config(codec, b_addr()), 0xA, t0).expect("session A");
        let b = MediaSession::new(config(codec, a_addr()), 0xB, t0).expect("session B");
        (a, b)
    }

    fn tone_frame(k: usize) -> [i16; FRAME_SAMPLES] {
        let mut f = [0i16; FRAME_SAMPLES];
        for (i, s) in f.iter_mut().enumerate() {
            let n = (k * FRAME_SAMPLES + i) as f64;
            *s = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * n / 8000.0).sin()) as i16;
        }
        f
    }

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(
            &RtpHeader {
                marker,
                payload_type: pt,
                sequence: seq,
                timestamp: ts,
                ssrc,
            },
            &mut out,
        );
        out.extend_from_slice(payload);
        out
    }

    /// Runs A → B over a simulated network for `frames` ticks. `drop` decides losses;
    /// odd packets are delayed 45 ms so they arrive after their successor.
    fn run_call(
        codec: CodecKind,
        frames: usize,
        drop: impl Fn(usize) -> bool,
    ) -> (Vec<Option<[i16; FRAME_SAMPLES]>>, MediaSession) {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(codec, t0);
        let mut in_flight: Vec<(Instant, Vec<u8>)> = Vec::new();
        let mut heard = Vec::new();
        for k in 0..frames + 20 {
            let now = t0 + MS20 * k as u32;
            if k < frames {
                let (bytes, to) = a.send_frame(Some(&tone_frame(k)), now).expect("A sends");
                assert_eq!(to, b_addr());
                if !drop(k) {
                    let delay = if k % 2 == 1 {
                        Duration::from_millis(45)
                    } else {
                        Duration::ZERO
                    };
                    in_flight.push((now + delay, bytes.to_vec()));
                }
            }
            in_flight.sort_by_key(|(at, _)| *at);
            while in_flight.first().is_some_and(|(at, _)| *at <= now) {
                let (_, bytes) = in_flight.remove(0);
                b.handle_rtp(&bytes, a_addr(), now);
            }
            heard.push(b.pop_audio(now));
        }
        (heard, b)
    }

    #[test]
    fn pcmu_call_survives_loss_and_reordering_bit_exactly() {
        let dropped = |k: usize| k % 10 == 5;
        let (heard, b) = run_call(CodecKind::Pcmu, 100, dropped);
        let played: Vec<[i16; FRAME_SAMPLES]> = heard
            .into_iter()
            .skip_while(Option::is_none)
            .map_while(|f| f)
            .collect();
        assert_eq!(played.len(), 100, "every frame plays once, in order");
        for (k, frame) in played.iter().enumerate() {
            let want: Vec<i16> = if dropped(k) {
                vec![0; FRAME_SAMPLES]
            } else {
                tone_frame(k)
                    .iter()
                    .map(|&s| g711::ulaw_to_linear(g711::linear_to_ulaw(s)))
                    .collect()
            };
            assert_eq!(&frame[..], &want[..], "frame {k}");
        }
        let s = b.stats();
        assert_eq!(s.packets_received, 90);
        assert_eq!(s.packets_lost, 10);
        assert_eq!(s.concealed_frames, 10);
        assert_eq!((s.packets_late, s.duplicates), (0, 0));
        assert!(s.jitter_ms > 5.0, "jitter {}", s.jitter_ms);
    }

    #[test]
    fn opus_call_conceals_losses() {
        let (heard, b) = run_call(CodecKind::Opus, 100, |k| k % 10 == 5);
        let played: Vec<[i16; FRAME_SAMPLES]> = heard
            .into_iter()
            .skip_while(Option::is_none)
            .map_while(|f| f)
            .collect();
        assert_eq!(played.len(), 100);
        let s = b.stats();
        assert_eq!((s.packets_lost, s.concealed_frames), (10, 10));
        // Concealed frames carry sound (FEC/PLC), not silence.
        for k in (15..100).step_by(10) {
            let energy: f64 = played[k].iter().map(|&x| f64::from(x).powi(2)).sum();
            assert!(energy > 1e6, "frame {k} energy {energy}");
        }
    }

    #[test]
    fn symmetric_rtp_learns_and_guards_the_source() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(CodecKind::Pcmu, t0);
        let nat = addr("203.0.113.7:61000");
        let (pkt, _) = a.send_frame(None, t0).expect("send");
        b.handle_rtp(pkt, nat, t0);
        assert_eq!(b.poll_event(), Some(MediaEvent::RemoteAddressLearned(nat)));
        assert_eq!(b.send_frame(None, t0).expect("send").1, nat);
        // Another source is ignored while the learned one is active ...
        let (pkt, _) = a.send_frame(None, t0 + MS20).expect("send");
        let intruder = addr("198.51.100.66:1234");
        b.handle_rtp(pkt, intruder, t0 + MS20);
        assert_eq!(b.stats().foreign_source, 1);
        assert_eq!(b.remote_rtp(), nat);
        // ... but replaces it after the learned one went quiet (NAT rebinding).
        let later = t0 + Duration::from_secs(3);
        let (pkt, _) = a.send_frame(None, later).expect("send");
        let rebound = addr("203.0.113.7:61002");
        b.handle_rtp(pkt, rebound, later);
        assert_eq!(
            b.poll_event(),
            Some(MediaEvent::RemoteAddressLearned(rebound))
        );
        assert_eq!(b.remote_rtp(), rebound);
        assert_eq!(b.poll_event(), None);
    }

    #[test]
    fn without_symmetric_rtp_the_sdp_address_stays() {
        let t0 = Instant::now();
        let (mut a, _) = pair(CodecKind::Pcmu, t0);
        let mut cfg = config(CodecKind::Pcmu, a_addr());
        cfg.symmetric = false;
        let mut b = MediaSession::new(cfg, 0xB, t0).expect("session");
        let (pkt, _) = a.send_frame(None, t0).expect("send");
        b.handle_rtp(pkt, addr("203.0.113.7:61000"), t0);
        assert_eq!(b.poll_event(), None);
        assert_eq!(b.remote_rtp(), a_addr());
        assert_eq!(b.stats().packets_received, 1);
    }

    #[test]
    fn hold_stops_sending_but_keeps_the_clock() {
        let t0 = Instant::now();
        let (mut a, _) = pair(CodecKind::Pcmu, t0);
        let first = rtp_mod::parse(a.send_frame(None, t0).expect("send").0)
            .expect("rtp")
            .header;
        a.set_sending(false);
        for k in 1..=5u32 {
            assert!(a.send_frame(None, t0 + MS20 * k).is_none());
        }
        a.set_sending(true);
        let resumed = rtp_mod::parse(a.send_frame(None, t0 + MS20 * 6).expect("send").0)
            .expect("rtp")
            .header;
        assert_eq!(resumed.sequence, first.sequence.wrapping_add(1));
        assert_eq!(resumed.timestamp, first.timestamp.wrapping_add(6 * 160));
        assert!(resumed.marker);
        assert_eq!(a.stats().packets_sent, 2);
        // Old-style hold address: nothing is sent either.
        let mut cfg = config(CodecKind::Pcmu, addr("0.0.0.0:5000"));
        cfg.remote_rtcp = addr("0.0.0.0:5001");
        a.update(cfg).expect("update");
        assert!(a.send_frame(None, t0 + MS20 * 7).is_none());
    }

    #[test]
    fn dtmf_on_the_audio_stream_and_on_its_own_ssrc() {
        let t0 = Instant::now();
        let (_, mut b) = pair(CodecKind::Pcmu, t0);
        let audio = [0xFFu8; 160];
        let ev = |end, dur| encode_event(5, end, 10, dur);
        // Audio seq 0..3, then a '5' event sharing the SSRC and sequence space (seq 3..8),
        // then audio again; digits from a separate SSRC, retransmitted.
        let mut arrivals: Vec<Vec<Vec<u8>>> = (0..3u16)
            .map(|seq| {
                vec![packet(
                    0,
                    seq,
                    u32::from(seq) * 160,
                    0xCAFE,
                    seq == 0,
                    &audio,
                )]
            })
            .collect();
        for (i, end) in [false, false, true, true, true].into_iter().enumerate() {
            let dur = 160 * (i as u16 + 1);
            arrivals.push(vec![packet(
                101,
                3 + i as u16,
                480,
                0xCAFE,
                i == 0,
                &ev(end, dur),
            )]);
        }
        arrivals.push(vec![packet(0, 8, 1280, 0xCAFE, false, &audio)]);
        arrivals.push(
            (0..3)
                .map(|_| {
                    packet(
                        101,
                        900,
                        7777,
                        0xD1D1,
                        true,
                        &encode_event(10, true, 10, 800),
                    )
                })
                .collect(),
        );
        let mut frames = 0;
        for k in 0..30u32 {
            let now = t0 + MS20 * k;
            for p in arrivals.get(k as usize).into_iter().flatten() {
                b.handle_rtp(p, a_addr(), now);
            }
            if b.pop_audio(now).is_some() {
                frames += 1;
            }
        }
        assert_eq!(b.poll_event(), Some(MediaEvent::Dtmf { digit: '5' }));
        assert_eq!(b.poll_event(), Some(MediaEvent::Dtmf { digit: '*' }));
        assert_eq!(b.poll_event(), None);
        // The event's sequence numbers are not audio loss.
        let s = b.stats();
        assert_eq!(
            (frames, s.packets_lost, s.concealed_frames, s.dtmf_digits),
            (4, 0, 0, 2)
        );
    }

    /// RFC 5761: an event start on payload type 73 has the second byte 0x80|73 = 201, an RTCP
    /// receiver report's type; it is still a digit because 73 is the negotiated event type.
    #[test]
    fn telephone_event_in_the_rtcp_range_is_a_digit() {
        let t0 = Instant::now();
        let mut cfg = config(CodecKind::Pcmu, a_addr());
        cfg.telephone_event_pt = Some(73);
        let mut b = MediaSession::new(cfg, 0xB, t0).expect("session");
        for (i, end) in [false, false, true, true, true].into_iter().enumerate() {
            let dur = 160 * (i as u16 + 1);
            let p = packet(
                73,
                i as u16,
                0,
                0xCAFE,
                i == 0,
                &encode_event(4, end, 10, dur),
            );
            b.handle_rtp(&p, a_addr(), t0 + MS20 * i as u32);
        }
        assert_eq!(b.poll_event(), Some(MediaEvent::Dtmf { digit: '4' }));
        assert_eq!(b.stats().dtmf_digits, 1);
    }

    #[test]
    fn garbage_and_unknown_payload_types_are_counted_not_fatal() {
        let t0 = Instant::now();
        let (_, mut b) = pair(CodecKind::Pcmu, t0);
        b.handle_rtp(b"hello", a_addr(), t0);
        b.handle_rtp(&[0x80; 11], a_addr(), t0);
        b.handle_rtp(&packet(13, 1, 1, 1, false, &[0]), a_addr(), t0);
        b.handle_rtcp(b"junk", a_addr(), t0);
        let s = b.stats();
        assert_eq!(
            (
                s.invalid_packets,
                s.unknown_payload_type,
                s.packets_received
            ),
            (3, 1, 0)
        );
        assert!(b.poll_event().is_none());
        assert!(b.pop_audio(t0 + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn audio_ssrc_change_restarts_the_stream() {
        let t0 = Instant::now();
        let (_, mut b) = pair(CodecKind::Pcmu, t0);
        let mut now = t0;
        for seq in 0..5u16 {
            b.handle_rtp(&packet(0, seq, 0, 1, false, &[0xFF; 160]), a_addr(), now);
            b.pop_audio(now);
            now += MS20;
        }
        // Interleaved packets of another SSRC do not steal the stream ...
        b.handle_rtp(&packet(0, 40_000, 0, 2, false, &[0xFF; 160]), a_addr(), now);
        assert_eq!(b.stats().foreign_source, 1);
        // ... but a new SSRC after the old one stopped takes over, with its own numbering.
        now += Duration::from_millis(100);
        let mut played = 0;
        for seq in 40_001..40_010u16 {
            b.handle_rtp(&packet(0, seq, 0, 2, false, &[0xFF; 160]), a_addr(), now);
            if b.pop_audio(now).is_some() {
                played += 1;
            }
            now += MS20;
        }
        assert!(played >= 5, "played {played}");
        assert_eq!(b.stats().packets_lost, 0);
    }

    #[test]
    fn rtcp_reports_flow_and_measure_round_trip() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(CodecKind::Pcmu, t0);
        assert!(a.poll_rtcp(t0).is_none(), "nothing due at start");
        let one_way = Duration::from_millis(30);
        let mut sr = None;
        let mut rr = None;
        for k in 0..400u32 {
            let now = t0 + MS20 * k;
            let (pkt, _) = a
                .send_frame(Some(&tone_frame(k as usize)), now)
                .expect("send");
            let pkt = pkt.to_vec();
            // Lose one packet in ten.
            if k % 10 != 3 {
                b.handle_rtp(&pkt, a_addr(), now + one_way);
            }
            b.pop_audio(now);
            if sr.is_none() {
                if let Some((bytes, to)) = a.poll_rtcp(now) {
                    assert_eq!(to, addr("10.0.0.2:5001"));
                    b.handle_rtcp(&bytes, addr("10.0.0.1:4001"), now + one_way);
                    sr = Some(now);
                }
            } else if rr.is_none() && sr.is_some_and(|at| now >= at + one_way) {
                if let Some((bytes, to)) = b.poll_rtcp(now) {
                    assert_eq!(to, addr("10.0.0.1:4001"));
                    a.handle_rtcp(&bytes, addr("10.0.0.2:5001"), now + one_way);
                    rr = Some(now);
                }
            }
        }
        assert!(sr.is_some() && rr.is_some(), "both sides reported");
        let items = rtcp_mod::parse_compound(&b.bye(t0 + Duration::from_secs(9)).expect("bye").0)
            .expect("parse");
        assert!(
            matches!(items[0], RtcpItem::ReceiverReport { .. }),
            "B never sent RTP: RR"
        );
        assert!(matches!(items.last(), Some(RtcpItem::Goodbye { .. })));

        let s = a.stats();
        assert_eq!((s.rtcp_sent, s.rtcp_received), (1, 1));
        let rtt = s.rtt_ms.expect("rtt");
        assert!((59.0..=61.5).contains(&rtt), "rtt {rtt}");
        let cumulative = s.remote_cumulative_lost.expect("remote loss");
        assert!(cumulative > 0, "B saw losses");
        assert!(s.remote_fraction_lost.expect("fraction") > 0.05);
        assert!(s.remote_jitter_ms.is_some());
    }

    #[test]
    fn update_keeps_ssrc_and_sequence_and_switches_codec_and_remote() {
        let t0 = Instant::now();
        let (mut a, _) = pair(CodecKind::Pcmu, t0);
        let before = rtp_mod::parse(a.send_frame(None, t0).expect("send").0)
            .expect("rtp")
            .header;
        let new_remote = addr("10.0.0.9:7000");
        a.update(config(CodecKind::Pcma, new_remote))
            .expect("update");
        let (bytes, to) = a.send_frame(None, t0 + MS20).expect("send");
        let bytes = bytes.to_vec();
        let after = rtp_mod::parse(&bytes).expect("rtp");
        assert_eq!(to, new_remote);
        assert_eq!(after.header.ssrc, before.ssrc);
        assert_eq!(after.header.sequence, before.sequence.wrapping_add(1));
        assert_eq!(after.header.payload_type, 8);
        assert_eq!(after.payload[0], g711::ALAW_SILENCE);
        a.update(config(CodecKind::Opus, new_remote))
            .expect("to opus");
        let opus = rtp_mod::parse(a.send_frame(None, t0 + MS20 * 2).expect("send").0)
            .expect("rtp")
            .header;
        assert_eq!(opus.payload_type, 111);
        assert_eq!(opus.timestamp, after.header.timestamp.wrapping_add(160));
        let bad = MediaConfig {
            telephone_event_pt: Some(111),
            ..config(CodecKind::Opus, new_remote)
        };
        assert!(matches!(a.update(bad), Err(MediaError::Config(_))));
    }

    #[test]
    fn send_event_shares_the_audio_stream_and_is_detected() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(CodecKind::Pcmu, t0);
        let audio = rtp_mod::parse(a.send_frame(None, t0).expect("audio").0)
            .expect("rtp")
            .header;
        let mut headers = Vec::new();
        for (k, (end, dur)) in [(false, 160u16), (false, 320), (true, 320), (true, 320)]
            .into_iter()
            .enumerate()
        {
            let now = t0 + MS20 * (k as u32 + 1);
            let (pkt, _) = a
                .send_event(&encode_event(7, end, 10, dur), k == 0, now)
                .expect("event");
            let pkt = pkt.to_vec();
            headers.push(rtp_mod::parse(&pkt).expect("rtp").header);
            b.handle_rtp(&pkt, a_addr(), now);
        }
        let after = rtp_mod::parse(a.send_frame(None, t0 + MS20 * 5).expect("audio").0)
            .expect("rtp")
            .header;
        for (k, h) in headers.iter().enumerate() {
            assert_eq!(
                (h.ssrc, h.payload_type, h.marker),
                (audio.ssrc, 101, k == 0)
            );
            assert_eq!(h.sequence, audio.sequence.wrapping_add(k as u16 + 1));
            assert_eq!(
                h.timestamp,
                audio.timestamp.wrapping_add(160),
                "event start"
            );
        }
        assert_eq!(after.sequence, audio.sequence.wrapping_add(5));
        assert_eq!(after.timestamp, audio.timestamp.wrapping_add(5 * 160));
        assert_eq!(b.poll_event(), Some(MediaEvent::Dtmf { digit: '7' }));
        assert_eq!(b.poll_event(), None);
        // Without a negotiated telephone-event nothing goes out, but the clock runs on.
        let mut cfg = config(CodecKind::Pcmu, b_addr());
        cfg.telephone_event_pt = None;
        a.update(cfg).expect("update");
        assert!(a
            .send_event(&encode_event(1, false, 10, 0), true, t0 + MS20 * 6)
            .is_none());
        let resumed = rtp_mod::parse(a.send_frame(None, t0 + MS20 * 7).expect("audio").0)
            .expect("rtp")
            .header;
        assert_eq!(resumed.sequence, audio.sequence.wrapping_add(6));
        assert_eq!(resumed.timestamp, audio.timestamp.wrapping_add(7 * 160));
    }

    fn srtp_keys(suite: SrtpSuite) -> (SrtpKeys, SrtpKeys) {
        use crate::media::srtp::SrtpKey;
        let (ka, kb) = (SrtpKey::generate(suite), SrtpKey::generate(suite));
        let a = SrtpKeys {
            tag: 1,
            suite,
            local: ka.clone(),
            remote: kb.clone(),
        };
        let b = SrtpKeys {
            tag: 1,
            suite,
            local: kb,
            remote: ka,
        };
        (a, b)
    }

    fn srtp_pair_sessions(suite: SrtpSuite, t0: Instant) -> (MediaSession, MediaSession) {
        let (ka, kb) = srtp_keys(suite);
        let mut ca = config(CodecKind::Pcmu, b_addr());
        ca.srtp = Some(ka);
        let mut cb = config(CodecKind::Pcmu, a_addr());
        cb.srtp = Some(kb);
        (
            MediaSession::new(ca, 0xA, t0).expect("session A"),
            MediaSession::new(cb, 0xB, t0).expect("session B"),
        )
    }

    #[test]
    fn srtp_sessions_exchange_audio_dtmf_and_reports() {
        for suite in [
            SrtpSuite::AesCm128HmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32,
        ] {
            let t0 = Instant::now();
            let (mut a, mut b) = srtp_pair_sessions(suite, t0);
            let mut now = t0;
            let mut heard = 0;
            for k in 0..20 {
                let frame = tone_frame(k);
                let (pkt, _) = a.send_frame(Some(&frame), now).expect("send");
                // What goes on the wire is not the G.711 of the tone.
                let clear: Vec<u8> = frame.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
                assert_ne!(pkt.get(12..172), Some(clear.as_slice()), "{suite}");
                assert_eq!(pkt.len(), 12 + 160 + suite_tag(suite));
                let pkt = pkt.to_vec();
                b.handle_rtp(&pkt, a_addr(), now);
                if let Some(got) = b.pop_audio(now) {
                    heard += 1;
                    let energy: f64 = got.iter().map(|&s| f64::from(s).powi(2)).sum();
                    assert!(energy > 1e6, "{suite}: decrypted audio is the tone");
                }
                now += MS20;
            }
            assert!(heard >= 15, "{suite}: heard {heard}");
            // A key press from A reaches B as a digit.
            let payload = encode_event(5, false, 10, 160);
            let (pkt, _) = a.send_event(&payload, true, now).expect("event");
            let pkt = pkt.to_vec();
            b.handle_rtp(&pkt, a_addr(), now);
            assert_eq!(b.poll_event(), Some(MediaEvent::Dtmf { digit: '5' }));
            // SRTCP: B's receiver report reaches A (multiplexed on the RTP port here).
            let (report, _) = b.bye(now).expect("report");
            a.handle_rtp(&report, b_addr(), now);
            let s = a.stats();
            assert_eq!(s.rtcp_received, 1, "{suite}");
            assert!(
                s.remote_fraction_lost.is_some(),
                "{suite}: report block read"
            );
            let s = b.stats();
            assert_eq!(
                (
                    s.srtp_suite,
                    s.srtp_auth_failures,
                    s.srtp_replays,
                    s.dtmf_digits
                ),
                (Some(suite), 0, 0, 1)
            );
            // The same packet again is a replay, not a second digit.
            b.handle_rtp(&pkt, a_addr(), now);
            assert_eq!(b.poll_event(), None);
            assert_eq!(b.stats().srtp_replays, 1);
        }
    }

    fn suite_tag(suite: SrtpSuite) -> usize {
        match suite {
            SrtpSuite::AesCm128HmacSha1_32 => 4,
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            _ => 16,
        }
    }

    #[test]
    fn srtp_with_the_wrong_key_counts_failures_and_plays_nothing() {
        let t0 = Instant::now();
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (ka, _) = srtp_keys(suite);
        let (_, kb_wrong) = srtp_keys(suite);
        let mut ca = config(CodecKind::Pcmu, b_addr());
        ca.srtp = Some(ka);
        let mut cb = config(CodecKind::Pcmu, a_addr());
        cb.srtp = Some(kb_wrong);
        let mut a = MediaSession::new(ca, 0xA, t0).expect("A");
        let mut b = MediaSession::new(cb, 0xB, t0).expect("B");
        // And a plain-RTP session sending to an SRTP one.
        let (mut plain, _) = pair(CodecKind::Pcmu, t0);
        let mut now = t0;
        for k in 0..20 {
            let pkt = a
                .send_frame(Some(&tone_frame(k)), now)
                .expect("send")
                .0
                .to_vec();
            b.handle_rtp(&pkt, a_addr(), now);
            let pkt = plain
                .send_frame(Some(&tone_frame(k)), now)
                .expect("send")
                .0
                .to_vec();
            b.handle_rtp(&pkt, a_addr(), now);
            assert_eq!(
                b.pop_audio(now),
                None,
                "no audio from undecryptable packets"
            );
            now += MS20;
        }
        let (report, _) = a.bye(now).expect("report");
        b.handle_rtcp(&report, a_addr(), now);
        // baresip's plain RTCP APP "PING": not SRTCP, counted as invalid, not as a failure.
        let ping = [
            0x80, 0xcc, 0x00, 0x03, 0x22, 0x7a, 0x7b, 0x84, b'P', b'I', b'N', b'G', 0, 0, 0, 0,
        ];
        b.handle_rtcp(&ping, a_addr(), now);
        b.handle_rtp(&ping, a_addr(), now);
        let s = b.stats();
        assert_eq!(s.invalid_packets, 2);
        assert_eq!(s.srtp_auth_failures, 41);
        assert_eq!((s.packets_received, s.rtcp_received), (0, 0));
        assert_eq!(b.last_received(), None);
    }

    #[test]
    fn update_switches_srtp_keys() {
        let t0 = Instant::now();
        let (mut a, mut b) = srtp_pair_sessions(SrtpSuite::AesCm128HmacSha1_80, t0);
        let pkt = a.send_frame(None, t0).expect("send").0.to_vec();
        b.handle_rtp(&pkt, a_addr(), t0);
        assert_eq!(b.stats().packets_received, 1);
        // Re-INVITE to plain RTP on both ends.
        let mut ca = a.config().clone();
        ca.srtp = None;
        a.update(ca).expect("update a");
        let mut cb = b.config().clone();
        cb.srtp = None;
        b.update(cb).expect("update b");
        let pkt = a.send_frame(None, t0 + MS20).expect("send").0.to_vec();
        assert!(rtp_mod::parse(&pkt).is_ok());
        b.handle_rtp(&pkt, a_addr(), t0 + MS20);
        let s = b.stats();
        assert_eq!(
            (s.packets_received, s.srtp_suite, s.srtp_auth_failures),
            (2, None, 0)
        );
    }

    proptest::proptest! {
        #[test]
        fn random_datagrams_never_panic(
            datagrams in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..64)), 0..60)
        ) {
            let t0 = Instant::now();
            let mut s = MediaSession::new(config(CodecKind::Opus, a_addr()), 1, t0).expect("session");
            for (i, (as_rtcp, mut data)) in datagrams.into_iter().enumerate() {
                let now = t0 + MS20 * i as u32;
                // Make most inputs look like RTP/RTCP so the deeper paths run.
                if data.len() >= 2 && i % 2 == 0 {
                    data[0] = 0x80 | (data[0] & 0x3F);
                    if !as_rtcp { data[1] = if i % 4 == 0 { 111 } else { 101 }; }
                }
                if as_rtcp { s.handle_rtcp(&data, a_addr(), now); } else { s.handle_rtp(&data, a_addr(), now); }
                s.pop_audio(now);
                let _ = s.poll_event();
                let _ = s.poll_rtcp(now);
            }
        }
    }
}
