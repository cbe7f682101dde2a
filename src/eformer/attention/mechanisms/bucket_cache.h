// The streaming state of causal attention over sorted buckets (lsh, routing; kernels/lsh.h): per slot
// (sequence, head, round, bucket) the last <= capacity normalized keys and values. A new token attends
// the cached keys of its slot (its own key left out, as in the parallel pass) and is then appended:
// O(capacity d) per token and round whatever the context length.
#pragma once
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "eformer/attention/mechanism.h"

namespace eformer::attention {

struct BucketCache : RecurrentState {
  explicit BucketCache(int64_t capacity) : capacity(capacity) {}
  // o [d] = softmax(scale q . k^_j) over the slot's cached keys, returning its log-sum-exp (-inf and
  // o = 0 when the slot held nothing yet); then (kn, v) [d] join the slot, the oldest leaving beyond
  // capacity.
  float attend_then_append(int64_t slot, const float* q, const float* kn, const float* v, int64_t d, float scale,
                           float* o);
  int64_t length() const override { return tokens; }

  int64_t capacity;
  int64_t tokens = 0;

 private:
  struct Slot {
    std::vector<float> kn, v;  // [count, d] each, oldest first
  };
  std::unordered_map<int64_t, Slot> slots_;
};

}  // namespace eformer::attention
