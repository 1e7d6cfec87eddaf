#!/usr/bin/env bash
# Voiceprint benchmarks of a release build. Writes docs/benchmarks-voiceprint.txt (raw output and
# machine load); docs/voiceprints.md ("Measured") summarises it.
#
#   scripts/bench-voiceprint.sh
#   OUT=/tmp/vp.txt TOP_K=0 scripts/bench-voiceprint.sh
#
# (a) extraction latency for 3 s and 10 s of 8 kHz speech and model load time: the #[ignore]d
#     test speech::voiceprint::tests::measure_voiceprint_latency (release);
# (b) error rates: `warmline voiceprint eval` over the real speakers of the PyPI sdist
#     tortoise-tts==3.0.0 (.cache/speech/tortoise-voices), clean and through an 8 kHz G.711 µ-law
#     line, raw cosine and cohort-normalised (S-norm with TOP_K=0, AS-norm with TOP_K=k).
#
# Needs scripts/setup-voiceprint.sh to have run. Takes about 10 minutes on 2 idle cores; the load
# average is recorded before and after, since the latencies scale with it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/benchmarks-voiceprint.txt}
JOBS=${JOBS:-1}
TOP_K=${TOP_K:-0}

scripts/setup-voiceprint.sh

{
  echo "# scripts/bench-voiceprint.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
  echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT"

cargo build --release -j"$JOBS" --bin warmline
cargo test --release -j"$JOBS" --lib measure_voiceprint_latency -- --ignored --nocapture 2>/dev/null |
  grep -E '^(models loaded|first extraction|[0-9]+ s of audio)' | sed 's/^/bench: /' | tee -a "$OUT"

target/release/warmline voiceprint eval .cache/speech/tortoise-voices --top-k "$TOP_K" 2>/dev/null |
  tee -a "$OUT"

echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT"
echo "bench-voiceprint: wrote $OUT"
