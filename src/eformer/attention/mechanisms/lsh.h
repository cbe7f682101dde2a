// Reformer's LSH attention as a mechanism (Kitaev et al. 2020, sec. 2): shared-QK projections (one
// q/k projection, ProjectionSpec::shared_qk), angular LSH over n_hashes rounds, sorted chunks
// (kernels/lsh.h has the exact rule, causal and bidirectional), rounds combined by log-sum-exp.
//
// Options (MechanismConfig::options; unknown keys are a ValueError listing these):
//   bucket_size  target keys per bucket (default 64): n_buckets = 2^round(log2(max_len / bucket_size)), >= 2
//   n_buckets    a power of two >= 2 (overrides bucket_size)
//   n_hashes     hashing rounds (default 4)
//   chunk        sorted chunk length c (default 64)
//   redraw       true (default): new rotations from the default generator at every training forward;
//                false: the rotations drawn once from the layer's seed are kept
//   seed         the layer's rotation seed (default: drawn from the default generator at construction)
//   rotary, rotary_base  as for "flash"
// Buffer "rotations" [n_hashes, H, d, columns] (n_buckets / 2 columns, fewer when factorized, kernels/lsh.h): the rotations of the latest training forward
// (or, before any, the seed's draw); evaluation, streaming and redraw = false use it, so a checkpoint
// reproduces them. A training forward reserves its draw from rng::default_generator(), so
// autograd::checkpoint (the recompute policy) and any policy that restores the generator replay it.
//
// Streaming (causal): per sequence, head, round and bucket the last <= 2c - 1 keys and values; a new
// token attends the cached keys of its bucket in each round: O(n_hashes c d) per token whatever the
// context length, the same outputs as the parallel causal pass.
#pragma once
#include <string>

#include "eformer/attention/projected.h"
#include "eformer/core/rng.h"

namespace eformer::attention {

MechanismEntry lsh_entry();

struct LshOptions {
  int64_t bucket_size = 64;
  int64_t n_buckets = 0;  // 0: from bucket_size
  int64_t n_hashes = 4;
  int64_t chunk = 64;
  bool redraw = true;
  int64_t seed = -1;  // -1: from the default generator
  MultiHeadOptions multi_head;
};
LshOptions parse_lsh_options(const nlohmann::json& options, const std::string& positions = "none");
// 2^round(log2(n / bucket_size)), at least 2 and at most 2^20.
int64_t lsh_default_buckets(int64_t n, int64_t bucket_size);
// Standard normal rotations [n_hashes, heads, d, lsh_rotation_columns(n_buckets)] (n_buckets / 2 up to 256
// buckets, factorized above: kernels/lsh.h) drawn from `gen` (one reservation).
Tensor draw_lsh_rotations(int64_t n_hashes, int64_t heads, int64_t d, int64_t n_buckets, rng::Generator& gen);

// Functional form on q, k, v [B, H, N, d] (kind "lsh" of attention()): keys are k normalized (pass k =
// q for shared-QK). args.options: bucket_size, n_buckets (default from N; with rotations given, 2 x their
// columns unless said), n_hashes, chunk; args.tensors["rotations"] [n_hashes, H, d, columns] is used as
// given, else rotations are drawn from the default generator.
Tensor lsh_attention_functional(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                                const MechanismArgs& args = {});

class LshAttention : public ProjectedAttention {
 public:
  explicit LshAttention(const MechanismConfig& config);
  std::string describe() const override;
  const LshOptions& options() const { return options_; }
  int64_t n_buckets() const { return n_buckets_; }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  LshAttention(const MechanismConfig& config, LshOptions options);
  Tensor rotations_now();  // a fresh draw in training with redraw, else the buffer

  LshOptions options_;
  int64_t n_buckets_ = 0;
  Tensor* rotations_ = nullptr;
};

}  // namespace eformer::attention
