// The bidirectional Gumbel-Sinkhorn balancing of one head in its scaling form (used by sinkhorn_sort.cpp).
// The iterations X <- F_c(F_r(X)) from X0 (row, then column log-softmax; Mena et al. 2018, eq. 4;
// Tay et al. 2020, eq. 5) keep X of the form X0_ij - u_i - v_j (Sinkhorn's scaling, in log space), with
//   F_r:  u_i <- log sum_j exp(X0_ij - v_j),        F_c:  v_j <- log sum_i exp(X0_ij - u_i),
// starting from v = 0: the same matrices as the log-softmax chain, up to rounding. So an iteration is two
// reductions over X0 and writes no [n, n] matrix, and its backward recomputes the row output
// X0 - u_t - v_{t-1} and the column output X0 - u_t - v_t from the kept vectors: 2 n floats per iteration
// instead of 2 n^2 (512 MiB at N = 64K, H = 8).
#pragma once
#include <cstdint>

namespace eformer::kernels {

// P [n, n] = exp(X0 - u - v) after `iterations` (u, v) updates from x0 [n, n]; uv [iterations, 2, n] receives
// u_t, v_t of every iteration (the backward's input). scratch: 3 n floats.
void sinkhorn_scaling_forward(const float* x0, float* uv, float* P, float* scratch, int64_t n,
                              int64_t iterations);

// g [n, n]: dP in, dX0 out (in place); x0, uv, P as the forward wrote them. scratch: 3 n floats.
void sinkhorn_scaling_backward(const float* x0, const float* uv, const float* P, float* g, float* scratch,
                               int64_t n, int64_t iterations);

}  // namespace eformer::kernels
