// Losses. cross_entropy fuses log-softmax and the negative log-likelihood: the forward keeps each
// row's log-sum-exp, and the backward writes (softmax - onehot) scaled by the row's upstream
// gradient in one pass over the logits.
#pragma once
#include <string>

#include "eformer/core/tensor.h"

namespace eformer {

enum class Reduction { None, Mean, Sum };
// "none" | "mean" | "sum"; anything else is a ValueError listing those.
Reduction parse_reduction(const std::string& name);

// logits [N, C] float32, target [N] int64 class ids. Rows whose target is ignore_index contribute
// nothing; Mean divides by the number of the other rows (torch semantics: NaN when every row is
// ignored), Sum adds them, None returns the per-row losses [N] (0 on ignored rows). A target outside
// [0, C) that is not ignore_index is an IndexError naming it.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                     Reduction reduction = Reduction::Mean);

// cross_entropy(h weightᵀ, target) without the [N, C] logits: the rows are taken in chunks of
// `chunk_rows` (0: as many as fit 16 MiB of logits), forward and backward, so memory is O(chunk · C)
// beyond the inputs. The backward recomputes each chunk's logits from h and weight (kept, not
// copied) and the row log-sum-exp (kept, [N]): dh = dlogits · weight, dweight = Σ_chunks dlogitsᵀ · h,
// chunks in order, so bits do not depend on the thread count. This is the Reformer's chunked LM
// head and loss (Kitaev et al. 2020, sec. 3, "chunking"): a million-token sequence over a 256-symbol
// vocabulary would otherwise need 1 GiB of logits and 1 GiB of their gradient.
// h [N, D] float32, weight [C, D] (an nn::Linear's [out, in] or a tied embedding table), target [N]
// int64; ignore_index and reduction as cross_entropy.
Tensor linear_cross_entropy(const Tensor& h, const Tensor& weight, const Tensor& target, int64_t ignore_index = -100,
                            Reduction reduction = Reduction::Mean, int64_t chunk_rows = 0);

namespace kernels {
// logits [N, C], target [N] -> loss [N] = lse - logits[target] (0 where target == ignore_index),
// lse [N] = log sum_c exp(logits[c]) of every row, kept for the backward.
void cross_entropy_forward(const float* logits, const int64_t* target, float* loss, float* lse, int64_t N,
                           int64_t C, int64_t ignore_index);
// dlogits [N, C] = dloss[r] (exp(logits - lse[r]) - onehot(target[r])), with dloss [N]; rows whose
// target is ignore_index get 0.
void cross_entropy_backward(const float* logits, const int64_t* target, const float* lse, const float* dloss,
                            float* dlogits, int64_t N, int64_t C, int64_t ignore_index);
}  // namespace kernels

}  // namespace eformer
