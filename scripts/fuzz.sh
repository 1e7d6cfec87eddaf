#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of warmline's parsers (docs/security.md).
#
#   scripts/fuzz.sh                    every target for FUZZ_SECONDS (default 20) each
#   scripts/fuzz.sh --seconds 600 sdp  one target, longer
#   scripts/fuzz.sh --list             the targets
#
# Needs only the stable toolchain: cargo-fuzz's -Z flags are accepted through RUSTC_BOOTSTRAP=1.
# cargo-fuzz is installed once from crates.io into the git-ignored .cache/cargo-bin. The growing
# corpus lives in the git-ignored .cache/fuzz/corpus/<target>; the small committed seeds are
# fuzz/seeds/<target>. A crash leaves its input in .cache/fuzz/artifacts/<target>/ and fails the
# script, printing the command that reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds="${FUZZ_SECONDS:-20}"
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --list) targets=(list); shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done

export PATH="$root/.cache/cargo-bin/bin:$PATH"
export RUSTC_BOOTSTRAP=1
# The targets link the whole crate, which links libvosk.so (scripts/setup-vosk.sh); build.rs's
# rpath applies to the crate's own binaries only.
export LD_LIBRARY_PATH="${VOSK_LIB_DIR:-$root/.cache/speech/vosk/lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz into .cache/cargo-bin (once)"
  cargo install cargo-fuzz --locked --root "$root/.cache/cargo-bin"
fi

all=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^warmline-fuzz$')
if [ "${targets[*]:-}" = list ]; then echo "$all"; exit 0; fi
[ ${#targets[@]} -gt 0 ] || read -r -a targets <<<"$(echo $all)"

# Fuzz builds are debug builds with coverage instrumentation: quick to compile, overflow checks
# on. No sanitizer: warmline has no unsafe code, and panics are what we look for.
build_flags=(--dev --sanitizer none --fuzz-dir fuzz)
cargo fuzz build "${build_flags[@]}"

failed=()
for t in "${targets[@]}"; do
  corpus="$root/.cache/fuzz/corpus/$t"
  artifacts="$root/.cache/fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  echo "fuzz: $t for ${seconds}s"
  if ! cargo fuzz run "${build_flags[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 >"$root/.cache/fuzz/$t.log" 2>&1; then
    failed+=("$t")
    tail -n 40 "$root/.cache/fuzz/$t.log"
    crash=$(ls -t "$artifacts" 2>/dev/null | head -n 1)
    if [ -n "$crash" ]; then
      echo "fuzz: $t FAILED; input $artifacts/$crash"
      echo "fuzz: reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $t $artifacts/$crash"
    else
      echo "fuzz: $t did not run (no crash input); see .cache/fuzz/$t.log"
    fi
  else
    grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$root/.cache/fuzz/$t.log" \
      | tr '\n' ' ' | sed "s/^/fuzz: $t: /"; echo
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
