// Per-thread scratch for the fused attention kernels (flash, kernelized): memory taken through the
// counting allocator, so benchmarks' peaks include it, and a loop over independent work items.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "eformer/core/allocator.h"
#include "eformer/core/parallel.h"

namespace eformer::kernels {

// Scratch memory through the counting allocator (so benchmarks' peak includes it); empty when n = 0.
struct ScratchBuffer {
  float* data = nullptr;
  size_t bytes = 0;
  ScratchBuffer() = default;
  explicit ScratchBuffer(int64_t n) : bytes(size_t(n) * sizeof(float)) {
    if (n > 0) data = static_cast<float*>(allocator::allocate(bytes));
  }
  ScratchBuffer(ScratchBuffer&& o) noexcept : data(o.data), bytes(o.bytes) { o.data = nullptr; }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(ScratchBuffer&&) = delete;
  ~ScratchBuffer() {
    if (data) allocator::deallocate(data, bytes);
  }
};

// Runs body(item, scratch) for item in [0, n) over the library's threads. Items are independent
// and each is computed the same way whichever thread takes it, so the dynamic schedule (which
// balances causal rows of unequal length) does not change any result.
template <class F>
void for_each_item(int64_t n, int64_t scratch_floats, F body) {
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(n, parallel::num_threads())));
#pragma omp parallel num_threads(threads)
  {
    ScratchBuffer scratch(scratch_floats);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n; ++item) body(item, scratch.data);
  }
}

}  // namespace eformer::kernels
