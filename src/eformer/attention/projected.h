// What every head-projecting mechanism shares (MultiHeadAttention, PerformerAttention): the q, k, v
// and output projections (named q_proj, k_proj, v_proj, out_proj in every mechanism, so weights
// transfer between them), the head split and merge, rotary embeddings, and the checks of forward's
// and step's inputs. A subclass supplies the core that maps q, k, v [B, H, N, d] to [B, H, N, d].
#pragma once
#include <memory>
#include <string>

#include "eformer/attention/mechanism.h"
#include "eformer/nn/linear.h"

namespace eformer::attention {

struct MultiHeadOptions {
  bool rotary = false;
  float rotary_base = 10000.0f;
};
// Parses and validates options (unknown keys, wrong types: ValueError naming `mechanism`).
MultiHeadOptions parse_multi_head_options(const std::string& mechanism, const nlohmann::json& options);

class ProjectedAttention : public Mechanism {
 public:
  const MechanismConfig& config() const { return config_; }
  int64_t head_dim() const { return d_; }

 protected:
  // name: the registry name, for messages. d_model % n_heads == 0, both > 0; rotary needs an even
  // head dim (ValueError).
  ProjectedAttention(std::string type_name, const std::string& name, const MechanismConfig& config,
                     const MultiHeadOptions& heads);

  struct Heads {
    Tensor q, k, v;  // [B, H, N or M, d]
  };
  // forward's projections: q from x, k and v from the memory (cross) or x; rotary (self-attention)
  // from position 0. Checks x, the memory and their batches.
  Heads project(const Tensor& x, const Tensor& memory);
  // step's projections of x_t [B, T, D], rotary from position `offset`; checks x_t against the state's batch.
  Heads project_step(const Tensor& x_t, int64_t state_batch, int64_t offset);
  // start's checks (batch > 0, self-attention only).
  void check_start(int64_t batch) const;
  // [B, H, N, d] -> the output projection of the merged heads [B, N, D].
  Tensor output(const Tensor& heads);

  MechanismConfig config_;
  MultiHeadOptions heads_;
  int64_t H_, d_;

 private:
  void check_input(const Tensor& x, const char* what) const;
  Tensor split_heads(const Tensor& x) const;  // [B, N, D] -> [B, H, N, d]
  std::shared_ptr<nn::Linear> q_proj_, k_proj_, v_proj_, out_proj_;
};

}  // namespace eformer::attention
