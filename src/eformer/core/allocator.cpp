#include "eformer/core/allocator.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include "eformer/core/error.h"

namespace eformer::allocator {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kCacheEnabled = false;
#else
constexpr bool kCacheEnabled = true;
#endif
constexpr size_t kAlign = 64;
constexpr size_t kCacheMin = size_t(1) << 20;

std::atomic<int64_t> g_live{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_count{0};

// Rounds a large request up to its size class: 8 classes per power of two.
size_t size_class(size_t bytes) {
  size_t top = size_t(1) << (63 - __builtin_clzll(bytes));
  size_t step = top / 8;
  return (bytes + step - 1) / step * step;
}

struct Cache {
  std::mutex mutex;
  std::map<size_t, std::vector<void*>> free_blocks;  // by size class
  size_t cached = 0;
  size_t limit = [] {
    const char* env = std::getenv("EFORMER_CACHE_MB");
    return size_t(env ? std::atoll(env) : 2048) << 20;
  }();
};
Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: tensors may be freed during static destruction
  return *c;
}

void* system_allocate(size_t bytes) {
  size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded ? rounded : kAlign);
  EF_CHECK(p, MemoryError, "out of memory: cannot allocate ", bytes, " bytes (", bytes >> 20,
           " MiB); reduce the sizes (batch, context, model) or free memory");
  return p;
}

}  // namespace

void* allocate(size_t bytes) {
  void* p = nullptr;
  if (kCacheEnabled && bytes >= kCacheMin) {
    const size_t cls = size_class(bytes);
    Cache& c = cache();
    {
      std::lock_guard<std::mutex> lock(c.mutex);
      auto it = c.free_blocks.find(cls);
      if (it != c.free_blocks.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        c.cached -= cls;
      }
    }
    if (!p) p = system_allocate(cls);
  } else {
    p = system_allocate(bytes);
  }
  int64_t live = g_live.fetch_add(int64_t(bytes)) + int64_t(bytes);
  int64_t peak = g_peak.load();
  while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
  }
  g_count.fetch_add(1);
  return p;
}

void deallocate(void* p, size_t bytes) {
  if (!p) return;
  g_live.fetch_sub(int64_t(bytes));
  if (kCacheEnabled && bytes >= kCacheMin) {
    const size_t cls = size_class(bytes);
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.cached + cls <= c.limit) {
      c.free_blocks[cls].push_back(p);
      c.cached += cls;
      return;
    }
  }
  std::free(p);
}

Stats stats() {
  int64_t cached = 0;
  if (kCacheEnabled) {
    std::lock_guard<std::mutex> lock(cache().mutex);
    cached = int64_t(cache().cached);
  }
  return {g_live.load(), g_peak.load(), g_count.load(), cached};
}

void reset_peak() { g_peak.store(g_live.load()); }

void empty_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& [cls, blocks] : c.free_blocks)
    for (void* p : blocks) std::free(p);
  c.free_blocks.clear();
  c.cached = 0;
}

int64_t available_bytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  long long kib = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %lld kB", &kib) == 1) break;
  std::fclose(f);
  if (kib < 0) return -1;
  std::lock_guard<std::mutex> lock(cache().mutex);
  return int64_t(kib) * 1024 + int64_t(cache().cached);
}

}  // namespace eformer::allocator
