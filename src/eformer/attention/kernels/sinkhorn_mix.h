// The mixing GEMMs of Sparse Sinkhorn attention (sorted block r = sum_j P_rj X_j), shared by the
// sorted_then_local node (sinkhorn_mix.cpp) and the fused mixed_block_attention (sinkhorn_attend.cpp):
// per (batch, head), P [rows, n] and X [n, bd] with each row of X a block of b keys (bd = b d floats).
#pragma once
#include <cstdint>

namespace eformer::kernels::sinkhorn_mix {

struct MixSizes {
  int64_t BH = 0, rows = 0, n = 0, bd = 0, local = 0;  // local: N d floats per head
  bool lower = false;                                  // P_rj = 0 for j >= r (causal): those products skipped
};

// Rows of P (or of X in the backward) per work item, a multiple of 64, never from the thread count (so
// that the GEMMs and their bits do not depend on it); chunks: items per head.
int64_t row_chunk(int64_t rows, const MixSizes& s);
inline int64_t chunks(int64_t rows, int64_t chunk) { return (rows + chunk - 1) / chunk; }

// out [rows, bd] = P X for rows [r0, r1).
void mix_forward(const float* P, const float* X, float* out, int64_t r0, int64_t r1, const MixSizes& s);

// dP [rows, n] (+)= dOut [rows, bd] X^T for rows [r0, r1) (strictly lower: 0 at j >= r, where P is 0).
void mix_backward_P(const float* dout, const float* X, float* dP, int64_t r0, int64_t r1, const MixSizes& s,
                    bool accumulate);

// dX [n, bd] (+)= P^T dOut for block rows [j0, j1).
void mix_backward_X(const float* P, const float* dout, float* dX, int64_t j0, int64_t j1, const MixSizes& s,
                    bool accumulate);

}  // namespace eformer::kernels::sinkhorn_mix
