#!/usr/bin/env bash
# Opt-in: makes .peers/ (a virtual environment, ignored by git) with pinned current PyTorch and the PyTorch
# implementations users install for the mechanisms eformer has, for the side-by-side benchmark
# (scripts/bench.sh). The test command does not need it.
#
# PyTorch comes from PyPI as users install it (`pip install torch`): its Linux wheel is the CUDA build and
# pulls about 4.5 GB of nvidia-* and triton wheels (the CPU-only index is not reachable from the project's
# machines). Installing torch alone with --no-deps does not import (libtorch_cuda.so links cuFile, cuSPARSELt,
# NVSHMEM and NCCL), so the whole wheel set is installed; the CPU code paths are the same either way.
# Measured here (2 cores, loaded by other builds): torch with its wheels took 4.4 minutes from an empty pip
# cache (about 4 GB downloaded); the whole script 10.7 minutes with the wheels cached (unpacking dominates);
# .peers/ is 5.7 GB. Every peer below installed and imported with torch 2.15.0 and numpy 1.26.4.
#
# The venv is made from Debian's Python (/usr/bin/python3, the one the module in build/python is built for);
# numpy stays below 2 because Debian's pybind11 (2.10) predates numpy 2's ABI.
# Each peer is installed on its own and then imported; the summary says which did not install or import.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EFORMER_PEERS:-.peers}
case $venv in /*) ;; *) venv="$PWD/$venv" ;; esac
python=${EFORMER_PEERS_PYTHON:-/usr/bin/python3}

TORCH="torch==2.15.0"
BASE=("numpy==1.26.4" "matplotlib==3.11.2")
# package==version  import-name
PEERS=(
  "transformers==5.23.0 transformers"
  "performer-pytorch==1.1.4 performer_pytorch"
  "aft-pytorch==0.2.2 aft_pytorch"
  "reformer-pytorch==1.4.4 reformer_pytorch"
  "linformer==0.2.3 linformer"
  "sinkhorn-transformer==0.11.4 sinkhorn_transformer"
  "routing-transformer==1.6.1 routing_transformer"
  "axial-attention==0.6.1 axial_attention"
  "isab-pytorch==0.3.0 isab_pytorch"
  "compressive-transformer-pytorch==0.4.0 compressive_transformer_pytorch"
  "local-attention==1.11.2 local_attention"
  "x-transformers==2.31.10 x_transformers"
  "linear-attention-transformer==0.19.1 linear_attention_transformer"
)

start=$(date +%s)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip() { "$venv/bin/pip" install -q --disable-pip-version-check "$@"; }
echo "installing $TORCH ${BASE[*]} into $venv ..."
pip "$TORCH" "${BASE[@]}"
"$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'

failed=()
for line in "${PEERS[@]}"; do
  read -r spec module <<< "$line"
  # The torch and numpy pins stay: a peer may not replace them.
  if ! pip "$spec" "$TORCH" "${BASE[@]}" > "$venv/install-${module}.log" 2>&1; then
    failed+=("$spec: pip install failed ($(tail -1 "$venv/install-${module}.log"))")
    continue
  fi
  if ! err=$(cd /tmp && "$venv/bin/python" -c "import $module" 2>&1); then
    failed+=("$spec: installs but does not import ($(echo "$err" | tail -1))")
  fi
done

echo "$(du -sh "$venv" | cut -f1) in $venv, $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "peers that do not install or import here:"
  printf '  %s\n' "${failed[@]}"
fi
echo "the benchmark: scripts/bench.sh --quick"
