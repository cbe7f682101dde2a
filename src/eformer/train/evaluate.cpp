#include "eformer/train/evaluate.h"

#include <algorithm>
#include <cmath>

#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/rng.h"
#include "eformer/data/segments.h"
#include "eformer/ops/loss.h"
#include "eformer/ops/shape.h"

namespace eformer::train {

namespace {
// Runs `score` (sum of losses, targets) with the model in eval mode, no gradients, and restores the
// training mode and the default generator afterwards, also when it throws.
template <class F>
EvalResult scored(models::LanguageModel& model, int64_t batches, int64_t total, F&& score) {
  const bool was_training = model.is_training();
  const rng::Generator::State rng_state = rng::default_generator().state();
  model.eval();
  autograd::NoGradGuard no_grad;
  double sum = 0.0;
  int64_t targets = 0;
  try {
    score(sum, targets);
  } catch (...) {
    model.train(was_training);
    rng::default_generator().set_state(rng_state);
    throw;
  }
  model.train(was_training);
  rng::default_generator().set_state(rng_state);
  EvalResult r;
  r.targets = targets;
  r.batches = batches;
  r.total_batches = total;
  r.loss = targets > 0 ? sum / double(targets) : 0.0;
  r.bits_per_char = r.loss / std::log(2.0);
  return r;
}
}  // namespace

EvalResult evaluate(models::LanguageModel& model, const data::TokenSource& tokens, int64_t context,
                    int64_t batch_size, int64_t max_batches) {
  const int64_t max_len = model.config().max_len;
  if (context <= 0) context = max_len;
  EF_CHECK(context <= max_len, ValueError, "evaluate: context ", context, " exceeds the model's max_len ", max_len);
  EF_CHECK(max_batches >= 0, ValueError, "evaluate: max_batches must be >= 0 (0: all), got ", max_batches);
  data::EvalWindows windows(tokens, context, batch_size);
  const int64_t total = windows.num_batches();
  const int64_t n = (max_batches > 0 && max_batches < total) ? max_batches : total;
  return scored(model, n, total, [&](double& sum, int64_t& targets) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t index = n == total ? i : i * total / n;
      data::Batch b = windows.batch(index);
      sum += double(model.loss(b.inputs, b.targets, Reduction::Sum).item());
      targets += b.targets.numel();
    }
  });
}

EvalResult evaluate_with_memory(models::LanguageModel& model, const data::TokenSource& tokens, int64_t segment,
                                int64_t lanes, int64_t max_segments, int64_t mem_len) {
  const int64_t max_len = model.config().max_len;
  if (segment <= 0) segment = max_len;
  EF_CHECK(segment <= max_len, ValueError, "evaluate: segment ", segment, " exceeds the model's max_len ", max_len);
  EF_CHECK(max_segments >= 0, ValueError, "evaluate: max_segments must be >= 0 (0: all), got ", max_segments);
  models::SegmentMemory memory = model.start_memory(std::max<int64_t>(mem_len, 0));
  data::LaneSegments segments(tokens, segment, lanes);
  const int64_t total = segments.num_segments();
  const int64_t n = (max_segments > 0 && max_segments < total) ? max_segments : total;
  return scored(model, n, total, [&](double& sum, int64_t& targets) {
    for (int64_t i = 0; i < n; ++i) {
      data::Batch b = segments.segment(i);
      sum += double(model.loss(b.inputs, b.targets, memory, Reduction::Sum).item());
      targets += b.targets.numel();
    }
  });
}

}  // namespace eformer::train