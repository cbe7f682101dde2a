// Kernelized attention as a mechanism: the Performer (FAVOR+, Choromanski et al. 2020) and the
// Linear Transformer (Katharopoulos et al. 2020), one class over feature_maps.h and kernelized.h.
//
// Registered names and their defaults:
//   "performer"  kernel softmax, positive features, block-orthogonal omega, m = round(d ln d)
//   "linear"     kernel elu (elu + 1), no projection
// Options (MechanismConfig::options; unknown keys are a ValueError listing these):
//   kernel      "softmax" | "gaussian" | "relu" | "elu" | "exp" | "identity"
//   features    "positive" | "trig" (softmax, gaussian)
//   projection  bool: a = omega x (relu/elu/exp/identity may turn it off)
//   m           random features (rows of omega); ortho bool; norms "chi" | "fixed"
//   redraw      K: draw a new omega every K training steps (0: never; default 1000)
//   rotary, rotary_base  as for "flash" (rotary on by default when the model's positions are rotary)
// Projections q, k, v, out are named as in MultiHeadAttention, so a softmax model's weights load
// into a Performer (weight transfer). Buffers: "omega" [m, d] (shared by the heads) and
// "omega_draw" Int64 [2] = (seed, draw index): omega is a pure function of the two, so redraws
// replay exactly on resume and in recomputation (autograd::checkpoint), and are saved in
// checkpoints. Redraws happen only in on_step() in training mode; evaluation uses the saved omega.
//
// Recurrent step: the state S, z, mu per layer and head (kernelized.h): O(1) time and memory per
// token, whatever the context length.
#pragma once
#include <string>

#include "eformer/attention/kernels/feature_maps.h"
#include "eformer/attention/kernels/kernelized.h"
#include "eformer/attention/projected.h"

namespace eformer::attention {

// The registry entry of "performer" or "linear" (their defaults differ).
MechanismEntry performer_entry(const std::string& name);

// Functional form on q, k [B, H, N, d], v [B, H, M, d] (kinds "performer" and "linear" of
// attention()). args.options are the feature-map options above (kernel, features, projection, m,
// ortho, norms); args.tensors["omega"] [m, d] is used as given (it receives no gradient), else a
// fresh omega is drawn from the default generator. opts.scale applies to softmax and gaussian (q
// and k times sqrt(scale)); other kernels reject it. No probabilities: opts.dropout must be 0.
Tensor performer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                           const MechanismArgs& args = {});
Tensor linear_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                        const MechanismArgs& args = {});

struct PerformerOptions {
  FeatureMap features;
  int64_t redraw = 1000;
  MultiHeadOptions multi_head;  // rotary
};
// name: "performer" or "linear" (their defaults differ); positions: the model's (rotary default).
PerformerOptions parse_performer_options(const std::string& name, const nlohmann::json& options,
                                         const std::string& positions = "none");

class PerformerAttention : public ProjectedAttention {
 public:
  PerformerAttention(std::string name, const MechanismConfig& config);
  std::string describe() const override;
  void on_step(int64_t step) override;  // redraws omega at multiples of `redraw` (training only)

  const PerformerOptions& options() const { return options_; }
  Tensor omega() const { return omega_ ? *omega_ : Tensor(); }  // undefined without projection
  int64_t draw_index() const;

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  PerformerAttention(std::string name, const MechanismConfig& config, PerformerOptions options);
  void redraw(int64_t index);
  // q or k [B, H, n, d] (after rotary) -> features (scaled where the kernel uses the scale).
  KernelFeatures features(const Tensor& x, bool keys) const;

  PerformerOptions options_;
  Tensor* omega_ = nullptr;  // buffers (null without projection)
  Tensor* omega_draw_ = nullptr;
};

}  // namespace eformer::attention
