#!/usr/bin/env bash
# The fuzzing campaign (docs/RELIABILITY.md): libFuzzer targets for the safetensors reader, the
# config parsers (run, model, train files and every mechanism's options), the corpus loader and
# the streaming UTF-8 decoder, built with clang, ASan and UBSan in build-fuzz/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]  fuzz each target for SECONDS (default 60); new inputs go to
#                                           build-fuzz/corpus/TARGET, crashes to build-fuzz/crash-*
#   scripts/fuzz.sh --check                 run each target once over its seed corpus fuzz/corpus/TARGET
#                                           (a regression test, seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=fuzz
seconds=60
if [[ "${1:-}" == "--check" ]]; then mode=check; shift; elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(safetensors config corpus utf8)
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DCMAKE_CXX_COMPILER="${CXX:-clang++-14}" -DEFORMER_FUZZ=ON -DEFORMER_PYTHON=OFF -DEFORMER_TESTS=OFF \
  -DEFORMER_BENCHMARKS=OFF > build-fuzz.log 2>&1 || { cat build-fuzz.log; exit 1; }
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]/#/fuzz_}" >> build-fuzz.log 2>&1 ||
  { tail -40 build-fuzz.log; exit 1; }
rm -f build-fuzz.log
export ASAN_OPTIONS="${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
for t in "${targets[@]}"; do
  if [[ $mode == check ]]; then
    build-fuzz/fuzz_"$t" fuzz/corpus/"$t"/* > build-fuzz/"$t".check.log 2>&1 ||
      { cat build-fuzz/"$t".check.log; echo "fuzz_$t: FAILED on its seed corpus"; exit 1; }
    echo "fuzz_$t: $(ls fuzz/corpus/"$t" | wc -l) seed inputs, no finding"
  else
    mkdir -p build-fuzz/corpus/"$t"
    (cd build-fuzz && ./fuzz_"$t" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix=crash-"$t"- \
      corpus/"$t" ../fuzz/corpus/"$t" > "$t".log 2>&1) || { tail -60 build-fuzz/"$t".log; exit 1; }
    echo "fuzz_$t: $(grep -E '^stat::number_of_executed_units' build-fuzz/"$t".log | awk '{print $2}') executions," \
         "corpus $(ls build-fuzz/corpus/"$t" | wc -l) inputs, $(grep -oE 'cov: [0-9]+' build-fuzz/"$t".log | tail -1)" \
         "edges; no finding"
  fi
done
