#!/usr/bin/env bash
# The main job: install dependencies, build, extract the default corpus (the King James Bible), train
# the small preset (a 4-layer, 256-wide byte-level Transformer) for a few minutes, then report its
# bits per character on the whole validation split and stream a generated sample.
#   EFORMER_MINUTES   training time in minutes (default 4); extra arguments go to `eformer train`
#                     (e.g. --threads 2, --set lr=3e-3)
# Output lands in out/small/ (checkpoint.safetensors, log.jsonl); `build/eformer train --resume
# out/small/checkpoint.safetensors --minutes M` trains it further.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${EFORMER_MINUTES:-4}"
scripts/install-deps.sh
echo "== building (about 3 minutes on 2 cores)"
scripts/build.sh
echo "== preparing the corpus"
scripts/prepare-data.sh
echo "== training the small preset for $minutes minutes (progress on stderr; log in out/small/log.jsonl)"
build/eformer train --preset small --minutes "$minutes" --out out/small "$@"
echo "== bits per character on the whole validation split"
build/eformer eval out/small/checkpoint.safetensors --split valid
echo "== a sample (temperature 0.8, seed 0)"
build/eformer generate out/small/checkpoint.safetensors --prompt "And God said" --max-new-tokens 300 \
  --temperature 0.8 --seed 0
