#!/usr/bin/env bash
# A throw-away PostgreSQL server for the store tests (WARMLINE_TEST_POSTGRES_URL) and the
# multi-node tests. Debian's PostgreSQL from apt (installed if missing), its own cluster in a
# directory of its own, listening on 127.0.0.1 only, trust authentication for loopback.
#
#   scripts/setup-postgres.sh                 # start (initialise if needed); prints the URL on stdout
#   scripts/setup-postgres.sh --stop          # stop it; nothing keeps running
#   scripts/setup-postgres.sh --stop --purge  # stop it and delete its directory
#
# Options: --dir DIR (default $WARMLINE_PG_DIR or /tmp/warmline-postgres), --port PORT
# (default $WARMLINE_PG_PORT or 55432). Typical use:
#   export WARMLINE_TEST_POSTGRES_URL="$(scripts/setup-postgres.sh)"
#   cargo test; scripts/setup-postgres.sh --stop
#
# As root (CI) the server runs as the `postgres` user (runuser) and DIR is owned by it; as any
# other user it runs as that user, and only the apt install needs sudo. Idempotent: starting a
# running server only prints its URL again. Messages go to stderr, the URL alone to stdout.
set -euo pipefail

dir="${WARMLINE_PG_DIR:-/tmp/warmline-postgres}"
port="${WARMLINE_PG_PORT:-55432}"
action=start
purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --stop) action=stop ;;
    --purge) purge=1 ;;
    --dir) dir="${2:?--dir needs a directory}"; shift ;;
    --port) port="${2:?--port needs a number}"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "setup-postgres: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$port" in ''|*[!0-9]*) echo "setup-postgres: --port must be a number, not $port" >&2; exit 2 ;; esac
if [ "$port" -lt 1024 ] || [ "$port" -gt 65535 ]; then
  echo "setup-postgres: --port must be between 1024 and 65535, not $port" >&2
  exit 2
fi
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac

say() { echo "setup-postgres: $*" >&2; }

is_root=0
[ "$(id -u)" -eq 0 ] && is_root=1

# Runs a server-side command as the cluster's owner.
as_owner() {
  if [ "$is_root" -eq 1 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

find_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

install_postgres() {
  local sudo=""
  [ "$is_root" -eq 1 ] || sudo="sudo"
  say "installing postgresql (apt)"
  # No 'main' cluster and no service start from the package: only our own cluster runs.
  $sudo mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/warmline-no-main.conf >/dev/null
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=1
  fi
  local rc=0
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
  if [ "$rc" -eq 0 ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || rc=$?
  fi
  [ "$added_policy" -eq 1 ] && $sudo rm -f "$policy"
  if [ "$rc" -ne 0 ]; then
    say "apt-get failed ($rc)"
    exit "$rc"
  fi
}

bin="$(find_bin || true)"

running() {
  [ -n "$bin" ] && [ -f "$dir/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1
}

if [ "$action" = stop ]; then
  if running; then
    say "stopping the server in $dir"
    as_owner "$bin/pg_ctl" -D "$dir" -m fast -w -t 60 stop >&2
  else
    say "no server running in $dir"
  fi
  if [ "$purge" -eq 1 ] && [ -d "$dir" ]; then
    say "deleting $dir"
    rm -rf "$dir"
  fi
  exit 0
fi

if [ -z "$bin" ]; then
  install_postgres
  bin="$(find_bin || true)"
  if [ -z "$bin" ]; then
    say "postgresql installed but no /usr/lib/postgresql/*/bin/pg_ctl found"
    exit 1
  fi
fi

url="postgres://warmline@127.0.0.1:$port/warmline"

if ! [ -f "$dir/PG_VERSION" ]; then
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    say "$dir exists, is not empty and holds no cluster; choose another --dir or delete it"
    exit 1
  fi
  mkdir -p "$dir"
  chmod 700 "$dir"
  if [ "$is_root" -eq 1 ]; then
    chown postgres:postgres "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
      say "the postgres user cannot reach $dir (a parent directory is not searchable); use --dir under /tmp"
      exit 1
    fi
  fi
  say "initialising a cluster in $dir ($("$bin/postgres" --version))"
  as_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  # Loopback only: TCP on 127.0.0.1 and the unix socket inside the data directory (mode 700),
  # so the trust rules below admit nobody from outside this machine.
  cat >>"$dir/postgresql.conf" <<EOF

# warmline test cluster (scripts/setup-postgres.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
EOF
  cat >"$dir/pg_hba.conf" <<'EOF'
# warmline test cluster: trust on loopback only (listen_addresses = 127.0.0.1)
local all all              trust
host  all all 127.0.0.1/32 trust
EOF
  [ "$is_root" -eq 1 ] && chown postgres:postgres "$dir/postgresql.conf" "$dir/pg_hba.conf"
fi

if running; then
  # postmaster.pid's fourth line is the port the running server listens on.
  running_port="$(sed -n 4p "$dir/postmaster.pid" 2>/dev/null || true)"
  if [ "$running_port" != "$port" ]; then
    say "the server in $dir already runs on port ${running_port:-?}; stop it first (--stop) or use --port ${running_port:-?}"
    exit 1
  fi
  say "already running in $dir"
else
  say "starting on 127.0.0.1:$port (log: $dir/server.log)"
  # The port is given at start, not stored in the cluster, so one directory can be restarted on
  # another port.
  if ! as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -o "-p $port" -w -t 60 start >/dev/null; then
    say "the server did not start; last lines of $dir/server.log:"
    tail -n 20 "$dir/server.log" >&2 || true
    exit 1
  fi
fi

psql_admin() {
  as_owner "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres "$@"
}
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'warmline'")" != 1 ]; then
  psql_admin -c "CREATE ROLE warmline LOGIN"
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'warmline'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE warmline OWNER warmline"
fi

echo "$url"
