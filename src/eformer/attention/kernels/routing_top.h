// The Routing Transformer's balanced clusters (Roy et al. 2021, sec. 4.1; routing option balance "top"):
// each of the c centroids mu_j of a head takes the w tokens whose normalized shared query/key
// k^_i = k_i / sqrt(|k_i|^2 + eps) is most similar to it (top-w of k^_i . mu_j over the sequence, ties to
// the earlier position), so a token may be in several clusters or in none. Within cluster j the w
// queries attend the same w keys (bidirectional only: membership depends on every token), scores
// scale q_i . k^_j with a token's own key left out (lsh's self mask, -1e5: a member alone in its cluster
// takes its own value). A token's output is the mean of its outputs in the clusters it is in, 0 in none
// (as lucidrains' routing-transformer, whose scatter_mean divides by count + 1e-5 instead of count).
// w = min(window, N); padded tokens (key_mask false) are in no cluster, so a sequence with n real
// tokens has clusters of min(w, n).
//
// Memory: the members (int32 [B*H, c, w]), the per-cluster outputs and log-sum-exps ([B*H, c, w, d],
// [B*H, c, w]) and 1 / the count of clusters per token; the backward recomputes score tiles of 64
// queries by w keys, nothing N x N. Parallel over (b, h, cluster) (the selection over (b, h, group of
// clusters)); per-cluster results are summed into tokens in cluster order, so bits do not depend on
// the thread count.
#pragma once
#include <cstdint>

#include "eformer/attention/kernels/routing.h"

namespace eformer::kernels {

struct TopSizes {
  int64_t B = 0, H = 0, N = 0, d = 0;
  int64_t c = 0, w = 0;  // clusters, and the members a cluster takes at most
  float scale = 0.0f;
};

// kn [B*H, N, d], centroids [H, c, d], n[b] = the members per cluster of sequence b (min(w, its real
// tokens)) -> members [B*H, c, w]: per cluster its n[b] most similar real tokens, in position order.
void top_members(const float* kn, const float* centroids, const bool* key_mask, const int64_t* n,
                 int32_t* members, const TopSizes& s);

// q, kn, v [B*H, N, d] -> per-cluster outputs out_c [B*H, c, w, d] and log-sum-exps lse_c [B*H, c, w]
// over the keys other than the row's own (-inf: the row saw none and took its own value).
void top_forward(const float* q, const float* kn, const float* v, const int32_t* members, const int64_t* n,
                 float* out_c, float* lse_c, const TopSizes& s);

// out [B*H, N, d] = the mean of out_c over each token's clusters (0 in none); inv_count [B*H, N] = 1 / that
// count (0 in none).
void top_merge(const float* out_c, const int32_t* members, const int64_t* n, float* out, float* inv_count,
               const TopSizes& s);

// The gradients of out for dout [B*H, N, d], added into dq, dkn, dv [B*H, N, d]: per cluster, with
// dO_c = dout / count, P = exp(S - L) recomputed, D = dO_c . O_c, dS = P o (dO_c V^T - D),
// dV = P^T dO_c, dK^ = scale dS^T Q, dQ = scale dS K^ (a row that took its own value: dV_i += dO_c,i).
void top_backward(const float* q, const float* kn, const float* v, const int32_t* members, const int64_t* n,
                  const float* out_c, const float* lse_c, const float* dout, const float* inv_count,
                  float* dq, float* dkn, float* dv, const TopSizes& s);

}  // namespace eformer::kernels

namespace eformer::attention {

// q, k, v [B, H, N, d] float32, centroids [H, c, d] (used as given, no gradient), window >= 1 ->
// [B, H, N, d], every head routing by the rule above. opts.key_mask and opts.scale as lsh_attention;
// opts.causal is a ValueError (top-w membership depends on later tokens: a leak), dropout must be 0.
// Gradients reach q, k (through the normalization) and v, not the selection. With `stats`, the
// nearest-centroid cluster sums of this forward for the moving average (as kernels/routing.h: the
// k-means update of the reference also uses the nearest centroid, not the top-w membership).
Tensor routing_top_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& centroids,
                             int64_t window, const AttentionOptions& opts = {}, ClusterSums* stats = nullptr);

}  // namespace eformer::attention
