#!/usr/bin/env bash
# Soak test (outside CI, docs/soak.md): runs the release daemon under steady SIPp load for a
# bounded time and samples, every 10 s, its resident memory, open file descriptors, RTP ports
# in use, active calls and the SIP endpoint's transaction and dialog counts (its `sip stats`
# log line). A leak shows as a column that keeps growing while the load is flat.
#
#   scripts/soak.sh                         30 minutes, 20 calls/s, each call up 5 s
#   scripts/soak.sh --minutes 10 --cps 10 --hold-ms 3000
#   scripts/soak.sh --bin target/release/warmline   (default; built with cargo if missing)
#   scripts/soak.sh --scenario uac_basic.xml       (default; any tests/sipp/uac_*.xml taking hold_ms)
#   scripts/soak.sh --out docs/soak-release.txt     (default docs/soak-<UTC date>.txt)
#
# Writes the samples, then a summary. Needs sipp (scripts/setup-test-peers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

minutes=30 cps=20 hold_ms=5000 bin=target/release/warmline interval=10 scenario=uac_basic.xml
out="docs/soak-$(date -u +%Y-%m-%d).txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --cps) cps="$2"; shift 2 ;;
    --hold-ms) hold_ms="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --interval) interval="$2"; shift 2 ;;
    --scenario) scenario="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v sipp >/dev/null || { echo "soak: sipp missing: run scripts/setup-test-peers.sh" >&2; exit 1; }
if [ ! -x "$bin" ]; then
  echo "soak: building the release binary"
  cargo build --release --bin warmline
fi

work=$(mktemp -d /tmp/warmline-soak.XXXXXX)
# Outside the test harness (10000-32000) and the kernel's ephemeral range (32768-60999).
sip_port=9560 rtp_min=61000 rtp_max=62999
cat >"$work/warmline.toml" <<TOML
[sip]
listen = "127.0.0.1:$sip_port"
[sip.guard]
# The load generator is one source: exempt it like a trunk (docs/security.md).
rate_per_sec = 0
max_calls_per_source = 0
[rtp]
port_min = $rtp_min
port_max = $rtp_max
[paths]
state_dir = "$work/state"
dialplans = "$root/dialplans"
prompts = "$root/voice-prompts"
[ivr]
dialplan = "demo-bank"
TOML

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

RUST_LOG=info NO_COLOR=1 "$bin" serve --config "$work/warmline.toml" >"$work/warmline.log" 2>&1 &
daemon=$!
pids+=("$daemon")
for _ in $(seq 100); do grep -q "warmline ready" "$work/warmline.log" && break; sleep 0.1; done
grep -q "warmline ready" "$work/warmline.log" || { tail -n 30 "$work/warmline.log"; exit 1; }

seconds=$((minutes * 60))
calls=$((seconds * cps))
# -l: SIPp's default cap on open calls is 3 x the rate, below rate x hold for holds over 3 s.
(cd "$work" && exec sipp "127.0.0.1:$sip_port" -sf "$root/tests/sipp/$scenario" -i 127.0.0.1 -p 9570 \
   -mp 63000 -key caller 5000 -set hold_ms "$hold_ms" -r "$cps" -m "$calls" \
   -l "$(( cps * (hold_ms / 1000 + 5) ))" \
   -timeout "$((seconds + 30))s" -timeout_error -nostdin -trace_err -error_file "$work/sipp.err" \
   -trace_stat -stf "$work/sipp.csv" -fd 10 >"$work/sipp.out" 2>&1) &
sipp_pid=$!
pids+=("$sipp_pid")

{
  echo "# warmline soak $(date -u +%FT%TZ): $minutes min, $cps calls/s, hold ${hold_ms} ms, $scenario, $(nproc) cores"
  echo "# binary $bin ($(stat -c %y "$bin" | cut -d. -f1)); load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  printf '%-8s %9s %6s %9s %8s %9s %8s %10s %10s\n' t_s rss_kib fds rtp_ports threads calls_act transact dialogs calls_total
} >"$out"

rtp_ports() {
  # UDP sockets bound in the RTP range (any process: only the daemon uses it here). /proc/net/udp
  # has the local port in hex; POSIX awk has no hex parsing, so the shell converts.
  local n=0 port
  while read -r port; do
    port=$((16#$port))
    if [ "$port" -ge "$rtp_min" ] && [ "$port" -le "$rtp_max" ]; then n=$((n + 1)); fi
  done < <(awk 'NR > 1 { split($2, a, ":"); print a[2] }' /proc/net/udp)
  echo "$n"
}
start=$(date +%s)
while kill -0 "$daemon" 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$seconds" ]; do
  sleep "$interval"
  t=$(( $(date +%s) - start ))
  rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$daemon/status" 2>/dev/null || echo -)
  threads=$(awk '/^Threads/ { print $2 }' "/proc/$daemon/status" 2>/dev/null || echo -)
  fds=$(ls "/proc/$daemon/fd" 2>/dev/null | wc -l)
  media=$(grep "media stats" "$work/warmline.log" | tail -n 1)
  sip=$(grep "sip stats" "$work/warmline.log" | tail -n 1)
  val() { echo "$1" | sed -n "s/.*$2=\([0-9.]*\).*/\1/p"; }
  printf '%-8s %9s %6s %9s %8s %9s %8s %10s %10s\n' "$t" "$rss" "$fds" "$(rtp_ports)" "$threads" \
    "$(val "$media" active_calls)" "$(val "$sip" transactions)" "$(val "$sip" dialogs)" \
    "$(val "$media" calls_total)" >>"$out"
done
alive=yes; kill -0 "$daemon" 2>/dev/null || alive=no
# SIGUSR1: SIPp places no new calls and exits once its open calls have ended (their BYEs sent).
kill -USR1 "$sipp_pid" 2>/dev/null || true
for _ in $(seq $(( hold_ms / 1000 + 30 ))); do kill -0 "$sipp_pid" 2>/dev/null || break; sleep 1; done
# Server transactions linger 32 s after their final response (RFC 3261 timers J and L).
sleep 40
after_idle_fds=$(ls "/proc/$daemon/fd" 2>/dev/null | wc -l)
after_idle_ports=$(rtp_ports)
after_idle_rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$daemon/status" 2>/dev/null || echo -)
sip=$(grep "sip stats" "$work/warmline.log" | tail -n 1)
{
  echo "# daemon alive at the end: $alive"
  echo "# 40 s after the last call ended: rss_kib $after_idle_rss, fds $after_idle_fds, rtp_ports $after_idle_ports"
  echo "# last sip stats: ${sip#*sip stats}"
  echo "# sipp: $(grep -E 'Successful call|Failed call' "$work/sipp.out" | tail -n 2 | tr -s ' ' | tr '\n' ';')"
  echo "# sipp call rate: $(grep -A1 'Call rate' "$work/sipp.out" | tail -n 1 | tr -s ' ')"
  echo "# log lines WARN/ERROR: $(grep -cE ' (WARN|ERROR) ' "$work/warmline.log" || true)"
  { grep -E ' (WARN|ERROR) ' "$work/warmline.log" || true; } | sed 's/^[^ ]* *//' | cut -c1-100 \
    | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/#   /'
} >>"$out"
echo "soak: wrote $out (work dir $work)"
cat "$out" | tail -n 12
