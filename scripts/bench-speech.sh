#!/usr/bin/env bash
# Speech benchmarks of a release build. Writes docs/benchmarks-speech.txt (raw `bench:` lines
# and machine load); docs/benchmarks.md ("## Speech") summarises them.
#
#   scripts/bench-speech.sh
#   BENCH_ASR_SECONDS=30 OUT=/tmp/speech.txt scripts/bench-speech.sh
#
# The measurements are the #[ignore]d bench_* tests of tests/simulate_cli.rs (release):
#   (a) live recognitions per core: N Vosk streams (Korean small model, the ko-bank menu
#       grammar) on ONE recogniser thread, each fed a 20 ms frame every 20 ms (real time) with
#       an espeak-ng utterance again and again; the largest N whose results still come back
#       within 1 s (p95) of the end of each utterance, none left unfinished, over the run;
#   (b) end-of-speech -> action latency: finish() to the final result (p50/p95) at N=1 and at
#       that largest N; the endpointer's end_silence (600 ms by default) comes before it and is
#       not included;
#   (c) Piper (en_US-joe-medium): real-time factor of whole FAQ answers never rendered before,
#       and time to first audio when a text is streamed sentence by sentence;
#   (d) TTS cache: the demo bank's texts rendered at a first start, read back at a restart, then
#       50 calls asking FAQ questions through the call shell's path (hits/misses).
# Then one `warmline simulate` of tests/data/ko-bank.toml with the release binary.
#
# Needs scripts/setup-vosk.sh and scripts/setup-piper.sh to have run, espeak-ng and sox.
# Takes about 10 minutes. The machine should be otherwise idle: the load average is recorded
# before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/benchmarks-speech.txt}
JOBS=${JOBS:-1}
export BENCH_ASR_SECONDS=${BENCH_ASR_SECONDS:-20}

die() {
  echo "bench-speech: error: $*" >&2
  exit 1
}
[ -f .cache/speech/models/vosk-model-small-ko/am/final.mdl ] ||
  die "no Korean Vosk model: run scripts/setup-vosk.sh"
[ -f .cache/speech/voices/en_US-joe-medium.onnx ] || die "no Piper voice: run scripts/setup-piper.sh"
for tool in espeak-ng sox; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian: apt-get install espeak-ng sox)"
done

cargo build -j"$JOBS" --release --bin warmline
cargo test -j"$JOBS" --release --test simulate_cli --no-run
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/warmline

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

{
  echo "# warmline speech benchmarks ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "load before: $(uptime)"
  echo
  for t in bench_asr_capacity_and_latency bench_piper_rtf_and_first_audio bench_tts_cache_under_call_load; do
    echo "## $t"
    cargo test -j"$JOBS" --release --test simulate_cli -- --ignored --exact "bench::$t" \
      --nocapture --test-threads=1 2>&1 | grep -oE 'bench: .*|panicked.*|test result.*' || true
    echo "load: $(uptime)"
    echo
  done

  echo "## warmline simulate (release) on tests/data/ko-bank.toml"
  espeak-ng -v ko -w "$work/raw.wav" -- "보험 가입"
  sox -D "$work/raw.wav" -r 8000 -c 1 -b 16 -e signed-integer "$work/say.wav" pad 0.5 1.0
  cat >"$work/w.toml" <<EOF
[paths]
prompts = "$PWD/voice-prompts"
state_dir = "$work/state"
[speech]
models = { ko = "$PWD/.cache/speech/models/vosk-model-small-ko" }
voices = {}
EOF
  start=$(date +%s.%N)
  "$BIN" -c "$work/w.toml" simulate tests/data/ko-bank.toml --say "$work/say.wav" |
    grep -E 'speech started|end of speech|heard|^path|^outcome|^timings'
  end=$(date +%s.%N)
  echo "process wall time (model load included): $(awk "BEGIN {printf \"%.2f\", $end - $start}") s"
  echo
  echo "load after: $(uptime)"
} | tee "$OUT"
