#!/usr/bin/env bash
# CPU seconds per training step, and tokens per CPU second, of the KJV configuration of docs/BENCHMARKS.md
# ("Learning side by side": 4 layers x 128, d_ff 512, context 1024, batch 8) at 1 thread: the user + system time
# of 8 steps minus that of 2, over 6, so start-up and the final evaluation cancel. Other processes' load does
# not run on our CPU time, so this tracks the idle wall clock's ratios on a busy machine (a proxy: shared caches
# and memory bandwidth still differ).
#   bench/train_cpu_rate.sh [BINARY] KIND POSITIONS      # e.g. bench/train_cpu_rate.sh aft_local learned
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/eformer"
if [ $# -eq 3 ]; then bin=$1; shift; fi
kind=$1 positions=$2
export EFORMER_HOME="${EFORMER_HOME:-$root/build/share/eformer}"  # presets and data for a binary built elsewhere
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cpu() {
  /usr/bin/time -f "%U %S" -o "$out/time" "$bin" train --preset small --steps "$1" --threads 1 --out "$out/run" \
    --set model.attention.kind="$kind" --set model.positions="$positions" --set model.max_len=1024 \
    --set model.d_model=128 --set model.d_ff=512 --set train.batch_size=8 --set train.warmup_steps=50 \
    --set train.min_lr=0.002 --set train.eval_every=100000 --set train.eval_batches=1 --checkpoint-every 100000 \
    --quiet --data "$EFORMER_HOME/data/kjv.txt" > /dev/null
  awk '{print $1 + $2}' "$out/time"
}
two=$(cpu 2) eight=$(cpu 8)
python3 -c "s = ($eight - $two) / 6; print(f'$kind ($positions): {s:.3f} CPU s/step, {8 * 1024 / s:,.0f} tokens per CPU second')"
