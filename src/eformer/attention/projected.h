// What every head-projecting mechanism shares: the q, k, v and output projections (named q_proj,
// k_proj, v_proj, out_proj in every mechanism, so weights transfer between them), the head split
// and merge, rotary embeddings, and the options that go with them. What differs between families
// is declared, not re-derived: a ProjectionSpec says whether q and k are shared (Reformer) or
// absent (Synthesizer) and how wide q/k and v are (AFT). A subclass supplies the core that maps
// q, k, v [B, H, N, d] to [B, H, N, d_v].
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "eformer/attention/mechanism.h"
#include "eformer/attention/registry.h"
#include "eformer/nn/linear.h"

namespace eformer::attention {

struct ProjectionSpec {
  bool query_key = true;   // false: no q and k projections (e.g. Synthesizer's learned weights)
  bool shared_qk = false;  // k is q's projection (Reformer's shared-QK); no k_proj
  int64_t qk_width = 0;    // total width of q and k across heads (0: d_model)
  int64_t v_width = 0;     // total width of v across heads (0: d_model); out_proj maps it to d_model
  int64_t heads = 0;       // heads the projections are split into (0: the model's n_heads; AFT: its own)
};

// Rotary embeddings on q and k (self-attention only): on when the model's positions are "rotary"
// unless the "rotary" option says otherwise.
struct MultiHeadOptions {
  bool rotary = false;
  float rotary_base = 10000.0f;
};
// The option specs of MultiHeadOptions, for a mechanism's entry.
std::vector<OptionSpec> multi_head_option_specs();
// Parses `key` into `o` if it is a multi-head option (returns false for other keys).
bool parse_multi_head_option(const std::string& who, const std::string& key, const nlohmann::json& value,
                             MultiHeadOptions& o);
// The options of a mechanism that has only the multi-head ones; the default of rotary follows
// `positions` (unknown keys, wrong types: ValueError naming `mechanism`).
MultiHeadOptions parse_multi_head_options(const std::string& mechanism, const nlohmann::json& options,
                                          const std::string& positions = "none");

class ProjectedAttention : public Mechanism {
 public:
  int64_t head_dim() const { return d_; }
  const MultiHeadOptions& multi_head() const { return heads_; }

 protected:
  // d_model % n_heads == 0 (and the widths'), rotary needs an even q/k head dim (ValueError).
  ProjectedAttention(std::string type_name, const std::string& name, const MechanismConfig& config,
                     const MultiHeadOptions& heads, const ProjectionSpec& spec = {});

  struct Heads {
    Tensor q, k, v;  // [B, H, N or M, d] (q and k undefined without query_key)
  };
  // forward's projections: q from x, k and v from the memory (cross) or x; rotary (self-attention)
  // from position 0. The inputs were checked by Mechanism::forward.
  Heads project(const Tensor& x, const Tensor& memory);
  // step's projections of x_t [B, T, D], rotary from position `offset`.
  Heads project_step(const Tensor& x_t, int64_t offset);
  // [B, H, N, d_v] -> the output projection of the merged heads [B, N, D].
  Tensor output(const Tensor& heads);
  // output(make(inputs)), keeping only `inputs` for the backward, which remakes the heads
  // (autograd::checkpoint): for heads that are a cheap function of tensors the backward keeps anyway.
  Tensor output_remade(std::function<Tensor(const std::vector<Tensor>&)> make, const std::vector<Tensor>& inputs);

  MultiHeadOptions heads_;
  ProjectionSpec spec_;
  int64_t H_, d_, dv_;

 private:
  Heads project_at(const Tensor& x, const Tensor& source, bool rotary, int64_t offset);
  // x [B, N, D] projected by `proj` straight into heads [B, H, N, w] (kernels/head_projection.h).
  Tensor to_heads(const nn::Linear& proj, const Tensor& x) const;
  std::shared_ptr<nn::Linear> q_proj_, k_proj_, v_proj_, out_proj_;
};

}  // namespace eformer::attention
