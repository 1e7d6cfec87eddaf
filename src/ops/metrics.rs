//! Process-wide counters. The operations issue exposes them as Prometheus text; today they feed the
//! periodic `media stats` log line that the benchmark reads.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub static CALLS_TOTAL: AtomicU64 = AtomicU64::new(0);
pub static FRAMES_SENT: AtomicU64 = AtomicU64::new(0);
/// Frames sent more than 10 ms / 20 ms after their slot on the call's 20 ms media clock.
pub static FRAMES_LATE_10MS: AtomicU64 = AtomicU64::new(0);
pub static FRAMES_LATE_20MS: AtomicU64 = AtomicU64::new(0);
pub static MAX_LATENESS_US: AtomicU64 = AtomicU64::new(0);

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
