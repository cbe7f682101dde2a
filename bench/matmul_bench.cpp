// eformer::matmul against a raw oneDNN sgemm call on the same buffers, square 256..2048 and the
// skinny shapes attention uses (K or N = 64). Counters: GFLOP/s. Run with
//   build/matmul_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// and compare medians of the Raw/Ours pair of each shape (bench/report.py does it).
#include <benchmark/benchmark.h>
#include <dnnl.h>

#include "eformer/eformer.h"

namespace {
using namespace eformer;

Tensor random_tensor(const Shape& s) {
  Tensor t = Tensor::empty(s);
  rng::normal_(t.data<float>(), t.numel());
  return t;
}

void set_flops(benchmark::State& state, int64_t M, int64_t N, int64_t K) {
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * double(M * N * K), benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::OneK::kIs1000);
  state.counters["GFLOPs"].value /= 1e9;
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
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
