// A memory estimate for a training or evaluation run of a causal language model, made from the
// configs alone, before anything is allocated, and checked against the memory available
// (allocator::available_bytes, /proc/meminfo's MemAvailable), so that a run too large for the
// machine is one clear error instead of an allocation failure (or the OOM killer) minutes in.
//
// float32 throughout. Parameters P (counted from the config as the model builds them); training
// adds their gradients and AdamW's two moments: 4P + 4P + 8P bytes. Activations per layer and token
// (what backward keeps): about 12 d_model + 3 d_ff floats (norms, q/k/v, attention output, the
// projection, the feed-forward's hidden before and after the activation); a `full` attention layer
// adds 2 n_heads N (scores and probabilities of its row). With block "recompute" only each block's
// input stays (d_model per token and layer) plus one block's activations during its backward.
// Logits, their softmax and gradient: 3 vocab_size per token. Evaluation keeps one layer's
// activations and the logits. The estimate errs high by design; measured against the allocator's
// peak in docs/RELIABILITY.md.
#pragma once
#include <cstdint>
#include <string>

#include "eformer/models/config.h"

namespace eformer::train {

struct MemoryEstimate {
  int64_t parameters = 0;        // count
  int64_t parameter_bytes = 0;   // weights (and buffers)
  int64_t optimizer_bytes = 0;   // gradients and AdamW moments (0 for evaluation)
  int64_t activation_bytes = 0;  // kept for backward (training) or live in a forward (evaluation)
  int64_t total_bytes() const { return parameter_bytes + optimizer_bytes + activation_bytes; }
  // "1.2 GiB (parameters 12 MiB, gradients and AdamW 36 MiB, activations 1.1 GiB)"
  std::string describe() const;
};

// The estimate for batches of `batch_size` sequences of the model's max_len; `training` adds
// gradients, optimizer state and the activations backward keeps.
MemoryEstimate estimate_memory(const models::ModelConfig& config, int64_t batch_size, bool training);

// MemoryError when the estimate exceeds the memory available, naming both, the largest part and
// what to reduce; `what` starts the message ("train"), `override_hint` says how to skip the check.
// Nothing when the available memory is unknown.
void check_memory(const MemoryEstimate& estimate, const std::string& what, const std::string& override_hint);

// "512 MiB", "1.5 GiB".
std::string bytes_str(int64_t bytes);

}  // namespace eformer::train
