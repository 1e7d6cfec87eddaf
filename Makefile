# The two commands of the README: `make run` and `make test`. Everything they need is installed
# by scripts/ from Debian apt and crates.io only.
CARGO ?= cargo

.PHONY: run test build setup lint bench check clean-state install

## Run the appliance with its embedded defaults: SIP on 127.0.0.1:5060 (UDP+TCP), SQLite under
## state/, the demo bank dialplan and the bundled prompts.
run: setup
	$(CARGO) run --release --bin warmline -- serve

## Install every test peer (SIPp, baresip, espeak-ng, sox, PostgreSQL) and run the whole suite
## (cargo test --all-targets, store tests on SQLite and on a throw-away PostgreSQL).
test: setup
	scripts/test.sh

setup:
	scripts/setup-build.sh

build: setup
	$(CARGO) build --release

## Install the release binary, the systemd unit, /etc/warmline and /var/lib/warmline
## (docs/operations.md).
install: build
	scripts/install.sh

check: setup
	$(CARGO) run --release --bin warmline -- check

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: setup
	scripts/bench-sipp.sh

clean-state:
	rm -rf state
