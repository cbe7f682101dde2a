// eformer::matmul against a raw oneDNN sgemm call on the same buffers, square 256..2048 and the
// skinny shapes attention uses (K or N = 64). Counters: GFLOP/s. Run with
//   build/matmul_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// and compare medians of the Raw/Ours pair of each shape (bench/report.py does it).
#include <benchmark/benchmark.h>
#include <dnnl.h>
#include <immintrin.h>
#include <omp.h>

#include "eformer/eformer.h"

namespace {
using namespace eformer;

Tensor random_tensor(const Shape& s) {
  Tensor t = Tensor::empty(s);
  rng::normal_(t.data<float>(), t.numel());
  return t;
}

void set_flops(benchmark::State& state, int64_t M, int64_t N, int64_t K) {
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * double(M * N * K) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: M, K, N, trans_b (the attention shapes use q k^T, i.e. a transposed second operand).
void BM_Raw(benchmark::State& state) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const bool tb = state.range(3);
  Tensor a = random_tensor({M, K}), b = random_tensor(tb ? Shape{N, K} : Shape{K, N}), c = Tensor::empty({M, N});
  for (auto _ : state) {
    dnnl_sgemm('N', tb ? 'T' : 'N', M, N, K, 1.f, a.data<float>(), K, b.data<float>(), tb ? K : N, 0.f,
               c.data<float>(), N);
    benchmark::DoNotOptimize(c.data<float>());
  }
  set_flops(state, M, N, K);
}

void BM_Ours(benchmark::State& state) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const bool tb = state.range(3);
  Tensor a = random_tensor({M, K}), b = random_tensor(tb ? Shape{N, K} : Shape{K, N});
  for (auto _ : state) {
    Tensor c = matmul(a, b, false, tb);
    benchmark::DoNotOptimize(c.data<float>());
  }
  set_flops(state, M, N, K);
}

// The machine's fp32 FMA peak: every thread runs 12 independent chains of 16-wide FMAs
// (enough to cover the FMA latency on two ports), 2 flops per lane.
__attribute__((target("avx512f"))) void fma_chains_avx512(int64_t iters, float* sink) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  for (int i = 1; i < 12; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
  *sink = _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx2,fma"))) void fma_chains_avx2(int64_t iters, float* sink) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  for (int i = 1; i < 12; ++i) acc[0] = _mm256_add_ps(acc[0], acc[i]);
  float out[8];
  _mm256_storeu_ps(out, acc[0]);
  *sink = out[0];
}

void BM_FmaPeak(benchmark::State& state) {
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const int64_t iters = 1 << 22;
  const int threads = parallel::num_threads();
  float sink[64] = {};
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      int t = omp_get_thread_num();
      if (avx512) fma_chains_avx512(iters, &sink[t]);
      else fma_chains_avx2(iters, &sink[t]);
    }
    benchmark::DoNotOptimize(sink);
  }
  const double flops = double(iters) * 12 * (avx512 ? 16 : 8) * 2 * threads;
  state.counters["GFLOPs"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

// Raw and ours are registered shape by shape, so each pair runs back to back (less drift).
int main(int argc, char** argv) {
  const std::vector<std::vector<int64_t>> shapes = {
      {256, 256, 256, 0}, {512, 512, 512, 0}, {1024, 1024, 1024, 0}, {2048, 2048, 2048, 0},
      {4096, 64, 4096, 1},  // scores = q k^T, head_dim 64
      {4096, 4096, 64, 0},  // out = p v
      {2048, 64, 2048, 1}, {1024, 64, 1024, 1}};
  for (const auto& s : shapes) {
    const std::string name = "/" + std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" + std::to_string(s[2]) +
                             (s[3] ? "T" : "");
    benchmark::RegisterBenchmark(("raw" + name).c_str(), BM_Raw)->Args(s)->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark(("ours" + name).c_str(), BM_Ours)->Args(s)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  benchmark::RegisterBenchmark("fma_peak", BM_FmaPeak)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
