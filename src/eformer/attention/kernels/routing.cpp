#include "eformer/attention/kernels/routing.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/core/parallel.h"

namespace eformer::kernels {
namespace {

constexpr int64_t kAssignRows = 64;  // rows per projection tile
constexpr int64_t kAssignBlock = 256;  // rows per parallel item

}  // namespace

void nearest_centroid_rows(const float* x, int64_t rows, int64_t d, const float* centroids, int64_t c,
                           int32_t* cluster) {
  if (c == 1) {
    std::fill(cluster, cluster + rows, 0);
    return;
  }
  // M^T [d, cp] (columns c..cp zero), then x M^T a tile of rows at a time.
  const int64_t cp = tile::round_up(c);
  ScratchBuffer mt(d * cp), proj(kAssignRows * cp);
  for (int64_t c0 = 0; c0 < d; ++c0) {
    for (int64_t j = 0; j < c; ++j) mt.data[c0 * cp + j] = centroids[j * d + c0];
    std::fill(mt.data + c0 * cp + c, mt.data + (c0 + 1) * cp, 0.0f);
  }
  for (int64_t i0 = 0; i0 < rows; i0 += kAssignRows) {
    const int64_t n = std::min(kAssignRows, rows - i0);
    tile::gemm(n, cp, d, x + i0 * d, d, 1, mt.data, cp, proj.data, cp, 1.0f, false);
    for (int64_t i = 0; i < n; ++i) {
      const float* p = proj.data + i * cp;
      int32_t arg = 0;
      for (int64_t j = 1; j < c; ++j)
        if (p[j] > p[arg]) arg = int32_t(j);
      cluster[i0 + i] = arg;
    }
  }
}

void routing_assign(const float* kn, const float* centroids, int64_t local_heads, int32_t* bucket,
                    const LshSizes& s) {
  const int64_t BH = s.B * s.H, N = s.N, d = s.d, c = s.n_buckets, blocks = (N + kAssignBlock - 1) / kAssignBlock;
  parallel::parallel_for(BH * blocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t bh = item / blocks, h = bh % s.H, n0 = item % blocks * kAssignBlock;
      const int64_t rows = std::min(kAssignBlock, N - n0);
      int32_t* out = bucket + bh * N + n0;
      if (h >= s.H - local_heads)
        std::fill(out, out + rows, 0);
      else
        nearest_centroid_rows(kn + (bh * N + n0) * d, rows, d, centroids + h * c * d, c, out);
    }
  });
}

void routing_cluster_sums(const float* kn, const int32_t* bucket, const bool* key_mask, int64_t local_heads,
                          float* sums, float* counts, const LshSizes& s) {
  const int64_t N = s.N, d = s.d, c = s.n_buckets;
  std::fill(sums, sums + s.H * c * d, 0.0f);
  std::fill(counts, counts + s.H * c, 0.0f);
  parallel::parallel_for(s.H - local_heads, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t i = 0; i < N; ++i) {
          if (key_mask && !key_mask[b * N + i]) continue;
          const int64_t row = (b * s.H + h) * N + i, j = bucket[row];
          const float* x = kn + row * d;
          float* sum = sums + (h * c + j) * d;
          for (int64_t x0 = 0; x0 < d; ++x0) sum[x0] += x[x0];
          counts[h * c + j] += 1.0f;
        }
  });
}

void routing_ema_update(float* centroids, const float* sums, const float* counts, int64_t H, int64_t c, int64_t d,
                        float decay) {
  if (decay >= 1.0f) return;  // frozen
  auto normalize = [d](float* x) {
    float sq = 0.0f;
    for (int64_t i = 0; i < d; ++i) sq += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(sq + kLshNormEps);
    for (int64_t i = 0; i < d; ++i) x[i] *= inv;
  };
  std::vector<float> mean(static_cast<size_t>(d));
  for (int64_t hj = 0; hj < H * c; ++hj) {
    if (counts[hj] == 0.0f) continue;  // an empty cluster keeps its centroid
    std::copy(sums + hj * d, sums + (hj + 1) * d, mean.begin());
    normalize(mean.data());
    float* mu = centroids + hj * d;
    for (int64_t i = 0; i < d; ++i) mu[i] = decay * mu[i] + (1.0f - decay) * mean[size_t(i)];
    normalize(mu);
  }
}

}  // namespace eformer::kernels

namespace eformer::attention {

int64_t check_routing_centroids(const char* op, const Tensor& centroids, const AttentionDims& dims) {
  EF_CHECK(centroids.defined() && centroids.dtype() == DType::Float32 && centroids.dim() == 3 &&
               centroids.size(0) == dims.H && centroids.size(1) >= 1 && centroids.size(2) == dims.d,
           ShapeError, op, ": centroids is ", centroids.defined() ? centroids.describe() : std::string("undefined"),
           "; expected float32 [heads, clusters, head_dim] = [", dims.H, ", c, ", dims.d, "]");
  return centroids.size(1);
}

Tensor routing_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& centroids, int64_t window,
                         int64_t local_heads, const AttentionOptions& opts, ClusterSums* stats) {
  const char* op = "routing_attention";
  const AttentionDims dims = validate_attention(op, q, k, v, opts);
  const int64_t c = check_routing_centroids(op, centroids, dims);
  EF_CHECK(local_heads >= 0 && local_heads <= dims.H, ValueError, op, ": local_heads = ", local_heads,
           "; expected 0 ..", dims.H, " (the heads)");
  Tensor mu = centroids.detach().contiguous_data();
  Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
  if (stats) *stats = {Tensor::zeros({dims.H, c, dims.d}), Tensor::zeros({dims.H, c})};
  const BucketAssigner assign = [&](const float* kn, int32_t* bucket, const kernels::LshSizes& s) {
    kernels::routing_assign(kn, mu.data<float>(), local_heads, bucket, s);
    if (stats)
      kernels::routing_cluster_sums(kn, bucket, km.defined() ? km.data<bool>() : nullptr, local_heads,
                                    stats->sums.data<float>(), stats->counts.data<float>(), s);
  };
  return sorted_chunk_attention(op, q, k, v, 1, c, window, assign, opts);
}

Tensor routing_ema(const Tensor& centroids, const ClusterSums& stats, float decay) {
  Tensor next = centroids.detach().contiguous_data().clone_data();
  kernels::routing_ema_update(next.data<float>(), stats.sums.data<float>(), stats.counts.data<float>(),
                              next.size(0), next.size(1), next.size(2), decay);
  return next;
}

}  // namespace eformer::attention
