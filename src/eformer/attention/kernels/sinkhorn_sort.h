// The soft block permutation of Sparse Sinkhorn attention (kernels/sinkhorn.h) as a forward and a
// backward over plain tensors, without a graph node: sinkhorn_permutation records them as its own node,
// and sinkhorn_attention (sinkhorn_attend.cpp) records them inside the node that also mixes and attends,
// where the blocks are the keys themselves, so that the block sums' gradient is added into dK in place
// (no [B, H, N, d] gradient tensor and no autograd add).
#pragma once
#include <cstdint>
#include <functional>

#include "eformer/attention/kernels/sinkhorn.h"
#include "eformer/core/tensor.h"

namespace eformer::kernels::sinkhorn_sort {

struct SortDims {
  int64_t B = 0, H = 0, n = 0, b = 0, d = 0, hidden = 0, n_max = 0, iterations = 0;
  float inv_temperature = 1;
  bool causal = false;
};

// What the backward needs: the contiguous weights, per (batch, head) the block sums psi [n, d], the hidden
// layer [n, hidden], the logits X0 [n, n] and the balancing's states (sinkhorn_sort.cpp), and P itself.
struct SortState {
  SortDims dims;
  Tensor w1, w2;
  Tensor psi, hidden, x0, states, P;
  bool with_gumbel = false;
};

// P [B, H, n, n] (in state.P, no graph) from the blocks [B, H, n b, d] and the SortNet (shapes checked as
// sinkhorn_permutation documents). after_item (if any) runs in (batch, head) bh's work item once its
// P [n, n] is written.
SortState sort_forward(const Tensor& blocks, int64_t b, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                       const Tensor& b2, const Tensor& gumbel, const SinkhornSortSizes& sizes,
                       const std::function<void(int64_t bh, const float* P)>& after_item = nullptr);

struct SortGradients {
  Tensor w1, b1, w2, b2, gumbel;  // gumbel undefined without noise
};

// From dP [B, H, n, n]: the SortNet's gradients, and the blocks' gradient written into dblocks [B, H, n b, d]
// (accumulate: added to what is there). dP is used as scratch when `dP_is_scratch` (else copied first).
// after_head (if any) runs in head h's work item once head h's blocks' gradient is written.
SortGradients sort_backward(const SortState& state, const Tensor& dP, bool dP_is_scratch, float* dblocks,
                            bool accumulate, const std::function<void(int64_t h)>& after_head = nullptr);

}  // namespace eformer::kernels::sinkhorn_sort
