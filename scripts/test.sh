#!/usr/bin/env bash
# `make test`: installs the test peers (apt), starts a throw-away PostgreSQL on loopback so the store
# and ledger tests run on both SQLite and PostgreSQL, runs the whole suite, and stops the server.
# Set WARMLINE_TEST_POSTGRES_URL yourself to use a server you already have.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-peers.sh
scripts/setup-sipvicious.sh
if [ -z "${WARMLINE_TEST_POSTGRES_URL:-}" ]; then
  WARMLINE_TEST_POSTGRES_URL="$(scripts/setup-postgres.sh)"
  export WARMLINE_TEST_POSTGRES_URL
  trap 'scripts/setup-postgres.sh --stop --purge >/dev/null 2>&1 || true' EXIT
fi
echo "test: PostgreSQL at $WARMLINE_TEST_POSTGRES_URL"
cargo fmt --check
# cargo-nextest (on the build machines; .config/nextest.toml) runs test files side by side, which
# is most of what keeps CI well under 30 minutes. Plain `cargo test` is the same suite, serially.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets
else
  echo "test: cargo-nextest not found, running the suite serially with cargo test"
  cargo test --all-targets
fi
# Coverage-guided fuzzing of every parser for a bounded time each (docs/security.md); a crash
# fails the run and leaves its input under .cache/fuzz/artifacts/.
FUZZ_SECONDS="${FUZZ_SECONDS:-5}" scripts/fuzz.sh
