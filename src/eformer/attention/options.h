// Options shared by the exact-attention family (full, flash) and, later, every mechanism that works
// on explicit q, k, v [B, H, N, d] tensors.
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

#include "eformer/core/tensor.h"

namespace eformer::attention {

struct AttentionOptions {
  // Query i may attend key j iff j <= i + (M - N): bottom-right aligned, so with a KV cache
  // (M > N) the last query sees every key. With N > M the first N - M queries see no key.
  bool causal = false;
  // Bool [B, M]; true = a real token that may be attended. Undefined = every key is real.
  Tensor key_mask;
  // Multiplies q k^T; 0 means 1 / sqrt(d).
  float scale = 0.0f;
  // Kernelized kinds (performer, linear) only; the other kinds reject them. The feature map's
  // options (feature_maps.h: kernel, features, projection, m, ortho, norms) and an explicit random
  // matrix omega [m, d] (undefined: drawn from the default generator on each call).
  nlohmann::json feature_options = nlohmann::json::object();
  Tensor omega;
  // Dropout on the attention probabilities: each probability P_ij is zeroed with this probability
  // and the kept ones are scaled by 1 / (1 - dropout); the row normalizer is the undropped one (as
  // torch's dropout_p). The mask is drawn like ops/dropout.h: the call reserves ceil(B H N M / 4)
  // counters of the default generator and element e = ((b H + h) N + i) M + j uses word e % 4 of
  // block counter + e / 4, so it is a pure function of the generator state at the call: the
  // backward regenerates it, autograd::checkpoint replays it bit for bit, and it does not depend
  // on the thread count or the kernel (full and flash drop the same elements). 0 = off (nothing
  // reserved). Mechanisms without probabilities (kernelized) reject dropout > 0.
  float dropout = 0.0f;
};

// Sizes of a validated call: q [B, H, N, d], k and v [B, H, M, d].
struct AttentionDims {
  int64_t B = 0, H = 0, N = 0, M = 0, d = 0;
  float scale = 0.0f;  // resolved (never 0)
};

// Checks dtypes and shapes of q, k, v and the options; throws ShapeError / ValueError naming `op`,
// the argument and what was expected. Returns the sizes and the resolved scale.
AttentionDims validate_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const AttentionOptions& opts);

// True when query i (of N) may attend key j (of M) under the causal rule above.
inline bool causal_allows(int64_t i, int64_t j, int64_t N, int64_t M) { return j <= i + (M - N); }

}  // namespace eformer::attention
