#!/usr/bin/env bash
# Builds the release binary (after the build set-up) and prints its path; the bench scripts use
# it when BIN is not set. Build output goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-build.sh >&2
cargo build --release --bin warmline >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/release/warmline"
