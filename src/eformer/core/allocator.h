// The allocator: 64-byte aligned blocks, with counters of live and peak bytes.
// The peak is the memory figure benchmarks report (beside the process's peak RSS).
//
// Large blocks (>= 1 MiB) are cached after free, by size class (classes 1/8 of a power of two
// apart, so at most 12.5% slack), and handed out again: training loops allocate the same sizes
// every step, and fresh pages cost a page fault each (about 1.5 GB/s on a small VM, slower than
// any kernel). The cache is bounded (EFORMER_CACHE_MB, default 2048) and off under ASan, which
// must see every free.
#pragma once
#include <cstddef>
#include <cstdint>

namespace eformer::allocator {

void* allocate(size_t bytes);
void deallocate(void* p, size_t bytes);

struct Stats {
  int64_t live_bytes;    // bytes of live tensors (what the program holds)
  int64_t peak_bytes;    // the maximum of live_bytes since start or reset_peak()
  int64_t allocations;   // blocks handed out since start
  int64_t cached_bytes;  // freed large blocks kept for reuse (not live)
};
Stats stats();
// Sets the peak to the current live bytes, so a region's peak can be measured.
void reset_peak();
// Returns every cached block to the system.
void empty_cache();
// The memory the system could give this process now without swapping: MemAvailable of
// /proc/meminfo plus this allocator's cache, in bytes; -1 when unknown (no /proc).
int64_t available_bytes();

}  // namespace eformer::allocator
