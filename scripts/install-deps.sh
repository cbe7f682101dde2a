#!/usr/bin/env bash
# Installs eformer's build and test dependencies from Debian packages. Idempotent: when every
# package is present it does nothing (no apt-get update, no network).
set -euo pipefail
packages=(
  build-essential cmake
  libdnnl-dev            # oneDNN: the GEMM library (chosen by measurement, docs/BENCHMARKS.md)
  nlohmann-json3-dev     # JSON: safetensors headers, configs
  pybind11-dev python3-dev python3-numpy
  python3-venv           # the pip install test (a fresh virtual environment)
  libgtest-dev libbenchmark-dev
  python3-pytest python3-torch   # tests and benchmarks only: the reference oracle and the peer
  bible-kjv              # the default corpus (used from the model issue on)
  openmpi-bin libopenmpi-dev  # data-parallel training (mpirun -np R eformer train)
  iproute2               # the two-host MPI test (network namespaces)
  dataset-fashion-mnist  # the image corpus (--data fashion-mnist) and the Image task; scripts/prepare-data.sh
  ccache                 # rebuilds (scripts/build.sh uses it when present)
  clang-14 libomp-14-dev # the libFuzzer targets (scripts/fuzz.sh; clang's OpenMP runtime)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
