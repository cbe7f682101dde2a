// Threading: OpenMP in our kernels. oneDNN (our GEMM) runs on the same libgomp pool, so BLAS
// threads and ours never oversubscribe the cores. Work is split by index ranges only, never by
// thread-dependent reductions, so results are bit-identical on any thread count.
#pragma once
#include <cstdint>

namespace eformer::parallel {

int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) over [0, n) in contiguous ranges of at least `grain` items.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  int64_t chunks = (n + grain - 1) / (grain > 0 ? grain : 1);
  int threads = num_threads();
  if (chunks > threads) chunks = threads;
  if (chunks <= 1) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel for num_threads(int(chunks)) schedule(static, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t begin = n * c / chunks, end = n * (c + 1) / chunks;
    fn(begin, end);
  }
}

}  // namespace eformer::parallel
