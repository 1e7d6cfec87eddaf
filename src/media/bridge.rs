//! The media half of a B2BUA call: a caller leg and an agent leg, each a [`MediaSession`],
//! joined once per 20 ms tick.
//!
//! Each tick takes exactly one decoded frame from each leg (after its jitter buffer and loss
//! concealment; nothing due is silence) and sends one frame on each leg, encoded in that leg's
//! codec, so PCMU/PCMA/Opus transcoding falls out of decode and encode. A missing or late
//! packet on one leg therefore costs the other leg a frame of silence (or concealment), never
//! a stall. Both legs keep their own `MediaSession` from the IVR onwards, so each outbound
//! stream keeps its SSRC, sequence numbers and timestamps across the switch from prompts to
//! bridged audio.
//!
//! Phases: [`Phase::Queued`] (the caller hears the [`HoldLoop`]: music with the queue position
//! between loops, or ringback), [`Phase::Whisper`] (the agent answered and hears a prompt about
//! the call; the caller still hears the hold loop) and [`Phase::Connected`].
//!
//! DTMF the shell reports for one leg ([`Bridge::dtmf`]) is regenerated on the other: as
//! RFC 4733 events when that leg negotiated telephone-event, else as in-band dual tones. The
//! session reports a key at its first packet without its length, so each key is sent as a
//! press of [`BridgeConfig::dtmf_duration`].
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media::codec::FRAME_SAMPLES;
use crate::media::dtmf::{digit_to_event, encode_event};
use crate::media::prompt::Player;
use crate::media::session::{MediaConfig, MediaSession};
use crate::media::tone::{dtmf_frequencies, ToneGenerator};

/// One media tick.
const TICK: Duration = Duration::from_millis(20);
/// Keys waiting to be regenerated on a leg at most.
const MAX_QUEUED_KEYS: usize = 32;
/// RFC 4733 §2.5.1.4: the final packet of an event is sent three times.
const END_PACKETS: u32 = 3;

/// One of the two legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Caller,
    Agent,
}

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No agent yet: the caller hears the hold loop.
    Queued,
    /// The agent hears the whisper prompt, the caller the hold loop; neither hears the other.
    Whisper,
    /// Audio and DTMF flow both ways.
    Connected,
}

/// Tuning of the bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// Length of a regenerated key press (clamped to 40..=1000 ms).
    pub dtmf_duration: Duration,
    /// Pause between two regenerated key presses (clamped to 40..=1000 ms).
    pub dtmf_gap: Duration,
    /// RFC 4733 volume field, in -dBm0 (0..=63).
    pub dtmf_volume: u8,
    /// Peak amplitude of each of the two in-band DTMF tones.
    pub inband_dtmf_amplitude: f64,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            dtmf_duration: Duration::from_millis(100),
            dtmf_gap: Duration::from_millis(60),
            dtmf_volume: 10,
            // About -9 dBm0 per tone: well inside Q.24 receiver limits, clean through G.711.
            inband_dtmf_amplitude: 6000.0,
        }
    }
}

fn ticks(d: Duration) -> u32 {
    let d = d.clamp(Duration::from_millis(40), Duration::from_millis(1000));
    u32::try_from(d.as_millis().div_ceil(TICK.as_millis())).unwrap_or(50)
}

/// What a queued caller hears: a music clip looped without gaps, with an announcement (the
/// queue position) played before each loop once one is set. Never ends; empty clips give
/// silence.
#[derive(Debug, Clone)]
pub struct HoldLoop {
    music: Arc<[i16]>,
    announcement: Vec<Arc<[i16]>>,
    /// Clips now playing (the announcement or the music), with the read position.
    playing: Vec<Arc<[i16]>>,
    announcing: bool,
    clip: usize,
    pos: usize,
    loops: u64,
}

impl HoldLoop {
    /// Loops `music` (or a ringback cadence, see [`crate::media::tone::ringback`]).
    pub fn new(music: Arc<[i16]>) -> Self {
        HoldLoop {
            playing: vec![music.clone()],
            music,
            announcement: Vec::new(),
            announcing: false,
            clip: 0,
            pos: 0,
            loops: 0,
        }
    }

    /// Like [`HoldLoop::new`], but opens with the announcement.
    pub fn with_announcement(music: Arc<[i16]>, announcement: Vec<Arc<[i16]>>) -> Self {
        HoldLoop {
            playing: announcement.clone(),
            announcing: true,
            announcement,
            ..Self::new(music)
        }
    }

    /// Replaces the announcement ("you are number 3", as prompt clips); it is played before
    /// the next loop of the music, without cutting into what plays now. Empty: none.
    pub fn set_announcement(&mut self, clips: Vec<Arc<[i16]>>) {
        self.announcement = clips;
    }

    /// Music loops completed so far.
    pub fn loops(&self) -> u64 {
        self.loops
    }

    /// Whether the announcement is playing now.
    pub fn announcing(&self) -> bool {
        self.announcing
    }

    fn advance(&mut self) {
        if self.announcing {
            self.announcing = false;
            self.playing = vec![self.music.clone()];
        } else {
            self.loops = self.loops.saturating_add(1);
            self.announcing = !self.announcement.is_empty();
            self.playing = if self.announcing {
                self.announcement.clone()
            } else {
                vec![self.music.clone()]
            };
        }
        self.clip = 0;
        self.pos = 0;
    }

    /// The next 20 ms.
    pub fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        let mut frame = [0i16; FRAME_SAMPLES];
        let mut filled = 0;
        // Switches between announcement and music without a sample played in between: more
        // than two in a row means every clip is empty.
        let mut idle_switches = 0;
        while filled < FRAME_SAMPLES {
            let Some(clip) = self.playing.get(self.clip) else {
                if idle_switches >= 2 {
                    break;
                }
                idle_switches += 1;
                self.advance();
                continue;
            };
            let available = clip.get(self.pos..).unwrap_or(&[]);
            let n = available.len().min(FRAME_SAMPLES - filled);
            if n == 0 {
                self.clip += 1;
                self.pos = 0;
                continue;
            }
            if let (Some(dst), Some(src)) = (frame.get_mut(filled..filled + n), available.get(..n))
            {
                dst.copy_from_slice(src);
            }
            filled += n;
            self.pos += n;
            idle_switches = 0;
        }
        frame
    }
}

/// What a leg sends in place of audio this tick.
// A stack value living for one tick; boxing the frame would allocate every tick instead.
#[allow(clippy::large_enum_variant)]
enum Inject {
    Event { payload: [u8; 4], first: bool },
    Audio([i16; FRAME_SAMPLES]),
}

enum PressKind {
    /// RTP timestamp units per tick on the target leg.
    Rfc4733 {
        step: u32,
    },
    InBand(ToneGenerator),
}

struct Press {
    event: u8,
    tick: u32,
    kind: PressKind,
}

/// Regenerates the keys of one leg on the other, one press at a time.
#[derive(Default)]
struct KeyRegenerator {
    queue: VecDeque<char>,
    press: Option<Press>,
    gap_left: u32,
}

impl KeyRegenerator {
    fn push(&mut self, digit: char) -> bool {
        if digit_to_event(digit).is_none() || self.queue.len() >= MAX_QUEUED_KEYS {
            return false;
        }
        self.queue.push_back(digit);
        true
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.press = None;
        self.gap_left = 0;
    }

    fn start(&mut self, cfg: &BridgeConfig, leg: &MediaConfig) -> Option<Press> {
        let digit = self.queue.pop_front()?;
        let event = digit_to_event(digit)?;
        let kind = if leg.telephone_event_pt.is_some() {
            PressKind::Rfc4733 {
                step: leg.codec.rtp_timestamp_step_20ms(),
            }
        } else {
            let (low, high) = dtmf_frequencies(digit)?;
            PressKind::InBand(ToneGenerator::dual(low, high, cfg.inband_dtmf_amplitude))
        };
        Some(Press {
            event,
            tick: 0,
            kind,
        })
    }

    /// What replaces this tick's audio on the target leg, if a key is being sent.
    fn next(&mut self, cfg: &BridgeConfig, leg: &MediaConfig) -> Option<Inject> {
        if self.press.is_none() {
            if self.gap_left > 0 {
                self.gap_left -= 1;
                return None;
            }
            self.press = self.start(cfg, leg);
        }
        let press = self.press.as_mut()?;
        let press_ticks = ticks(cfg.dtmf_duration);
        let k = press.tick;
        press.tick += 1;
        let (inject, last) = match &mut press.kind {
            PressKind::Rfc4733 { step } => {
                // Durations stay below 50 ticks × 960, far from u16::MAX.
                let duration = |t: u32| u16::try_from(t.saturating_mul(*step)).unwrap_or(u16::MAX);
                let end = k >= press_ticks;
                let payload = if end {
                    encode_event(press.event, true, cfg.dtmf_volume, duration(press_ticks))
                } else {
                    encode_event(press.event, false, cfg.dtmf_volume, duration(k + 1))
                };
                (
                    Inject::Event {
                        payload,
                        first: k == 0,
                    },
                    k + 1 >= press_ticks + END_PACKETS,
                )
            }
            PressKind::InBand(tone) => (Inject::Audio(tone.next_frame()), k + 1 >= press_ticks),
        };
        if last {
            self.press = None;
            self.gap_left = ticks(cfg.dtmf_gap);
        }
        Some(inject)
    }
}

/// What one tick did.
#[derive(Debug)]
pub struct BridgeTick<'a> {
    /// The RTP datagram for the caller and where to send it (`None` while that leg is on hold).
    pub to_caller: Option<(&'a [u8], SocketAddr)>,
    /// The same for the agent (`None` also while there is no agent leg).
    pub to_agent: Option<(&'a [u8], SocketAddr)>,
    /// What the caller said this tick (decoded, losses concealed); `None` when nothing was
    /// due. The left channel of a recording.
    pub caller_said: Option<[i16; FRAME_SAMPLES]>,
    /// What the agent said: the right channel.
    pub agent_said: Option<[i16; FRAME_SAMPLES]>,
    /// The phase after this tick.
    pub phase: Phase,
    /// The whisper ended during this tick and the parties are now connected.
    pub connected: bool,
}

/// See the module documentation.
pub struct Bridge {
    cfg: BridgeConfig,
    phase: Phase,
    hold: HoldLoop,
    whisper: Option<Player>,
    to_agent_keys: KeyRegenerator,
    to_caller_keys: KeyRegenerator,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("phase", &self.phase)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// A bridge for a caller waiting in the queue, hearing `hold`.
    pub fn new(hold: HoldLoop, cfg: BridgeConfig) -> Self {
        Bridge {
            cfg,
            phase: Phase::Queued,
            hold,
            whisper: None,
            to_agent_keys: KeyRegenerator::default(),
            to_caller_keys: KeyRegenerator::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The caller's hold loop, e.g. to update the queue-position announcement.
    pub fn hold_mut(&mut self) -> &mut HoldLoop {
        &mut self.hold
    }

    /// The agent answered: play `whisper` to the agent alone, then connect (at once when
    /// `None`). Ticks must now be given the agent's session.
    pub fn agent_answered(&mut self, whisper: Option<Player>) {
        self.whisper = whisper;
        self.phase = if self.whisper.is_some() {
            Phase::Whisper
        } else {
            Phase::Connected
        };
    }

    /// Connects now, cutting the rest of the whisper.
    pub fn connect(&mut self) {
        if self.phase == Phase::Whisper {
            self.whisper = None;
            self.phase = Phase::Connected;
        }
    }

    /// The agent leg is gone (rejected the call during the whisper, hung up): the caller is
    /// back in the queue with the hold loop; keys in flight are dropped.
    pub fn agent_left(&mut self) {
        self.phase = Phase::Queued;
        self.whisper = None;
        self.to_agent_keys.clear();
        self.to_caller_keys.clear();
    }

    /// A key the shell got from `from`'s session (`MediaEvent::Dtmf`), to be sent on the other
    /// leg. Only while connected; `false` when not forwarded (not connected, not a DTMF key,
    /// or too many keys waiting), so the shell may use the key itself (a queue menu).
    pub fn dtmf(&mut self, from: Side, digit: char) -> bool {
        if self.phase != Phase::Connected {
            return false;
        }
        match from {
            Side::Caller => self.to_agent_keys.push(digit),
            Side::Agent => self.to_caller_keys.push(digit),
        }
    }

    /// One 20 ms tick: call exactly once per tick per bridged call, instead of (not in
    /// addition to) the legs' own playback. Takes one decoded frame from each leg and sends
    /// one packet on each. `agent` is `None` until the agent's leg exists.
    pub fn tick<'a>(
        &mut self,
        caller: &'a mut MediaSession,
        mut agent: Option<&'a mut MediaSession>,
        now: Instant,
    ) -> BridgeTick<'a> {
        let caller_said = caller.pop_audio(now);
        let agent_said = agent.as_deref_mut().and_then(|a| a.pop_audio(now));
        let mut connected = false;
        let mut whisper_frame = None;
        if self.phase == Phase::Whisper {
            whisper_frame = self.whisper.as_mut().and_then(Player::next_frame);
            if whisper_frame.is_none() {
                self.whisper = None;
                self.phase = Phase::Connected;
                connected = true;
            }
        }
        let (to_caller, to_agent) = match self.phase {
            Phase::Queued => (Some(self.hold.next_frame()), None),
            Phase::Whisper => (Some(self.hold.next_frame()), whisper_frame),
            Phase::Connected => (agent_said, caller_said),
        };
        let live = self.phase == Phase::Connected;
        let caller_keys = live
            .then(|| self.to_caller_keys.next(&self.cfg, caller.config()))
            .flatten();
        let to_caller = send(caller, caller_keys, to_caller.as_ref(), now);
        let to_agent = agent.map(|leg| {
            let keys = live
                .then(|| self.to_agent_keys.next(&self.cfg, leg.config()))
                .flatten();
            send(leg, keys, to_agent.as_ref(), now)
        });
        BridgeTick {
            to_caller,
            to_agent: to_agent.flatten(),
            caller_said,
            agent_said,
            phase: self.phase,
            connected,
        }
    }
}

fn send<'a>(
    leg: &'a mut MediaSession,
    inject: Option<Inject>,
    audio: Option<&[i16; FRAME_SAMPLES]>,
    now: Instant,
) -> Option<(&'a [u8], SocketAddr)> {
    match inject {
        Some(Inject::Event { payload, first }) => leg.send_event(&payload, first, now),
        Some(Inject::Audio(frame)) => leg.send_frame(Some(&frame), now),
        None => leg.send_frame(audio, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::CodecKind;
    use crate::media::dtmf;
    use crate::media::g711;
    use crate::media::recorder::Recorder;
    use crate::media::rtp::{self, RtpHeader};
    use crate::media::session::MediaEvent;
    use crate::media::tone::tone_fraction;

    const MS20: Duration = Duration::from_millis(20);

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }
    fn phone_a() -> SocketAddr {
        addr("10.0.0.1:4000")
    }
    fn leg_a() -> SocketAddr {
        addr("10.0.1.1:20000")
    }
    fn leg_b() -> SocketAddr {
        addr("10.0.1.1:20002")
    }
    fn phone_b() -> SocketAddr {
        addr("10.0.0.2:6000")
    }

    fn config(codec: CodecKind, remote: SocketAddr, events: bool) -> MediaConfig {
        let pt = codec.static_payload_type().unwrap_or(111);
        let rtcp = SocketAddr::new(remote.ip(), remote.port() + 1);
        MediaConfig::new(codec, pt, events.then_some(101), remote, rtcp)
    }

    /// Frame `k` of a 440 Hz sine whose level changes every frame, so frames are told apart.
    fn voice(k: usize) -> [i16; FRAME_SAMPLES] {
        let level = 3000.0 + 200.0 * (k % 40) as f64;
        let mut f = [0i16; FRAME_SAMPLES];
        for (i, s) in f.iter_mut().enumerate() {
            let n = (k * FRAME_SAMPLES + i) as f64;
            *s = (level * (std::f64::consts::TAU * 440.0 * n / 8000.0).sin()) as i16;
        }
        f
    }

    /// Per tick: the phase, what the caller said, what the agent said.
    type Said = (
        Phase,
        Option<[i16; FRAME_SAMPLES]>,
        Option<[i16; FRAME_SAMPLES]>,
    );

    /// The caller's phone, warmline's two legs and the agent's phone, wired without delay.
    struct Rig {
        phone_a: MediaSession,
        leg_a: MediaSession,
        leg_b: MediaSession,
        phone_b: MediaSession,
        bridge: Bridge,
        t0: Instant,
        k: u32,
        /// The agent's leg exists (the agent was called and answered).
        agent_up: bool,
        /// Phone A's packets that never reach warmline.
        lose_a: fn(u32) -> bool,
        to_a: Vec<Vec<u8>>,
        to_b: Vec<Vec<u8>>,
        heard_a: Vec<Option<[i16; FRAME_SAMPLES]>>,
        heard_b: Vec<Option<[i16; FRAME_SAMPLES]>>,
        said: Vec<Said>,
        digits_a: String,
        digits_b: String,
    }

    impl Rig {
        fn new(a: CodecKind, b: CodecKind, b_events: bool, hold: HoldLoop) -> Self {
            let t0 = Instant::now();
            let session = |cfg, ssrc| MediaSession::new(cfg, ssrc, t0).expect("session");
            Rig {
                phone_a: session(config(a, leg_a(), true), 0xA),
                leg_a: session(config(a, phone_a(), true), 0xA1),
                leg_b: session(config(b, phone_b(), b_events), 0xB1),
                phone_b: session(config(b, leg_b(), b_events), 0xB),
                bridge: Bridge::new(hold, BridgeConfig::default()),
                t0,
                k: 0,
                agent_up: false,
                lose_a: |_| false,
                to_a: Vec::new(),
                to_b: Vec::new(),
                heard_a: Vec::new(),
                heard_b: Vec::new(),
                said: Vec::new(),
                digits_a: String::new(),
                digits_b: String::new(),
            }
        }

        fn now(&self) -> Instant {
            self.t0 + MS20 * self.k
        }

        /// Phone A's packet of this tick, unless lost.
        fn deliver_from_a(&mut self, pkt: Option<Vec<u8>>) {
            let now = self.now();
            if let Some(p) = pkt.filter(|_| !(self.lose_a)(self.k)) {
                self.leg_a.handle_rtp(&p, phone_a(), now);
            }
            while let Some(ev) = self.leg_a.poll_event() {
                if let MediaEvent::Dtmf { digit } = ev {
                    // What the shell does with a key from a bridged leg.
                    self.bridge.dtmf(Side::Caller, digit);
                }
            }
        }

        /// One tick: the phones talk, the bridge relays, the phones listen.
        fn step(&mut self, a: Option<[i16; FRAME_SAMPLES]>, b: Option<[i16; FRAME_SAMPLES]>) {
            let now = self.now();
            let pkt = self
                .phone_a
                .send_frame(a.as_ref(), now)
                .map(|(p, _)| p.to_vec());
            self.deliver_from_a(pkt);
            self.tick_rest(b);
        }

        /// Phone A presses `digit` during this tick (packet `i` of a 6-packet press).
        fn step_key(&mut self, digit: char, i: u32, b: Option<[i16; FRAME_SAMPLES]>) {
            let now = self.now();
            let event = dtmf::digit_to_event(digit).expect("key");
            let payload = dtmf::encode_event(event, i >= 3, 10, (160 * (i + 1).min(3)) as u16);
            let pkt = self
                .phone_a
                .send_event(&payload, i == 0, now)
                .map(|(p, _)| p.to_vec());
            self.deliver_from_a(pkt);
            self.tick_rest(b);
        }

        fn tick_rest(&mut self, b: Option<[i16; FRAME_SAMPLES]>) {
            let now = self.now();
            if self.agent_up {
                if let Some((p, _)) = self.phone_b.send_frame(b.as_ref(), now) {
                    let p = p.to_vec();
                    self.leg_b.handle_rtp(&p, phone_b(), now);
                }
            }
            let agent = self.agent_up.then_some(&mut self.leg_b);
            let out = self.bridge.tick(&mut self.leg_a, agent, now);
            let to_a = out.to_caller.map(|(p, to)| {
                assert_eq!(to, phone_a());
                p.to_vec()
            });
            let to_b = out.to_agent.map(|(p, to)| {
                assert_eq!(to, phone_b());
                p.to_vec()
            });
            self.said.push((out.phase, out.caller_said, out.agent_said));
            if let Some(p) = to_a {
                self.phone_a.handle_rtp(&p, leg_a(), now);
                self.to_a.push(p);
            }
            if let Some(p) = to_b {
                self.phone_b.handle_rtp(&p, leg_b(), now);
                self.to_b.push(p);
            }
            self.heard_a.push(self.phone_a.pop_audio(now));
            self.heard_b.push(self.phone_b.pop_audio(now));
            for (phone, digits) in [
                (&mut self.phone_a, &mut self.digits_a),
                (&mut self.phone_b, &mut self.digits_b),
            ] {
                while let Some(ev) = phone.poll_event() {
                    if let MediaEvent::Dtmf { digit } = ev {
                        digits.push(digit);
                    }
                }
            }
            self.k += 1;
        }

        fn answer(&mut self, whisper: Option<Player>) {
            self.agent_up = true;
            self.bridge.agent_answered(whisper);
        }
    }

    fn headers(packets: &[Vec<u8>]) -> Vec<(RtpHeader, Vec<u8>)> {
        packets
            .iter()
            .map(|p| {
                let parsed = rtp::parse(p).expect("rtp");
                (parsed.header, parsed.payload.to_vec())
            })
            .collect()
    }

    /// Every packet follows the previous one: same SSRC, sequence + 1, and audio timestamps
    /// one frame apart (event packets repeat their event's start).
    fn assert_continuous(packets: &[Vec<u8>], step: u32) {
        let hs = headers(packets);
        let (first, _) = hs.first().expect("packets");
        let mut audio_clock = first.timestamp;
        for (i, (h, _)) in hs.iter().enumerate() {
            assert_eq!(h.ssrc, first.ssrc, "packet {i}: SSRC");
            assert_eq!(
                h.sequence,
                first.sequence.wrapping_add(i as u16),
                "packet {i}: sequence"
            );
            if h.payload_type != 101 {
                assert_eq!(h.timestamp, audio_clock, "packet {i}: timestamp");
                assert_eq!(h.marker, i == 0, "packet {i}: marker");
            }
            audio_clock = audio_clock.wrapping_add(step);
        }
    }

    fn tone_clip(freq: f64, ms: usize) -> Arc<[i16]> {
        Arc::from(ToneGenerator::new(freq, 8000.0).samples(ms * 8))
    }

    fn hears(frame: &Option<[i16; FRAME_SAMPLES]>, freq: f64) -> bool {
        frame.is_some_and(|f| tone_fraction(&f, freq) > 0.8)
    }

    #[test]
    fn relays_both_ways_and_transcodes_pcmu_to_pcma_exactly() {
        let mut rig = Rig::new(
            CodecKind::Pcmu,
            CodecKind::Pcma,
            true,
            HoldLoop::new(Arc::from(vec![0i16; 0])),
        );
        rig.answer(None);
        let n = 100;
        for k in 0..n + 20 {
            let a = (k < n).then(|| voice(k));
            let b = (k < n).then(|| voice(k + 17));
            rig.step(a, b);
        }
        let via_ulaw_then_alaw = |s: i16| {
            g711::alaw_to_linear(g711::linear_to_alaw(g711::ulaw_to_linear(
                g711::linear_to_ulaw(s),
            )))
        };
        let via_alaw_then_ulaw = |s: i16| {
            g711::ulaw_to_linear(g711::linear_to_ulaw(g711::alaw_to_linear(
                g711::linear_to_alaw(s),
            )))
        };
        for (heard, offset, via, name) in [
            (
                &rig.heard_b,
                0,
                &via_ulaw_then_alaw as &dyn Fn(i16) -> i16,
                "agent",
            ),
            (&rig.heard_a, 17, &via_alaw_then_ulaw, "caller"),
        ] {
            // Silence (A-law has no zero: ±8) until the other side's first frame made it
            // through both jitter buffers.
            let loud = |f: &[i16; FRAME_SAMPLES]| f.iter().any(|&s| s.abs() > 8);
            let start = heard
                .iter()
                .position(|f| f.as_ref().is_some_and(loud))
                .expect("audio arrives");
            assert!(!heard[..start].iter().flatten().any(loud));
            assert!(start <= 8, "{name}: {start} ticks of latency");
            for k in 0..n {
                let got = heard[start + k].expect("a frame every tick");
                let want = voice(k + offset).map(via);
                assert_eq!(got, want, "{name} frame {k}");
            }
        }
        let b_packets = headers(&rig.to_b);
        assert!(b_packets.iter().all(|(h, _)| h.payload_type == 8), "PCMA");
        assert_eq!(rig.to_b.len(), rig.k as usize, "one packet per tick");
        assert_eq!(rig.to_a.len(), rig.k as usize);
    }

    #[test]
    fn caller_keys_reach_the_agent_as_rfc4733_events_on_the_audio_stream() {
        let mut rig = Rig::new(
            CodecKind::Pcmu,
            CodecKind::Opus,
            true,
            HoldLoop::new(Arc::from(vec![])),
        );
        rig.answer(None);
        for _ in 0..10 {
            rig.step(Some(voice(1)), None);
        }
        // Phone A presses 5 then 9 (6 packets each, 4 ticks of audio between).
        for i in 0..6 {
            rig.step_key('5', i, None);
        }
        for _ in 0..4 {
            rig.step(Some(voice(2)), None);
        }
        for i in 0..6 {
            rig.step_key('9', i, None);
        }
        for _ in 0..40 {
            rig.step(Some(voice(3)), None);
        }
        assert_eq!(rig.digits_b, "59", "agent's phone got both keys once");
        let hs = headers(&rig.to_b);
        let events: Vec<&(RtpHeader, Vec<u8>)> =
            hs.iter().filter(|(h, _)| h.payload_type == 101).collect();
        // Each press: 5 ticks of 100 ms plus three end packets.
        assert_eq!(events.len(), 2 * 8);
        for press in events.chunks(8) {
            let ts = press[0].0.timestamp;
            for (i, (h, payload)) in press.iter().enumerate() {
                assert_eq!(h.marker, i == 0);
                assert_eq!(h.timestamp, ts, "one timestamp per event");
                let duration = u16::from_be_bytes([payload[2], payload[3]]);
                let end = payload[1] & 0x80 != 0;
                let want = 960 * (i as u16 + 1).min(5);
                assert_eq!((end, duration), (i >= 5, want), "packet {i}");
            }
        }
        assert_eq!(events[0].1[0], 5);
        assert_eq!(events[8].1[0], 9);
        // Events take audio's place in the stream: numbering and clock run straight through.
        assert_continuous(&rig.to_b, 960);
    }

    #[test]
    fn keys_become_tones_when_the_agent_leg_has_no_telephone_event() {
        let mut rig = Rig::new(
            CodecKind::Pcma,
            CodecKind::Pcmu,
            false,
            HoldLoop::new(Arc::from(vec![])),
        );
        rig.answer(None);
        for _ in 0..10 {
            rig.step(None, None);
        }
        for i in 0..6 {
            rig.step_key('5', i, None);
        }
        for _ in 0..20 {
            rig.step(None, None);
        }
        assert_eq!(rig.digits_b, "");
        let toned: Vec<&[i16; FRAME_SAMPLES]> = rig
            .heard_b
            .iter()
            .flatten()
            .filter(|f| tone_fraction(&f[..], 770.0) > 0.3 && tone_fraction(&f[..], 1336.0) > 0.3)
            .collect();
        assert_eq!(toned.len(), 5, "100 ms of 770 + 1336 Hz");
        assert!(headers(&rig.to_b).iter().all(|(h, _)| h.payload_type == 0));
    }

    #[test]
    fn whisper_reaches_the_agent_alone_then_the_parties_connect() {
        let hold = HoldLoop::new(tone_clip(400.0, 1000));
        let mut rig = Rig::new(CodecKind::Pcmu, CodecKind::Pcmu, true, hold);
        let caller = ToneGenerator::new(1000.0, 8000.0);
        let agent = ToneGenerator::new(1500.0, 8000.0);
        let (mut caller, mut agent) = (caller, agent);
        // Queued for 1 s: no agent leg at all.
        for _ in 0..50 {
            rig.step(Some(caller.next_frame()), None);
        }
        assert_eq!(rig.bridge.phase(), Phase::Queued);
        assert!(
            !rig.bridge.dtmf(Side::Caller, '1'),
            "no agent to send keys to"
        );
        rig.answer(Some(Player::new(vec![tone_clip(700.0, 600)])));
        assert_eq!(rig.bridge.phase(), Phase::Whisper);
        let answered_at = rig.k as usize;
        for _ in 0..90 {
            rig.step(Some(caller.next_frame()), Some(agent.next_frame()));
        }
        let connected_at = rig
            .said
            .iter()
            .position(|(p, _, _)| *p == Phase::Connected)
            .expect("connected after the whisper");
        assert_eq!(connected_at, answered_at + 30, "600 ms of whisper");
        // Allow 8 ticks for the jitter buffers after each switch.
        let window = |from: usize, to: usize| from + 8..to;
        let a = &rig.heard_a;
        let b = &rig.heard_b;
        assert!(
            window(0, answered_at).all(|k| hears(&a[k], 400.0)),
            "caller: hold while queued"
        );
        assert!(
            window(answered_at, connected_at).all(|k| hears(&a[k], 400.0)),
            "caller: hold during the whisper"
        );
        assert!(
            window(answered_at, connected_at).all(|k| hears(&b[k], 700.0)),
            "agent: whisper"
        );
        assert!(
            window(connected_at, rig.k as usize).all(|k| hears(&a[k], 1500.0)),
            "caller hears the agent"
        );
        assert!(
            window(connected_at, rig.k as usize).all(|k| hears(&b[k], 1000.0)),
            "agent hears the caller"
        );
        assert!(
            (0..connected_at).all(|k| !hears(&a[k], 1500.0)),
            "the agent is not heard early"
        );
        assert!(
            (0..connected_at).all(|k| !hears(&b[k], 1000.0)),
            "the caller is not overheard early"
        );
    }

    #[test]
    fn streams_stay_continuous_from_ivr_prompts_to_bridged_audio() {
        let mut rig = Rig::new(
            CodecKind::Pcmu,
            CodecKind::Pcma,
            true,
            HoldLoop::new(tone_clip(400.0, 300)),
        );
        // The IVR plays a prompt on the caller leg the ordinary way (the shard's send_frame).
        let mut prompt = Player::new(vec![tone_clip(600.0, 200)]);
        let mut ivr_packets = Vec::new();
        for _ in 0..10 {
            let now = rig.now();
            let frame = prompt.next_frame();
            let (p, _) = rig.leg_a.send_frame(frame.as_ref(), now).expect("prompt");
            ivr_packets.push(p.to_vec());
            rig.k += 1;
        }
        for _ in 0..20 {
            rig.step(Some(voice(0)), None);
        }
        rig.answer(Some(Player::new(vec![tone_clip(700.0, 100)])));
        for k in 0..30 {
            rig.step(Some(voice(k)), Some(voice(k + 3)));
            if k == 12 {
                // A key in the middle, too.
                assert!(rig.bridge.dtmf(Side::Caller, '#'));
            }
        }
        let mut all = ivr_packets;
        all.extend(rig.to_a.iter().cloned());
        assert_eq!(all.len(), 60);
        assert_continuous(&all, 160);
        assert_continuous(&rig.to_b, 160);
        assert!(headers(&rig.to_b)
            .iter()
            .any(|(h, _)| h.payload_type == 101));
    }

    #[test]
    fn loss_on_one_leg_is_silence_on_the_other_without_a_stall() {
        let mut rig = Rig::new(
            CodecKind::Pcmu,
            CodecKind::Pcmu,
            true,
            HoldLoop::new(Arc::from(vec![])),
        );
        rig.lose_a = |k| (40..50).contains(&k);
        rig.answer(None);
        let mut caller = ToneGenerator::new(1000.0, 8000.0);
        let mut agent = ToneGenerator::new(1500.0, 8000.0);
        for _ in 0..100 {
            rig.step(Some(caller.next_frame()), Some(agent.next_frame()));
        }
        assert_eq!(rig.to_b.len(), 100, "the agent gets a packet every tick");
        assert_eq!(rig.to_a.len(), 100);
        // The caller hears the agent throughout.
        assert!((8..100).all(|k| hears(&rig.heard_a[k], 1500.0)));
        // The agent hears the caller, silence for the lost 200 ms (plus re-buffering), and
        // the caller again; never nothing.
        let b = &rig.heard_b;
        assert!(
            (8..100).all(|k| b[k].is_some()),
            "no gap in the agent's playout"
        );
        let silent: Vec<usize> = (8..100)
            .filter(|&k| b[k].is_some_and(|f| f.iter().all(|&s| s == 0)))
            .collect();
        assert!(
            silent.len() >= 10 && silent.len() <= 14,
            "silent ticks {silent:?}"
        );
        assert!(silent.windows(2).all(|w| w[1] == w[0] + 1), "one stretch");
        assert!((8..100)
            .filter(|k| !silent.contains(k))
            .all(|k| hears(&b[k], 1000.0)));
        // Warmline's caller leg counted the loss as such.
        assert!(rig.leg_a.stats().packets_lost >= 10);
    }

    #[test]
    fn each_side_hears_the_other_through_opus_and_the_recording_has_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rig = Rig::new(
            CodecKind::Pcmu,
            CodecKind::Opus,
            true,
            HoldLoop::new(Arc::from(vec![])),
        );
        rig.answer(None);
        let mut rec = Recorder::create(&dir.path().join("call.wav"), Duration::from_secs(1))
            .expect("recorder");
        let mut caller = ToneGenerator::new(1000.0, 8000.0);
        let mut agent = ToneGenerator::new(1500.0, 8000.0);
        for _ in 0..150 {
            rig.step(Some(caller.next_frame()), Some(agent.next_frame()));
            let (_, left, right) = rig.said.last().expect("tick");
            rec.write(left.as_ref(), right.as_ref()).expect("record");
        }
        let settled = 20..150;
        assert!(
            settled.clone().all(|k| hears(&rig.heard_a[k], 1500.0)),
            "caller hears 1500 Hz"
        );
        assert!(
            settled.clone().all(|k| hears(&rig.heard_b[k], 1000.0)),
            "agent hears 1000 Hz"
        );
        let path = rec.finish().expect("finish");
        let mut reader = hound::WavReader::open(&path).expect("wav");
        let samples: Vec<i16> = reader
            .samples::<i16>()
            .map(|s| s.expect("sample"))
            .collect();
        assert_eq!(samples.len(), 150 * FRAME_SAMPLES * 2);
        let channel =
            |c: usize| -> Vec<i16> { samples.iter().skip(c).step_by(2).copied().collect() };
        let (left, right) = (channel(0), channel(1));
        for k in settled {
            let l = &left[k * FRAME_SAMPLES..(k + 1) * FRAME_SAMPLES];
            let r = &right[k * FRAME_SAMPLES..(k + 1) * FRAME_SAMPLES];
            assert!(
                tone_fraction(l, 1000.0) > 0.8 && tone_fraction(l, 1500.0) < 0.05,
                "left {k}"
            );
            assert!(
                tone_fraction(r, 1500.0) > 0.8 && tone_fraction(r, 1000.0) < 0.05,
                "right {k}"
            );
        }
    }

    #[test]
    fn hold_loop_inserts_the_announcement_between_loops_without_gaps() {
        let music: Arc<[i16]> = Arc::from(vec![1i16; 400]);
        let mut hold = HoldLoop::new(music);
        let mut out: Vec<i16> = (0..3).flat_map(|_| hold.next_frame()).collect();
        // Position known now: played after the current loop, not over it.
        hold.set_announcement(vec![Arc::from(vec![2i16; 100]), Arc::from(vec![3i16; 60])]);
        out.extend((0..10).flat_map(|_| hold.next_frame()));
        let runs: Vec<(i16, usize)> = out
            .chunk_by(|a, b| a == b)
            .map(|r| (r[0], r.len()))
            .collect();
        assert_eq!(
            &runs[..7],
            &[
                (1, 800),
                (2, 100),
                (3, 60),
                (1, 400),
                (2, 100),
                (3, 60),
                (1, 400)
            ],
            "music, announcement, music... with no silence in between"
        );
        assert_eq!(hold.loops(), 4);
        hold.set_announcement(Vec::new());
        let rest: Vec<i16> = (0..20).flat_map(|_| hold.next_frame()).collect();
        assert!(rest.iter().all(|&s| s == 1), "music only once cleared");

        let mut opening =
            HoldLoop::with_announcement(Arc::from(vec![1i16; 10]), vec![Arc::from(vec![4i16; 5])]);
        assert!(opening.announcing());
        assert_eq!(
            &opening.next_frame()[..20],
            &[4, 4, 4, 4, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4]
        );
        let mut empty = HoldLoop::with_announcement(Arc::from(vec![]), vec![Arc::from(vec![])]);
        assert_eq!(
            empty.next_frame(),
            [0; FRAME_SAMPLES],
            "empty clips: silence, no hang"
        );
    }

    #[test]
    fn agent_leaving_puts_the_caller_back_on_hold_and_drops_pending_keys() {
        let mut rig = Rig::new(
            CodecKind::Pcmu,
            CodecKind::Pcmu,
            true,
            HoldLoop::new(tone_clip(400.0, 500)),
        );
        rig.answer(None);
        for _ in 0..10 {
            rig.step(None, Some(ToneGenerator::new(1500.0, 8000.0).next_frame()));
        }
        assert!(rig.bridge.dtmf(Side::Agent, '3'));
        assert!(!rig.bridge.dtmf(Side::Agent, 'x'), "not a key");
        rig.bridge.agent_left();
        rig.agent_up = false;
        for _ in 0..20 {
            rig.step(None, None);
        }
        assert_eq!(rig.bridge.phase(), Phase::Queued);
        assert!(
            (18..30).all(|k| hears(&rig.heard_a[k], 400.0)),
            "hold music again"
        );
        assert_eq!(rig.digits_a, "", "the key was dropped with the agent");
        assert_continuous(&rig.to_a, 160);
        // connect() only ends a whisper.
        rig.bridge.connect();
        assert_eq!(rig.bridge.phase(), Phase::Queued);
    }

    #[test]
    fn dtmf_queue_is_bounded_and_timing_is_clamped() {
        let mut regen = KeyRegenerator::default();
        for _ in 0..MAX_QUEUED_KEYS {
            assert!(regen.push('1'));
        }
        assert!(!regen.push('1'), "queue full");
        assert_eq!(ticks(Duration::ZERO), 2);
        assert_eq!(ticks(Duration::from_secs(60)), 50);
        assert_eq!(ticks(Duration::from_millis(90)), 5);
        // The longest press on a 48 kHz leg still fits the 16-bit duration field.
        let cfg = BridgeConfig {
            dtmf_duration: Duration::from_secs(5),
            ..BridgeConfig::default()
        };
        let leg = config(CodecKind::Opus, phone_b(), true);
        let mut last = None;
        while let Some(Inject::Event { payload, .. }) = regen.next(&cfg, &leg) {
            last = Some(payload);
            if payload[1] & 0x80 != 0 {
                break;
            }
        }
        let payload = last.expect("an event");
        assert_eq!(u16::from_be_bytes([payload[2], payload[3]]), 48_000);
    }

    #[test]
    fn srtp_caller_leg_bridges_to_a_plain_agent_leg() {
        use crate::media::srtp::{SrtpKey, SrtpKeys, SrtpSuite};
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (phone_key, leg_key) = (SrtpKey::generate(suite), SrtpKey::generate(suite));
        let keys = |local: &SrtpKey, remote: &SrtpKey| SrtpKeys {
            tag: 1,
            suite,
            local: local.clone(),
            remote: remote.clone(),
        };
        let mut rig = Rig::new(
            CodecKind::Pcmu,
            CodecKind::Pcma,
            true,
            HoldLoop::new(Arc::from(vec![0i16; 0])),
        );
        let mut c = rig.phone_a.config().clone();
        c.srtp = Some(keys(&phone_key, &leg_key));
        rig.phone_a.update(c).expect("phone A");
        let mut c = rig.leg_a.config().clone();
        c.srtp = Some(keys(&leg_key, &phone_key));
        rig.leg_a.update(c).expect("leg A");
        rig.answer(None);
        let frame = |freq: f64| {
            let clip = tone_clip(freq, 20);
            let mut f = [0i16; FRAME_SAMPLES];
            for (d, s) in f.iter_mut().zip(clip.iter()) {
                *d = *s;
            }
            f
        };
        for _ in 0..50 {
            rig.step(Some(frame(440.0)), Some(frame(1000.0)));
        }
        for i in 0..6 {
            rig.step_key('7', i, None);
        }
        for _ in 0..20 {
            rig.step(None, None);
        }
        let heard =
            |v: &[Option<[i16; FRAME_SAMPLES]>], f| v.iter().filter(|x| hears(x, f)).count();
        assert!(
            heard(&rig.heard_b, 440.0) > 30,
            "agent hears the SRTP caller"
        );
        assert!(
            heard(&rig.heard_a, 1000.0) > 30,
            "SRTP caller hears the agent"
        );
        assert_eq!(
            rig.digits_b, "7",
            "key from the SRTP leg regenerated on the plain one"
        );
        // The caller leg's packets carry the 80-bit tag; the agent leg's are plain RTP.
        assert!(rig.to_a.iter().all(|p| p.len() == 12 + 160 + 10));
        for (h, payload) in headers(&rig.to_b) {
            let len = if h.payload_type == 101 { 4 } else { 160 };
            assert_eq!(payload.len(), len, "plain packet to the agent: {h:?}");
        }
        let s = rig.leg_a.stats();
        assert_eq!((s.srtp_suite, s.srtp_auth_failures), (Some(suite), 0));
        assert_eq!(rig.leg_b.stats().srtp_suite, None);
    }
}
