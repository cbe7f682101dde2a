#include "eformer/attention/mechanisms/bucket_cache.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace eformer::attention {

float BucketCache::attend_then_append(int64_t slot_id, const float* q, const float* kn, const float* v, int64_t d,
                                      float scale, float* o) {
  Slot& slot = slots_[slot_id];
  const int64_t cached = int64_t(slot.kn.size()) / d;
  float lse = -std::numeric_limits<float>::infinity();
  std::fill(o, o + d, 0.0f);
  if (cached > 0) {
    std::vector<float> s(static_cast<size_t>(cached));
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < cached; ++j) {
      float dot = 0.0f;
      for (int64_t c = 0; c < d; ++c) dot += q[c] * slot.kn[size_t(j * d + c)];
      m = std::max(m, s[size_t(j)] = scale * dot);
    }
    float sum = 0.0f;
    for (float& x : s) sum += (x = std::exp(x - m));
    for (int64_t j = 0; j < cached; ++j)
      for (int64_t c = 0; c < d; ++c) o[c] += s[size_t(j)] / sum * slot.v[size_t(j * d + c)];
    lse = m + std::log(sum);
  }
  slot.kn.insert(slot.kn.end(), kn, kn + d);
  slot.v.insert(slot.v.end(), v, v + d);
  if (cached + 1 > capacity) {  // keep the last `capacity`
    slot.kn.erase(slot.kn.begin(), slot.kn.begin() + d);
    slot.v.erase(slot.v.begin(), slot.v.begin() + d);
  }
  return lse;
}

}  // namespace eformer::attention
