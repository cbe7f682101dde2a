// The Routing Transformer's attention as a mechanism (Roy et al. 2021): shared-QK projections, keys
// routed to the nearest of c centroids and attended within their cluster in sorted chunks
// (kernels/routing.h has the exact rule, causal and bidirectional), the centroids learned by online
// k-means (an exponential moving average, no gradient), and optionally the paper's mix of routing and
// local heads.
//
// Options (MechanismConfig::options; unknown keys are a ValueError listing these):
//   clusters     c (default round(max_len / window), at least 1)
//   window       w, the sorted chunk (default 64): causal, the last <= 2w - 1 earlier keys of a cluster;
//                with balance "top", the tokens each centroid takes
//   balance      "nearest" (default): each token in the cluster of its nearest centroid, sorted chunks of
//                w; "top": each centroid takes its w most similar tokens (the paper's balanced clusters,
//                kernels/routing_top.h), bidirectional only (causal is a ValueError: a leak)
//   decay        the moving average's lambda (default 0.999; 1: frozen centroids)
//   local_heads  how many of the heads (the last ones) attend locally instead (default 0)
//   seed         the seed of the initial centroids (default: drawn from the default generator)
//   rotary, rotary_base  as for "flash"
// Buffer "centroids" [H, c, d], unit rows: saved in checkpoints. A training forward routes with the
// centroids it finds and then updates them (so no output of that forward depends on the update). It
// also reserves one block of rng::default_generator() as its mark: a forward run again at the same
// generator state (autograd::checkpoint's recompute, the reversible backward) is a replay of the
// last one, and routes with the centroids that one used, updating nothing.
//
// Streaming (causal, so balance "nearest"): per sequence, head and cluster the last <= 2w - 1 keys and
// values; a new token attends the cached keys of its cluster: the same outputs as the parallel causal pass.
#pragma once
#include <optional>
#include <string>

#include "eformer/attention/kernels/routing.h"
#include "eformer/attention/projected.h"
#include "eformer/core/rng.h"

namespace eformer::attention {

MechanismEntry routing_entry();

// How tokens are spread over the clusters: the nearest centroid in sorted chunks, or each centroid's top w.
enum class RoutingBalance { nearest, top };

struct RoutingOptions {
  int64_t clusters = 0;  // 0: from max_len / window
  int64_t window = 64;
  RoutingBalance balance = RoutingBalance::nearest;
  double decay = 0.999;
  int64_t local_heads = 0;
  int64_t seed = -1;  // -1: from the default generator
  MultiHeadOptions multi_head;
};
RoutingOptions parse_routing_options(const nlohmann::json& options, const std::string& positions = "none");
// Standard normal rows [H, c, d] from `gen`, normalized: the initial centroids.
Tensor draw_routing_centroids(int64_t heads, int64_t clusters, int64_t d, rng::Generator& gen);

// Functional form on q, k, v [B, H, N, d] (kind "routing" of attention()): args.tensors["centroids"]
// [H, c, d] (required); args.options: window (default 64), local_heads (default 0), balance (default
// "nearest"; "top" with opts.causal is a ValueError).
// The attention of `o.balance` over heads [0, H - local_heads); the last local_heads heads attend their
// local window (the "nearest" kernel with every token in one cluster). `stats` as routing_attention.
Tensor routing_attention_balanced(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& centroids,
                                  const RoutingOptions& o, const AttentionOptions& opts,
                                  ClusterSums* stats = nullptr);

Tensor routing_attention_functional(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                                    const MechanismArgs& args = {});

class RoutingAttention : public ProjectedAttention {
 public:
  explicit RoutingAttention(const MechanismConfig& config);
  std::string describe() const override;
  const RoutingOptions& options() const { return options_; }
  int64_t clusters() const { return clusters_; }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  RoutingAttention(const MechanismConfig& config, RoutingOptions options);

  RoutingOptions options_;
  int64_t clusters_ = 0;
  Tensor* centroids_ = nullptr;
  // The latest updating forward: its generator mark and the centroids it routed with.
  std::optional<rng::Generator::State> last_mark_;
  Tensor last_centroids_;
};

}  // namespace eformer::attention
