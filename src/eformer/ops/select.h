// Selection by a boolean mask: masked_fill and where. Masks are DType::Bool and broadcast with the
// other operands by NumPy/PyTorch rules; gradients are reduced back to each input's shape (sum_to).
#pragma once
#include <cstdint>

#include "eformer/core/tensor.h"

namespace eformer {

// out = mask ? value : x, with out of shape broadcast(x, mask) (x's shape when mask broadcasts to x,
// as in torch.Tensor.masked_fill). The gradient is zero where the value was filled.
Tensor masked_fill(const Tensor& x, const Tensor& mask, float value);
// out = cond ? a : b, all three broadcast together (torch.where). da = cond ? g : 0, db = cond ? 0 : g.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

namespace kernels {
// Broadcast operands are read row by row: out is [outer, inner]; row r of operand p starts at
// p + row_p[r] and steps by s_p (0 for a broadcast last dim, 1 otherwise).

// out[r, i] = mask[r, i] ? value : x[r, i]
void masked_fill_forward(const float* x, const bool* mask, float* out, int64_t outer, int64_t inner,
                         const int64_t* row_x, const int64_t* row_mask, int64_t s_x, int64_t s_mask,
                         float value);
// dx[r, i] = mask[r, i] ? 0 : g[r, i]   (g, dx [outer, inner], dx of the broadcast shape)
void masked_fill_backward(const float* g, const bool* mask, float* dx, int64_t outer, int64_t inner,
                          const int64_t* row_mask, int64_t s_mask);

// out[r, i] = cond[r, i] ? a[r, i] : b[r, i]
void where_forward(const bool* cond, const float* a, const float* b, float* out, int64_t outer, int64_t inner,
                   const int64_t* row_cond, const int64_t* row_a, const int64_t* row_b, int64_t s_cond,
                   int64_t s_a, int64_t s_b);
// da[r, i] = cond ? g : 0, db[r, i] = cond ? 0 : g   (g, da, db [outer, inner]; da or db may be null)
void where_backward(const float* g, const bool* cond, float* da, float* db, int64_t outer, int64_t inner,
                    const int64_t* row_cond, int64_t s_cond);
}  // namespace kernels

}  // namespace eformer
