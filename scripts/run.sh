#!/usr/bin/env bash
# The main job: install dependencies, build, and run the engine demo (an MLP trained from C++).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== building (about 3 minutes on 2 cores)"
scripts/build.sh
echo "== eformer demo"
build/eformer demo "$@"
