#!/usr/bin/env bash
# SIPp benchmark of a release warmline on loopback. Writes docs/benchmarks-sipp.txt (raw) and
# prints a Markdown table for docs/benchmarks.md.
#
#   scripts/bench-sipp.sh                      # CPS ramp + concurrent calls
#   RATES="500 1000" CONCURRENT=1000 scripts/bench-sipp.sh
#   BIN=/path/to/warmline scripts/bench-sipp.sh  # bench that binary instead of building one
#
# 1. Calls per second: INVITE -> 200 -> ACK -> greeting starts playing -> BYE after HOLD_MS, at each
#    rate in RATES for RATE_SECONDS; reports successful/failed calls and the daemon's CPU.
# 2. Concurrent calls: CONCURRENT calls held HOLD_LONG_MS each, every one playing the demo prompts
#    (G.711 RTP every 20 ms); reports CPU at the plateau and the media clock's late frames.
# Traffic goes to 127.0.0.1 only and every SIPp run is bounded by -m and -timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"250 500 1000 1500 2000 2500"}
RATE_SECONDS=${RATE_SECONDS:-10}
HOLD_MS=${HOLD_MS:-500}
CONCURRENT=${CONCURRENT:-2000}
HOLD_LONG_MS=${HOLD_LONG_MS:-40000}
PORT=${PORT:-25060}
OUT=${OUT:-docs/benchmarks-sipp.txt}

scripts/setup-test-peers.sh
BIN=${BIN:-$(scripts/release-bin.sh)}
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

cat > "$work/w.toml" <<EOF
[sip]
listen = "127.0.0.1:$PORT"
max_calls = 6000
[sip.guard]
# SIPp is one source at thousands of calls/s: the benchmark treats it as a trunk would be.
rate_per_sec = 0
max_calls_per_source = 0
[rtp]
port_min = 30000
port_max = 49999
[paths]
state_dir = "$work/state"
dialplans = "$PWD/dialplans"
prompts = "$PWD/voice-prompts"
EOF

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

start_daemon() {
  "$BIN" -c "$work/w.toml" serve >"$work/daemon.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    grep -q "warmline ready" "$work/daemon.log" && return 0
    sleep 0.1
  done
  echo "daemon did not start:"; cat "$work/daemon.log"; exit 1
}

# SIPp's own CPU (user+sys over its wall time, %): it shares the 2 cores with the daemon.
sipp_cpu() { awk '{ if ($3 > 0) printf "%.1f", ($1+$2)/$3*100; else print "?" }' "$1"; }

sipp_run() { # rate count hold_ms limit logname
  (cd "$work" && TIMEFORMAT='%U %S %R' && time timeout 600 sipp "127.0.0.1:$PORT" -sf "$OLDPWD/tests/sipp/uac_basic.xml" \
    -key caller 1000 -set hold_ms "$3" -r "$1" -m "$2" -l "$4" -i 127.0.0.1 \
    -timeout 300s -max_socket 50000 -nostdin \
    -watchdog_minor_threshold 2000 -watchdog_major_threshold 10000 >"$work/$5.out" 2>&1) 2>"$work/$5.time" || true
  local ok fail
  ok=$(grep -E '^\s*Successful call' "$work/$5.out" | awk -F'|' '{gsub(/ /,"",$3); print $3}' | tail -1)
  fail=$(grep -E '^\s*Failed call' "$work/$5.out" | awk -F'|' '{gsub(/ /,"",$3); print $3}' | tail -1)
  # SIPp's cumulative call rate: below the target when SIPp (or the machine) fell behind.
  local achieved
  achieved=$(grep -E '^\s*Call Rate' "$work/$5.out" | awk -F'|' '{gsub(/ |cps/,"",$3); print $3}' | tail -1)
  echo "${ok:-0} ${fail:-?} $(sipp_cpu "$work/$5.time") ${achieved:-?}"
}

start_daemon
{
  echo "# warmline SIPp benchmark $(date -u +%FT%TZ)"
  echo "# host: $(nproc) cores, $(awk '/MemTotal/{print int($2/1024)" MiB"}' /proc/meminfo), $(uname -r)"
  echo "# binary: $(git rev-parse --short HEAD 2>/dev/null) release"
  echo
  echo "## calls per second (hold ${HOLD_MS} ms, ${RATE_SECONDS} s per rate)"
  echo "rate_cps attempted successful failed daemon_cpu_pct cpu_pct_per_100cps sipp_cpu_pct achieved_cps"
} | tee "$OUT"
for rate in $RATES; do
  n=$((rate * RATE_SECONDS))
  t0=$(cpu_ticks "$pid"); w0=$(date +%s.%N)
  read -r ok fail scpu achieved < <(sipp_run "$rate" "$n" "$HOLD_MS" $((rate * 4)) "cps-$rate")
  t1=$(cpu_ticks "$pid"); w1=$(date +%s.%N)
  cpu=$(awk -v a="$t0" -v b="$t1" -v w0="$w0" -v w1="$w1" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz/(w1-w0)*100}')
  per=$(awk -v c="$cpu" -v r="$rate" 'BEGIN{printf "%.2f", c/r*100}')
  echo "$rate $n $ok $fail $cpu $per $scpu $achieved" | tee -a "$OUT"
  sleep 2
done

# A fresh daemon: calls a saturated CPS rate left half-open (waiting for an ACK or BYE that
# SIPp gave up on) would otherwise still be playing media during this test.
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
start_daemon

echo | tee -a "$OUT"
echo "## concurrent calls with prompt playback (G.711, 20 ms)" | tee -a "$OUT"
rate=$((CONCURRENT / 20)); [ "$rate" -lt 1 ] && rate=1
(cd "$work" && TIMEFORMAT='%U %S %R' && time timeout 900 sipp "127.0.0.1:$PORT" -sf "$OLDPWD/tests/sipp/uac_basic.xml" \
  -key caller 2000 -set hold_ms "$HOLD_LONG_MS" -r "$rate" -m "$CONCURRENT" -l "$CONCURRENT" \
  -i 127.0.0.1 -timeout 600s -max_socket 50000 -nostdin \
  -watchdog_minor_threshold 2000 -watchdog_major_threshold 10000 >"$work/conc.out" 2>&1) 2>"$work/conc.time" &
sp=$!
# Wait for the plateau: all calls up.
ramp=$((CONCURRENT / rate + 3))
sleep "$ramp"
# Media-stats lines logged before the plateau (the CPS ramp's are not this test's).
lines_before=$(grep -c "media stats" "$work/daemon.log" || true)
grep "media stats" "$work/daemon.log" | tail -1 >"$work/before.txt" || echo "frames_sent=0 late_10ms=0 late_20ms=0" >"$work/before.txt"
[ -s "$work/before.txt" ] || echo "frames_sent=0 late_10ms=0 late_20ms=0" >"$work/before.txt"
t0=$(cpu_ticks "$pid"); w0=$(date +%s.%N)
spid=$(pgrep -n -x sipp || true)
s0=$( [ -n "$spid" ] && cpu_ticks "$spid" || echo 0)
sleep 10
t1=$(cpu_ticks "$pid"); w1=$(date +%s.%N)
s1=$( [ -n "$spid" ] && cpu_ticks "$spid" 2>/dev/null || echo 0)
rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
active=$(ls "/proc/$pid/fd" | wc -l)
wait "$sp" || true
sleep 11
cpu=$(awk -v a="$t0" -v b="$t1" -v w0="$w0" -v w1="$w1" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz/(w1-w0)*100}')
ok=$(grep -E '^\s*Successful call' "$work/conc.out" | awk -F'|' '{gsub(/ /,"",$3); print $3}' | tail -1)
fail=$(grep -E '^\s*Failed call' "$work/conc.out" | awk -F'|' '{gsub(/ /,"",$3); print $3}' | tail -1)
stat() { sed -n "s/.* $2=\([0-9.]*\).*/\1/p" "$1" | tail -1; }
grep "media stats" "$work/daemon.log" | tail -1 >"$work/after.txt"
frames=$(( $(stat "$work/after.txt" frames_sent) - $(stat "$work/before.txt" frames_sent || echo 0) ))
late10=$(( $(stat "$work/after.txt" late_10ms) - $(stat "$work/before.txt" late_10ms || echo 0) ))
late20=$(( $(stat "$work/after.txt" late_20ms) - $(stat "$work/before.txt" late_20ms || echo 0) ))
maxlate=$(grep "media stats" "$work/daemon.log" | tail -n +$(( ${lines_before:-0} + 1 )) | awk -F'max_lateness_ms=' 'NF>1{split($2,a," "); if (a[1]+0>m) m=a[1]+0} END{print m+0}')
last=$(cat "$work/after.txt" | sed 's/.*media stats//')
{
  echo "calls=$CONCURRENT successful=${ok:-0} failed=${fail:-?} plateau_cpu_pct=$cpu cpu_pct_per_call=$(awk -v c="$cpu" -v n="$CONCURRENT" 'BEGIN{printf "%.4f", c/n}') rss_kib=$rss open_fds=$active sipp_plateau_cpu_pct=$(awk -v a="$s0" -v b="$s1" -v w0="$w0" -v w1="$w1" -v hz="$hz" 'BEGIN{printf "%.1f", (b-a)/hz/(w1-w0)*100}') sipp_cpu_pct_whole_run=$(sipp_cpu "$work/conc.time")"
  echo "(over the plateau and ramp-down) frames_sent=$frames late_over_10ms=$late10 late_over_20ms=$late20 late_pct_10ms=$(awk -v l="${late10:-0}" -v f="${frames:-1}" 'BEGIN{printf "%.4f", l/f*100}') max_lateness_ms=$maxlate"
  echo "last media stats:$last"
} | tee -a "$OUT"
echo "raw results: $OUT"
