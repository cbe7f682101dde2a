#include "eformer/attention/kernels/block_layout.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "eformer/core/error.h"
#include "eformer/core/parallel.h"

namespace eformer::kernels {
namespace {

// The pairs of one (head, query block) before masks are numbered globally: local masks are
// deduplicated within the row, so a row holds only its distinct masks.
struct RowPairs {
  std::vector<int32_t> key_block, local_mask;  // local_mask: -1 full, else index in masks
  std::vector<std::string> masks;
  int64_t allowed = 0;
};

RowPairs build_row(const BlockSparseLayout& L, int64_t h, int64_t qb, const ElementRule& allowed,
                   const CandidateBlocks& candidates) {
  const int64_t N = L.rows, M = L.keys, block = L.block, nk = L.nk;
  const int64_t* qi = L.query_index.empty() ? nullptr : L.query_index.data();
  const int64_t* ki = L.key_index.empty() ? nullptr : L.key_index.data();
  RowPairs row;
  std::vector<int64_t> blocks;
  if (candidates) {
    candidates(h, qb, block, blocks);
    blocks.erase(std::remove_if(blocks.begin(), blocks.end(), [&](int64_t kb) { return kb < 0 || kb >= nk; }),
                 blocks.end());
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  } else {
    for (int64_t kb = 0; kb < nk; ++kb) blocks.push_back(kb);
  }
  const int64_t i0 = qb * block, rows = std::min(block, N - i0);
  std::string mask(size_t(block * block), '\0');
  std::unordered_map<std::string, int32_t> seen;
  for (int64_t kb : blocks) {
    const int64_t j0 = kb * block, cols = std::min(block, M - j0);
    std::fill(mask.begin(), mask.end(), '\0');
    int64_t count = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        if (allowed(h, qi ? qi[i0 + r] : i0 + r, ki ? ki[j0 + c] : j0 + c))
          mask[size_t(r * block + c)] = 1, ++count;
    if (count == 0) continue;
    row.allowed += count;
    row.key_block.push_back(int32_t(kb));
    if (count == rows * cols) {
      row.local_mask.push_back(-1);
      continue;
    }
    auto [it, inserted] = seen.emplace(mask, int32_t(row.masks.size()));
    if (inserted) row.masks.push_back(mask);
    row.local_mask.push_back(it->second);
  }
  return row;
}

struct Cache {
  std::mutex mutex;
  std::map<std::string, std::pair<LayoutParts, uint64_t>> entries;
  uint64_t tick = 0;
  std::atomic<int64_t> built{0};
};

Cache& cache() {
  static Cache c;
  return c;
}

}  // namespace

// Checks that `index` holds distinct values in [0, n).
void check_index(const std::vector<int64_t>& index, int64_t n, const char* what) {
  std::vector<char> seen(size_t(n), 0);
  for (int64_t x : index) {
    EF_CHECK(x >= 0 && x < n, ValueError, "build_layout: ", what, " holds ", x, "; expected indices in [0, ",
             n, ")");
    EF_CHECK(!seen[size_t(x)], ValueError, "build_layout: ", what, " holds ", x,
             " twice; expected distinct indices");
    seen[size_t(x)] = 1;
  }
}

BlockSparseLayout dense_layout(int64_t N, int64_t M, int64_t block) {
  EF_CHECK(N >= 0 && M >= 0, ValueError, "dense_layout: n = ", N, ", m = ", M, "; expected both >= 0");
  EF_CHECK(block >= 1, ValueError, "dense_layout: block = ", block, "; expected >= 1");
  BlockSparseLayout L;
  L.N = L.rows = N, L.M = L.keys = M, L.block = block, L.heads = 1, L.dense = true;
  L.nq = (N + block - 1) / block, L.nk = (M + block - 1) / block;
  L.allowed_elements = N * M;
  return L;
}

BlockSparseLayout build_layout(int64_t N, int64_t M, int64_t block, int64_t heads, const ElementRule& allowed,
                               const CandidateBlocks& candidates, std::vector<int64_t> query_index,
                               std::vector<int64_t> key_index) {
  EF_CHECK(N >= 0 && M >= 0, ValueError, "build_layout: n = ", N, ", m = ", M, "; expected both >= 0");
  EF_CHECK(block >= 1, ValueError, "build_layout: block = ", block, "; expected >= 1");
  EF_CHECK(heads >= 1, ValueError, "build_layout: heads = ", heads, "; expected >= 1");
  EF_CHECK(bool(allowed), ValueError, "build_layout: the element rule is empty");
  check_index(query_index, N, "query_index");
  check_index(key_index, M, "key_index");
  BlockSparseLayout L;
  L.N = N, L.M = M, L.block = block, L.heads = heads;
  L.rows = query_index.empty() ? N : int64_t(query_index.size());
  L.keys = key_index.empty() ? M : int64_t(key_index.size());
  L.query_index = std::move(query_index), L.key_index = std::move(key_index);
  L.nq = (L.rows + block - 1) / block, L.nk = (L.keys + block - 1) / block;
  std::vector<RowPairs> rows(size_t(heads * L.nq));
  parallel::parallel_for(heads * L.nq, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) rows[size_t(r)] = build_row(L, r / L.nq, r % L.nq, allowed, candidates);
  });
  // Number the masks globally in (head, query block, key block) order.
  std::unordered_map<std::string, int32_t> ids;
  L.row_start.assign(size_t(heads * L.nq + 1), 0);
  for (size_t r = 0; r < rows.size(); ++r) {
    RowPairs& row = rows[r];
    std::vector<int32_t> global(row.masks.size());
    for (size_t m = 0; m < row.masks.size(); ++m) {
      auto [it, inserted] = ids.emplace(row.masks[m], int32_t(ids.size()));
      if (inserted) L.masks.insert(L.masks.end(), row.masks[m].begin(), row.masks[m].end());
      global[m] = it->second;
    }
    for (size_t p = 0; p < row.key_block.size(); ++p) {
      L.row_key_block.push_back(row.key_block[p]);
      L.row_mask.push_back(row.local_mask[p] < 0 ? -1 : global[size_t(row.local_mask[p])]);
    }
    L.row_start[r + 1] = int64_t(L.row_key_block.size());
    L.allowed_elements += row.allowed;
    row = RowPairs();
  }
  // The column view: pairs grouped by (head, key block), query blocks ascending.
  L.col_start.assign(size_t(heads * L.nk + 1), 0);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t qb = 0; qb < L.nq; ++qb)
      for (int64_t p = L.row_start[size_t(h * L.nq + qb)]; p < L.row_start[size_t(h * L.nq + qb + 1)]; ++p)
        ++L.col_start[size_t(h * L.nk + L.row_key_block[size_t(p)] + 1)];
  for (size_t c = 1; c < L.col_start.size(); ++c) L.col_start[c] += L.col_start[c - 1];
  L.col_query_block.resize(L.row_key_block.size());
  L.col_mask.resize(L.row_key_block.size());
  std::vector<int64_t> fill(L.col_start.begin(), L.col_start.end() - 1);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t qb = 0; qb < L.nq; ++qb)
      for (int64_t p = L.row_start[size_t(h * L.nq + qb)]; p < L.row_start[size_t(h * L.nq + qb + 1)]; ++p) {
        const int64_t at = fill[size_t(h * L.nk + L.row_key_block[size_t(p)])]++;
        L.col_query_block[size_t(at)] = int32_t(qb);
        L.col_mask[size_t(at)] = L.row_mask[size_t(p)];
      }
  cache().built.fetch_add(1);
  return L;
}

LayoutParts cached_layouts(const std::string& key, const std::function<LayoutParts()>& build) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.entries.find(key);
    if (it != c.entries.end()) {
      it->second.second = ++c.tick;
      return it->second.first;
    }
  }
  LayoutParts layout = build();  // outside the lock
  std::lock_guard<std::mutex> lock(c.mutex);
  auto [it, inserted] = c.entries.emplace(key, std::make_pair(layout, ++c.tick));
  if (!inserted) return it->second.first;  // another thread built it first: keep one
  while (c.entries.size() > kLayoutCacheEntries) {
    auto oldest = std::min_element(c.entries.begin(), c.entries.end(), [](const auto& a, const auto& b) {
      return a.second.second < b.second.second;
    });
    c.entries.erase(oldest);
  }
  return layout;
}

size_t layout_cache_size() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return cache().entries.size();
}

int64_t layouts_built() { return cache().built.load(); }

void clear_layout_cache() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  cache().entries.clear();
}

}  // namespace eformer::kernels
