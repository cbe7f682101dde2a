// Per-thread scratch for the fused attention kernels (flash, kernelized): memory taken through the
// counting allocator, so benchmarks' peaks include it, and a loop over independent work items.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

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

// int32 indices through the counting allocator (so benchmarks' peaks include them).
struct IndexBuffer {
  int32_t* data = nullptr;
  size_t bytes = 0;
  explicit IndexBuffer(int64_t n) : bytes(size_t(std::max<int64_t>(n, 1)) * sizeof(int32_t)) {
    data = static_cast<int32_t*>(allocator::allocate(bytes));
  }
  IndexBuffer(const IndexBuffer&) = delete;
  IndexBuffer& operator=(const IndexBuffer&) = delete;
  ~IndexBuffer() { allocator::deallocate(data, bytes); }
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

// Operand layouts of the tile GEMMs (tile_gemm.h needs B operands padded to whole vectors).
// x [heads, n, d] -> x^T [heads, d, np], columns n..np zero. By tiles of 64 rows of x: the tile is
// read from L1 and written as 64 contiguous floats in each of the d rows of x^T (a column-wise read
// of all of x, or a row-wise write across x^T, would touch a new cache line or page per element).
inline ScratchBuffer transposed_padded(const float* x, int64_t heads, int64_t n, int64_t d, int64_t np) {
  constexpr int64_t kTile = 64;
  ScratchBuffer t(heads * d * np);
  const int64_t tiles = (np + kTile - 1) / kTile;
  parallel::parallel_for(heads * tiles, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t h = r / tiles, j0 = (r % tiles) * kTile, j1 = std::min(np, j0 + kTile),
                    jn = std::min(n, j1);
      float* dst = t.data + h * d * np;
      const float* src = x + h * n * d;
      for (int64_t c = 0; c < d; ++c)  // the tile of x (64 rows) stays in L1; writes are contiguous
        for (int64_t j = j0; j < jn; ++j) dst[c * np + j] = src[j * d + c];
      for (int64_t c = 0; c < d; ++c)
        for (int64_t j = std::max(j0, jn); j < j1; ++j) dst[c * np + j] = 0.0f;
    }
  });
  return t;
}

// x [rows, d] -> [rows, dp] with zero columns d..dp; empty (use x itself) when d == dp.
inline ScratchBuffer rows_padded(const float* x, int64_t rows, int64_t d, int64_t dp) {
  if (d == dp) return ScratchBuffer();
  ScratchBuffer t(rows * dp);
  parallel::parallel_for(rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      std::memcpy(t.data + r * dp, x + r * d, size_t(d) * sizeof(float));
      std::fill(t.data + r * dp + d, t.data + (r + 1) * dp, 0.0f);
    }
  });
  return t;
}

}  // namespace eformer::kernels
