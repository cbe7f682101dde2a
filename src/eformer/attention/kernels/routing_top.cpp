#include "eformer/attention/kernels/routing_top.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/autograd/autograd.h"
#include "eformer/ops/activation.h"

namespace eformer::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kGroup = 16;       // clusters scored together in one selection item
constexpr int64_t kScoreRows = 256;  // rows per similarity tile
constexpr int64_t kRows = 64;        // queries per score tile

int64_t cluster_offset(int64_t bh, int64_t j, const TopSizes& s) { return (bh * s.c + j) * s.w; }

}  // namespace

void top_members(const float* kn, const float* centroids, const bool* key_mask, const int64_t* n,
                 int32_t* members, const TopSizes& s) {
  const int64_t N = s.N, d = s.d, groups = (s.c + kGroup - 1) / kGroup, gp = tile::round_up(kGroup);
  for_each_item(s.B * s.H * groups, d * gp + N * gp, [&](int64_t item, float* buf) {
    const int64_t bh = item / groups, b = bh / s.H, h = bh % s.H, j0 = item % groups * kGroup;
    const int64_t nj = std::min(kGroup, s.c - j0), take = n[b];
    if (take == 0) return;
    // Similarities [N, gp] = k^ M^T with M^T [d, gp] the group's centroids (columns nj..gp zero).
    float *MT = buf, *sim = MT + d * gp;
    for (int64_t x = 0; x < d; ++x) {
      for (int64_t j = 0; j < nj; ++j) MT[x * gp + j] = centroids[(h * s.c + j0 + j) * d + x];
      std::fill(MT + x * gp + nj, MT + (x + 1) * gp, 0.0f);
    }
    const float* k = kn + bh * N * d;
    for (int64_t i0 = 0; i0 < N; i0 += kScoreRows)
      tile::gemm(std::min(kScoreRows, N - i0), gp, d, k + i0 * d, d, 1, MT, gp, sim + i0 * gp, gp, 1.0f,
                 false);
    std::vector<int32_t> real;
    real.reserve(size_t(N));
    for (int64_t i = 0; i < N; ++i)
      if (!key_mask || key_mask[b * N + i]) real.push_back(int32_t(i));
    std::vector<int32_t> cand(real.size());
    std::vector<float> key(static_cast<size_t>(N));
    // A strict total order (similarity descending, NaN as -inf, then position): the same set on any run.
    auto before = [&](int32_t a, int32_t b2) {
      return key[size_t(a)] > key[size_t(b2)] || (key[size_t(a)] == key[size_t(b2)] && a < b2);
    };
    for (int64_t j = 0; j < nj; ++j) {
      for (int32_t i : real) {
        const float x = sim[int64_t(i) * gp + j];
        key[size_t(i)] = std::isnan(x) ? kNegInf : x;
      }
      std::copy(real.begin(), real.end(), cand.begin());
      std::nth_element(cand.begin(), cand.begin() + (take - 1), cand.end(), before);
      std::sort(cand.begin(), cand.begin() + take);
      std::copy(cand.begin(), cand.begin() + take, members + cluster_offset(bh, j0 + j, s));
    }
  });
}

void top_forward(const float* q, const float* kn, const float* v, const int32_t* members, const int64_t* n,
                 float* out_c, float* lse_c, const TopSizes& s) {
  const int64_t N = s.N, d = s.d, dp = tile::round_up(d), wp = tile::round_up(s.w);
  // Per thread: K^T [d, wp], V [wp, dp], Q [kRows, d], S [kRows, wp], O [kRows, dp].
  const int64_t scratch = d * wp + wp * dp + kRows * d + kRows * wp + kRows * dp;
  for_each_item(s.B * s.H * s.c, scratch, [&](int64_t item, float* buf) {
    const int64_t bh = item / s.c, j = item % s.c, m = n[bh / s.H];
    if (m == 0) return;
    const int32_t* mem = members + cluster_offset(bh, j, s);
    const float *qb = q + bh * N * d, *kb = kn + bh * N * d, *vb = v + bh * N * d;
    float *KT = buf, *V = KT + d * wp, *Q = V + wp * dp, *S = Q + kRows * d, *O = S + kRows * wp;
    const int64_t mp = tile::round_up(m);
    gather_transposed(kb, mem, 0, m, d, KT, mp);
    gather_rows(vb, mem, 0, m, d, V, dp);
    for (int64_t r0 = 0; r0 < m; r0 += kRows) {
      const int64_t rows = std::min(kRows, m - r0);
      gather_rows(qb, mem, r0, rows, d, Q, d);
      tile::gemm(rows, mp, d, Q, d, 1, KT, mp, S, mp, s.scale, false);
      std::vector<float> inv(static_cast<size_t>(rows)), lse(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) {
        S[i * mp + r0 + i] = kNegInf;  // the own key
        row_softmax(S + i * mp, m, inv[size_t(i)], lse[size_t(i)]);
      }
      tile::gemm(rows, dp, m, S, mp, 1, V, dp, O, dp, 1.0f, false);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t row = cluster_offset(bh, j, s) + r0 + i;
        float* o = out_c + row * d;
        if (lse[size_t(i)] == kNegInf)  // alone in its cluster: its own value
          std::memcpy(o, vb + int64_t(mem[r0 + i]) * d, size_t(d) * sizeof(float));
        else
          for (int64_t x = 0; x < d; ++x) o[x] = O[i * dp + x] * inv[size_t(i)];
        lse_c[row] = lse[size_t(i)];
      }
    }
  });
}

void top_merge(const float* out_c, const int32_t* members, const int64_t* n, float* out, float* inv_count,
               const TopSizes& s) {
  const int64_t N = s.N, d = s.d;
  parallel::parallel_for(s.B * s.H, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t bh = i0; bh < i1; ++bh) {
      float *o = out + bh * N * d, *inv = inv_count + bh * N;
      std::fill(o, o + N * d, 0.0f);
      std::fill(inv, inv + N, 0.0f);
      const int64_t m = n[bh / s.H];
      for (int64_t j = 0; j < s.c; ++j) {  // in cluster order, whatever the threads
        const int32_t* mem = members + cluster_offset(bh, j, s);
        scatter_add(out_c + cluster_offset(bh, j, s) * d, d, mem, 0, m, d, o);
        for (int64_t i = 0; i < m; ++i) inv[mem[i]] += 1.0f;
      }
      for (int64_t i = 0; i < N; ++i) {
        if (inv[i] == 0.0f) continue;  // in no cluster: 0
        inv[i] = 1.0f / inv[i];
        for (int64_t x = 0; x < d; ++x) o[i * d + x] *= inv[i];
      }
    }
  });
}

void top_backward(const float* q, const float* kn, const float* v, const int32_t* members, const int64_t* n,
                  const float* out_c, const float* lse_c, const float* dout, const float* inv_count,
                  float* dq, float* dkn, float* dv, const TopSizes& s) {
  const int64_t N = s.N, d = s.d, dp = tile::round_up(d), wp = tile::round_up(s.w), BH = s.B * s.H;
  const int64_t cluster_rows = BH * s.c * s.w;
  // Per-cluster gradients, summed into the tokens in cluster order below.
  ScratchBuffer dq_c(cluster_rows * d), dk_c(cluster_rows * d), dv_c(cluster_rows * d);
  // Per thread: K^T, V^T [d, wp]; K, dK, dV [wp, dp]; Q, dO, dQ [kRows, dp]; S, dS [kRows, wp].
  const int64_t scratch = 2 * d * wp + 3 * wp * dp + 3 * kRows * dp + 2 * kRows * wp;
  for_each_item(BH * s.c, scratch, [&](int64_t item, float* buf) {
    const int64_t bh = item / s.c, j = item % s.c, m = n[bh / s.H];
    if (m == 0) return;
    const int32_t* mem = members + cluster_offset(bh, j, s);
    const float *qb = q + bh * N * d, *kb = kn + bh * N * d, *vb = v + bh * N * d, *gb = dout + bh * N * d;
    float *KT = buf, *VT = KT + d * wp, *K = VT + d * wp, *dK = K + wp * dp, *dV = dK + wp * dp;
    float *Q = dV + wp * dp, *dO = Q + kRows * dp, *dQ = dO + kRows * dp, *S = dQ + kRows * dp,
          *dS = S + kRows * wp;
    const int64_t mp = tile::round_up(m), base = cluster_offset(bh, j, s);
    gather_transposed(kb, mem, 0, m, d, KT, mp);
    gather_transposed(vb, mem, 0, m, d, VT, mp);
    gather_rows(kb, mem, 0, m, d, K, dp);
    std::fill(dK, dK + m * dp, 0.0f);
    std::fill(dV, dV + m * dp, 0.0f);
    for (int64_t r0 = 0; r0 < m; r0 += kRows) {
      const int64_t rows = std::min(kRows, m - r0);
      gather_rows(qb, mem, r0, rows, d, Q, dp);
      gather_rows(gb, mem, r0, rows, d, dO, dp);
      std::vector<float> L(static_cast<size_t>(rows)), D(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) {  // dO_c = dout / count; D = dO_c . O_c
        const float scale = inv_count[bh * N + mem[r0 + i]];
        float acc = 0.0f;
        for (int64_t x = 0; x < d; ++x) {
          dO[i * dp + x] *= scale;
          acc += dO[i * dp + x] * out_c[(base + r0 + i) * d + x];
        }
        L[size_t(i)] = lse_c[base + r0 + i], D[size_t(i)] = acc;
      }
      // S = scale Q K^T, dP = dO V^T [rows, m]; then P and dS in place (0 at the own key and padding).
      tile::gemm(rows, mp, d, Q, dp, 1, KT, mp, S, mp, s.scale, false);
      tile::gemm(rows, mp, d, dO, dp, 1, VT, mp, dS, mp, 1.0f, false);
      for (int64_t i = 0; i < rows; ++i) {
        float *p = S + i * mp, *ds = dS + i * mp;
        const float l = L[size_t(i)];
        for (int64_t c = 0; c < mp; ++c) {
          if (c < m && c != r0 + i && l != kNegInf) {
            p[c] = fast_exp(p[c] - l);
            ds[c] = p[c] * (ds[c] - D[size_t(i)]);
          } else {
            p[c] = 0.0f, ds[c] = 0.0f;
          }
        }
        if (l == kNegInf)  // took its own value
          for (int64_t x = 0; x < d; ++x) dV[(r0 + i) * dp + x] += dO[i * dp + x];
      }
      // dV += P^T dO, dK^ += scale dS^T Q [m, dp]; dQ = scale dS K^ [rows, dp].
      tile::gemm(m, dp, rows, S, 1, mp, dO, dp, dV, dp, 1.0f, true);
      tile::gemm(m, dp, rows, dS, 1, mp, Q, dp, dK, dp, s.scale, true);
      tile::gemm(rows, dp, m, dS, mp, 1, K, dp, dQ, dp, s.scale, false);
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(dq_c.data + (base + r0 + i) * d, dQ + i * dp, size_t(d) * sizeof(float));
    }
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(dk_c.data + (base + i) * d, dK + i * dp, size_t(d) * sizeof(float));
      std::memcpy(dv_c.data + (base + i) * d, dV + i * dp, size_t(d) * sizeof(float));
    }
  });
  parallel::parallel_for(BH, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t bh = i0; bh < i1; ++bh) {
      const int64_t m = n[bh / s.H];
      for (int64_t j = 0; j < s.c; ++j) {  // in cluster order
        const int32_t* mem = members + cluster_offset(bh, j, s);
        const int64_t at = cluster_offset(bh, j, s) * d;
        scatter_add(dq_c.data + at, d, mem, 0, m, d, dq + bh * N * d);
        scatter_add(dk_c.data + at, d, mem, 0, m, d, dkn + bh * N * d);
        scatter_add(dv_c.data + at, d, mem, 0, m, d, dv + bh * N * d);
      }
    }
  });
}

}  // namespace eformer::kernels

namespace eformer::attention {

using kernels::IndexBuffer;
using kernels::ScratchBuffer;

Tensor routing_top_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& centroids,
                             int64_t window, const AttentionOptions& opts, ClusterSums* stats) {
  const char* op = "routing_attention (balance 'top')";
  const AttentionDims dims = validate_attention(op, q, k, v, opts);
  EF_CHECK(dims.N == dims.M, ShapeError, op, ": balanced clusters are self-attention; q has N = ", dims.N,
           " rows but k has M = ", dims.M, " (expected N == M)");
  EF_CHECK(!opts.causal, ValueError, op,
           ": has no causal form: a centroid's top-w tokens depend on later tokens (a leak); use balance "
           "'nearest' for causal attention");
  EF_CHECK(opts.dropout == 0.0f, ValueError, op, ": dropout = ", opts.dropout,
           "; balanced clusters have no attention dropout (expected 0)");
  EF_CHECK(window >= 1, ValueError, op, ": window = ", window, "; expected >= 1");
  EF_CHECK(dims.N < (int64_t(1) << 31), ValueError, op, ": N = ", dims.N, "; expected < 2^31");
  const int64_t c = check_routing_centroids(op, centroids, dims);
  kernels::TopSizes s{dims.B, dims.H, dims.N, dims.d, c, std::min(window, dims.N), dims.scale};
  const int64_t BH = s.B * s.H, rows = BH * s.N;
  Tensor qc = q.contiguous_data(), kc = k.contiguous_data(), vc = v.contiguous_data();
  Tensor mu = centroids.detach().contiguous_data();
  Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
  const bool* mask = km.defined() ? km.data<bool>() : nullptr;
  Tensor kn = Tensor::empty(kc.shape()), inv_norm = Tensor::empty({rows});
  kernels::lsh_normalize_rows(kc.data<float>(), kn.data<float>(), inv_norm.data<float>(), rows, s.d);
  // Members per cluster of each sequence: min(w, its real tokens).
  auto n = std::make_shared<std::vector<int64_t>>(size_t(s.B), s.w);
  if (mask)
    for (int64_t b = 0; b < s.B; ++b)
      (*n)[size_t(b)] = std::min<int64_t>(s.w, std::count(mask + b * s.N, mask + (b + 1) * s.N, true));
  auto members = std::make_shared<IndexBuffer>(BH * s.c * s.w);
  auto out_c = std::make_shared<ScratchBuffer>(BH * s.c * s.w * s.d);
  auto lse_c = std::make_shared<ScratchBuffer>(BH * s.c * s.w);
  Tensor out = Tensor::empty({s.B, s.H, s.N, s.d}), inv_count = Tensor::empty({s.B, s.H, s.N});
  if (stats) *stats = {Tensor::zeros({s.H, c, s.d}), Tensor::zeros({s.H, c})};
  if (rows > 0) {
    kernels::top_members(kn.data<float>(), mu.data<float>(), mask, n->data(), members->data, s);
    kernels::top_forward(qc.data<float>(), kn.data<float>(), vc.data<float>(), members->data, n->data(),
                         out_c->data, lse_c->data, s);
    kernels::top_merge(out_c->data, members->data, n->data(), out.data<float>(), inv_count.data<float>(), s);
    if (stats) {  // the moving average's statistics: the nearest centroid, as kernels/routing.h
      IndexBuffer nearest(rows);
      const kernels::LshSizes ls{s.B, s.H, s.N, s.d, 1, c, 1, s.scale, false};
      kernels::routing_assign(kn.data<float>(), mu.data<float>(), 0, nearest.data, ls);
      kernels::routing_cluster_sums(kn.data<float>(), nearest.data, mask, 0, stats->sums.data<float>(),
                                    stats->counts.data<float>(), ls);
    }
  }
  const bool shared_qk = q.is_same(k);
  return autograd::record(
      op, out, shared_qk ? std::vector<Tensor>{q, v} : std::vector<Tensor>{q, k, v},
      [qc, kn, vc, inv_norm, n, members, out_c, lse_c, inv_count, s, shared_qk](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        Tensor dq = Tensor::zeros(qc.shape()), dv = Tensor::zeros(vc.shape());
        Tensor dk = shared_qk ? dq : Tensor::zeros(kn.shape());
        auto grads = [&] {
          return shared_qk ? std::vector<Tensor>{dq, dv} : std::vector<Tensor>{dq, dk, dv};
        };
        const int64_t rows = s.B * s.H * s.N;
        if (rows == 0) return grads();
        Tensor dkn = Tensor::zeros(kn.shape());
        kernels::top_backward(qc.data<float>(), kn.data<float>(), vc.data<float>(), members->data, n->data(),
                              out_c->data, lse_c->data, gc.data<float>(), inv_count.data<float>(),
                              dq.data<float>(), dkn.data<float>(), dv.data<float>(), s);
        kernels::lsh_normalize_backward(kn.data<float>(), dkn.data<float>(), inv_norm.data<float>(),
                                        dk.data<float>(), rows, s.d);
        return grads();
      });
}

}  // namespace eformer::attention
