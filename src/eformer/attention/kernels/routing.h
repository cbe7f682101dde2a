// Routing attention (Roy et al. 2021, "Efficient Content-Based Sparse Attention with Routing
// Transformers") on the sorted-bucket pipeline of kernels/lsh.h: the bucket of a token is the
// nearest of c centroids to its normalized shared query/key, k^_i = k_i / sqrt(|k_i|^2 + eps)
// (sec. 4.1: mu(x) = argmax_j x . mu_j); tokens sorted stably by (cluster, position) attend in
// chunks of w (causal: the last <= 2w - 1 earlier tokens of their own cluster; bidirectional: their
// sorted chunk and the one before), a token's own key scored -1e5 as in lsh, a token that sees no
// other key taking its own value. Local heads (the paper's mix, sec. 5) put every token in one
// cluster: a causal window of the 2w - 1 previous tokens, or (bidirectional) the block of w and the
// one before.
// The centroids are updated by an exponential moving average of the keys assigned to them (sec. 4.1;
// the new mean normalized as in lucidrains' routing-transformer, and the centroid renormalized after,
// which that code does not): per routing head and cluster j with members,
// mu_j <- normalize(decay mu_j + (1 - decay) normalize(sum_{i: mu(k^_i) = j} k^_i)); padded keys
// do not count. Without gradient.
#pragma once
#include <cstdint>

#include "eformer/attention/kernels/lsh.h"
#include "eformer/core/tensor.h"

namespace eformer::kernels {

// x [rows, d] and one head's centroids [c, d] -> cluster[rows] = argmax_j x . mu_j, the first
// maximum. The one routine of the parallel pass and the streaming step (they agree bit for bit).
void nearest_centroid_rows(const float* x, int64_t rows, int64_t d, const float* centroids, int64_t c,
                           int32_t* cluster);

// kn [B*H, N, d], centroids [H, c, d] -> bucket [B*H, N]: the nearest centroid in routing heads
// (h < H - local_heads), 0 in local heads.
void routing_assign(const float* kn, const float* centroids, int64_t local_heads, int32_t* bucket,
                    const LshSizes& s);

// The k-means statistics of one forward: sums [H, c, d] of the real keys assigned to each cluster
// of a routing head and their counts [H, c] (local heads: zeros). Summed in position order per head.
void routing_cluster_sums(const float* kn, const int32_t* bucket, const bool* key_mask, int64_t local_heads,
                          float* sums, float* counts, const LshSizes& s);

// centroids [H, c, d] updated in place from the sums by the moving average above.
void routing_ema_update(float* centroids, const float* sums, const float* counts, int64_t H, int64_t c, int64_t d,
                        float decay);

}  // namespace eformer::kernels

namespace eformer::attention {

// The k-means statistics a training forward hands back (kernels::routing_cluster_sums).
struct ClusterSums {
  Tensor sums;    // [H, c, d]
  Tensor counts;  // [H, c]
};

// Checks centroids against the heads and head size of q: float32 [H, c >= 1, d], else a ShapeError naming
// `op`; returns c.
int64_t check_routing_centroids(const char* op, const Tensor& centroids, const AttentionDims& dims);

// q, k, v [B, H, N, d] float32, centroids [H, c, d] (used as given, no gradient), window w >= 1,
// 0 <= local_heads <= H -> [B, H, N, d]. opts.causal, opts.key_mask and opts.scale as lsh_attention;
// dropout must be 0. With `stats`, the cluster sums of this forward are written there (for the
// moving average, applied by the caller after the forward, so no output depends on it).
Tensor routing_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& centroids, int64_t window,
                         int64_t local_heads, const AttentionOptions& opts = {}, ClusterSums* stats = nullptr);

// Centroids [H, c, d] after one moving-average step with `stats` (a new tensor).
Tensor routing_ema(const Tensor& centroids, const ClusterSums& stats, float decay);

}  // namespace eformer::attention
