#include "eformer/train/evaluate.h"

#include <cmath>

#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/rng.h"
#include "eformer/ops/loss.h"
#include "eformer/ops/shape.h"

namespace eformer::train {

EvalResult evaluate(models::LanguageModel& model, const data::TokenSource& tokens, int64_t context,
                    int64_t batch_size, int64_t max_batches) {
  const int64_t max_len = model.config().max_len;
  if (context <= 0) context = max_len;
  EF_CHECK(context <= max_len, ValueError, "evaluate: context ", context, " exceeds the model's max_len ", max_len);
  EF_CHECK(max_batches >= 0, ValueError, "evaluate: max_batches must be >= 0 (0: all), got ", max_batches);
  data::EvalWindows windows(tokens, context, batch_size);
  const int64_t total = windows.num_batches();
  const int64_t n = (max_batches > 0 && max_batches < total) ? max_batches : total;

  const bool was_training = model.is_training();
  const rng::Generator::State rng_state = rng::default_generator().state();
  model.eval();
  autograd::NoGradGuard no_grad;
  double sum = 0.0;
  int64_t targets = 0;
  try {
    for (int64_t i = 0; i < n; ++i) {
      int64_t index = n == total ? i : i * total / n;
      data::Batch b = windows.batch(index);
      sum += double(model.loss(b.inputs, b.targets, Reduction::Sum).item());
      targets += b.targets.numel();
    }
  } catch (...) {
    model.train(was_training);
    rng::default_generator().set_state(rng_state);
    throw;
  }
  model.train(was_training);
  rng::default_generator().set_state(rng_state);
  EvalResult r;
  r.targets = targets;
  r.batches = n;
  r.total_batches = total;
  r.loss = targets > 0 ? sum / double(targets) : 0.0;
  r.bits_per_char = r.loss / std::log(2.0);
  return r;
}

}  // namespace eformer::train
