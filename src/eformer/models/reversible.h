// Reversible residual stacks (Gomez et al. 2017, RevNet; used by the Reformer, Kitaev et al. 2020,
// sec. 3): the activations are split in two streams, x1 = x2 = x at the bottom, and block i maps
//   y1 = x1 + G_i(x2),   y2 = x2 + F_i(y1)
// with G the block's mixing branch (self-attention, then cross-attention) and F its feed-forward
// branch (LayerNorms inside, pre-LN). The stack's output is (y1 + y2) / 2, so the model keeps one
// d_model-wide stream at its ends (the Reformer concatenates the two instead; averaging keeps the
// final LayerNorm and a tied head unchanged).
//
// The whole stack is one autograd node that keeps only its final (y1, y2) and, per block, the
// default generator's state before G and before F. The backward walks the blocks top-down and
// rebuilds each block's inputs from its outputs, x2 = y2 - F(y1), x1 = y1 - G(x2), recomputing
// each branch with the generator restored, so dropout, attention dropout and any random draw of a
// mechanism (LSH rotations) are replayed bit for bit, and backpropagates through the recomputed
// branch. Activation memory is then that of one block, whatever the depth; the price is one more
// forward of each branch, and inputs rebuilt up to float rounding (not bit for bit).
#pragma once
#include <memory>
#include <vector>

#include "eformer/attention/mechanism.h"
#include "eformer/nn/module.h"

namespace eformer::models {

// The blocks (TransformerBlocks with policy reversible) as one reversible node; arguments as
// TransformerBlock::forward. Without grad mode it is a plain loop that keeps nothing.
Tensor reversible_forward(const nn::ModuleList& blocks, const Tensor& x, const Tensor& key_mask,
                          const Tensor& memory, const Tensor& memory_mask);
// The same coupling, one streaming step through each block's attention state.
Tensor reversible_step(const nn::ModuleList& blocks, const Tensor& x_t,
                       std::vector<std::unique_ptr<attention::RecurrentState>>& states, const Tensor& memory,
                       const Tensor& memory_mask);

}  // namespace eformer::models
