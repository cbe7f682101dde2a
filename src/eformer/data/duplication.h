// The Reformer's duplication task (Kitaev et al. 2020, sec. 5, Table 2): each sequence is 0 w 0 w,
// w a string of half - 1 symbols drawn uniformly from 1 .. vocab - 1. A causal model predicts each
// next token; only the second copy of w is scored (the first is random: nothing can predict it),
// so a model that solves the task has learnt to attend from position half + i to position i + 1,
// exactly the long-range lookup that LSH must find by hashing.
//
// Batch `index` is a pure function of (seed, index) through Philox (symbol j of row r uses
// rng::philox(seed, kDuplicationStream + index, r * length + j) word 0), so every run and every
// evaluation sees the same sequences whatever the thread count.
#pragma once
#include <cstdint>

#include "eformer/data/batches.h"

namespace eformer::data {

inline constexpr uint64_t kDuplicationStream = uint64_t(0xD0B1) << 48;

// inputs [batch, 2 half] = 0 w 0 w; targets[t] = inputs[t + 1] for t in [half, 2 half - 2] (the second
// w), -100 elsewhere. half >= 2, 2 <= vocab <= 2^31 and batch >= 1 (ValueError otherwise).
Batch duplication_batch(uint64_t seed, uint64_t index, int64_t batch, int64_t half, int64_t vocab = 128);

}  // namespace eformer::data
