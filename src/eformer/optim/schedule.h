// Learning-rate schedules: functions of the step (counted from 0, the step about to be taken).
#pragma once
#include <cstdint>

namespace eformer::optim {

// Linear warmup, then cosine decay from lr to min_lr:
//   step < warmup_steps:                 lr * (step + 1) / warmup_steps
//   warmup_steps <= step < total_steps:  min_lr + (lr - min_lr) * (1 + cos(pi * (step - warmup_steps)
//                                                                   / (total_steps - warmup_steps))) / 2
//   step >= total_steps:                 min_lr
// So lr(0) = lr / warmup_steps, the last warmup step and the first decay step both give lr, and
// the decay would reach min_lr at step total_steps. ValueError on step < 0, warmup_steps < 0,
// total_steps < warmup_steps, lr < 0 or min_lr outside [0, lr].
double warmup_cosine(int64_t step, int64_t warmup_steps, int64_t total_steps, double lr, double min_lr = 0.0);

}  // namespace eformer::optim
