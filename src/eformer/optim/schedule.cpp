#include "eformer/optim/schedule.h"

#include <cmath>
#include <numbers>

#include "eformer/core/error.h"

namespace eformer::optim {

double warmup_cosine(int64_t step, int64_t warmup_steps, int64_t total_steps, double lr, double min_lr) {
  EF_CHECK(step >= 0, ValueError, "warmup_cosine: step is ", step, "; expected >= 0");
  EF_CHECK(warmup_steps >= 0, ValueError, "warmup_cosine: warmup_steps is ", warmup_steps, "; expected >= 0");
  EF_CHECK(total_steps >= warmup_steps, ValueError, "warmup_cosine: total_steps (", total_steps,
           ") is less than warmup_steps (", warmup_steps, ")");
  EF_CHECK(std::isfinite(lr) && lr >= 0.0, ValueError, "warmup_cosine: lr is ", lr,
           "; expected a finite value >= 0");
  EF_CHECK(min_lr >= 0.0 && min_lr <= lr, ValueError, "warmup_cosine: min_lr is ", min_lr,
           "; expected 0 <= min_lr <= lr (", lr, ")");
  if (step < warmup_steps) return lr * double(step + 1) / double(warmup_steps);
  if (step >= total_steps) return min_lr;
  double progress = double(step - warmup_steps) / double(total_steps - warmup_steps);
  return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace eformer::optim
