//! Receive-side jitter buffer.
//!
//! Packets are ordered by extended sequence number (RFC 3550 A.1 style unwrapping).
//! Playout starts once the first packet has waited the target depth and then proceeds one
//! packet per [`JitterBuffer::pop`] (called every 20 ms): the packet due is returned, or
//! `Lost` if later packets exist but it does not, or `Empty` when nothing is buffered (the
//! buffer then re-buffers for the target depth before playing on, which also covers
//! silence suppression / DTX pauses). A packet arriving after its turn is *late* and
//! dropped; one seen before is a *duplicate*. Memory is bounded by `capacity`, and the
//! delay by trimming the oldest packets once they are well past the target depth.
//! Sequence numbers taken by non-audio packets of the same stream (RFC 4733 events, comfort
//! noise) are registered with [`JitterBuffer::push_skip`] and passed over, not lost.
//!
//! With `adaptive` on, the target grows with the measured interarrival jitter (RFC 3550
//! §6.4.1 estimator, three times the jitter) and after every late packet, up to
//! `max_depth`, and shrinks back by one frame per quiet `SHRINK_AFTER`.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A sequence jump beyond this many packets ahead is treated as a possible restart.
const MAX_DROPOUT: i64 = 3000;
/// A sequence jump further back than this is treated as a possible restart.
const MAX_MISORDER: i64 = 100;
/// Start extended sequence numbers here so that packets older than the first never underflow.
const EXT_BASE: u64 = 1 << 32;
/// How long the adaptive target must go without a reason to grow before it shrinks a frame.
const SHRINK_AFTER: Duration = Duration::from_secs(10);
/// Played/lost history kept for telling duplicates from late packets.
const HISTORY_BITS: u64 = 128;

/// Jitter buffer tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitterConfig {
    /// Playout delay to aim for; also the floor of the adaptive target.
    pub target_depth: Duration,
    /// Ceiling of the adaptive target.
    pub max_depth: Duration,
    /// Grow the target with measured jitter and late packets.
    pub adaptive: bool,
    /// RTP clock rate of the stream, used to measure jitter from timestamps.
    pub clock_rate: u32,
    /// Duration of one frame, i.e. the `pop` period.
    pub frame: Duration,
    /// Most packets held at once.
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            target_depth: Duration::from_millis(60),
            max_depth: Duration::from_millis(200),
            adaptive: true,
            clock_rate: 8000,
            frame: Duration::from_millis(20),
            capacity: 50,
        }
    }
}

/// What the buffer has for the current 20 ms tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JitterOutput {
    /// The payload due now.
    Frame(Vec<u8>),
    /// The packet due now never arrived (later ones did): conceal.
    Lost,
    /// Nothing to play (not started, re-buffering, or the remote is silent).
    Empty,
}

/// Counters of what the buffer did with the packets it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub played: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    /// Dropped to bound memory or to pull the delay back towards the target.
    pub trimmed: u64,
    /// Packets far outside the sequence window, ignored unless a restart was confirmed.
    pub out_of_window: u64,
    pub resets: u64,
    /// Sequence numbers of non-audio packets passed over (see `push_skip`).
    pub skipped: u64,
}

struct Entry {
    /// `None` for a sequence number used by a non-audio packet (telephone-event, comfort
    /// noise) of the same stream: played over without taking a tick and without loss.
    payload: Option<Vec<u8>>,
    arrival: Instant,
}

/// See the module documentation.
pub struct JitterBuffer {
    cfg: JitterConfig,
    target: Duration,
    packets: BTreeMap<u64, Entry>,
    highest: Option<u64>,
    next: Option<u64>,
    playing: bool,
    buffering_since: Option<Instant>,
    /// Bit i set: extended sequence `next - 1 - i` was played (not declared lost).
    played_history: u128,
    restart_candidate: Option<u16>,
    /// RFC 3550 jitter estimate in timestamp units, scaled by 16.
    jitter_x16: u64,
    last_transit: Option<(Instant, u32)>,
    last_target_change: Option<Instant>,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(cfg: JitterConfig) -> Self {
        let cfg = JitterConfig {
            frame: cfg.frame.max(Duration::from_millis(1)),
            capacity: cfg.capacity.max(1),
            clock_rate: cfg.clock_rate.max(1),
            max_depth: cfg.max_depth.max(cfg.target_depth),
            ..cfg
        };
        JitterBuffer {
            target: cfg.target_depth,
            cfg,
            packets: BTreeMap::new(),
            highest: None,
            next: None,
            playing: false,
            buffering_since: None,
            played_history: 0,
            restart_candidate: None,
            jitter_x16: 0,
            last_transit: None,
            last_target_change: None,
            stats: JitterStats::default(),
        }
    }

    /// A buffer with the default configuration but the given depth.
    pub fn with_depth(target_depth: Duration) -> Self {
        Self::new(JitterConfig {
            target_depth,
            ..JitterConfig::default()
        })
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Current playout target (grows above the configured depth when adaptive).
    pub fn target_depth(&self) -> Duration {
        self.target
    }

    /// Interarrival jitter estimate (RFC 3550 §6.4.1).
    pub fn jitter(&self) -> Duration {
        let units = self.jitter_x16 / 16;
        Duration::from_micros(units.saturating_mul(1_000_000) / u64::from(self.cfg.clock_rate))
    }

    /// Packets currently held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Forgets the stream (new SSRC, codec change); counters are kept.
    pub fn reset(&mut self) {
        self.packets.clear();
        self.highest = None;
        self.next = None;
        self.playing = false;
        self.buffering_since = None;
        self.played_history = 0;
        self.restart_candidate = None;
        self.last_transit = None;
        self.stats.resets = self.stats.resets.saturating_add(1);
    }

    /// Offers one received audio packet.
    pub fn push(&mut self, seq: u16, ts: u32, payload: &[u8], now: Instant) {
        self.push_entry(seq, ts, Some(payload), now);
    }

    /// Records that `seq` was used by a non-audio packet of the same RTP stream (an RFC 4733
    /// event or comfort noise), so its gap in the audio is neither loss nor a tick.
    pub fn push_skip(&mut self, seq: u16, ts: u32, now: Instant) {
        self.push_entry(seq, ts, None, now);
    }

    fn push_entry(&mut self, seq: u16, ts: u32, payload: Option<&[u8]>, now: Instant) {
        let Some(highest) = self.highest else {
            self.accept(EXT_BASE + u64::from(seq), payload, now);
            if payload.is_some() {
                self.update_jitter(ts, now);
            }
            return;
        };
        let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
        let window_back = MAX_MISORDER.max(self.cfg.capacity as i64);
        if !(-window_back..=MAX_DROPOUT).contains(&delta) {
            // RFC 3550 A.1: a far jump is a restart only if the next packet follows it.
            if self.restart_candidate == Some(seq.wrapping_sub(1)) {
                self.reset();
                self.accept(EXT_BASE + u64::from(seq), payload, now);
            } else {
                self.restart_candidate = Some(seq);
                self.stats.out_of_window = self.stats.out_of_window.saturating_add(1);
            }
            return;
        }
        self.restart_candidate = None;
        let Some(ext) = highest.checked_add_signed(delta) else {
            return;
        };
        if let Some(next) = self.next {
            if ext < next {
                let age = next - 1 - ext;
                if age < HISTORY_BITS && self.played_history & (1u128 << age) != 0 {
                    self.stats.duplicates = self.stats.duplicates.saturating_add(1);
                } else {
                    self.stats.late = self.stats.late.saturating_add(1);
                    self.grow_target(self.target.saturating_add(self.cfg.frame), now);
                }
                return;
            }
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            return;
        }
        if payload.is_some() {
            self.update_jitter(ts, now);
        }
        self.accept(ext, payload, now);
    }

    fn accept(&mut self, ext: u64, payload: Option<&[u8]>, now: Instant) {
        self.stats.received = self.stats.received.saturating_add(1);
        self.packets.insert(
            ext,
            Entry {
                payload: payload.map(<[u8]>::to_vec),
                arrival: now,
            },
        );
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        if !self.playing && self.buffering_since.is_none() {
            self.buffering_since = Some(now);
        }
        while self.packets.len() > self.cfg.capacity {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some((key, _)) = self.packets.pop_first() {
            self.stats.trimmed = self.stats.trimmed.saturating_add(1);
            if let Some(next) = self.next {
                if key >= next {
                    // Everything between the playout point and the trimmed packet is gone too.
                    self.advance_to(key + 1, key - next);
                }
            }
        }
    }

    /// Moves the playout point forward to `ext`; `lost` of the skipped sequence numbers
    /// count as lost (the rest were counted elsewhere).
    fn advance_to(&mut self, ext: u64, lost: u64) {
        if let Some(next) = self.next {
            let skipped = ext.saturating_sub(next);
            self.played_history = self
                .played_history
                .checked_shl(u32::try_from(skipped).unwrap_or(u32::MAX))
                .unwrap_or(0);
        }
        self.stats.lost = self.stats.lost.saturating_add(lost);
        self.next = Some(ext);
    }

    fn update_jitter(&mut self, ts: u32, now: Instant) {
        if let Some((prev_arrival, prev_ts)) = self.last_transit {
            let arrival_units = now
                .saturating_duration_since(prev_arrival)
                .as_micros()
                .saturating_mul(u128::from(self.cfg.clock_rate))
                / 1_000_000;
            let ts_units = i128::from(ts.wrapping_sub(prev_ts) as i32);
            let d = (i128::try_from(arrival_units).unwrap_or(i128::MAX) - ts_units).unsigned_abs();
            let d = u64::try_from(d)
                .unwrap_or(u64::MAX)
                .min(u64::from(u32::MAX));
            // J += (|D| - J) / 16, kept in 16ths.
            self.jitter_x16 = (self.jitter_x16 * 15 / 16).saturating_add(d);
            if self.cfg.adaptive {
                let wanted = self.jitter().saturating_mul(3);
                if wanted > self.target {
                    self.grow_target(wanted, now);
                }
            }
        }
        if self.last_transit.is_none_or(|(t, _)| now >= t) {
            self.last_transit = Some((now, ts));
        }
    }

    fn grow_target(&mut self, wanted: Duration, now: Instant) {
        if !self.cfg.adaptive {
            return;
        }
        let frame = self.cfg.frame.as_micros().max(1);
        let frames = wanted.as_micros().div_ceil(frame);
        let rounded = Duration::from_micros(u64::try_from(frames * frame).unwrap_or(u64::MAX));
        let new_target = rounded.clamp(self.cfg.target_depth, self.cfg.max_depth);
        if new_target > self.target {
            self.target = new_target;
        }
        self.last_target_change = Some(now);
    }

    fn maybe_shrink_target(&mut self, now: Instant) {
        if self.target <= self.cfg.target_depth {
            return;
        }
        let quiet = self
            .last_target_change
            .is_none_or(|t| now.saturating_duration_since(t) >= SHRINK_AFTER);
        let needed = self.jitter().saturating_mul(3);
        if quiet && needed < self.target.saturating_sub(self.cfg.frame) {
            self.target = self
                .target
                .saturating_sub(self.cfg.frame)
                .max(self.cfg.target_depth);
            self.last_target_change = Some(now);
        }
    }

    /// Drops the oldest packets while they are far beyond the target delay, so a burst
    /// after a stall does not leave the call permanently delayed.
    fn trim_latency(&mut self, now: Instant) {
        let slack = self.target.max(Duration::from_millis(60));
        let limit = self.target.saturating_add(slack);
        let frame = self.cfg.frame;
        loop {
            let held = frame.saturating_mul(u32::try_from(self.packets.len()).unwrap_or(u32::MAX));
            let oldest_age = self
                .packets
                .first_key_value()
                .map(|(_, e)| now.saturating_duration_since(e.arrival));
            match oldest_age {
                Some(age) if age > limit && held > limit && self.packets.len() > 1 => {
                    self.drop_oldest()
                }
                _ => break,
            }
        }
    }

    /// Takes what is due for this 20 ms tick.
    pub fn pop(&mut self, now: Instant) -> JitterOutput {
        self.maybe_shrink_target(now);
        if !self.playing {
            let Some(&first) = self.packets.keys().next() else {
                return JitterOutput::Empty;
            };
            let waited = self
                .buffering_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if waited < self.target {
                return JitterOutput::Empty;
            }
            self.playing = true;
            match self.next {
                Some(next) if first > next => self.advance_to(first, first - next),
                Some(_) => {}
                None => self.next = Some(first),
            }
        }
        self.trim_latency(now);
        loop {
            let Some(next) = self.next else {
                return JitterOutput::Empty;
            };
            let Some(entry) = self.packets.remove(&next) else {
                break;
            };
            self.next = Some(next + 1);
            self.played_history = (self.played_history << 1) | 1;
            match entry.payload {
                Some(payload) => {
                    self.stats.played = self.stats.played.saturating_add(1);
                    return JitterOutput::Frame(payload);
                }
                None => self.stats.skipped = self.stats.skipped.saturating_add(1),
            }
        }
        let Some(next) = self.next else {
            return JitterOutput::Empty;
        };
        if !self.packets.is_empty() {
            self.next = Some(next + 1);
            self.played_history <<= 1;
            self.stats.lost = self.stats.lost.saturating_add(1);
            JitterOutput::Lost
        } else {
            self.playing = false;
            self.buffering_since = None;
            JitterOutput::Empty
        }
    }

    /// Payload of the packet the next `pop` will return, if it is already here. After a
    /// `Lost`, this is the packet whose Opus in-band FEC can rebuild the lost one.
    pub fn peek_due(&self) -> Option<&[u8]> {
        let next = self.next?;
        self.packets.get(&next).and_then(|e| e.payload.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS20: Duration = Duration::from_millis(20);

    fn fixed(depth_ms: u64) -> JitterBuffer {
        JitterBuffer::new(JitterConfig {
            target_depth: Duration::from_millis(depth_ms),
            adaptive: false,
            ..JitterConfig::default()
        })
    }

    fn payload(seq: u16) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }

    /// Pops once per 20 ms from `start` for `ticks` ticks, rendering each output.
    fn drain(jb: &mut JitterBuffer, start: Instant, ticks: u32) -> Vec<String> {
        (0..ticks)
            .map(|i| match jb.pop(start + MS20 * i) {
                JitterOutput::Frame(p) => format!("{}", u16::from_be_bytes([p[0], p[1]])),
                JitterOutput::Lost => "lost".into(),
                JitterOutput::Empty => "-".into(),
            })
            .collect()
    }

    #[test]
    fn waits_for_target_depth_then_plays_in_order() {
        let t0 = Instant::now();
        let mut jb = fixed(60);
        for i in 0..5u16 {
            jb.push(i, u32::from(i) * 160, &payload(i), t0 + MS20 * u32::from(i));
        }
        let out = drain(&mut jb, t0, 8);
        assert_eq!(out, ["-", "-", "-", "0", "1", "2", "3", "4"]);
        assert_eq!(jb.stats().played, 5);
    }

    #[test]
    fn reorders_packets() {
        let t0 = Instant::now();
        let mut jb = fixed(40);
        for (k, seq) in [1u16, 0, 3, 2, 5, 4].into_iter().enumerate() {
            jb.push(
                seq,
                u32::from(seq) * 160,
                &payload(seq),
                t0 + Duration::from_millis(5) * k as u32,
            );
        }
        assert_eq!(
            drain(&mut jb, t0 + MS20 * 2, 6),
            ["0", "1", "2", "3", "4", "5"]
        );
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn drops_duplicates_before_and_after_playout() {
        let t0 = Instant::now();
        let mut jb = fixed(20);
        jb.push(10, 0, &payload(10), t0);
        jb.push(10, 0, &payload(10), t0);
        jb.push(11, 160, &payload(11), t0);
        assert_eq!(drain(&mut jb, t0 + MS20, 2), ["10", "11"]);
        jb.push(10, 0, &payload(10), t0 + MS20 * 2);
        let s = jb.stats();
        assert_eq!((s.duplicates, s.late, s.played), (2, 0, 2));
    }

    #[test]
    fn reports_loss_and_counts_late_arrivals() {
        let t0 = Instant::now();
        let mut jb = fixed(40);
        for seq in [0u16, 1, 3, 4] {
            jb.push(
                seq,
                u32::from(seq) * 160,
                &payload(seq),
                t0 + MS20 * u32::from(seq),
            );
        }
        let out = drain(&mut jb, t0 + MS20 * 2, 4);
        assert_eq!(out, ["0", "1", "lost", "3"]);
        // Sequence 2 shows up after its slot passed.
        jb.push(2, 320, &payload(2), t0 + MS20 * 6);
        assert_eq!(drain(&mut jb, t0 + MS20 * 6, 1), ["4"]);
        let s = jb.stats();
        assert_eq!((s.lost, s.late, s.duplicates), (1, 1, 0));
    }

    #[test]
    fn handles_sequence_wrap() {
        let t0 = Instant::now();
        let mut jb = fixed(20);
        let seqs = [65534u16, 0, 65535, 1, 2];
        for (k, seq) in seqs.into_iter().enumerate() {
            jb.push(
                seq,
                0,
                &payload(seq),
                t0 + Duration::from_millis(2) * k as u32,
            );
        }
        assert_eq!(
            drain(&mut jb, t0 + MS20, 5),
            ["65534", "65535", "0", "1", "2"]
        );
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn restart_with_big_jump_resets_after_two_consecutive_packets() {
        let t0 = Instant::now();
        let mut jb = fixed(20);
        for seq in 100..103u16 {
            jb.push(seq, 0, &payload(seq), t0);
        }
        assert_eq!(drain(&mut jb, t0 + MS20, 3), ["100", "101", "102"]);
        // A lone stray packet far away is ignored ...
        let t1 = t0 + MS20 * 3;
        jb.push(40_000, 0, &payload(40_000), t1);
        assert_eq!(jb.stats().out_of_window, 1);
        assert!(jb.is_empty());
        // ... but a new stream (new SSRC or restarted sender) is picked up.
        jb.push(9_000, 0, &payload(9_000), t1);
        jb.push(9_001, 160, &payload(9_001), t1);
        jb.push(9_002, 320, &payload(9_002), t1);
        assert_eq!(jb.stats().resets, 1);
        assert_eq!(drain(&mut jb, t1 + MS20, 3), ["9001", "9002", "-"]);
    }

    #[test]
    fn explicit_reset_for_ssrc_change() {
        let t0 = Instant::now();
        let mut jb = fixed(20);
        jb.push(5, 0, &payload(5), t0);
        jb.reset();
        jb.push(60_000, 0, &payload(60_000), t0);
        assert_eq!(drain(&mut jb, t0 + MS20, 1), ["60000"]);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut jb = fixed(60);
        for i in 0..1000u16 {
            jb.push(i, 0, &[0u8; 160], t0);
            assert!(jb.len() <= JitterConfig::default().capacity);
        }
        assert_eq!(jb.stats().trimmed, 950);
        // Playout continues from the newest packets, not from the trimmed ones.
        assert_eq!(drain(&mut jb, t0 + MS20 * 3, 1).len(), 1);
    }

    #[test]
    fn rebuffers_after_a_pause() {
        let t0 = Instant::now();
        let mut jb = fixed(40);
        jb.push(0, 0, &payload(0), t0);
        jb.push(1, 160, &payload(1), t0 + MS20);
        assert_eq!(drain(&mut jb, t0, 5), ["-", "-", "0", "1", "-"]);
        // Talk resumes after silence suppression; the pause is not loss.
        let t1 = t0 + Duration::from_secs(2);
        jb.push(2, 16_000, &payload(2), t1);
        jb.push(3, 16_160, &payload(3), t1 + MS20);
        assert_eq!(drain(&mut jb, t1, 4), ["-", "-", "2", "3"]);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn delay_recovers_after_a_stall_and_burst() {
        let t0 = Instant::now();
        let mut jb = fixed(40);
        let mut now = t0;
        let mut seq = 0u16;
        // Steady stream, then a 400 ms stall after which 20 packets arrive at once.
        for _ in 0..10 {
            jb.push(seq, 0, &payload(seq), now);
            seq += 1;
            jb.pop(now);
            now += MS20;
        }
        for _ in 0..20 {
            jb.pop(now);
            now += MS20;
        }
        for _ in 0..20 {
            jb.push(seq, 0, &payload(seq), now);
            seq += 1;
        }
        for _ in 0..40 {
            jb.push(seq, 0, &payload(seq), now);
            seq += 1;
            jb.pop(now);
            now += MS20;
        }
        // Without trimming, 20 extra packets (400 ms) would be queued for good.
        assert!(jb.len() <= 5, "still holding {} packets", jb.len());
        assert!(jb.stats().trimmed > 0);
    }

    #[test]
    fn adaptive_target_grows_with_jitter_but_not_past_max() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut fixed_jb = fixed(60);
        // Every other packet is held up 70 ms; the shell hands them over in arrival order.
        let mut arrivals: Vec<(Instant, u32)> = (0..200u32)
            .map(|i| {
                (
                    t0 + MS20 * i + Duration::from_millis(if i % 2 == 0 { 0 } else { 70 }),
                    i,
                )
            })
            .collect();
        arrivals.sort();
        for (arrival, i) in arrivals {
            let seq = i as u16;
            jb.push(seq, i * 160, &payload(seq), arrival);
            fixed_jb.push(seq, i * 160, &payload(seq), arrival);
        }
        assert!(
            jb.jitter() > Duration::from_millis(30),
            "jitter {:?}",
            jb.jitter()
        );
        assert!(jb.target_depth() > Duration::from_millis(60));
        assert!(jb.target_depth() <= Duration::from_millis(200));
        assert_eq!(fixed_jb.target_depth(), Duration::from_millis(60));
    }

    #[test]
    fn peek_due_exposes_the_packet_after_a_loss() {
        let t0 = Instant::now();
        let mut jb = fixed(20);
        jb.push(0, 0, &payload(0), t0);
        jb.push(2, 320, &payload(2), t0);
        assert_eq!(drain(&mut jb, t0 + MS20, 2), ["0", "lost"]);
        assert_eq!(jb.peek_due(), Some(&payload(2)[..]));
    }

    #[test]
    fn skipped_sequence_numbers_are_neither_ticks_nor_loss() {
        let t0 = Instant::now();
        let mut jb = fixed(20);
        jb.push(0, 0, &payload(0), t0);
        jb.push_skip(1, 160, t0);
        jb.push_skip(2, 160, t0);
        jb.push(3, 320, &payload(3), t0);
        assert_eq!(drain(&mut jb, t0 + MS20, 3), ["0", "3", "-"]);
        let s = jb.stats();
        assert_eq!((s.lost, s.skipped, s.played), (0, 2, 2));
    }

    proptest::proptest! {
        #[test]
        fn random_streams_never_panic_and_stay_bounded(
            ops in proptest::collection::vec((proptest::num::u16::ANY, proptest::num::u32::ANY, 0u8..3), 0..300)
        ) {
            let t0 = Instant::now();
            let mut jb = JitterBuffer::new(JitterConfig::default());
            for (i, (seq, ts, op)) in ops.into_iter().enumerate() {
                let now = t0 + Duration::from_millis(7) * i as u32;
                match op {
                    0 => { jb.pop(now); }
                    1 => jb.push_skip(seq, ts, now),
                    _ => jb.push(seq, ts, &[op], now),
                }
                proptest::prop_assert!(jb.len() <= 50);
            }
        }
    }
}
