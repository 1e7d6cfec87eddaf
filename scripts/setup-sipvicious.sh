#!/bin/sh
# Installs sipvicious 0.3.8 (PyPI) into the git-ignored .cache/sipvicious venv for the scanner
# tests in tests/hostile_net.rs (svmap, svwar, svcrack). Once: a second run finds it and does
# nothing. Run by scripts/test.sh before the suite, because the tests run in parallel processes
# and must not each install it.
set -eu
cd "$(dirname "$0")/.."
venv=.cache/sipvicious
if [ -x "$venv/bin/sipvicious_svwar" ]; then
    echo "setup-sipvicious: sipvicious cached in $venv"
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q "sipvicious==0.3.8"
echo "setup-sipvicious: sipvicious 0.3.8 installed in $venv"
