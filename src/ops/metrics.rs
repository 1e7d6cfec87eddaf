//! Process-wide counters, exposed as Prometheus text on `[metrics] listen` (GET /metrics) and
//! summarised in the periodic `media stats` log line that the benchmark reads.
//!
//! The text format is written by hand (it is a few lines per family) instead of through the
//! `prometheus-client` registry: the hot counters are plain atomics that the media shard threads
//! and call tasks bump without a registry handle, and labels that come from the database
//! (campaign names) are read at scrape time.
//!
//! Hooks for other modules (each is one call at the place the event happens):
//! - calls: [`record_call_end`] (direction, CDR outcome) when a call's CDR is closed;
//! - RTP: [`record_slot`] (sent, late), [`add_rtp_received`], [`add_rtp_lost`],
//!   [`add_srtp_call`] (suite, packets dropped by SRTP checks);
//! - speech: [`asr_stream_started`] / [`asr_stream_finished`], [`observe_asr_latency`],
//!   [`tts_cache_hit`] / [`tts_cache_miss`];
//! - dialer: [`fatigue_skip`], trunk state via [`set_trunk_registered`] / [`set_trunk_backoff`];
//! - SIP: [`set_sip_counters`] registers a getter of [`SipCounters`] once at start-up.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub static CALLS_TOTAL: AtomicU64 = AtomicU64::new(0);
pub static FRAMES_SENT: AtomicU64 = AtomicU64::new(0);
/// Frames sent more than 10 ms / 20 ms after their slot on the call's 20 ms media clock.
pub static FRAMES_LATE_10MS: AtomicU64 = AtomicU64::new(0);
pub static FRAMES_LATE_20MS: AtomicU64 = AtomicU64::new(0);
pub static MAX_LATENESS_US: AtomicU64 = AtomicU64::new(0);
/// Inbound calls refused because `sip.max_calls` was reached / because the appliance is stopping.
pub static CALLS_REJECTED_LIMIT: AtomicU64 = AtomicU64::new(0);
pub static CALLS_REJECTED_DRAINING: AtomicU64 = AtomicU64::new(0);
pub static RTP_RECEIVED: AtomicU64 = AtomicU64::new(0);
pub static RTP_LOST: AtomicU64 = AtomicU64::new(0);
/// Calls whose media was SRTP; SRTP/SRTCP packets dropped (authentication, replay).
pub static SRTP_CALLS: AtomicU64 = AtomicU64::new(0);
pub static SRTP_AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
pub static SRTP_REPLAYS: AtomicU64 = AtomicU64::new(0);
pub static ASR_BUSY: AtomicI64 = AtomicI64::new(0);
pub static TTS_CACHE_HITS: AtomicU64 = AtomicU64::new(0);
pub static TTS_CACHE_MISSES: AtomicU64 = AtomicU64::new(0);
pub static FATIGUE_SKIPS: AtomicU64 = AtomicU64::new(0);
pub static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
pub static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Upper bounds (seconds) of the ASR latency buckets: end of speech to transcript.
const ASR_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];
static ASR_BUCKET_COUNTS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static ASR_COUNT: AtomicU64 = AtomicU64::new(0);
static ASR_SUM_US: AtomicU64 = AtomicU64::new(0);

/// Ended calls by (direction, outcome).
static CALLS_ENDED: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

/// What the status command and the metrics show per trunk.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TrunkRuntime {
    /// `None` until a REGISTER for this trunk got a final answer (or it does not register).
    pub registered: Option<bool>,
    /// Seconds the dialer waits before using the trunk again after a 503 (0: none).
    pub backoff_s: u64,
}
static TRUNKS: Mutex<BTreeMap<String, TrunkRuntime>> = Mutex::new(BTreeMap::new());

/// Counters kept by the SIP layer, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SipCounters {
    pub malformed: u64,
    pub auth_failures: u64,
    pub rate_limited: u64,
}
static SIP_COUNTERS: OnceLock<fn() -> SipCounters> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records how late one media tick ran.
pub fn record_tick(lateness: Duration) {
    FRAMES_SENT.fetch_add(1, Ordering::Relaxed);
    let us = lateness.as_micros().min(u64::MAX as u128) as u64;
    if us > 10_000 {
        FRAMES_LATE_10MS.fetch_add(1, Ordering::Relaxed);
        if us > 20_000 {
            FRAMES_LATE_20MS.fetch_add(1, Ordering::Relaxed);
        }
    }
    MAX_LATENESS_US.fetch_max(us, Ordering::Relaxed);
}

/// Records one media-clock slot: `frames` frames sent, how many were more than 10 ms / 20 ms
/// after their slot, and the latest one (µs). One update per slot instead of one per frame
/// keeps the shard threads from contending on these counters.
pub fn record_slot(frames: u64, late_10ms: u64, late_20ms: u64, max_lateness_us: u64) {
    if frames == 0 {
        return;
    }
    FRAMES_SENT.fetch_add(frames, Ordering::Relaxed);
    if late_10ms > 0 {
        FRAMES_LATE_10MS.fetch_add(late_10ms, Ordering::Relaxed);
    }
    if late_20ms > 0 {
        FRAMES_LATE_20MS.fetch_add(late_20ms, Ordering::Relaxed);
    }
    MAX_LATENESS_US.fetch_max(max_lateness_us, Ordering::Relaxed);
}

/// A call's CDR was closed with this outcome ("completed", "opted-out", "no-answer", …).
pub fn record_call_end(direction: &str, outcome: &str) {
    *lock(&CALLS_ENDED)
        .entry((direction.to_string(), outcome.to_string()))
        .or_insert(0) += 1;
}

/// RTP packets received from callers (add per call at its end, or in batches).
pub fn add_rtp_received(packets: u64) {
    RTP_RECEIVED.fetch_add(packets, Ordering::Relaxed);
}

/// RTP packets the jitter buffer found missing (sequence gaps never filled).
pub fn add_rtp_lost(packets: u64) {
    RTP_LOST.fetch_add(packets, Ordering::Relaxed);
}

/// A call whose media was SRTP ended: its packets dropped by authentication and replay checks.
pub fn add_srtp_call(auth_failures: u64, replays: u64) {
    SRTP_CALLS.fetch_add(1, Ordering::Relaxed);
    SRTP_AUTH_FAILURES.fetch_add(auth_failures, Ordering::Relaxed);
    SRTP_REPLAYS.fetch_add(replays, Ordering::Relaxed);
}

/// A recogniser started work on a caller's utterance.
pub fn asr_stream_started() {
    ASR_BUSY.fetch_add(1, Ordering::Relaxed);
}

/// A recogniser finished (result, error or cancelled): pairs with [`asr_stream_started`].
pub fn asr_stream_finished() {
    ASR_BUSY.fetch_sub(1, Ordering::Relaxed);
}

/// Time from the end of the caller's speech to the transcript.
pub fn observe_asr_latency(latency: Duration) {
    let secs = latency.as_secs_f64();
    for (bound, count) in ASR_BUCKETS.iter().zip(ASR_BUCKET_COUNTS.iter()) {
        if secs <= *bound {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    ASR_COUNT.fetch_add(1, Ordering::Relaxed);
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    ASR_SUM_US.fetch_add(us, Ordering::Relaxed);
}

pub fn tts_cache_hit() {
    TTS_CACHE_HITS.fetch_add(1, Ordering::Relaxed);
}

pub fn tts_cache_miss() {
    TTS_CACHE_MISSES.fetch_add(1, Ordering::Relaxed);
}

/// The dialer skipped a contact because of the fatigue rule.
pub fn fatigue_skip() {
    FATIGUE_SKIPS.fetch_add(1, Ordering::Relaxed);
}

/// A trunk registration got a final answer: `true` on 2xx, `false` on failure.
pub fn set_trunk_registered(trunk: &str, registered: bool) {
    lock(&TRUNKS)
        .entry(trunk.to_string())
        .or_default()
        .registered = Some(registered);
}

/// The dialer's current back-off for a trunk (zero when it is usable again).
pub fn set_trunk_backoff(trunk: &str, backoff: Duration) {
    lock(&TRUNKS)
        .entry(trunk.to_string())
        .or_default()
        .backoff_s = backoff.as_secs();
}

/// What the SIP hooks last reported for each trunk.
pub fn trunk_runtime() -> BTreeMap<String, TrunkRuntime> {
    lock(&TRUNKS).clone()
}

/// Registers the SIP layer's counter getter (first call wins; later ones are ignored).
pub fn set_sip_counters(getter: fn() -> SipCounters) {
    let _ = SIP_COUNTERS.set(getter);
}

/// Contacts by state and attempts by outcome of one campaign, for the gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CampaignGauge {
    pub name: String,
    pub status: String,
    pub contacts_by_state: BTreeMap<String, i64>,
    pub attempts_by_outcome: BTreeMap<String, i64>,
}

/// Values read at scrape time from the running appliance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    pub calls_active: u64,
    pub dialer_in_flight: u64,
    pub draining: bool,
    pub campaigns: Vec<CampaignGauge>,
}

/// Escapes a label value (backslash, double quote, newline) per the exposition format.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// The whole exposition: the process-wide counters plus `live`.
pub fn render(live: &Live) -> String {
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut o = String::with_capacity(4096);
    family(
        &mut o,
        "warmline_build_info",
        "gauge",
        "Version of the running binary.",
    );
    sample(
        &mut o,
        "warmline_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    family(
        &mut o,
        "warmline_calls_active",
        "gauge",
        "Inbound calls up or being set up.",
    );
    sample(&mut o, "warmline_calls_active", &[], live.calls_active);
    family(
        &mut o,
        "warmline_calls_total",
        "counter",
        "Inbound calls accepted (rate() of this is the inbound CPS).",
    );
    sample(&mut o, "warmline_calls_total", &[], c(&CALLS_TOTAL));
    family(
        &mut o,
        "warmline_calls_rejected_total",
        "counter",
        "Inbound calls refused with 503, by reason.",
    );
    sample(
        &mut o,
        "warmline_calls_rejected_total",
        &[("reason", "limit")],
        c(&CALLS_REJECTED_LIMIT),
    );
    sample(
        &mut o,
        "warmline_calls_rejected_total",
        &[("reason", "draining")],
        c(&CALLS_REJECTED_DRAINING),
    );
    family(
        &mut o,
        "warmline_calls_ended_total",
        "counter",
        "Calls ended, by direction and CDR outcome.",
    );
    for ((direction, outcome), n) in lock(&CALLS_ENDED).iter() {
        sample(
            &mut o,
            "warmline_calls_ended_total",
            &[("direction", direction), ("outcome", outcome)],
            n,
        );
    }
    family(
        &mut o,
        "warmline_watchlist_hits_total",
        "counter",
        "Calls whose caller matched a fraud-watchlist voiceprint.",
    );
    sample(
        &mut o,
        "warmline_watchlist_hits_total",
        &[],
        c(&super::call::WATCHLIST_HITS),
    );
    family(
        &mut o,
        "warmline_draining",
        "gauge",
        "1 while stopping: new calls get 503.",
    );
    sample(&mut o, "warmline_draining", &[], u8::from(live.draining));
    family(
        &mut o,
        "warmline_rtp_frames_sent_total",
        "counter",
        "RTP frames sent on the 20 ms media clock.",
    );
    sample(
        &mut o,
        "warmline_rtp_frames_sent_total",
        &[],
        c(&FRAMES_SENT),
    );
    family(
        &mut o,
        "warmline_rtp_frames_late_total",
        "counter",
        "RTP frames sent later than their slot by more than `over`.",
    );
    sample(
        &mut o,
        "warmline_rtp_frames_late_total",
        &[("over", "10ms")],
        c(&FRAMES_LATE_10MS),
    );
    sample(
        &mut o,
        "warmline_rtp_frames_late_total",
        &[("over", "20ms")],
        c(&FRAMES_LATE_20MS),
    );
    family(
        &mut o,
        "warmline_rtp_packets_received_total",
        "counter",
        "RTP packets received from the far ends.",
    );
    sample(
        &mut o,
        "warmline_rtp_packets_received_total",
        &[],
        c(&RTP_RECEIVED),
    );
    family(
        &mut o,
        "warmline_rtp_packets_lost_total",
        "counter",
        "RTP packets missing at the jitter buffer.",
    );
    sample(&mut o, "warmline_rtp_packets_lost_total", &[], c(&RTP_LOST));
    family(
        &mut o,
        "warmline_srtp_calls_total",
        "counter",
        "Ended calls whose media was SRTP (SDES).",
    );
    sample(&mut o, "warmline_srtp_calls_total", &[], c(&SRTP_CALLS));
    family(
        &mut o,
        "warmline_srtp_packets_dropped_total",
        "counter",
        "SRTP/SRTCP packets dropped: failed authentication (wrong key, tampering) or replayed.",
    );
    sample(
        &mut o,
        "warmline_srtp_packets_dropped_total",
        &[("reason", "auth")],
        c(&SRTP_AUTH_FAILURES),
    );
    sample(
        &mut o,
        "warmline_srtp_packets_dropped_total",
        &[("reason", "replay")],
        c(&SRTP_REPLAYS),
    );
    family(
        &mut o,
        "warmline_asr_streams_busy",
        "gauge",
        "Recognisers working on an utterance now.",
    );
    sample(
        &mut o,
        "warmline_asr_streams_busy",
        &[],
        ASR_BUSY.load(Ordering::Relaxed).max(0),
    );
    family(
        &mut o,
        "warmline_asr_latency_seconds",
        "histogram",
        "End of the caller's speech to the transcript.",
    );
    for (bound, count) in ASR_BUCKETS.iter().zip(ASR_BUCKET_COUNTS.iter()) {
        sample(
            &mut o,
            "warmline_asr_latency_seconds_bucket",
            &[("le", &bound.to_string())],
            c(count),
        );
    }
    let count = c(&ASR_COUNT);
    sample(
        &mut o,
        "warmline_asr_latency_seconds_bucket",
        &[("le", "+Inf")],
        count,
    );
    sample(
        &mut o,
        "warmline_asr_latency_seconds_sum",
        &[],
        c(&ASR_SUM_US) as f64 / 1e6,
    );
    sample(&mut o, "warmline_asr_latency_seconds_count", &[], count);
    family(
        &mut o,
        "warmline_tts_cache_total",
        "counter",
        "Rendered-prompt cache lookups.",
    );
    sample(
        &mut o,
        "warmline_tts_cache_total",
        &[("result", "hit")],
        c(&TTS_CACHE_HITS),
    );
    sample(
        &mut o,
        "warmline_tts_cache_total",
        &[("result", "miss")],
        c(&TTS_CACHE_MISSES),
    );
    family(
        &mut o,
        "warmline_dialer_in_flight",
        "gauge",
        "Outbound calls started and not yet recorded.",
    );
    sample(
        &mut o,
        "warmline_dialer_in_flight",
        &[],
        live.dialer_in_flight,
    );
    family(
        &mut o,
        "warmline_fatigue_skips_total",
        "counter",
        "Contacts the dialer skipped because of the fatigue rule.",
    );
    sample(
        &mut o,
        "warmline_fatigue_skips_total",
        &[],
        c(&FATIGUE_SKIPS),
    );
    family(
        &mut o,
        "warmline_campaign_contacts",
        "gauge",
        "Contacts of each campaign by state (from the database, cached a few seconds).",
    );
    for g in &live.campaigns {
        for (state, n) in &g.contacts_by_state {
            sample(
                &mut o,
                "warmline_campaign_contacts",
                &[("campaign", &g.name), ("state", state)],
                n,
            );
        }
    }
    family(
        &mut o,
        "warmline_campaign_attempts",
        "gauge",
        "Attempts of each campaign by outcome.",
    );
    for g in &live.campaigns {
        for (outcome, n) in &g.attempts_by_outcome {
            sample(
                &mut o,
                "warmline_campaign_attempts",
                &[("campaign", &g.name), ("outcome", outcome)],
                n,
            );
        }
    }
    family(
        &mut o,
        "warmline_campaign_running",
        "gauge",
        "1 for a running campaign, 0 otherwise (label status).",
    );
    for g in &live.campaigns {
        sample(
            &mut o,
            "warmline_campaign_running",
            &[("campaign", &g.name), ("status", &g.status)],
            u8::from(g.status == "running"),
        );
    }
    family(
        &mut o,
        "warmline_trunk_registered",
        "gauge",
        "1 when the trunk's registration is current (only trunks that register).",
    );
    for (name, t) in lock(&TRUNKS).iter() {
        if let Some(r) = t.registered {
            sample(
                &mut o,
                "warmline_trunk_registered",
                &[("trunk", name)],
                u8::from(r),
            );
        }
    }
    family(
        &mut o,
        "warmline_trunk_backoff_seconds",
        "gauge",
        "Back-off after a 503 from the trunk.",
    );
    for (name, t) in lock(&TRUNKS).iter() {
        sample(
            &mut o,
            "warmline_trunk_backoff_seconds",
            &[("trunk", name)],
            t.backoff_s,
        );
    }
    if let Some(get) = SIP_COUNTERS.get() {
        let s = get();
        for (name, help, v) in [
            (
                "warmline_sip_malformed_total",
                "SIP messages that could not be parsed.",
                s.malformed,
            ),
            (
                "warmline_sip_auth_failures_total",
                "Digest authentications that failed.",
                s.auth_failures,
            ),
            (
                "warmline_sip_rate_limited_total",
                "SIP requests dropped or refused by the rate limiter.",
                s.rate_limited,
            ),
        ] {
            family(&mut o, name, "counter", help);
            sample(&mut o, name, &[], v);
        }
    }
    family(
        &mut o,
        "warmline_config_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP or `warmline reload`), by result.",
    );
    sample(
        &mut o,
        "warmline_config_reloads_total",
        &[("result", "ok")],
        c(&RELOADS_OK),
    );
    sample(
        &mut o,
        "warmline_config_reloads_total",
        &[("result", "error")],
        c(&RELOADS_FAILED),
    );
    o
}

/// Logs one line every `every` while anything happened since the last one.
pub async fn log_periodically(every: Duration, active: &std::sync::atomic::AtomicUsize) {
    let mut last = 0u64;
    let mut iv = tokio::time::interval(every);
    loop {
        iv.tick().await;
        let frames = FRAMES_SENT.load(Ordering::Relaxed);
        if frames == last {
            continue;
        }
        last = frames;
        tracing::info!(
            active_calls = active.load(Ordering::Relaxed),
            calls_total = CALLS_TOTAL.load(Ordering::Relaxed),
            frames_sent = frames,
            late_10ms = FRAMES_LATE_10MS.load(Ordering::Relaxed),
            late_20ms = FRAMES_LATE_20MS.load(Ordering::Relaxed),
            max_lateness_ms = MAX_LATENESS_US.swap(0, Ordering::Relaxed) as f64 / 1000.0,
            "media stats"
        );
    }
}

/// Where `GET /metrics` gets its live values (the database part is cached for `ttl`).
pub struct Exporter {
    live: Box<dyn Fn() -> Live + Send + Sync>,
    store: crate::store::Store,
    ttl: Duration,
    cache: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<CampaignGauge>)>>,
}

impl Exporter {
    pub fn new(
        store: crate::store::Store,
        live: Box<dyn Fn() -> Live + Send + Sync>,
        ttl: Duration,
    ) -> Exporter {
        Exporter {
            live,
            store,
            ttl,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Campaign gauges, read from the store at most once per `ttl` however often it is scraped.
    pub async fn campaigns(&self) -> Vec<CampaignGauge> {
        let mut cache = self.cache.lock().await;
        if let Some((at, gauges)) = cache.as_ref() {
            if at.elapsed() < self.ttl {
                return gauges.clone();
            }
        }
        let mut gauges = Vec::new();
        match self.store.campaigns().await {
            Ok(rows) => {
                for row in rows {
                    let counts = match self.store.campaign_counts(&row.id).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(campaign = %row.name, error = %e, "metrics: campaign counts");
                            continue;
                        }
                    };
                    gauges.push(CampaignGauge {
                        name: row.name,
                        status: row.status.as_str().to_string(),
                        contacts_by_state: counts.contacts_by_state,
                        attempts_by_outcome: counts.attempts_by_outcome,
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read campaigns"),
        }
        *cache = Some((tokio::time::Instant::now(), gauges.clone()));
        gauges
    }

    pub async fn scrape(&self) -> String {
        let mut live = (self.live)();
        live.campaigns = self.campaigns().await;
        render(&live)
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped; anything else gets 404.
pub async fn serve_http(listener: tokio::net::TcpListener, exporter: std::sync::Arc<Exporter>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            if let Err(e) = answer_http(stream, &exporter).await {
                tracing::debug!(peer = %peer, error = %e, "metrics: request failed");
            }
        });
    }
}

/// The request line of an HTTP request head: (method, path).
pub fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = std::str::from_utf8(head.get(..end)?).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

async fn answer_http(
    mut stream: tokio::net::TcpStream,
    exporter: &Exporter,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    // A slow or silent client gets 5 s and 8 KiB for its request head, then is dropped.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > 8192 {
                return Ok(());
            }
        }
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let (status, ctype, body) = match parse_request_line(&head) {
        Some(("GET", "/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            exporter.scrape().await,
        ),
        Some(("GET", _)) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        Some(_) => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_types_and_escaped_labels() {
        record_call_end("inbound", "completed");
        let live = Live {
            calls_active: 3,
            dialer_in_flight: 1,
            draining: false,
            campaigns: vec![CampaignGauge {
                name: "card \"renewal\"\nQ3".into(),
                status: "running".into(),
                contacts_by_state: [("pending".to_string(), 7)].into_iter().collect(),
                attempts_by_outcome: [("answered".to_string(), 2)].into_iter().collect(),
            }],
        };
        let text = render(&live);
        assert!(text.contains("# TYPE warmline_calls_active gauge\nwarmline_calls_active 3\n"));
        assert!(text.contains("warmline_dialer_in_flight 1\n"));
        assert!(text.contains(
            "warmline_campaign_contacts{campaign=\"card \\\"renewal\\\"\\nQ3\",state=\"pending\"} 7\n"
        ));
        assert!(text.contains(
            "warmline_campaign_running{campaign=\"card \\\"renewal\\\"\\nQ3\",status=\"running\"} 1\n"
        ));
        let ended = text
            .lines()
            .find(|l| {
                l.starts_with(
                    "warmline_calls_ended_total{direction=\"inbound\",outcome=\"completed\"}",
                )
            })
            .unwrap();
        let n: u64 = ended.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1);
        // Every sample line belongs to a family declared before it.
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| declared.contains(*b))
                    .unwrap_or(name);
                assert!(declared.contains(base), "{l}");
            }
        }
    }

    #[test]
    fn asr_histogram_buckets_are_cumulative() {
        let before = render(&Live::default());
        let bucket = |text: &str, le: &str| -> u64 {
            let prefix = format!("warmline_asr_latency_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap()
                .parse()
                .unwrap()
        };
        observe_asr_latency(Duration::from_millis(300));
        let after = render(&Live::default());
        assert_eq!(bucket(&after, "0.25"), bucket(&before, "0.25"));
        assert!(bucket(&after, "0.5") > bucket(&before, "0.5"));
        assert!(bucket(&after, "10") > bucket(&before, "10"));
        assert!(bucket(&after, "+Inf") > bucket(&before, "+Inf"));
    }

    #[test]
    fn request_line_parsing() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line(b"GET"), None);
        assert_eq!(parse_request_line(b"\xff\xfe /\r\n"), None);
        assert_eq!(parse_request_line(b"\r\n"), None);
    }

    #[test]
    fn trunk_state_hooks_show_in_status_and_metrics() {
        set_trunk_registered("metrics-test-trunk", true);
        set_trunk_backoff("metrics-test-trunk", Duration::from_secs(4));
        let t = trunk_runtime().remove("metrics-test-trunk").unwrap();
        assert_eq!((t.registered, t.backoff_s), (Some(true), 4));
        let text = render(&Live::default());
        assert!(text.contains("warmline_trunk_registered{trunk=\"metrics-test-trunk\"} 1\n"));
        assert!(text.contains("warmline_trunk_backoff_seconds{trunk=\"metrics-test-trunk\"} 4\n"));
    }
}
