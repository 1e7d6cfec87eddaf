#!/usr/bin/env bash
# Dialer benchmark of a release warmline, on SQLite and on PostgreSQL. Writes
# docs/benchmarks-dialer.txt (raw, or OUT=...); docs/benchmarks.md "## Dialer" summarises it.
#
#   scripts/bench-dialer.sh                          # everything, 1 M contacts
#   ROWS=100000 PLAN_SECONDS=60 scripts/bench-dialer.sh
#   POSTGRES=0 LEDGER=0 scripts/bench-dialer.sh      # SQLite only, no ledger_rates test
#   BIN=/path/to/warmline scripts/bench-dialer.sh    # bench that binary instead of building one
#
# 1. Import: `warmline campaign start` of a generated CSV of ROWS contacts (customer_id, phone,
#    timezone, name; four time zones).
# 2. Planning throughput: that campaign's window is closed now for every contact (its only
#    calling day is three days from today), so `warmline serve` decides "wait until the window
#    opens" for each contact (ledger reads, contact update, audit row) without dialling. The
#    audit table's newest id is sampled every SAMPLE seconds; the run ends when all ROWS are
#    decided or after PLAN_SECONDS (then the total time for ROWS is extrapolated from the rate).
# 3. Sustained dialling: DIAL_ROWS contacts, window open all day, pacing max_concurrent 256 and
#    calls_per_second 50 (the campaign maximum), trunk at 500 cps, against a SIPp UAS answering
#    486 at once (tests/sipp/uas_busy.xml). Rate from the attempts' start times; then
#    `campaign report --csv` and the ledger tables are checked: every attempt busy, nobody
#    dialled twice, one counted claim per attempt and none pending. With TWO=1 also two campaigns
#    at once over the same customers with fatigue counting attempts: each customer is dialled
#    exactly once across both.
# 4. Fatigue check latency: the ignored test store::ledger::tests::ledger_rates (claim_contact
#    p50/p99, 1 M contacts), on SQLite and with WARMLINE_TEST_POSTGRES_URL on PostgreSQL.
#
# PostgreSQL is a throw-away cluster of scripts/setup-postgres.sh in its own directory and port
# (PG_DIR, PG_PORT; not the test suite's), stopped and purged at the end. Everything listens on
# 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
PLAN_SECONDS=${PLAN_SECONDS:-120}
SAMPLE=${SAMPLE:-5}
DIAL_ROWS=${DIAL_ROWS:-3000}
TWO=${TWO:-1}
POSTGRES=${POSTGRES:-1}
LEDGER=${LEDGER:-1}
PORT=${PORT:-25260}            # warmline SIP; SIPp UAS on PORT+1 (control PORT+2, media PORT+10)
RTP_MIN=${RTP_MIN:-41000}
PG_DIR=${PG_DIR:-/tmp/warmline-bench-dialer-pg}
PG_PORT=${PG_PORT:-55487}
OUT=${OUT:-docs/benchmarks-dialer.txt}

for tool in sipp sqlite3; do
  command -v "$tool" >/dev/null || { echo "bench-dialer: needs $tool (scripts/setup-test-peers.sh installs sipp; apt-get install sqlite3)" >&2; exit 1; }
done
BIN=${BIN:-$(scripts/release-bin.sh)}
work=$(mktemp -d)
daemon=""
sipp_pid=""
pg_started=0
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null
  [ -n "$sipp_pid" ] && kill "$sipp_pid" 2>/dev/null
  wait 2>/dev/null || true
  if [ "$pg_started" -eq 1 ]; then
    scripts/setup-postgres.sh --dir "$PG_DIR" --port "$PG_PORT" --stop --purge || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

say() { echo "$*" | tee -a "$OUT"; }
now_ms() { date +%s%3N; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
pct() { awk -v a="$1" -v b="$2" -v ms="$3" -v hz="$hz" 'BEGIN{ if (ms > 0) printf "%.1f", (b-a)/hz/(ms/1000)*100; else print "?" }'; }
# Machine-wide CPU jiffies: user+nice system iowait idle+steal... (for "what limits it").
machine_cpu() { awk '/^cpu /{print $2+$3, $4+$7+$8, $6, $5, $9}' /proc/stat; }
machine_split() { # before after -> "user% sys% iowait% idle% steal%" of the whole machine
  awk -v a="$1" -v b="$2" 'BEGIN{ split(a,x," "); split(b,y," "); t=0; for(i=1;i<=5;i++){d[i]=y[i]-x[i]; t+=d[i]}
    if (t<=0) t=1; printf "user %.0f%% sys+irq %.0f%% iowait %.0f%% idle %.0f%% steal %.0f%%", d[1]/t*100, d[2]/t*100, d[3]/t*100, d[4]/t*100, d[5]/t*100 }'
}
# CPU of the PostgreSQL server: every child of the postmaster (the connections, the WAL writer).
pg_ticks() {
  [ "$POSTGRES" = 1 ] && [ -f "$PG_DIR/postmaster.pid" ] || { echo 0; return; }
  local pm; pm=$(head -1 "$PG_DIR/postmaster.pid")
  { cpu_ticks "$pm"; for p in $(ps --ppid "$pm" -o pid= 2>/dev/null); do cpu_ticks "$p"; done; } | awk '{s+=$1} END{print s+0}'
}

pg_admin() { PGOPTIONS="-c client_min_messages=warning" psql "$PG_URL" -X -q -v ON_ERROR_STOP=1 -c "$1" >/dev/null; }
# A store for one measurement: "sqlite:<file>" or "pg:<schema>" (a fresh schema).
PG_URL=""
new_store() { # kind name dir
  if [ "$1" = sqlite ]; then
    echo "sqlite:$3/state/warmline.db"
  else
    pg_admin "DROP SCHEMA IF EXISTS bench_$2 CASCADE; CREATE SCHEMA bench_$2"
    echo "pg:bench_$2"
  fi
}
store_url() {
  case "$1" in
    sqlite:*) echo "sqlite://${1#sqlite:}" ;;
    pg:*) echo "$PG_URL?options[search_path]=${1#pg:}" ;;
  esac
}
q() { # store sql -> rows separated by |
  case "$1" in
    sqlite:*) sqlite3 -cmd ".timeout 10000" "${1#sqlite:}" "$2" ;;
    pg:*) PGOPTIONS="-c search_path=${1#pg:}" psql "$PG_URL" -X -q -tA -v ON_ERROR_STOP=1 -c "$2" ;;
  esac
}

write_config() { # dir store trunk_port
  mkdir -p "$1/state" "$1/campaigns"
  cat >"$1/w.toml" <<EOF
[sip]
listen = "127.0.0.1:$PORT"
[rtp]
port_min = $RTP_MIN
port_max = $((RTP_MIN + 3999))
[paths]
state_dir = "$1/state"
campaigns = "$1/campaigns"
dialplans = "$PWD/dialplans"
prompts = "$PWD/voice-prompts"
[storage]
url = "$(store_url "$2")"
[trunks.main]
address = "127.0.0.1:$3"
calls_per_second = 500
max_concurrent = 2000
ring_timeout = "10s"
[dialer]
poll_interval_ms = 200
node = "bench"
EOF
}

write_campaign() { # dir name csv window-and-more-toml
  cat >"$1/campaigns/$2.toml" <<EOF
trunk = "main"
caller_id = "+12125550100"
contacts = "$3"
start_date = 2020-01-01

[message]
prompt = ["reminders/coupon-expiry"]

$4
EOF
}

start_daemon() { # dir
  "$BIN" -c "$1/w.toml" serve >"$1/daemon.log" 2>&1 &
  daemon=$!
  for _ in $(seq 1 300); do
    grep -q "warmline ready" "$1/daemon.log" && return 0
    sleep 0.1
  done
  echo "daemon did not start:"; cat "$1/daemon.log"; exit 1
}
stop_daemon() {
  [ -n "$daemon" ] || return 0
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  daemon=""
}

# Weekday names as the campaign file writes them.
day_name() { date -u -d "$1" +%a | tr '[:upper:]' '[:lower:]'; }
# A zone whose clock is not near midnight now, so a 00:00-23:59 window is open for the whole run.
open_tz() { local h; h=$(date -u +%-H); if [ "$h" -ge 1 ] && [ "$h" -le 21 ]; then echo UTC; else echo Asia/Tokyo; fi; }

big_csv="$work/contacts-$ROWS.csv"
awk -v n="$ROWS" 'BEGIN{
  print "customer_id,phone,timezone,name"
  split("America/New_York Europe/Berlin Asia/Tokyo UTC", z, " ")
  for (i = 1; i <= n; i++) printf "c%08d,+1555%07d,%s,Customer %d\n", i, i % 10000000, z[i % 4 + 1], i
}' >"$big_csv"
# Three days ahead in UTC is neither yesterday, today nor tomorrow in any of the four zones.
closed_day=$(day_name "+3 days")

{
  echo "# warmline dialer benchmark $(date -u +%FT%TZ)"
  echo "# host: $(nproc) cores, $(awk '/MemTotal/{print int($2/1024)" MiB"}' /proc/meminfo), $(uname -r); sqlite3 $(sqlite3 --version | cut -d' ' -f1)"
  echo "# binary: $BIN (${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo "commit unknown")}, release)"
  echo "# ROWS=$ROWS PLAN_SECONDS=$PLAN_SECONDS DIAL_ROWS=$DIAL_ROWS TWO=$TWO POSTGRES=$POSTGRES LEDGER=$LEDGER"
  echo "# load: $(uptime)"
  echo "# contacts CSV: $(du -h "$big_csv" | cut -f1), 4 time zones; planning window: 09:00-20:00 on '$closed_day' only (closed now everywhere)"
} | tee "$OUT"

backends="sqlite"
if [ "$POSTGRES" = 1 ]; then
  PG_URL=$(scripts/setup-postgres.sh --dir "$PG_DIR" --port "$PG_PORT")
  pg_started=1
  backends="sqlite postgres"
  say "# postgres: $(psql "$PG_URL" -X -tAc 'SHOW server_version') at 127.0.0.1:$PG_PORT, synchronous_commit=$(psql "$PG_URL" -X -tAc 'SHOW synchronous_commit'), shared_buffers=$(psql "$PG_URL" -X -tAc 'SHOW shared_buffers')"
fi

declare -A result   # key -> value, for the summary at the end

# ---------------------------------------------------------------- 1 + 2: import and planning
plan_bench() { # backend
  local b=$1 dir="$work/plan-$1" store
  store=$(new_store "$b" "plan_$b" "$dir")
  write_config "$dir" "$store" "$((PORT + 1))"
  write_campaign "$dir" plan "$big_csv" "[window]
start = \"09:00\"
end = \"20:00\"
days = \"$closed_day\"
finish_margin = \"5m\""
  say ""
  say "## $b: import $ROWS contacts (warmline campaign start)"
  say "# load: $(uptime)"
  local t0 t1 out
  t0=$(now_ms)
  out=$("$BIN" -c "$dir/w.toml" campaign start plan 2>&1)
  t1=$(now_ms)
  say "$out"
  local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1000}')
  say "import_seconds=$secs rows_per_s=$(awk -v n="$ROWS" -v s="$secs" 'BEGIN{printf "%.0f", n/s}')"
  result[import_$b]="$secs s ($(awk -v n="$ROWS" -v s="$secs" 'BEGIN{printf "%.0f", n/s/1000}') k rows/s)"

  say ""
  say "## $b: planning throughput (every contact: wait for the window)"
  say "# load: $(uptime)"
  start_daemon "$dir"
  local started m0 c0 p0 d_first=0 t_first=0 d=0 t prev_d=0 prev_t
  started=$(now_ms); prev_t=$started
  m0=$(machine_cpu); c0=$(cpu_ticks "$daemon"); p0=$(pg_ticks)
  say "elapsed_s decided rate_last_interval_per_s"
  while :; do
    sleep "$SAMPLE"
    t=$(now_ms)
    d=$(q "$store" "SELECT COALESCE(MAX(id), 0) FROM audit")
    say "$(awk -v t="$t" -v s="$started" 'BEGIN{printf "%.0f", (t-s)/1000}') $d $(awk -v a="$prev_d" -v b="$d" -v t0="$prev_t" -v t1="$t" 'BEGIN{printf "%.0f", (b-a)/((t1-t0)/1000)}')"
    if [ "$t_first" = 0 ] && [ "$d" -gt 0 ]; then d_first=$d; t_first=$t; fi
    prev_d=$d; prev_t=$t
    [ "$d" -ge "$ROWS" ] && break
    [ $((t - started)) -ge $((PLAN_SECONDS * 1000)) ] && break
  done
  local c1 p1 m1 el; c1=$(cpu_ticks "$daemon"); p1=$(pg_ticks); m1=$(machine_cpu)
  el=$((t - started))
  stop_daemon
  local rate overall est
  rate=$(awk -v a="$d_first" -v b="$d" -v t0="$t_first" -v t1="$t" 'BEGIN{ if (t1 > t0) printf "%.0f", (b-a)/((t1-t0)/1000); else print 0 }')
  overall=$(awk -v n="$d" -v ms="$el" 'BEGIN{printf "%.0f", n/(ms/1000)}')
  est=$(awk -v n="$ROWS" -v r="$rate" 'BEGIN{ if (r > 0) printf "%.0f", n/r; else print "?" }')
  say "decided=$d of $ROWS in $(awk -v ms="$el" 'BEGIN{printf "%.0f", ms/1000}') s; steady_rate=${rate}/s (after the first sample); overall_rate=${overall}/s"
  say "daemon_cpu_pct=$(pct "$c0" "$c1" "$el") postgres_cpu_pct=$(pct "$p0" "$p1" "$el") (100 = one core); machine: $(machine_split "$m0" "$m1")"
  if [ "$d" -ge "$ROWS" ]; then
    say "all $ROWS contacts decided in $(awk -v ms="$el" 'BEGIN{printf "%.0f", ms/1000}') s"
    result[plan_$b]="$rate/s; all $ROWS in $(awk -v ms="$el" 'BEGIN{printf "%.0f", ms/1000}') s"
  else
    say "extrapolated: $ROWS contacts at ${rate}/s = ${est} s ($(awk -v s="$est" 'BEGIN{printf "%.1f", s/60}') min); measured on the first $d only"
    result[plan_$b]="$rate/s ($d decided in $(awk -v ms="$el" 'BEGIN{printf "%.0f", ms/1000}') s; $ROWS ≈ $est s = $(awk -v s="$est" 'BEGIN{printf "%.1f", s/60}') min extrapolated)"
  fi
  result[plan_cpu_$b]="daemon $(pct "$c0" "$c1" "$el") %, postgres $(pct "$p0" "$p1" "$el") %"
  say "# decisions by rule (audit) and contacts moved:"
  q "$store" "SELECT decision, rule, COUNT(*) FROM audit GROUP BY decision, rule" | tee -a "$OUT"
  say "contacts_waiting_for_window=$(q "$store" "SELECT COUNT(*) FROM contacts WHERE state = 'pending' AND next_attempt_at_ms > 0") attempts=$(q "$store" "SELECT COUNT(*) FROM attempts")"
  say "# first decision: $(q "$store" "SELECT reason FROM audit ORDER BY id LIMIT 1")"
  if [ "$b" = sqlite ]; then
    say "# database size: $(du -sh "$dir/state" | cut -f1)"
  else
    pg_admin "DROP SCHEMA ${store#pg:} CASCADE"
  fi
}

# ---------------------------------------------------------------- 3: sustained dialling
start_uas() { # dir calls
  (cd "$1" && exec sipp -sf "$OLDPWD/tests/sipp/uas_busy.xml" -i 127.0.0.1 -mi 127.0.0.1 -p "$((PORT + 1))" \
    -cp "$((PORT + 2))" -mp "$((PORT + 10))" -m "$2" -timeout 900s -timeout_error \
    -watchdog_minor_threshold 2000 -watchdog_major_threshold 10000 -nostdin \
    -trace_err -error_file "$1/sipp.err.log" >"$1/sipp.out" 2>&1) &
  sipp_pid=$!
  for _ in $(seq 1 100); do
    ss -uln 2>/dev/null | grep -q "127.0.0.1:$((PORT + 1)) " && return 0
    sleep 0.1
  done
  echo "SIPp UAS did not bind 127.0.0.1:$((PORT + 1)):"; cat "$1/sipp.out"; exit 1
}

dial_bench() { # backend campaigns(1|2)
  local b=$1 n=$2 dir="$work/dial-$1-$2" store tz names name
  store=$(new_store "$b" "dial_${b}_$n" "$dir")
  write_config "$dir" "$store" "$((PORT + 1))"
  tz=$(open_tz)
  awk -v n="$DIAL_ROWS" -v tz="$tz" 'BEGIN{ print "customer_id,phone,timezone,name";
    for (i = 1; i <= n; i++) printf "d%06d,+1555%07d,%s,Customer %d\n", i, i, tz, i }' >"$dir/dial.csv"
  local fatigue=""
  # Two campaigns over the same customers: counting attempts, a busy call uses the customer's
  # one contact per 7 days, so the other campaign must not dial that customer.
  [ "$n" = 2 ] && fatigue='[fatigue]
counts = "attempted"'
  names="dial_a"; [ "$n" = 2 ] && names="dial_a dial_b"
  for name in $names; do
    write_campaign "$dir" "$name" "$dir/dial.csv" "[window]
start = \"00:00\"
end = \"23:59\"
days = \"mon-sun\"
finish_margin = \"0s\"

[pacing]
max_concurrent = 256
calls_per_second = 50

$fatigue"
  done
  say ""
  if [ "$n" = 1 ]; then
    say "## $b: sustained dialling, 1 campaign, $DIAL_ROWS contacts, 50 cps pacing, SIPp UAS answering 486"
  else
    say "## $b: sustained dialling, 2 campaigns at once over the same $DIAL_ROWS customers (fatigue counts attempts), 50 cps each"
  fi
  say "# load: $(uptime); contacts in $tz"
  start_uas "$dir" "$DIAL_ROWS"
  start_daemon "$dir"
  local m0 c0 p0 s0 s1 t0 t1 total=0 open=1 last=0 still=0
  m0=$(machine_cpu); c0=$(cpu_ticks "$daemon"); p0=$(pg_ticks); s0=$(cpu_ticks "$sipp_pid"); s1=$s0
  t0=$(now_ms)
  for name in $names; do
    "$BIN" -c "$dir/w.toml" campaign start "$name" 2>&1 | tee -a "$OUT"
  done
  # Until every customer has had its attempt and every attempt has ended (or nothing moves).
  while :; do
    sleep 2
    total=$(q "$store" "SELECT COUNT(*) FROM attempts")
    open=$(q "$store" "SELECT COUNT(*) FROM attempts WHERE ended_at_ms IS NULL")
    # SIPp exits after its last call: keep its latest CPU reading.
    [ -r "/proc/$sipp_pid/stat" ] && s1=$(cpu_ticks "$sipp_pid")
    if [ "$total" -ge "$DIAL_ROWS" ] && [ "$open" = 0 ]; then break; fi
    if [ "$total" = "$last" ]; then still=$((still + 2)); else still=0; fi
    last=$total
    if [ "$still" -ge 30 ]; then say "no new attempt for 30 s: stopping at $total"; break; fi
    if [ $(( $(now_ms) - t0 )) -ge 900000 ]; then say "timeout: stopping at $total"; break; fi
  done
  t1=$(now_ms)
  local c1 p1 m1; c1=$(cpu_ticks "$daemon"); p1=$(pg_ticks); m1=$(machine_cpu)
  # Let the planner write the retry decisions of the last calls before it stops.
  sleep 2
  stop_daemon
  # SIPp exits by itself after DIAL_ROWS calls; wait briefly for its final statistics.
  for _ in $(seq 1 50); do kill -0 "$sipp_pid" 2>/dev/null || break; sleep 0.1; done
  kill "$sipp_pid" 2>/dev/null || true; wait "$sipp_pid" 2>/dev/null || true; sipp_pid=""
  local ok fail
  ok=$(grep -E '^\s*Successful call' "$dir/sipp.out" | awk -F'|' '{gsub(/ /,"",$3); print $3}' | tail -1)
  fail=$(grep -E '^\s*Failed call' "$dir/sipp.out" | awk -F'|' '{gsub(/ /,"",$3); print $3}' | tail -1)
  say "attempts=$total sipp_successful=${ok:-?} sipp_failed=${fail:-?} wall_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1000}')"
  say "daemon_cpu_pct=$(pct "$c0" "$c1" $((t1 - t0))) postgres_cpu_pct=$(pct "$p0" "$p1" $((t1 - t0))) sipp_cpu_pct=$(pct "$s0" "$s1" $((t1 - t0))); machine: $(machine_split "$m0" "$m1")"
  say "campaign attempts first_start..last_start rate_per_s per_second_min/median/max mean_call_ms"
  local all_rate="" sum_rate=0
  for name in $names; do
    local row
    row=$(q "$store" "SELECT COUNT(*), MIN(started_at_ms), MAX(started_at_ms), CAST(AVG(ended_at_ms - started_at_ms) AS INTEGER) FROM attempts WHERE campaign_id = '$name'")
    local per
    # Attempts started in each whole second, the first and last (partial) seconds left out.
    per=$(q "$store" "SELECT COUNT(*) FROM attempts WHERE campaign_id = '$name' GROUP BY started_at_ms / 1000 ORDER BY started_at_ms / 1000" |
      awk '{v[NR]=$1} END{ k=0; for (i=2;i<NR;i++) w[++k]=v[i]; if (k==0) {print "-"; exit}
        for (i=1;i<=k;i++) for (j=i+1;j<=k;j++) if (w[j]<w[i]) {x=w[i]; w[i]=w[j]; w[j]=x}
        printf "%d/%d/%d", w[1], w[int((k+1)/2)], w[k] }')
    local r
    r=$(echo "$row" | awk -F'|' '{ if ($3 > $2) printf "%.1f", ($1-1)/(($3-$2)/1000); else print 0 }')
    say "$name $(echo "$row" | awk -F'|' '{printf "%d %.1fs", $1, ($3-$2)/1000}') $r $per $(echo "$row" | awk -F'|' '{print $4}')"
    sum_rate=$(awk -v a="$sum_rate" -v r="$r" 'BEGIN{print a+r}')
    all_rate="$all_rate $name $r/s (per second $per)"
  done
  if [ "$n" = 2 ]; then
    local both
    both=$(q "$store" "SELECT COUNT(*), MIN(started_at_ms), MAX(started_at_ms) FROM attempts" | awk -F'|' '{ if ($3 > $2) printf "%.1f", ($1-1)/(($3-$2)/1000); else print 0 }')
    say "both campaigns together: $both attempts/s"
    result[dial2_$b]="$both/s together ($(echo "$all_rate" | sed 's/^ //'))"
  else
    result[dial1_$b]="$(echo "$all_rate" | sed 's/^ dial_a //')"
  fi

  # Checks: the report CSV (what an operator sees) and the ledger tables.
  local problems=0 rep="$dir/report.csv"
  : >"$rep"
  for name in $names; do
    "$BIN" -c "$dir/w.toml" campaign report "$name" --csv | tail -n +2 >>"$rep"
  done
  local rows busy dup counted_expect counted_ok
  rows=$(wc -l <"$rep")
  busy=$(awk -F, '$9 == "busy" && $10 == "486"' "$rep" | wc -l)
  # column 3 is the customer: twice in one campaign, or (fatigue) in both, is a double dial
  dup=$(awk -F, '{print $3}' "$rep" | sort | uniq -d | wc -l)
  counted_expect=no; [ "$n" = 2 ] && counted_expect=yes
  counted_ok=$(awk -F, -v e="$counted_expect" '$13 == e' "$rep" | wc -l)
  say "report: rows=$rows busy_486=$busy customers_dialled_twice=$dup counted_as_contact=$counted_expect:$counted_ok"
  [ "$rows" -eq "$DIAL_ROWS" ] || { say "CHECK FAILED: $rows attempts, expected $DIAL_ROWS (one per customer)"; problems=$((problems + 1)); }
  [ "$busy" -eq "$rows" ] || { say "CHECK FAILED: $((rows - busy)) attempts did not end busy/486"; problems=$((problems + 1)); }
  [ "$dup" -eq 0 ] || { say "CHECK FAILED: $dup customers dialled twice"; problems=$((problems + 1)); }
  [ "$counted_ok" -eq "$rows" ] || { say "CHECK FAILED: counted_as_contact is not '$counted_expect' on every attempt"; problems=$((problems + 1)); }
  say "# ledger claims by state/reach:"
  q "$store" "SELECT state, reach, COUNT(*) FROM contact_ledger GROUP BY state, reach ORDER BY state" | tee -a "$OUT"
  local linked pending multi
  linked=$(q "$store" "SELECT COUNT(*) FROM attempts a JOIN contact_ledger l ON l.id = a.claim_id AND l.attempt_id = a.id AND l.customer_id = a.customer_id AND l.campaign_id = a.campaign_id WHERE l.state = 'counted' AND l.reach = 1")
  pending=$(q "$store" "SELECT COUNT(*) FROM contact_ledger WHERE state = 'pending'")
  multi=$(q "$store" "SELECT COUNT(*) FROM (SELECT customer_id FROM contact_ledger WHERE state <> 'released' GROUP BY customer_id HAVING COUNT(*) > 1) AS t")
  say "ledger: attempts_with_their_counted_claim=$linked pending_claims=$pending customers_with_2+_counting_claims=$multi"
  [ "$linked" -eq "$rows" ] || { say "CHECK FAILED: $((rows - linked)) attempts without their counted (reach 1) claim"; problems=$((problems + 1)); }
  [ "$pending" -eq 0 ] || { say "CHECK FAILED: $pending claims still pending"; problems=$((problems + 1)); }
  [ "$multi" -eq 0 ] || { say "CHECK FAILED: $multi customers hold two counting claims"; problems=$((problems + 1)); }
  say "# contacts by campaign/state/attempts, audit decisions by campaign:"
  q "$store" "SELECT campaign_id, state, attempts, COUNT(*) FROM contacts GROUP BY campaign_id, state, attempts ORDER BY campaign_id" | tee -a "$OUT"
  q "$store" "SELECT campaign_id, decision, rule, COUNT(*) FROM audit GROUP BY campaign_id, decision, rule ORDER BY campaign_id, decision" | tee -a "$OUT"
  if [ "$problems" -eq 0 ]; then
    say "checks: OK (every attempt busy/486, one per customer, ledger consistent)"
    result[check_${n}_$b]="OK"
  else
    say "checks: $problems FAILED"
    result[check_${n}_$b]="$problems FAILED"
  fi
  [ "$b" = postgres ] && pg_admin "DROP SCHEMA ${store#pg:} CASCADE"
  return 0
}

for b in $backends; do plan_bench "$b"; done
for b in $backends; do dial_bench "$b" 1; done
if [ "$TWO" = 1 ]; then
  for b in $backends; do dial_bench "$b" 2; done
fi

# ---------------------------------------------------------------- 4: fatigue check latency
if [ "$LEDGER" = 1 ]; then
  say ""
  say "## ledger_rates: import, due_contacts, claim_contact (fatigue check + claim) latency"
  say "# load: $(uptime)"
  pg_env=()
  [ "$POSTGRES" = 1 ] && pg_env=(WARMLINE_TEST_POSTGRES_URL="$PG_URL")
  env "${pg_env[@]}" cargo test --release --lib store::ledger::tests::ledger_rates -- --ignored --nocapture >"$work/ledger.log" 2>&1 ||
    { cat "$work/ledger.log"; exit 1; }
  grep -E '^(sqlite|postgres):' "$work/ledger.log" | tee -a "$OUT"
  for b in sqlite postgres; do
    line=$(grep -E "^$b: claim_contact" "$work/ledger.log" || true)
    [ -n "$line" ] && result[claim_$b]=$(echo "$line" | sed -E 's/.*(p50 [^,]*), (p99 [^,]*), (max .*)/\1, \2, \3/')
  done
fi

say ""
say "## summary"
say "# load at the end: $(uptime)"
for key in import plan plan_cpu dial1 check_1 dial2 check_2 claim; do
  line="$key:"
  for b in sqlite postgres; do line="$line | $b: ${result[${key}_$b]:--}"; done
  say "$line"
done
echo "raw results: $OUT"
