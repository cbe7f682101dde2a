// Evaluation of a language model on a split: bits per character (per byte token), the mean
// next-token cross-entropy in nats divided by ln 2, over data::EvalWindows (non-overlapping
// windows of `context` tokens; every token but the first is a target exactly once).
#pragma once
#include <cstdint>

#include "eformer/data/batches.h"
#include "eformer/models/language_model.h"

namespace eformer::train {

struct EvalResult {
  double loss = 0.0;           // mean cross-entropy per target, nats
  double bits_per_char = 0.0;  // loss / ln 2
  int64_t targets = 0;         // targets scored
  int64_t batches = 0;         // batches run
  int64_t total_batches = 0;   // batches of the whole split
};

// Runs the model in eval mode without gradients (its training mode and the default generator are
// restored afterwards). context <= 0: the model's max_len. max_batches > 0 scores only that many
// batches, spread evenly over the split (batch i * total / max_batches), a fast estimate; 0 scores
// the whole split exactly.
EvalResult evaluate(models::LanguageModel& model, const data::TokenSource& tokens, int64_t context = 0,
                    int64_t batch_size = 16, int64_t max_batches = 0);

}  // namespace eformer::train
