#!/bin/sh
# Installs warmline as a systemd service (run as root, after `make build`):
#   /usr/local/bin/warmline                        the binary (target/release/warmline)
#   /etc/systemd/system/warmline.service           the unit (systemd/warmline.service)
#   /usr/lib/sysusers.d, /usr/lib/tmpfiles.d       the `warmline` user and its folders
#   /etc/warmline/warmline.toml                    a starting configuration (never overwritten)
#   /etc/warmline/dialplans, /etc/warmline/voice-prompts, /etc/warmline/campaigns
#                                                  the demo dialplan, prompts, campaigns (if absent)
#   /var/lib/warmline                              state: SQLite, caches, the control socket
#   /usr/local/share/doc/warmline/operations.md    the operator guide
#
#   scripts/install.sh [--bin PATH] [--prefix /usr/local] [--no-start] [--dry-run]
#
# Idempotent; an upgrade is the same command (the configuration is kept, the binary and unit are
# replaced, and a running service is restarted, which drains calls first).
set -eu

cd "$(dirname "$0")/.."
BIN=target/release/warmline
PREFIX=/usr/local
START=1
RUN=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        --dry-run) RUN=echo; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ ! -x "$BIN" ]; then
    echo "error: $BIN not found; build it first: make build (or pass --bin PATH)" >&2
    exit 1
fi
if [ -z "$RUN" ] && [ "$(id -u)" -ne 0 ]; then
    echo "error: run as root (it writes /etc, /usr/local and /var/lib)" >&2
    exit 1
fi

$RUN install -D -m 0755 "$BIN" "$PREFIX/bin/warmline"
# The unit names /usr/local/bin; follow another prefix.
unit_tmp=$(mktemp)
trap 'rm -f "$unit_tmp"' EXIT
sed "s#/usr/local/bin/warmline#$PREFIX/bin/warmline#g; s#/usr/local/share/doc#$PREFIX/share/doc#g" \
    systemd/warmline.service > "$unit_tmp"
$RUN install -D -m 0644 "$unit_tmp" /etc/systemd/system/warmline.service
$RUN install -D -m 0644 systemd/warmline.sysusers /usr/lib/sysusers.d/warmline.conf
$RUN install -D -m 0644 systemd/warmline.tmpfiles /usr/lib/tmpfiles.d/warmline.conf
$RUN install -D -m 0644 docs/operations.md "$PREFIX/share/doc/warmline/operations.md"

if command -v systemd-sysusers >/dev/null 2>&1; then
    $RUN systemd-sysusers /usr/lib/sysusers.d/warmline.conf
elif ! id warmline >/dev/null 2>&1; then
    $RUN useradd --system --home-dir /var/lib/warmline --shell /usr/sbin/nologin warmline
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    $RUN systemd-tmpfiles --create /usr/lib/tmpfiles.d/warmline.conf
else
    $RUN install -d -m 0750 -o warmline -g warmline /var/lib/warmline
    $RUN install -d -m 0750 -o root -g warmline /etc/warmline
fi

# Content the operator edits: copied once, never overwritten by an upgrade.
for d in dialplans voice-prompts campaigns; do
    if [ ! -e "/etc/warmline/$d" ]; then
        $RUN cp -r "$d" "/etc/warmline/$d"
        $RUN chgrp -R warmline "/etc/warmline/$d"
    fi
done
if [ ! -e /etc/warmline/warmline.toml ]; then
    conf_tmp=$(mktemp)
    cat > "$conf_tmp" <<'TOML'
# warmline configuration; every key is optional (docs/operations.md, README "Commands").
# Relative paths are taken from this file's folder.
[sip]
listen = "0.0.0.0:5060"
# public_addr = "203.0.113.7:5060"

[rtp]
port_min = 20000
port_max = 29999

[paths]
state_dir = "/var/lib/warmline"
dialplans = "dialplans"
prompts = "voice-prompts"
campaigns = "campaigns"

[ivr]
dialplan = "demo-bank"

[speech]
cache_dir = "/var/lib/warmline/tts-cache"

[metrics]
listen = "127.0.0.1:9100"

[service]
drain_timeout = "30s"

# [storage]
# url = "postgres://warmline@db/warmline"
TOML
    $RUN install -m 0640 -g warmline "$conf_tmp" /etc/warmline/warmline.toml
    rm -f "$conf_tmp"
fi

$RUN systemctl daemon-reload
if [ "$START" -eq 1 ]; then
    $RUN systemctl enable warmline.service
    # restart drains calls in progress (SIGTERM), then starts the new binary.
    $RUN systemctl restart warmline.service
    $RUN systemctl --no-pager status warmline.service || true
fi
echo "installed: $PREFIX/bin/warmline, /etc/systemd/system/warmline.service, /etc/warmline/warmline.toml"
