// The allocator: 64-byte aligned blocks, with counters of live and peak bytes.
// The peak is the memory figure benchmarks report (beside the process's peak RSS).
#pragma once
#include <cstddef>
#include <cstdint>

namespace eformer::allocator {

void* allocate(size_t bytes);
void deallocate(void* p, size_t bytes);

struct Stats {
  int64_t live_bytes;
  int64_t peak_bytes;
  int64_t allocations;  // blocks handed out since start
};
Stats stats();
// Sets the peak to the current live bytes, so a region's peak can be measured.
void reset_peak();

}  // namespace eformer::allocator
