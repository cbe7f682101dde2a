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

// A model with a memory (Transformer-XL): data::LaneSegments of `segment` tokens (<= 0: max_len) over
// `lanes` lanes, in order, the memory carried from segment to segment with mem_len states per layer
// (<= 0: the config's; longer than in training is allowed: relative positions extend). max_segments
// > 0 scores only the first that many segments of every lane (a prefix, so the memory stays
// contiguous); 0 scores every lane target. Eval mode, no gradients, generator restored as above.
// `batches` and `total_batches` count segments.
EvalResult evaluate_with_memory(models::LanguageModel& model, const data::TokenSource& tokens, int64_t segment = 0,
                                int64_t lanes = 16, int64_t max_segments = 0, int64_t mem_len = 0);

}  // namespace eformer::train
