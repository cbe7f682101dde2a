#!/usr/bin/env bash
# The signal stress test at full length (docs/RELIABILITY.md): TRIES (default 200) runs of
# `eformer train --preset tiny`, each sent SIGINT or SIGTERM at a random moment (sometimes twice),
# each of which must exit 130/143 leaving a loadable checkpoint; and Python matmul + backward loops
# under a signal every millisecond, TRIES / 10 times. Needs a build (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TRIES="${1:-${TRIES:-200}}"
cd tests/python
EFORMER_SIGNAL_TRIES="$TRIES" PYTHONPATH="$PWD/../../build/python" /usr/bin/python3 -m pytest -q -s \
  -p no:cacheprovider test_signals.py
