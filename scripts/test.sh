#!/usr/bin/env bash
# The test suite: install dependencies, build, run the C++ tests, the PyTorch parity suite,
# data-parallel training across two network namespaces (scripts/mpi-two-hosts.sh), the installs
# (cmake --install moved elsewhere, an out-of-tree find_package(eformer) consumer, pip install . in a
# fresh virtual environment), the C++ tests again under ASan+UBSan, and each
# fuzz target over its seed corpus (scripts/fuzz.sh --check).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== build"
scripts/build.sh
echo "== C++ tests"
build/eformer_tests --gtest_brief=1
scripts/prepare-data.sh
echo "== Python parity tests (PyTorch float64 references)"
(cd tests/python && PYTHONPATH="$PWD/../../build/python" /usr/bin/python3 -m pytest -q -p no:cacheprovider .)
echo "== data-parallel training on two hosts (network namespaces, Open MPI over TCP)"
if [ "$(id -u)" -eq 0 ] && command -v ip > /dev/null && grep -q "^EFORMER_MPI:BOOL=ON" build/CMakeCache.txt; then
  scripts/mpi-two-hosts.sh 10
else
  echo "skipped: needs root (ip netns), iproute2 and a build with MPI"
fi
echo "== installs: cmake --install (moved prefix: CLI, Python, find_package consumer) and pip install ."
scripts/test-install.sh
echo "== C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEFORMER_SANITIZE=ON -DEFORMER_PYTHON=OFF \
  -DEFORMER_BENCHMARKS=OFF -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" > /dev/null
cmake --build build-asan -j "$(nproc)" --target eformer_tests > build-asan.log 2>&1 || { tail -50 build-asan.log; exit 1; }
rm -f build-asan.log
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build-asan/eformer_tests --gtest_brief=1
echo "== fuzz targets over their seed corpora (clang, ASan + UBSan; EFORMER_SKIP_FUZZ=1 skips)"
[[ "${EFORMER_SKIP_FUZZ:-0}" == 1 ]] || scripts/fuzz.sh --check
echo "== all tests passed"
