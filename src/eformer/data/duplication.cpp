#include "eformer/data/duplication.h"

#include "eformer/core/error.h"
#include "eformer/core/rng.h"

namespace eformer::data {

Batch duplication_batch(uint64_t seed, uint64_t index, int64_t batch, int64_t half, int64_t vocab) {
  EF_CHECK(batch >= 1 && batch <= (int64_t(1) << 20), ValueError, "duplication_batch: batch = ", batch,
           "; expected 1 .. 2^20");
  EF_CHECK(half >= 2 && half <= (int64_t(1) << 24), ValueError, "duplication_batch: half = ", half,
           "; expected 2 .. 2^24 (sequences are 2 half long)");
  EF_CHECK(vocab >= 2 && vocab <= (int64_t(1) << 31), ValueError, "duplication_batch: vocab = ", vocab,
           "; expected 2 .. 2^31 (symbols are 1 .. vocab - 1, 0 separates)");
  const int64_t length = 2 * half;
  Batch b;
  b.inputs = Tensor::empty({batch, length}, DType::Int64);
  b.targets = Tensor::empty({batch, length}, DType::Int64);
  int64_t *in = b.inputs.data<int64_t>(), *tg = b.targets.data<int64_t>();
  for (int64_t r = 0; r < batch; ++r) {
    int64_t* row = in + r * length;
    row[0] = row[half] = 0;
    for (int64_t j = 1; j < half; ++j) {
      const uint32_t x = rng::philox(seed, kDuplicationStream + index, uint64_t(r * length + j))[0];
      row[j] = row[half + j] = 1 + int64_t((uint64_t(x) * uint64_t(vocab - 1)) >> 32);
    }
    for (int64_t t = 0; t < length; ++t) tg[r * length + t] = t >= half && t + 1 < length ? row[t + 1] : -100;
    b.offsets.push_back(0);
  }
  return b;
}

}  // namespace eformer::data
