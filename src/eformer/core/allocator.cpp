#include "eformer/core/allocator.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace eformer::allocator {
namespace {
std::atomic<int64_t> g_live{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_count{0};
constexpr size_t kAlign = 64;
}  // namespace

void* allocate(size_t bytes) {
  size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  if (rounded == 0) rounded = kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (!p) throw std::bad_alloc();
  int64_t live = g_live.fetch_add(int64_t(bytes)) + int64_t(bytes);
  int64_t peak = g_peak.load();
  while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
  }
  g_count.fetch_add(1);
  return p;
}

void deallocate(void* p, size_t bytes) {
  if (!p) return;
  std::free(p);
  g_live.fetch_sub(int64_t(bytes));
}

Stats stats() { return {g_live.load(), g_peak.load(), g_count.load()}; }

void reset_peak() { g_peak.store(g_live.load()); }

}  // namespace eformer::allocator
