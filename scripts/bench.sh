#!/usr/bin/env bash
# The side-by-side benchmark: every registered mechanism and its PyTorch peers (bench/harness/run.py).
#   scripts/bench.sh --quick                  # N in {1024, 4096}, under 10 minutes
#   scripts/bench.sh                          # the full grid (N = 512 ... 16384), a 60-minute budget
#   scripts/bench.sh --quick --out docs/bench/quick.json --docs     # and regenerate docs/BENCHMARKS.md
#   scripts/bench.sh --report FILE.json [--docs]                     # table, plots and docs from a JSON
#   scripts/bench.sh --tasks [--quick] [--steps N | --minutes M] [--docs]   # LRA-style accuracy (bench/tasks.py)
# Runs with .peers/ (scripts/install-peers.sh: current PyTorch and the peer packages) when it exists, else
# with Debian's Python and its torch 1.13 (then only the torch peers that import there run, no plots).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build/python/eformer ] || scripts/build.sh
if [ "${1:-}" = --tasks ]; then  # training only: Debian's Python, no peers needed
  shift
  export PYTHONPATH="$PWD/build/python${PYTHONPATH:+:$PYTHONPATH}"
  exec /usr/bin/python3 bench/tasks.py "$@"
fi
py=/usr/bin/python3
if [ -x .peers/bin/python ]; then
  py=.peers/bin/python
else
  echo "bench: no .peers/ (scripts/install-peers.sh); using $py and whatever torch it has" >&2
fi
export PYTHONPATH="$PWD/build/python${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = --report ]; then
  shift
  exec "$py" bench/harness/report.py "$@"
fi
exec "$py" bench/harness/run.py "$@"
