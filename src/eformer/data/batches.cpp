#include "eformer/data/batches.h"

#include <algorithm>

#include "eformer/core/parallel.h"
#include "eformer/core/rng.h"

namespace eformer::data {

TokenSource::TokenSource(const Corpus& corpus, Split split) {
  auto keep = std::make_shared<const Corpus>(corpus);  // shares the text, copies nothing
  bytes_ = keep->split_data(split);
  size_ = keep->split_size(split);
  record_length_ = keep->record_length();
  name_ = detail::concat("the ", split_name(split), " split of '", corpus.source(), "'");
  keep_alive_ = std::move(keep);
}

TokenSource::TokenSource(const Tensor& tokens) {
  EF_CHECK(tokens.defined() && tokens.dtype() == DType::Int64 && tokens.dim() == 1, ShapeError,
           "token source: expected a 1-D int64 tensor of token ids, got ",
           tokens.defined() ? tokens.describe() : std::string("an undefined tensor"));
  Tensor c = tokens.contiguous_data();
  ids_ = c.data<int64_t>();
  size_ = c.numel();
  name_ = detail::concat("the token tensor [", size_, "]");
  keep_alive_ = c.storage();
}

void TokenSource::copy(int64_t offset, int64_t length, int64_t* out) const {
  if (bytes_ != nullptr) {
    const uint8_t* src = bytes_ + offset;
    for (int64_t t = 0; t < length; ++t) out[t] = src[t];
  } else {
    std::copy(ids_ + offset, ids_ + offset + length, out);
  }
}

namespace {

void check_sizes(const char* who, int64_t batch_size, int64_t context) {
  EF_CHECK(batch_size >= 1, ValueError, who, ": batch_size must be >= 1, got ", batch_size);
  EF_CHECK(context >= 1, ValueError, who, ": context must be >= 1, got ", context);
}

}  // namespace

Batch gather_windows(const TokenSource& tokens, std::vector<int64_t> offsets, int64_t length) {
  const int64_t rows = int64_t(offsets.size());
  Batch b{Tensor::empty({rows, length}, DType::Int64), Tensor::empty({rows, length}, DType::Int64),
          std::move(offsets)};
  int64_t* in = b.inputs.data<int64_t>();
  int64_t* tg = b.targets.data<int64_t>();
  parallel::parallel_for(rows, std::max<int64_t>(1, 65536 / (length + 1)), [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> w(size_t(length + 1));
    for (int64_t r = r0; r < r1; ++r) {
      tokens.copy(b.offsets[size_t(r)], length + 1, w.data());
      std::copy(w.begin(), w.end() - 1, in + r * length);
      std::copy(w.begin() + 1, w.end(), tg + r * length);
    }
  });
  return b;
}

std::vector<int64_t> batch_offsets(int64_t split_size, int64_t batch_size, int64_t context, uint64_t seed,
                                   uint64_t step) {
  check_sizes("batch", batch_size, context);
  EF_CHECK(split_size >= context + 1, ValueError, "batch: the split has ", split_size,
           " tokens; a window of context ", context, " needs ", context + 1);
  const uint64_t starts = uint64_t(split_size - context);  // window starts 0 .. split_size - context - 1
  std::vector<int64_t> offsets(static_cast<size_t>(batch_size));
  for (int64_t i = 0; i < batch_size; ++i) {
    auto w = rng::philox(seed, kBatchStream + step, uint64_t(i / 2));
    size_t lo = size_t(2 * (i % 2));
    uint64_t x = uint64_t(w[lo]) | (uint64_t(w[lo + 1]) << 32);
    offsets[size_t(i)] = int64_t((unsigned __int128)x * starts >> 64);
  }
  return offsets;
}

namespace {
std::vector<int64_t> sample_batch_offsets(const TokenSource& tokens, int64_t batch_size, int64_t context,
                                          uint64_t seed, uint64_t step) {
  check_sizes("batch", batch_size, context);
  const int64_t R = tokens.record_length();
  if (R > 0) {
    EF_CHECK(context == R - 1, ValueError, "batch: ", tokens.name(), " holds records of ", R,
             " tokens; its windows need context ", R - 1, ", got ", context);
    // Record indices drawn as window starts of a split of (records + context) tokens.
    std::vector<int64_t> offsets = batch_offsets(tokens.size() / R + context, batch_size, context, seed, step);
    for (int64_t& o : offsets) o *= R;
    return offsets;
  }
  EF_CHECK(tokens.size() >= context + 1, ValueError, "batch: ", tokens.name(), " has ", tokens.size(),
           " tokens; a training window of context ", context, " needs ", context + 1);
  return batch_offsets(tokens.size(), batch_size, context, seed, step);
}
}  // namespace

Batch sample_batch(const TokenSource& tokens, int64_t batch_size, int64_t context, uint64_t seed,
                   uint64_t step) {
  return gather_windows(tokens, sample_batch_offsets(tokens, batch_size, context, seed, step), context);
}

Batch sample_batch_rows(const TokenSource& tokens, int64_t batch_size, int64_t context, uint64_t seed,
                        uint64_t step, int64_t first, int64_t count) {
  EF_CHECK(first >= 0 && count >= 1 && first + count <= batch_size, ValueError, "batch: rows [", first, ", ",
           first + count, ") are not inside a batch of ", batch_size);
  const std::vector<int64_t> all = sample_batch_offsets(tokens, batch_size, context, seed, step);
  return gather_windows(tokens, std::vector<int64_t>(all.begin() + first, all.begin() + first + count), context);
}

EvalWindows::EvalWindows(TokenSource tokens, int64_t context, int64_t batch_size)
    : tokens_(std::move(tokens)), context_(context), batch_size_(batch_size), stride_(context) {
  check_sizes("eval windows", batch_size, context);
  if (const int64_t R = tokens_.record_length(); R > 0) {
    EF_CHECK(context == R - 1, ValueError, "eval windows: ", tokens_.name(), " holds records of ", R,
             " tokens; its windows need context ", R - 1, ", got ", context);
    stride_ = R;
    num_full_ = tokens_.size() / R;
    last_length_ = 0;
    return;
  }
  EF_CHECK(tokens_.size() >= 2, ValueError, "eval windows: ", tokens_.name(), " has ", tokens_.size(),
           " tokens; evaluation needs at least 2 (one input, one target)");
  num_full_ = (tokens_.size() - 1) / context;
  last_length_ = (tokens_.size() - 1) % context;
}

int64_t EvalWindows::num_targets() const {
  return tokens_.record_length() > 0 ? num_full_ * context_ : tokens_.size() - 1;
}

int64_t EvalWindows::num_batches() const {
  return (num_full_ + batch_size_ - 1) / batch_size_ + (last_length_ > 0 ? 1 : 0);
}

Batch EvalWindows::batch(int64_t index) const {
  const int64_t full_batches = (num_full_ + batch_size_ - 1) / batch_size_;
  EF_CHECK(index >= 0 && index < num_batches(), IndexError, "eval windows: batch ", index,
           " is out of range [0, ", num_batches(), ")");
  if (index == full_batches) return gather_windows(tokens_, {num_full_ * context_}, last_length_);
  std::vector<int64_t> offsets;
  for (int64_t j = index * batch_size_; j < std::min(num_full_, (index + 1) * batch_size_); ++j)
    offsets.push_back(j * stride_);
  return gather_windows(tokens_, std::move(offsets), context_);
}

}  // namespace eformer::data
