#!/bin/sh
# Installs the peers warmline's integration tests talk to, with apt only (Debian/Ubuntu):
#   sipp (sip-tester)    SIP caller/callee scenarios, DTMF pcaps   tests/sipp/*.xml
#   baresip (-core)      a real softphone driven over ctrl_tcp     tests/common Baresip
#   espeak-ng + sox      caller speech, audio conversion/measures  make_caller_wav, docs
#   python3              scripts/gen-dtmf-pcaps.py
#   procps (kill)        the harness stops processes with SIGTERM
#   kamailio             dispatcher in front of two appliances       tests/kamailio.rs
#   systemd (systemd-analyze)  verifies the unit file                tests/ops.rs
#
# Idempotent: does nothing when every tool is already there.  Runs apt-get update only when the
# package lists are missing or do not know a package.  Works as root, or through sudo.
#   scripts/setup-test-peers.sh          install what is missing
#   scripts/setup-test-peers.sh --check  only report (exit 1 if something is missing)
set -eu

PACKAGES="sip-tester baresip-core espeak-ng sox python3 procps kamailio systemd"
# binary -> package (checked before touching apt)
TOOLS="sipp:sip-tester baresip:baresip-core espeak-ng:espeak-ng sox:sox python3:python3 kill:procps kamailio:kamailio systemd-analyze:systemd"
BARESIP_MODULES="g711 aufile alsa sndfile ctrl_tcp menu account"

missing_packages() {
    out=""
    for pair in $TOOLS; do
        bin=${pair%%:*}
        pkg=${pair#*:}
        if ! command -v "$bin" >/dev/null 2>&1; then
            out="$out $pkg"
        fi
    done
    if command -v baresip >/dev/null 2>&1; then
        for m in $BARESIP_MODULES; do
            if [ ! -f "/usr/lib/baresip/modules/$m.so" ]; then
                out="$out baresip-core"
                break
            fi
        done
    fi
    # unique, space separated
    echo "$out" | tr ' ' '\n' | sed '/^$/d' | sort -u | tr '\n' ' '
}

report() {
    echo "sipp:     $(sipp -v 2>/dev/null | grep -m1 -o 'SIPp v[^ ]*' || echo missing)"
    echo "baresip:  $(baresip -h 2>&1 | grep -m1 -o 'baresip v[0-9.]*' || echo missing)"
    echo "espeak-ng: $(espeak-ng --version 2>/dev/null | grep -m1 -o 'espeak-ng: [0-9.]*\|[0-9]\.[0-9.]*' | head -1 || echo missing)"
    echo "sox:      $(sox --version 2>/dev/null | grep -o 'v[0-9.]*' || echo missing)"
    echo "python3:  $(python3 --version 2>/dev/null || echo missing)"
    echo "kamailio: $(kamailio -v 2>/dev/null | grep -m1 -o 'kamailio [0-9.]*' || echo missing)"
    echo "systemd-analyze: $(systemd-analyze --version 2>/dev/null | head -1 || echo missing)"
}

need=$(missing_packages)

if [ "${1:-}" = "--check" ]; then
    report
    if [ -n "$need" ]; then
        echo "missing packages: $need"
        exit 1
    fi
    exit 0
fi

if [ -z "$need" ]; then
    echo "test peers already installed"
    report
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install these packages by hand: $need" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: not root and no sudo; run as root: apt-get install $need" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Update the lists only if they are empty or do not offer one of the packages.
lists_know_all() {
    ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || return 1
    for pkg in $need; do
        cand=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
            return 1
        fi
    done
    return 0
}

if ! lists_know_all; then
    echo "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
fi

echo "apt-get install $need"
# shellcheck disable=SC2086 # word splitting of the package list is intended
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need

# The Debian package enables a system-wide Kamailio on port 5060, which `make run` needs; the
# tests start their own instance.
case " $need " in
    *" kamailio "*)
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now kamailio.service >/dev/null 2>&1 || true
        fi
        ;;
esac

still=$(missing_packages)
if [ -n "$still" ]; then
    echo "error: still missing after install: $still" >&2
    exit 1
fi
report
if ! sipp -v 2>/dev/null | grep -q PCAP; then
    echo "warning: this sipp lacks PCAP support; uac_dtmf*.xml will not work" >&2
fi
