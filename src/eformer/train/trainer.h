// The training loop of a causal language model on a corpus:
//   for step = s, s+1, ...:  batch = data::sample_batch(corpus, Train, batch_size, max_len, seed, step)
//                            loss = model.loss(batch) -> backward -> clip_grad_norm(grad_clip)
//                            AdamW with lr = optim::warmup_cosine(step, warmup_steps, steps, lr, min_lr)
// with a "valid" estimate (bits per character over eval_batches batches of the valid split) every
// eval_every steps and at the end, a checkpoint every checkpoint_every steps and at the end, and
// one JSON object per line appended to the log (see below).
//
// Reproducibility: the model is initialised from rng::manual_seed(seed); dropout draws from the
// default generator; batches are a pure function of (seed, step). A checkpoint taken at a step
// boundary holds the weights, the AdamW state, the step and the generator's state, so a run resumed
// from it computes bit-identical losses to one that never stopped (on any thread count).
// Evaluation never moves the default generator.
//
// A model with a memory (ModelConfig::memory, Transformer-XL) trains on contiguous segments instead:
//   batch = data::segment_batch(train split, batch_size lanes, max_len, seed, step); the memory is
//   cleared when the batch starts a pass, then loss = model.loss(batch, memory), which also moves
//   the segment's hidden states into the memory for the next step. The memory is training state:
//   checkpoints hold it ("memory.<i>"), so a resumed run continues bit-identically. The "valid"
//   estimate reads the valid split in order with a memory (train::evaluate_with_memory, the first
//   eval_batches segments of each of batch_size lanes).
//
// Log lines (JSONL), each with "event" and "step" (optimizer steps completed):
//   {"event": "start" | "resume", "step", "model": {...}, "train": {...}, "parameters", "threads",
//    "world_size" (ranks under mpirun, else 1), "data"}
//   {"event": "train", "step", "loss", "loss_hex" (the float32 loss as C's %a, exact), "lr",
//    "grad_norm", "tokens", "elapsed_s", "tokens_per_s"; a compressive memory adds
//    "reconstruction_loss" when the step evicted memories: the attention-reconstruction loss,
//    which trains the compressors only (conv, dilated_conv; a measure only with max_pool, mean_pool,
//    most_used) and is not part of "loss"; under mpirun also "allreduce_s" and
//    "step_s": this step's wait for the gradient sums after its backward (what overlapping them with it did
//    not hide) and the whole step's time, on rank 0}
//   {"event": "valid", "step", "loss", "bits_per_char", "batches", "elapsed_s"}
//   {"event": "end", "step", "reason": "steps" | "time" | "interrupted" | "stopped", "elapsed_s",
//    "tokens_per_s", "bits_per_char"}
// On resume, lines of the old log past the checkpoint's step (written after it, before the stop)
// and any partial last line are dropped first, so the log reads as if the run had never stopped.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>

#include "eformer/data/corpus.h"
#include "eformer/models/language_model.h"
#include "eformer/optim/adamw.h"
#include "eformer/train/checkpoint.h"
#include "eformer/train/config.h"

namespace eformer::train {

struct TrainResult {
  int64_t steps = 0;  // steps completed (in total, not only by this run() call)
  double last_loss = std::numeric_limits<double>::quiet_NaN();
  double valid_bits_per_char = std::numeric_limits<double>::quiet_NaN();  // the last estimate
  double elapsed_s = 0.0;
  double tokens_per_s = 0.0;  // this call's training steps only (evaluation and checkpoints excluded)
  std::string reason;         // "steps", "time", "interrupted" or "stopped" (stop_at_step)
};

class Trainer {
 public:
  // A fresh run: rng::manual_seed(config.seed), a new model, AdamW. ValueError when the corpus is
  // too small for the model's context, or neither steps nor time_budget_s is set.
  Trainer(const models::ModelConfig& model_config, const TrainConfig& config, data::Corpus corpus);
  // Continues a checkpointed run: its model config, weights, optimizer state, step, generator state
  // and elapsed time. `config` is usually the checkpoint's own train config (its paths may change;
  // other changes, e.g. more steps, change the schedule and so the losses from there on).
  Trainer(const Checkpoint& checkpoint, const TrainConfig& config, data::Corpus corpus);

  // Trains until `steps` (or the time budget, or request_stop(), or stop_at_step > 0 steps
  // completed), then runs the final estimate and writes the checkpoint. A run stopped early
  // (reasons "time", "interrupted", "stopped") continues exactly from that checkpoint.
  TrainResult run(int64_t stop_at_step = 0);

  // Progress on `out` (the CLI passes stderr; nullptr, the default, is silent): one line refreshed
  // with '\r' when it is a terminal, else a plain line every few seconds and at each estimate.
  void set_progress(std::FILE* out) { progress_ = out; }
  // Asks the running run() to stop after the current step, or the next run() to stop before its
  // first (a request before run() is kept, so a signal at start-up still ends the run with a
  // checkpoint); run() clears it when it returns. Safe from a signal handler.
  static void request_stop() { stop_requested().store(true); }

  models::LanguageModel& model() { return *model_; }
  const std::shared_ptr<models::LanguageModel>& model_ptr() const { return model_; }
  optim::AdamW& optimizer() { return *optimizer_; }
  // The training memory (empty for a model without one).
  const models::SegmentMemory& memory() const { return memory_; }
  const TrainConfig& config() const { return config_; }
  int64_t step() const { return step_; }
  // A checkpoint of the current state (step boundary) at `path`.
  void save_checkpoint(const std::string& path) const;

 private:
  static std::atomic<bool>& stop_requested();
  void init_common();
  void open_log(bool resumed);
  void log(const nlohmann::json& line);
  double evaluate_valid();

  TrainConfig config_;
  data::Corpus corpus_;
  std::shared_ptr<models::LanguageModel> model_;
  std::unique_ptr<optim::AdamW> optimizer_;
  models::SegmentMemory memory_;
  int64_t step_ = 0;
  double elapsed_before_ = 0.0;  // training time of earlier runs (restored from a checkpoint)
  double run_start_ = 0.0;       // steady clock at the start of run()
  std::FILE* log_ = nullptr;
  std::FILE* progress_ = nullptr;
  bool resumed_ = false;

 public:
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
};

}  // namespace eformer::train
