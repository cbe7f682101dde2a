#include "eformer/attention/kernels/flash.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "eformer/attention/kernels/online_softmax.h"
#include "eformer/attention/kernels/scratch.h"
#include "eformer/attention/kernels/tile_dropout.h"
#include "eformer/attention/kernels/tile_gemm.h"
#include "eformer/autograd/autograd.h"
#include "eformer/core/allocator.h"
#include "eformer/core/parallel.h"
#include "eformer/core/rng.h"

namespace eformer::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Does key block [j0, j0 + cols) hold any real key of batch row `km` (null: all real)?
std::vector<char> key_blocks_with_keys(const bool* key_mask, int64_t B, int64_t M, int64_t block) {
  const int64_t nk = (M + block - 1) / block;
  std::vector<char> any(size_t(B * nk), 1);
  if (!key_mask) return any;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t kb = 0; kb < nk; ++kb) {
      const bool* km = key_mask + b * M;
      char found = 0;
      for (int64_t j = kb * block; j < std::min(M, (kb + 1) * block) && !found; ++j) found = km[j];
      any[size_t(b * nk + kb)] = found;
    }
  return any;
}

// Sets masked scores of the tile s [rows, ld] (queries i0.., keys j0..) to -inf.
// causal_offset = M - N: query i may attend key j iff j <= i + causal_offset.
void mask_tile(float* s, int64_t ld, int64_t i0, int64_t rows, int64_t j0, int64_t cols, bool causal,
               int64_t causal_offset, const bool* km) {
  if (km) {
    for (int64_t c = 0; c < cols; ++c)
      if (!km[j0 + c])
        for (int64_t r = 0; r < rows; ++r) s[r * ld + c] = kNegInf;
  }
  if (causal && j0 + cols - 1 > i0 + causal_offset) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t first_masked = std::max<int64_t>(0, i0 + r + causal_offset + 1 - j0);
      for (int64_t c = first_masked; c < cols; ++c) s[r * ld + c] = kNegInf;
    }
  }
}

// The kernels; the dropout path is compiled in only when kDropout, so the dropout = 0 loops are
// exactly the plain FlashAttention ones.
template <bool kDropout>
void forward_tiles(const float* q, const float* k, const float* v, const bool* key_mask, float* out,
                   float* lse, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                   bool causal, const FlashDropout& dr) {
  constexpr int64_t Br = kFlashBlockQ, Bc = kFlashBlockK;
  const int64_t nq = (N + Br - 1) / Br, nk = (M + Bc - 1) / Bc, offset = M - N;
  const int64_t dp = tile::round_up(d), Mp = tile::round_up(M);
  const std::vector<char> key_block_real = key_blocks_with_keys(key_mask, B, M, Bc);
  // K^T [BH, d, Mp] (the B operand of S = Q K^T) and V with rows padded to dp (of O += P V).
  ScratchBuffer kt = transposed_padded(k, B * H, M, d, Mp);
  ScratchBuffer vpad = rows_padded(v, B * H * M, d, dp);
  const float* VP = vpad.data ? vpad.data : v;
  // Long causal rows first (items in reverse query-block order), so the dynamic schedule balances.
  for_each_item(B * H * nq, Br * Bc + Br * dp, [&](int64_t item, float* scratch) {
    float* s = scratch;            // S, then P   [Br, Bc]
    float* O = scratch + Br * Bc;  // the output rows, unnormalized   [Br, dp]
    const int64_t bh = item / nq, qb = nq - 1 - item % nq, b = bh / H;
    const int64_t i0 = qb * Br, rows = std::min(Br, N - i0);
    const float* Q = q + (bh * N + i0) * d;
    const float* KT = kt.data + bh * d * Mp;
    const float* V = VP + bh * M * dp;
    const bool* km = key_mask ? key_mask + b * M : nullptr;
    std::memset(O, 0, size_t(rows * dp) * sizeof(float));
    attention::OnlineSoftmax state[Br];
    for (int64_t kb = 0; kb < nk; ++kb) {
      const int64_t j0 = kb * Bc, cols = std::min(Bc, M - j0);
      if (causal && j0 > i0 + rows - 1 + offset) break;    // this and every later key block is in the future
      if (!key_block_real[size_t(b * nk + kb)]) continue;  // only padding: contributes nothing
      // S = scale Q_i K_j^T   [rows, cols]
      tile::gemm(rows, tile::round_up(cols), d, Q, d, 1, KT + j0, Mp, s, Bc, scale, false);
      mask_tile(s, Bc, i0, rows, j0, cols, causal, offset, km);
      for (int64_t r = 0; r < rows; ++r) {
        const float rescale = state[r].update(s + r * Bc, cols);
        if (rescale != 1.0f) {
          float* o = O + r * dp;
#pragma omp simd
          for (int64_t c = 0; c < dp; ++c) o[c] *= rescale;
        }
      }
      // Dropout after the statistics: m, l and L stay those of the undropped P (Dao 2023, Alg. 1).
      if constexpr (kDropout) apply_dropout(s, Bc, rows, cols, (bh * N + i0) * M + j0, M, dr);
      // O_i += (P o Z) V_j   [rows, dp]
      tile::gemm(rows, dp, cols, s, Bc, 1, V + j0 * dp, dp, O, dp, 1.0f, true);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float inv = state[r].inverse_sum();
      float* o = out + (bh * N + i0 + r) * d;
      for (int64_t c = 0; c < d; ++c) o[c] = O[r * dp + c] * inv;
      lse[bh * N + i0 + r] = state[r].log_sum_exp();
    }
  });
}

template <bool kDropout>
void backward_tiles(const float* q, const float* k, const float* v, const bool* key_mask, const float* out,
                    const float* lse, const float* dout, float* dq, float* dk, float* dv, int64_t B,
                    int64_t H, int64_t N, int64_t M, int64_t d, float scale, bool causal,
                    const FlashDropout& dr) {
  constexpr int64_t Br = kFlashBlockQ, Bc = kFlashBlockK;
  const int64_t nq = (N + Br - 1) / Br, nk = (M + Bc - 1) / Bc, offset = M - N;
  const int64_t dp = tile::round_up(d), Mp = tile::round_up(M);
  const std::vector<char> key_block_real = key_blocks_with_keys(key_mask, B, M, Bc);
  // B operands: K^T and V^T [BH, d, Mp] (of S and dP), and Q, K, dO with rows padded to dp.
  ScratchBuffer kt = transposed_padded(k, B * H, M, d, Mp), vt = transposed_padded(v, B * H, M, d, Mp);
  ScratchBuffer qpad = rows_padded(q, B * H * N, d, dp), kpad = rows_padded(k, B * H * M, d, dp),
                dopad = rows_padded(dout, B * H * N, d, dp);
  const float* QP = qpad.data ? qpad.data : q;
  const float* KP = kpad.data ? kpad.data : k;
  const float* dOP = dopad.data ? dopad.data : dout;
  // Scratch per thread: P and dS tiles, dK_j and dV_j [Bc, dp], dQ [N, dp] and D [N] of the head,
  // and with dropout a tile of Z.
  const int64_t scratch_floats = (kDropout ? 3 : 2) * Br * Bc + 2 * Bc * dp + N * dp + N;
  for_each_item(B * H, scratch_floats, [&](int64_t bh, float* scratch) {
    float* p = scratch;
    float* ds = p + Br * Bc;
    float* dK = ds + Br * Bc;
    float* dV = dK + Bc * dp;
    float* dQ = dV + Bc * dp;
    float* D = dQ + N * dp;
    float* z = D + N;  // Z [Br, Bc] (dropout only)
    const int64_t b = bh / H;
    const float* Q = q + bh * N * d;
    const float* dO = dout + bh * N * d;
    const float* O = out + bh * N * d;
    const float* QPh = QP + bh * N * dp;
    const float* KPh = KP + bh * M * dp;
    const float* dOPh = dOP + bh * N * dp;
    const float* KT = kt.data + bh * d * Mp;
    const float* VT = vt.data + bh * d * Mp;
    const float* L = lse + bh * N;
    const bool* km = key_mask ? key_mask + b * M : nullptr;
    std::memset(dQ, 0, size_t(N * dp) * sizeof(float));
    // D_i = sum_c dO[i, c] O[i, c]
    for (int64_t i = 0; i < N; ++i) {
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < d; ++c) acc += dO[i * d + c] * O[i * d + c];
      D[i] = acc;
    }
    for (int64_t kb = 0; kb < nk; ++kb) {
      const int64_t j0 = kb * Bc, cols = std::min(Bc, M - j0), cols_p = tile::round_up(cols);
      std::memset(dK, 0, size_t(Bc * dp) * sizeof(float));
      std::memset(dV, 0, size_t(Bc * dp) * sizeof(float));
      // The first query block with a query that may see key j0 (query i sees it iff i >= j0 - offset).
      const int64_t qb_first = causal ? std::max<int64_t>(0, j0 - offset) / Br : 0;
      for (int64_t qb = key_block_real[size_t(b * nk + kb)] ? qb_first : nq; qb < nq; ++qb) {
        const int64_t i0 = qb * Br, rows = std::min(Br, N - i0);
        // P = exp(scale Q_i K_j^T - L_i)   [rows, cols]; masked or empty rows give exactly 0.
        tile::gemm(rows, cols_p, d, Q + i0 * d, d, 1, KT + j0, Mp, p, Bc, scale, false);
        mask_tile(p, Bc, i0, rows, j0, cols, causal, offset, km);
        for (int64_t r = 0; r < rows; ++r) {
          const float l = L[i0 + r];
          float* pr = p + r * Bc;
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) pr[c] = fast_exp(pr[c] - l);
        }
        if constexpr (!kDropout) {
          // dV_j += P^T dO_i   [cols, dp]
          tile::gemm(cols, dp, rows, p, 1, Bc, dOPh + i0 * dp, dp, dV, dp, 1.0f, true);
          // dP = dO_i V_j^T   [rows, cols];  dS = P o (dP - D_i)
          tile::gemm(rows, cols_p, d, dO + i0 * d, d, 1, VT + j0, Mp, ds, Bc, 1.0f, false);
          for (int64_t r = 0; r < rows; ++r) {
            const float Di = D[i0 + r];
            const float* pr = p + r * Bc;
            float* dsr = ds + r * Bc;
#pragma omp simd
            for (int64_t c = 0; c < cols; ++c) dsr[c] = pr[c] * (dsr[c] - Di);
          }
        } else {
          // Z regenerated from the counters (Dao 2023, Alg. 2 with dropout).
          for (int64_t r = 0; r < rows; ++r) std::fill(z + r * Bc, z + r * Bc + cols, 1.0f);
          apply_dropout(z, Bc, rows, cols, (bh * N + i0) * M + j0, M, dr);
          // dP = (dO_i V_j^T) o Z   [rows, cols];  dS = P o (dP - D_i);  z becomes P o Z
          tile::gemm(rows, cols_p, d, dO + i0 * d, d, 1, VT + j0, Mp, ds, Bc, 1.0f, false);
          for (int64_t r = 0; r < rows; ++r) {
            const float Di = D[i0 + r];
            const float* pr = p + r * Bc;
            float* dsr = ds + r * Bc;
            float* zr = z + r * Bc;
#pragma omp simd
            for (int64_t c = 0; c < cols; ++c) {
              dsr[c] = pr[c] * (dsr[c] * zr[c] - Di);
              zr[c] *= pr[c];
            }
          }
          // dV_j += (P o Z)^T dO_i   [cols, dp]
          tile::gemm(cols, dp, rows, z, 1, Bc, dOPh + i0 * dp, dp, dV, dp, 1.0f, true);
        }
        // dK_j += scale dS^T Q_i   [cols, dp];  dQ_i += scale dS K_j   [rows, dp]
        tile::gemm(cols, dp, rows, ds, 1, Bc, QPh + i0 * dp, dp, dK, dp, scale, true);
        tile::gemm(rows, dp, cols, ds, Bc, 1, KPh + j0 * dp, dp, dQ + i0 * dp, dp, scale, true);
      }
      for (int64_t c = 0; c < cols; ++c) {
        std::memcpy(dk + (bh * M + j0 + c) * d, dK + c * dp, size_t(d) * sizeof(float));
        std::memcpy(dv + (bh * M + j0 + c) * d, dV + c * dp, size_t(d) * sizeof(float));
      }
    }
    for (int64_t i = 0; i < N; ++i)
      std::memcpy(dq + (bh * N + i) * d, dQ + i * dp, size_t(d) * sizeof(float));
  });
}

}  // namespace

void flash_attention_forward(const float* q, const float* k, const float* v, const bool* key_mask, float* out,
                             float* lse, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                             bool causal, const FlashDropout* dropout) {
  if (dropout && dropout->p > 0.0f)
    forward_tiles<true>(q, k, v, key_mask, out, lse, B, H, N, M, d, scale, causal, *dropout);
  else
    forward_tiles<false>(q, k, v, key_mask, out, lse, B, H, N, M, d, scale, causal, FlashDropout{});
}

void flash_attention_backward(const float* q, const float* k, const float* v, const bool* key_mask,
                              const float* out, const float* lse, const float* dout, float* dq, float* dk,
                              float* dv, int64_t B, int64_t H, int64_t N, int64_t M, int64_t d, float scale,
                              bool causal, const FlashDropout* dropout) {
  if (dropout && dropout->p > 0.0f)
    backward_tiles<true>(q, k, v, key_mask, out, lse, dout, dq, dk, dv, B, H, N, M, d, scale, causal,
                         *dropout);
  else
    backward_tiles<false>(q, k, v, key_mask, out, lse, dout, dq, dk, dv, B, H, N, M, d, scale, causal,
                          FlashDropout{});
}

}  // namespace eformer::kernels

namespace eformer::attention {

Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) {
  const AttentionDims s = validate_attention("flash_attention", q, k, v, opts);
  Tensor qc = q.contiguous_data(), kc = k.contiguous_data(), vc = v.contiguous_data();
  Tensor km = opts.key_mask.defined() ? opts.key_mask.contiguous_data() : Tensor();
  Tensor out = Tensor::empty({s.B, s.H, s.N, s.d});
  Tensor lse = Tensor::empty({s.B, s.H, s.N});
  const bool causal = opts.causal;
  // Dropout reserves ceil(B H N M / 4) counters, as ops/dropout.h on the [B, H, N, M] probabilities
  // (so full_attention drops the same elements); the backward regenerates the mask from them.
  kernels::FlashDropout dr;
  if (opts.dropout > 0.0f) {
    rng::Generator& gen = rng::default_generator();
    dr.p = opts.dropout;
    dr.counter = gen.reserve(uint64_t(s.B * s.H * s.N * s.M + 3) / 4);
    dr.seed = gen.state().seed, dr.stream = gen.state().stream;
  }
  if (out.numel() > 0)
    kernels::flash_attention_forward(qc.data<float>(), kc.data<float>(), vc.data<float>(),
                                     km.defined() ? km.data<bool>() : nullptr, out.data<float>(),
                                     lse.data<float>(), s.B, s.H, s.N, s.M, s.d, s.scale, causal, &dr);
  Tensor od = out.detach();
  return autograd::record(
      "flash_attention", out, {q, k, v}, [qc, kc, vc, km, od, lse, s, causal, dr](const Tensor& g) {
        Tensor gc = g.contiguous_data();
        if (qc.numel() == 0)
          return std::vector<Tensor>{Tensor::zeros(qc.shape()), Tensor::zeros(kc.shape()),
                                     Tensor::zeros(vc.shape())};
        Tensor dq = Tensor::empty(qc.shape()), dk = Tensor::empty(kc.shape()), dv = Tensor::empty(vc.shape());
        {
          kernels::flash_attention_backward(
              qc.data<float>(), kc.data<float>(), vc.data<float>(), km.defined() ? km.data<bool>() : nullptr,
              od.data<float>(), lse.data<float>(), gc.data<float>(), dq.data<float>(), dk.data<float>(),
              dv.data<float>(), s.B, s.H, s.N, s.M, s.d, s.scale, causal, &dr);
        }
        return std::vector<Tensor>{dq, dk, dv};
      });
}

}  // namespace eformer::attention
