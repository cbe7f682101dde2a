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
