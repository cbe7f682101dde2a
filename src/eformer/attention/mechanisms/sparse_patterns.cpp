// The patterns of the block-sparse family (sparse.h): each mechanism's typed options, its exact
// element rule and its candidate key blocks. A rule sees query row i of N at position
// p = i + M - N and key j; the causal pattern is the bidirectional one with j <= p.
#include <algorithm>
#include <array>
#include <limits>
#include <memory>

#include "eformer/attention/mechanisms/sparse.h"
#include "eformer/core/rng.h"

namespace eformer::attention {
namespace {

// Appends the key blocks (of size b) that cover positions [lo, hi] of keys [0, keys).
void cover(int64_t lo, int64_t hi, int64_t b, std::vector<int64_t>& out, int64_t keys) {
  hi = std::min(hi, keys - 1);
  for (int64_t kb = std::max<int64_t>(0, floor_div(lo, b)); kb <= floor_div(hi, b); ++kb) out.push_back(kb);
}

// The positions of query block qb (tile size b): [first, last].
std::pair<int64_t, int64_t> query_positions(int64_t qb, int64_t b, int64_t N, int64_t M) {
  return {qb * b + M - N, std::min(N, (qb + 1) * b) - 1 + M - N};
}

std::string combine_name(bool split) { return split ? "split" : "union"; }

// ---- Sparse Transformer (Child et al. 2019, sec. 4) ----

struct FactorizedOptions {
  int64_t l = 128, c = 16;
  bool split = false;  // combine = "split": even heads A1, odd heads A2; "union": A1 u A2 in every head
};

FactorizedOptions parse_factorized(const std::string& who, const nlohmann::json& o,
                                   const std::vector<OptionSpec>& valid, bool fixed) {
  EF_CHECK(o.is_object(), ValueError, who, ": options must be a JSON object, got ", o.dump());
  FactorizedOptions f;
  for (const auto& [key, value] : o.items()) {
    if (key == "l")
      f.l = options::get_int(who, key, value, 1);
    else if (key == "c" && fixed)
      f.c = options::get_int(who, key, value, 1);
    else if (key == "combine")
      f.split = options::get_string(who, key, value, {"union", "split"}) == "split";
    else
      options::unknown(who, key, valid);
  }
  EF_CHECK(!fixed || f.c <= f.l, ValueError, who, ": option c = ", f.c, "; expected c <= l = ", f.l,
           " (c summary positions per stride of l)");
  return f;
}

std::vector<OptionSpec> factorized_specs(bool fixed) {
  std::vector<OptionSpec> s = {
      {"l", "int", "128", fixed ? "the block length l" : "the stride l (about sqrt(N))"}};
  if (fixed) s.push_back({"c", "int", "16", "summary positions per block: j mod l >= l - c (c <= l)"});
  s.push_back({"combine", "string", "union",
               "union: A1 u A2 in every head; split: even heads attend A1, odd heads A2"});
  return s;
}

// Rows i of N (at positions i + shift) ordered by (position mod l, i): each residue class contiguous.
std::vector<int64_t> by_residue(int64_t n, int64_t shift, int64_t l) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return mod_floor(a + shift, l) < mod_floor(b + shift, l); });
  return order;
}

// Two parts, so that both subsets fill whole blocks: A1 (a window) in the natural order, and A2
// without A1 with queries and keys ordered by residue mod l, where (i - j) mod l = 0 pairs residue
// classes: each class attends its own class, a small dense (causal) block. Split: the same parts,
// A1 in even heads, A2 in odd heads.
SparsePatternMaker strided_maker(const std::string& who, const nlohmann::json& o,
                                 const std::vector<OptionSpec>& v) {
  const FactorizedOptions f = parse_factorized(who, o, v, false);
  SparsePatternMaker m;
  m.key = detail::concat("sparse_strided l=", f.l, " combine=", combine_name(f.split));
  m.make = [f](int64_t N, int64_t M, int64_t, bool causal, uint64_t) {
    SparsePattern p;
    p.heads = f.split ? 2 : 1;
    const int64_t l = f.l, shift = M - N;
    auto a1 = [=](int64_t pos, int64_t j) { return pos - l < j && j < pos + l; };  // causal: i - l < j <= i
    auto a2 = [=](int64_t pos, int64_t j) { return mod_floor(pos - j, l) == 0; };
    p.allowed = [=](int64_t h, int64_t i, int64_t j) {
      const int64_t pos = i + shift;
      if (causal && j > pos) return false;
      return f.split ? (h == 0 ? a1(pos, j) : a2(pos, j)) : (a1(pos, j) || a2(pos, j));
    };
    SparsePart window, stride;
    window.allowed = [=](int64_t h, int64_t i, int64_t j) {
      const int64_t pos = i + shift;
      return !(causal && j > pos) && (!f.split || h == 0) && a1(pos, j);
    };
    window.candidates = [=](int64_t h, int64_t qb, int64_t b, std::vector<int64_t>& out) {
      if (f.split && h != 0) return;
      const auto [first, last] = query_positions(qb, b, N, M);
      cover(first - l + 1, causal ? last : last + l - 1, b, out, M);
    };
    stride.query_index = by_residue(N, shift, l);
    stride.key_index = by_residue(M, 0, l);
    stride.allowed = [=](int64_t h, int64_t i, int64_t j) {
      const int64_t pos = i + shift;
      if ((causal && j > pos) || !a2(pos, j)) return false;
      return f.split ? h == 1 : !a1(pos, j);
    };
    // Key class rho occupies kernel keys [class_start[rho], class_start[rho + 1]).
    std::vector<int64_t> class_start(size_t(l + 1), 0);
    for (int64_t j = 0; j < M; ++j) ++class_start[size_t(j % l + 1)];
    for (int64_t r = 1; r <= l; ++r) class_start[size_t(r)] += class_start[size_t(r - 1)];
    const auto rows = std::make_shared<std::vector<int64_t>>(stride.query_index);
    stride.candidates = [=](int64_t h, int64_t qb, int64_t b, std::vector<int64_t>& out) {
      if (f.split && h != 1) return;
      const int64_t r0 = qb * b, r1 = std::min(N, (qb + 1) * b) - 1;
      const int64_t first = mod_floor((*rows)[size_t(r0)] + shift, l),
                    last = mod_floor((*rows)[size_t(r1)] + shift, l);
      for (int64_t rho = first; rho <= last; ++rho)
        if (class_start[size_t(rho + 1)] > class_start[size_t(rho)])
          cover(class_start[size_t(rho)], class_start[size_t(rho + 1)] - 1, b, out, M);
    };
    p.parts = {std::move(window), std::move(stride)};
    return p;
  };
  return m;
}

// Two parts: A1 (blocks of l) in the natural order, and A2 without A1 over the summary keys only
// (key_index: the positions with j mod l >= l - c), a dense (causal) band of c N / l keys.
SparsePatternMaker fixed_maker(const std::string& who, const nlohmann::json& o,
                               const std::vector<OptionSpec>& v) {
  const FactorizedOptions f = parse_factorized(who, o, v, true);
  SparsePatternMaker m;
  m.key = detail::concat("sparse_fixed l=", f.l, " c=", f.c, " combine=", combine_name(f.split));
  m.make = [f](int64_t N, int64_t M, int64_t, bool causal, uint64_t) {
    SparsePattern p;
    p.heads = f.split ? 2 : 1;
    const int64_t l = f.l, c = f.c, shift = M - N;
    auto a1 = [=](int64_t pos, int64_t j) { return floor_div(j, l) == floor_div(pos, l); };
    auto a2 = [=](int64_t j) { return mod_floor(j, l) >= l - c; };
    p.allowed = [=](int64_t h, int64_t i, int64_t j) {
      const int64_t pos = i + shift;
      if (causal && j > pos) return false;
      return f.split ? (h == 0 ? a1(pos, j) : a2(j)) : (a1(pos, j) || a2(j));
    };
    SparsePart block, summary;
    block.allowed = [=](int64_t h, int64_t i, int64_t j) {
      const int64_t pos = i + shift;
      return !(causal && j > pos) && (!f.split || h == 0) && a1(pos, j);
    };
    block.candidates = [=](int64_t h, int64_t qb, int64_t b, std::vector<int64_t>& out) {
      if (f.split && h != 0) return;
      const auto [first, last] = query_positions(qb, b, N, M);
      cover(floor_div(first, l) * l, floor_div(last, l) * l + l - 1, b, out, M);
    };
    for (int64_t j = 0; j < M; ++j)
      if (a2(j)) summary.key_index.push_back(j);
    summary.allowed = [=](int64_t h, int64_t i, int64_t j) {
      const int64_t pos = i + shift;
      if ((causal && j > pos) || !a2(j)) return false;
      return f.split ? h == 1 : !a1(pos, j);
    };
    const int64_t summaries = int64_t(summary.key_index.size());
    summary.candidates = [=](int64_t h, int64_t qb, int64_t b, std::vector<int64_t>& out) {
      if (f.split && h != 1) return;
      const int64_t last = query_positions(qb, b, N, M).second;
      // Summary keys up to position x: c per whole stride of l, plus those of the partial stride.
      const int64_t upto =
          causal ? std::min(summaries, floor_div(last + 1, l) * c +
                                           std::max<int64_t>(0, mod_floor(last + 1, l) - (l - c)))
                 : summaries;
      cover(0, upto - 1, b, out, M);
    };
    p.parts = {std::move(block), std::move(summary)};
    return p;
  };
  return m;
}

// ---- Longformer (Beltagy et al. 2020, sec. 3.1) ----

SparsePatternMaker longformer_maker(const std::string& who, const nlohmann::json& o,
                                    const std::vector<OptionSpec>& v) {
  EF_CHECK(o.is_object(), ValueError, who, ": options must be a JSON object, got ", o.dump());
  int64_t w = 512;
  std::vector<int64_t> dilation{1}, global;
  for (const auto& [key, value] : o.items()) {
    if (key == "window") {
      w = options::get_int(who, key, value, 0);
    } else if (key == "dilation") {
      dilation.clear();
      if (value.is_array()) {
        EF_CHECK(!value.empty(), ValueError, who,
                 ": option dilation = [], expected an integer >= 1 or a list "
                 "of them (one per head)");
        for (const auto& x : value) dilation.push_back(options::get_int(who, key, x, 1));
      } else {
        dilation.push_back(options::get_int(who, key, value, 1));
      }
    } else if (key == "global") {
      EF_CHECK(value.is_array(), ValueError, who, ": option global = ", value.dump(),
               "; expected a list of positions (integers >= 0)");
      for (const auto& x : value) global.push_back(options::get_int(who, key, x, 0));
      std::sort(global.begin(), global.end());
      global.erase(std::unique(global.begin(), global.end()), global.end());
    } else {
      options::unknown(who, key, v);
    }
  }
  SparsePatternMaker m;
  m.key = detail::concat("longformer window=", w, " dilation=", nlohmann::json(dilation).dump(),
                         " global=", nlohmann::json(global).dump());
  m.make = [w, dilation, global, who](int64_t N, int64_t M, int64_t heads, bool causal, uint64_t) {
    EF_CHECK(dilation.size() == 1 || int64_t(dilation.size()) == heads, ValueError, who,
             ": option dilation has ", dilation.size(), " values for ", heads,
             " heads; expected 1 or one per head");
    SparsePattern p;
    p.heads = int64_t(dilation.size());
    const int64_t half = w / 2, shift = M - N;
    auto is_global = std::make_shared<std::vector<char>>(size_t(std::max(N, M)), 0);
    for (int64_t g : global)
      if (g < int64_t(is_global->size())) (*is_global)[size_t(g)] = 1;
    auto global_at = [is_global](int64_t x) {
      return x >= 0 && x < int64_t(is_global->size()) && (*is_global)[size_t(x)];
    };
    p.allowed = [=](int64_t h, int64_t i, int64_t j) {
      const int64_t pos = i + shift, dil = dilation[size_t(h)];
      if (causal && j > pos) return false;
      if (global_at(pos) || global_at(j)) return true;
      const int64_t gap = pos - j;
      return gap >= -half * dil && gap <= half * dil && mod_floor(gap, dil) == 0;
    };
    p.candidates = [=](int64_t h, int64_t qb, int64_t b, std::vector<int64_t>& out) {
      const auto [first, last] = query_positions(qb, b, N, M);
      for (int64_t g : global)
        if (g >= first && g <= last) return cover(0, M - 1, b, out, M);  // a global query sees every key
      const int64_t reach = half * dilation[size_t(h)];
      cover(first - reach, causal ? last : last + reach, b, out, M);
      for (int64_t g : global) cover(g, g, b, out, M);
    };
    return p;
  };
  return m;
}

// ---- BigBird (Zaheer et al. 2020, sec. 2 and app. D, the ITC block construction) ----

struct BigBirdOptions {
  int64_t block = 64, global_blocks = 2, random_blocks = 3, seed = 0;
};

// The r random key blocks of query block qb in head h: distinct blocks outside the window and the
// global blocks (causal: only blocks before the window), a pure function of (seed, h, qb).
std::vector<int64_t> random_blocks(const BigBirdOptions& o, uint64_t seed, int64_t h, int64_t qb,
                                   int64_t key_blocks, bool causal) {
  std::vector<int64_t> pool;
  const int64_t end = causal ? qb - 1 : key_blocks;
  for (int64_t kb = o.global_blocks; kb < end; ++kb)
    if (kb < qb - 1 || kb > qb + 1) pool.push_back(kb);
  const int64_t take = std::min<int64_t>(o.random_blocks, int64_t(pool.size()));
  // Head h draws from stream kStream + h of the layer's seed; draw t of query block qb is counter
  // (qb + 2^30) 2^24 + t (distinct for |qb| < 2^30 and t < 2^24).
  constexpr uint64_t kStream = 0xB16B12Dull;
  for (int64_t t = 0; t < take; ++t) {  // partial Fisher-Yates
    const uint64_t counter = (uint64_t(qb + (int64_t(1) << 30)) << 24) + uint64_t(t);
    const uint32_t u = rng::philox(seed, kStream + uint64_t(h), counter)[0];
    std::swap(pool[size_t(t)], pool[size_t(t + int64_t(u % uint64_t(int64_t(pool.size()) - t)))]);
  }
  pool.resize(size_t(take));
  std::sort(pool.begin(), pool.end());
  return pool;
}

SparsePatternMaker bigbird_maker(const std::string& who, const nlohmann::json& o,
                                 const std::vector<OptionSpec>& v) {
  EF_CHECK(o.is_object(), ValueError, who, ": options must be a JSON object, got ", o.dump());
  BigBirdOptions b;
  for (const auto& [key, value] : o.items()) {
    if (key == "block")
      b.block = options::get_int(who, key, value, 1);
    else if (key == "global_blocks")
      b.global_blocks = options::get_int(who, key, value, 0);
    else if (key == "random_blocks")
      b.random_blocks = options::get_int(who, key, value, 0);
    else if (key == "seed")
      b.seed = options::get_int(who, key, value, 0, std::numeric_limits<int64_t>::max());
    else
      options::unknown(who, key, v);
  }
  SparsePatternMaker m;
  m.key = detail::concat("bigbird block=", b.block, " g=", b.global_blocks, " r=", b.random_blocks,
                         " seed=", b.seed);
  m.make = [b](int64_t N, int64_t M, int64_t heads, bool causal, uint64_t seed_add) {
    SparsePattern p;
    const int64_t bs = b.block, shift = M - N, key_blocks = (M + bs - 1) / bs;
    const int64_t qb_first = floor_div(shift, bs), qb_last = floor_div(N - 1 + shift, bs);
    p.heads = b.random_blocks > 0 ? heads : 1;
    // random[h][qb - qb_first]: the sorted random blocks of each query block.
    auto random = std::make_shared<std::vector<std::vector<int64_t>>>();
    for (int64_t h = 0; h < p.heads; ++h)
      for (int64_t qb = qb_first; qb <= qb_last; ++qb)
        random->push_back(random_blocks(b, uint64_t(b.seed) + seed_add, h, qb, key_blocks, causal));
    const int64_t per_head = qb_last - qb_first + 1;
    auto rand_of = [=](int64_t h, int64_t qb) -> const std::vector<int64_t>& {
      return (*random)[size_t(h * per_head + qb - qb_first)];
    };
    const int64_t g = b.global_blocks;
    p.allowed = [=](int64_t h, int64_t i, int64_t j) {
      const int64_t pos = i + shift;
      if (causal && j > pos) return false;
      const int64_t qb = floor_div(pos, bs), kb = j / bs;
      if (std::abs(qb - kb) <= 1 || kb < g || (qb >= 0 && qb < g)) return true;
      const auto& r = rand_of(h, qb);
      return std::binary_search(r.begin(), r.end(), kb);
    };
    p.candidates = [=](int64_t h, int64_t tile, int64_t t, std::vector<int64_t>& out) {
      const auto [first, last] = query_positions(tile, t, N, M);
      for (int64_t qb = floor_div(first, bs); qb <= floor_div(last, bs); ++qb) {
        if (qb >= 0 && qb < g) return cover(0, M - 1, t, out, M);
        cover((qb - 1) * bs, (qb + 2) * bs - 1, t, out, M);
        for (int64_t kb : rand_of(h, qb)) cover(kb * bs, kb * bs + bs - 1, t, out, M);
      }
      cover(0, g * bs - 1, t, out, M);
    };
    return p;
  };
  return m;
}

// ---- Image Transformer local 1-D attention (Parmar et al. 2018, sec. 3.2) ----

// A list option of two integers >= min ("image_shape": [rows, columns]).
std::array<int64_t, 2> get_pair(const std::string& who, const std::string& key, const nlohmann::json& v,
                                int64_t min) {
  EF_CHECK(v.is_array() && v.size() == 2, ValueError, who, ": option ", key, " = ", v.dump(),
           "; expected a list of two integers [rows, columns]");
  return {options::get_int(who, key, v[0], min), options::get_int(who, key, v[1], min)};
}

SparsePatternMaker local_maker(const std::string& who, const nlohmann::json& o,
                               const std::vector<OptionSpec>& v) {
  EF_CHECK(o.is_object(), ValueError, who, ": options must be a JSON object, got ", o.dump());
  int64_t block = 64, memory = 64;
  std::array<int64_t, 2> image{0, 0}, block2{8, 8}, memory2{8, 8};
  for (const auto& [key, value] : o.items()) {
    if (key == "block")
      block = options::get_int(who, key, value, 1);
    else if (key == "memory")
      memory = options::get_int(who, key, value, 0);
    else if (key == "image_shape")
      image = get_pair(who, key, value, 1);
    else if (key == "block_shape")
      block2 = get_pair(who, key, value, 1);
    else if (key == "memory_shape")
      memory2 = get_pair(who, key, value, 0);
    else
      options::unknown(who, key, v);
  }
  SparsePatternMaker m;
  if (image[0] > 0) {
    // 2-D (sec. 3.2): pixel p of a raster-ordered image of W columns is (p / W, p mod W); its query block
    // of qh x qw pixels attends the block widened by mw columns each side and mh rows above (and below,
    // bidirectional). Positions past the image continue its rows.
    m.key = detail::concat("local image=", image[0], "x", image[1], " block=", block2[0], "x", block2[1],
                           " memory=", memory2[0], "x", memory2[1]);
    m.make = [image, block2, memory2](int64_t N, int64_t M, int64_t, bool causal, uint64_t) {
      SparsePattern p;
      const int64_t W = image[1], qh = block2[0], qw = block2[1], mh = memory2[0], mw = memory2[1],
                    shift = M - N;
      p.allowed = [=](int64_t, int64_t i, int64_t j) {
        const int64_t pos = i + shift;
        if (causal && j > pos) return false;
        const int64_t r0 = floor_div(floor_div(pos, W), qh) * qh, c0 = floor_div(mod_floor(pos, W), qw) * qw;
        const int64_t rj = j / W, cj = j % W;
        return rj >= r0 - mh && rj < r0 + qh + (causal ? 0 : mh) && cj >= c0 - mw && cj < c0 + qw + mw;
      };
      p.candidates = [=](int64_t, int64_t qb, int64_t b, std::vector<int64_t>& out) {
        const auto [first, last] = query_positions(qb, b, N, M);
        const int64_t top = floor_div(floor_div(first, W), qh) * qh - mh;
        const int64_t bottom = floor_div(floor_div(last, W), qh) * qh + qh + mh;  // rows [top, bottom)
        cover(top * W, bottom * W - 1, b, out, M);
      };
      return p;
    };
    return m;
  }
  m.key = detail::concat("local block=", block, " memory=", memory);
  m.make = [block, memory](int64_t N, int64_t M, int64_t, bool causal, uint64_t) {
    SparsePattern p;
    const int64_t shift = M - N;
    p.allowed = [=](int64_t, int64_t i, int64_t j) {
      const int64_t pos = i + shift;
      if (causal && j > pos) return false;
      const int64_t start = floor_div(pos, block) * block;  // the query block [start, start + block)
      return j >= start - memory && j < start + block + (causal ? 0 : memory);
    };
    p.candidates = [=](int64_t, int64_t qb, int64_t b, std::vector<int64_t>& out) {
      const auto [first, last] = query_positions(qb, b, N, M);
      cover(floor_div(first, block) * block - memory, floor_div(last, block) * block + block + memory - 1, b,
            out, M);
    };
    return p;
  };
  return m;
}

}  // namespace

MechanismEntry sparse_strided_entry() {
  return sparse_entry({"sparse_strided",
                       "Sparse Transformer strided pattern: A1 = {i - l < j <= i}, A2 = {(i - j) mod l = 0} "
                       "(Child et al. 2019, sec. 4)",
                       factorized_specs(false), strided_maker});
}

MechanismEntry sparse_fixed_entry() {
  return sparse_entry(
      {"sparse_fixed",
       "Sparse Transformer fixed pattern: A1 = {floor(j/l) = floor(i/l)}, A2 = {j mod l >= l - c} "
       "(Child et al. 2019, sec. 4)",
       factorized_specs(true), fixed_maker});
}

MechanismEntry longformer_entry() {
  return sparse_entry(
      {"longformer",
       "Longformer: dilated sliding window of w (w/2 each side) plus symmetric global positions "
       "(Beltagy et al. 2020)",
       {{"window", "int", "512", "w: keys within w/2 dilated steps on each side (causal: before)"},
        {"dilation", "int or list", "1", "the gap between window keys; a list gives one per head"},
        {"global", "list", "[]", "global positions: attend every key and are attended by every query"}},
       longformer_maker});
}

MechanismEntry bigbird_entry() {
  return sparse_entry(
      {"bigbird",
       "BigBird: blocks of b, a window of 3 blocks, g global blocks, r random blocks per query block "
       "(Zaheer et al. 2020)",
       {{"block", "int", "64", "b: the block length"},
        {"global_blocks", "int", "2", "g: the first g blocks attend and are attended by all"},
        {"random_blocks", "int", "3", "r: random key blocks per query block (causal: past ones)"},
        {"seed", "int", "0", "the random blocks' seed (layer l of a model uses seed + l)"}},
       bigbird_maker});
}

MechanismEntry local_entry() {
  return sparse_entry(
      {"local",
       "local 1-D or 2-D block attention: query blocks attend their block and the memory around "
       "it (Image Transformer, Parmar et al. 2018)",
       {{"block", "int", "64", "l_q: the query block length (1-D)"},
        {"memory", "int", "64",
         "l_m: positions before the query block it attends (after too, "
         "bidirectional) (1-D)"},
        {"image_shape", "list", "none", "[rows, columns]: 2-D over a raster-ordered image"},
        {"block_shape", "list", "[8, 8]", "2-D query block [qh, qw] pixels"},
        {"memory_shape", "list", "[8, 8]", "2-D memory: [mh rows above, mw columns each side]"}},
       local_maker});
}

}  // namespace eformer::attention
