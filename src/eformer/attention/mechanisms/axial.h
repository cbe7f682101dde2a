// Axial attention (Ho et al. 2019, arXiv:1912.12180, sec. 3): the sequence laid out in raster order as
// an image of `width` columns, each position attending only along its row or its column, O(N (h + w)),
// O(N sqrt N) for a square image. The paper stacks a row-attention layer and a column-attention layer;
// here one layer's heads are split between the axes (the first ceil(H / 2) heads attend along the row,
// the others along the column, one output projection merges them), so one mechanism covers both axes
// and stays a softmax attention over an exact pattern (its reference). Two stacked layers reach every
// position (bidirectional).
//
// Causal: the masked row and masked column attentions of the paper's autoregressive Axial Transformer
// (sec. 4): pixel (r, c) sees (r, c' <= c) through its row heads and (r' <= r, c) through its column
// heads, each earlier in raster order. The paper's outer decoder (unmasked rows of the image above,
// through a one-row shift) is an architecture, not a layer, and is not reproduced: a stack of this layer
// reaches, from (r, c), the pixels (r' <= r, c' <= c) only (docs/MECHANISMS.md, "axial").
//
// Layout (option image_shape [h, w]; default from max_len: w = ceil(sqrt(max_len)), h = ceil(max_len / w);
// standalone without max_len, bidirectional: w = ceil(sqrt(N)) per call). A sequence shorter than h w fills
// the first N pixels (the last row partly); longer ones are a ValueError naming image_shape. Rows and
// columns are batched into the flash kernel, both axes in one node (axial_lines.h); with dropout, per
// axis on permuted copies.
//
// Streaming (native): a KV cache; a new pixel attends its row so far and its column so far (a strided
// slice of the cache), O(h + w) per token, equal to the parallel causal pass.
#pragma once
#include <string>

#include "eformer/attention/projected.h"

namespace eformer::attention {

// The registry entry of "axial".
MechanismEntry axial_entry();

// Axial attention on q, k, v [B, H, N, d] (N != M bidirectional: query i and key j as pixels i and j of one
// image; causal: N == M) laid out `width` pixels per row: heads
// [0, ceil(H / 2)) along rows, the others along columns; opts.causal masks each axis to earlier pixels;
// key_mask and dropout as the flash kernel (dropout drawn per axis call).
Tensor axial_core(const Tensor& q, const Tensor& k, const Tensor& v, int64_t width, const AttentionOptions& opts);

// Heads attending along rows (the others attend along columns).
inline int64_t axial_row_heads(int64_t heads) { return (heads + 1) / 2; }

struct AxialOptions {
  MultiHeadOptions heads;
  int64_t image_h = 0, image_w = 0;  // 0: from max_len, else per call from N
};
AxialOptions parse_axial_options(const nlohmann::json& options, const std::string& positions = "none");

class AxialAttention : public ProjectedAttention {
 public:
  explicit AxialAttention(const MechanismConfig& config);
  std::string describe() const override;
  // The layout in use: [h, w] (0, 0 when it is chosen per call).
  int64_t image_height() const { return options_.image_h; }
  int64_t image_width() const { return options_.image_w; }

 protected:
  Tensor mix(const Tensor& x, const Tensor& memory, const Tensor& key_mask) override;
  std::unique_ptr<RecurrentState> start_native(int64_t batch) const override;
  Tensor step_native(const Tensor& x_t, RecurrentState& state) override;

 private:
  int64_t width_for(int64_t N) const;
  AxialOptions options_;
};

}  // namespace eformer::attention
