// ETC's global-local attention (Ainslie et al. 2020, "ETC: Encoding Long and Structured Inputs in
// Transformers"): the first n_g positions of the sequence are the global tokens (the model's
// input carries them, e.g. one summary token per sentence or segment put first; no extra tokens are
// added, so a layer maps [B, N, D] to [B, N, D] like every mechanism). Global tokens attend every
// token (global-to-global, global-to-long); every long token attends every global token
// (long-to-global) and the long tokens within radius r (long-to-long, |i - j| <= r). Relative position
// labels (the paper's relative position encoding) add a learned per-head bias to each score: clip(j - i, -k, k) within the globals
// and within the long input, and one label each for global-to-long and long-to-global pairs
// (kernels::RelativeLabels): the table has 2k + 3 entries per head.
//
// Bidirectional only (ETC is an encoder; a causal request is a capability error). Computed by the
// block-sparse kernel over an exact layout with its relative score-bias hook: O(N (2r + 1 + n_g) d)
// time, O(N d) memory beyond the layout, never N x N.
//
// Options: globals 16 (n_g), radius 64 (r), max_distance 16 (k), rotary, rotary_base.
// Parameter relative_bias [H, 2k + 3].
#pragma once
#include <string>

#include "eformer/attention/kernels/block_sparse.h"
#include "eformer/attention/projected.h"

namespace eformer::attention {

MechanismEntry etc_entry();

struct EtcOptions {
  int64_t globals = 16;
  int64_t radius = 64;
  int64_t max_distance = 16;
  MultiHeadOptions multi_head;
};
EtcOptions parse_etc_options(const nlohmann::json& options, const std::string& positions = "none");

// May query i attend key j (the exact pattern, before any key mask)?
inline bool etc_allows(int64_t i, int64_t j, int64_t globals, int64_t radius) {
  return i < globals || j < globals || (i - j <= radius && j - i <= radius);
}

// q, k, v [B, H, N, d] (self-attention) -> [B, H, N, d]; relative_bias [H, 2 max_distance + 3] (undefined:
// no bias). opts.causal is an error.
Tensor etc_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts,
                     const EtcOptions& o, const Tensor& relative_bias);

class EtcAttention : public ProjectedAttention {
 public:
  explicit EtcAttention(const MechanismConfig& config);
  std::string describe() const override;

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;

 private:
  EtcAttention(const MechanismConfig& config, EtcOptions options);
  EtcOptions options_;
  Tensor relative_bias_;
};

}  // namespace eformer::attention
