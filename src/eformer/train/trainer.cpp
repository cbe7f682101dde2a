#include "eformer/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"
#include "eformer/core/parallel.h"
#include "eformer/core/rng.h"
#include "eformer/data/batches.h"
#include "eformer/data/segments.h"
#include "eformer/data/tokenizer.h"
#include "eformer/io/atomic_file.h"
#include "eformer/ops/elementwise.h"
#include "eformer/optim/clip.h"
#include "eformer/optim/schedule.h"
#include "eformer/train/distributed.h"
#include "eformer/train/evaluate.h"

namespace eformer::train {

namespace {

using nlohmann::json;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string hex_float(float x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", double(x));
  return buf;
}

std::string clock_str(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long s = long(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

// Steps timed to fix the run length of a time-budgeted run (after one untimed warm-up step).
constexpr int64_t kCalibrationSteps = 8;

// Rank r draws its step's randomness (dropout, redrawn features or rotations) from the default
// generator's stream + r * kRankStream, so ranks do not share masks; every rank reserves the same counts
// (the same shapes), so afterwards all go back to the shared stream in the same state.
constexpr uint64_t kRankStream = uint64_t(1) << 32;

// Gradients go over the network in buckets of at most this many floats (4 MiB), each started as soon as
// the backward has completed it (distributed.h GradientAverager).
constexpr int64_t kBucketFloats = int64_t(1) << 20;

// Every rank applies the same update to the same weights: checked bit for bit (a hash of every parameter
// against rank 0's) where a checkpoint is written, so a divergence is an error, never a silent drift.
void check_ranks_agree(const std::vector<Tensor>& params, const World& world, int64_t step) {
  if (!world.parallel()) return;
  int64_t hash = int64_t(1469598103934665603ull);  // FNV-1a over the parameters' bytes
  for (const Tensor& p : params) {
    const Tensor c = p.contiguous_data();
    const auto* bytes = static_cast<const unsigned char*>(c.raw_data());
    for (size_t i = 0, n = size_t(c.numel()) * sizeof(float); i < n; ++i)
      hash = int64_t((uint64_t(hash) ^ bytes[i]) * 1099511628211ull);
  }
  int64_t lead_hash = hash;
  world.broadcast(&lead_hash, 1);
  double differ = hash != lead_hash ? 1.0 : 0.0;
  world.sum(&differ, 1);
  EF_CHECK(differ == 0.0, Error, "distributed training: after step ", step, " the weights of ", differ, " of ",
           world.size(), " ranks differ from rank 0's (a nondeterministic reduction?)");
}

}  // namespace

std::atomic<bool>& Trainer::stop_requested() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace {
// The corpus is bytes: a model of another vocabulary would fail later (ids >= 256 in generation).
void check_byte_vocabulary(const models::ModelConfig& c) {
  EF_CHECK(c.vocab_size == data::ByteTokenizer::kVocabSize, ValueError, "train: the corpus is bytes, so vocab_size must be ",
           data::ByteTokenizer::kVocabSize, ", got ", c.vocab_size);
}
}  // namespace

Trainer::Trainer(const models::ModelConfig& model_config, const TrainConfig& config, data::Corpus corpus)
    : config_(config), corpus_(std::move(corpus)) {
  validate(config_);
  check_byte_vocabulary(model_config);
  corpus_.check_context(model_config.max_len);
  rng::manual_seed(config_.seed);
  model_ = std::make_shared<models::LanguageModel>(model_config);
  init_common();
}

Trainer::Trainer(const Checkpoint& checkpoint, const TrainConfig& config, data::Corpus corpus)
    : config_(config), corpus_(std::move(corpus)) {
  validate(config_);
  check_byte_vocabulary(checkpoint.model_config);
  corpus_.check_context(checkpoint.model_config.max_len);
  model_ = std::make_shared<models::LanguageModel>(checkpoint.model_config);
  restore_model(checkpoint, *model_);
  init_common();
  restore_optimizer(checkpoint, *optimizer_);
  memory_ = restore_memory(checkpoint, *model_, config_.batch_size);
  step_ = checkpoint.info.step;
  elapsed_before_ = checkpoint.info.elapsed_s;
  rng::default_generator().set_state(checkpoint.info.rng);
  resumed_ = true;
}

Trainer::~Trainer() {
  if (log_) std::fclose(log_);
}

void Trainer::init_common() {
  EF_CHECK(config_.steps > 0 || config_.time_budget_s > 0, ValueError,
           "train: set the run length: 'steps' (> 0) or 'time_budget_s' (> 0)");
  const int ranks = World::get().size();
  EF_CHECK(config_.batch_size % ranks == 0, ValueError, "train: batch_size ", config_.batch_size,
           " does not split evenly over ", ranks, " ranks; use a multiple of the number of ranks");
  EF_CHECK(ranks == 1 || !model_->has_memory(), ValueError, "train: a model with a memory across segments ('",
           model_->config().memory.kind, "') trains in one process only for now (its memories are per batch "
           "lane, and the lanes would be split over the ranks); run it without mpirun");
  model_->train();
  optim::AdamWOptions o;
  o.lr = config_.lr;
  o.beta1 = config_.beta1;
  o.beta2 = config_.beta2;
  o.weight_decay = config_.weight_decay;
  optimizer_ = std::make_unique<optim::AdamW>(model_->parameters(), o);
  if (model_->has_memory()) {
    memory_ = model_->start_memory();
    const int64_t n = corpus_.split_size(data::Split::Train), N = model_->config().max_len;
    EF_CHECK(n - 1 >= config_.batch_size * N, ValueError, "train: the train split has ", n, " tokens; ",
             config_.batch_size, " lanes of segments of ", N, " (batch_size x max_len) need at least ",
             config_.batch_size * N + 1);
  }
}

void Trainer::save_checkpoint(const std::string& path) const {
  CheckpointInfo info;
  info.train_config = to_json(config_);
  info.step = step_;
  info.rng = rng::default_generator().state();
  info.elapsed_s = elapsed_before_ + (run_start_ > 0 ? now_s() - run_start_ : 0.0);
  train::save_checkpoint(path, *model_, optimizer_.get(), info, model_->has_memory() ? &memory_ : nullptr);
}

void Trainer::open_log(bool resumed) {
  if (config_.log_path.empty()) return;
  namespace fs = std::filesystem;
  fs::path parent = fs::path(config_.log_path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  if (resumed && fs::exists(config_.log_path)) {
    // Keep the lines up to the checkpoint's step; drop later ones and a partial last line.
    std::istringstream in(io::read_file(config_.log_path));
    std::string kept;
    for (std::string line; std::getline(in, line);) {
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) continue;
      if (j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step_) continue;
      kept += line + "\n";
    }
    io::write_file_atomic(config_.log_path, kept);
  }
  log_ = std::fopen(config_.log_path.c_str(), resumed ? "a" : "w");
  EF_CHECK(log_, IOError, "train: cannot open the log '", config_.log_path, "' for writing");
}

void Trainer::log(const json& line) {
  if (!log_) return;
  std::string s = line.dump() + "\n";
  EF_CHECK(std::fwrite(s.data(), 1, s.size(), log_) == s.size() && std::fflush(log_) == 0, IOError,
           "train: cannot write the log '", config_.log_path, "'");
}

double Trainer::evaluate_valid() {
  data::TokenSource valid(corpus_, data::Split::Valid);
  EvalResult r = model_->has_memory()
                     ? evaluate_with_memory(*model_, valid, 0, config_.batch_size, config_.eval_batches)
                     : evaluate(*model_, valid, model_->config().max_len, config_.batch_size, config_.eval_batches);
  double elapsed = elapsed_before_ + now_s() - run_start_;
  log({{"event", "valid"},
       {"step", step_},
       {"loss", r.loss},
       {"bits_per_char", r.bits_per_char},
       {"batches", r.batches},
       {"elapsed_s", elapsed}});
  return r.bits_per_char;
}

TrainResult Trainer::run(int64_t stop_at_step) {
  // Data parallelism (distributed.h): this rank's rows of each global batch; rank 0 alone logs,
  // reports progress, estimates and writes checkpoints.
  const World& world = World::get();
  const bool lead = world.rank() == 0;
  if (!lead) progress_ = nullptr;
  run_start_ = now_s();
  if (lead) open_log(resumed_);
  const int64_t B = config_.batch_size, context = model_->config().max_len;
  const int64_t rows = B / world.size(), first_row = rows * world.rank();
  std::unique_ptr<GradientAverager> averager;
  const bool tty = progress_ && isatty(fileno(progress_));
  const std::vector<Tensor> params = model_->parameters();
  // Clipping groups: the Compressive Transformer's compressors learn only from the reconstruction loss,
  // whose gradients are 10x the model's, so they are clipped on their own (the paper trains them with
  // a separate optimizer); one global norm would shrink the model's steps with them.
  std::vector<Tensor> model_params, compressor_params;
  for (const auto& [name, p] : model_->named_parameters())
    (name.rfind("compressors.", 0) == 0 ? compressor_params : model_params).push_back(p);
  if (world.parallel()) averager = std::make_unique<GradientAverager>(params, world, kBucketFloats);
  data::TokenSource train_tokens(corpus_, data::Split::Train);
  log({{"event", resumed_ ? "resume" : "start"},
       {"step", step_},
       {"model", models::to_json(model_->config())},
       {"train", to_json(config_)},
       {"parameters", model_->num_parameters()},
       {"threads", parallel::num_threads()},
       {"world_size", world.size()},
       {"data", corpus_.source()}});

  TrainResult result;
  int64_t total = config_.steps > 0 ? config_.steps : std::numeric_limits<int64_t>::max() / 2;
  bool calibrated = config_.steps > 0;
  const int64_t first_step = step_;
  double train_time = 0.0;  // this call's time in training steps
  double eval_time = -1.0;  // the last estimate's duration; < 0 until one ran
  double calib_start = 0.0;
  double last_print = -1e9;
  std::string last_line;
  auto elapsed = [&] { return elapsed_before_ + now_s() - run_start_; };
  auto tokens_per_s = [&] { return train_time > 0 ? double((step_ - first_step) * B * context) / train_time : 0.0; };
  auto print_progress = [&](bool force_line) {
    if (!progress_) return;
    double tps = tokens_per_s();
    double eta = std::numeric_limits<double>::quiet_NaN();
    if (config_.time_budget_s > 0) eta = std::max(0.0, config_.time_budget_s - elapsed());
    if (calibrated && step_ > first_step) {
      double per_step = (now_s() - run_start_) / double(step_ - first_step);
      double by_steps = per_step * double(total - step_);
      eta = std::isnan(eta) ? by_steps : std::min(eta, by_steps);
    }
    char buf[256];
    std::string total_s = calibrated ? std::to_string(total) : std::string("?");
    std::string valid = std::isnan(result.valid_bits_per_char)
                            ? std::string("")
                            : "  valid " + std::to_string(result.valid_bits_per_char).substr(0, 5) + " bits/" +
                                  corpus_.unit();
    std::string ranks = world.parallel() ? "  " + std::to_string(world.size()) + " ranks" : std::string();
    std::snprintf(buf, sizeof buf, "step %lld/%s  loss %.4f (%.3f bits/%s)%s  %.0f tok/s%s  elapsed %s  ETA %s",
                  (long long)step_, total_s.c_str(), result.last_loss, result.last_loss / std::log(2.0),
                  corpus_.unit().c_str(), valid.c_str(), tps, ranks.c_str(), clock_str(elapsed()).c_str(),
                  clock_str(eta).c_str());
    std::string line = buf;
    if (tty) {
      std::string pad(last_line.size() > line.size() ? last_line.size() - line.size() : 0, ' ');
      std::fprintf(progress_, "\r%s%s", line.c_str(), pad.c_str());
      if (force_line) std::fprintf(progress_, "\n");
      last_line = force_line ? std::string() : line;
    } else if (force_line || now_s() - last_print >= 5.0) {
      std::fprintf(progress_, "%s\n", line.c_str());
      last_print = now_s();
    }
    std::fflush(progress_);
  };

  std::string reason = "steps";
  while (step_ < total) {
    if (stop_at_step > 0 && step_ >= stop_at_step) {
      reason = "stopped";
      break;
    }
    // [a stop was requested on some rank, rank 0's clock says the budget is spent]: the ranks agree.
    double stop[2] = {stop_requested().load() ? 1.0 : 0.0, 0.0};
    if (lead && config_.time_budget_s > 0 && step_ > first_step) {
      // Stop when the next step, the final estimate and the checkpoint would not fit.
      double per_step = train_time / double(step_ - first_step);
      double final_cost = (eval_time >= 0 ? eval_time : 0.0) + 0.5;
      stop[1] = elapsed() + per_step + final_cost > config_.time_budget_s ? 1.0 : 0.0;
    }
    world.sum(stop, 2);
    if (stop[0] > 0) {
      reason = "interrupted";
      break;
    }
    if (stop[1] > 0) {
      reason = "time";
      break;
    }
    const double t0 = now_s();
    // A run shorter than its warmup warms up over the whole run.
    const double lr =
        optim::warmup_cosine(step_, std::min(config_.warmup_steps, total), total, config_.lr, config_.min_lr);
    model_->set_step(step_);  // step-dependent state, e.g. Performer feature redraws
    const rng::Generator::State shared = rng::default_generator().state();
    if (world.parallel())
      rng::default_generator().set_state({shared.seed, shared.stream + kRankStream * uint64_t(world.rank()),
                                          shared.counter});
    Tensor loss, reconstruction;  // reconstruction: the Compressive Transformer's (undefined otherwise)
    if (model_->has_memory()) {   // one rank only (init_common)
      data::SegmentBatch segment = data::segment_batch(train_tokens, B, context, config_.seed, uint64_t(step_));
      if (segment.starts_pass) memory_.clear();
      loss = model_->loss(segment.batch.inputs, segment.batch.targets, memory_);
      reconstruction = memory_.reconstruction;
      memory_.reconstruction = Tensor();  // the graph goes with this step
    } else {
      data::Batch batch =
          data::sample_batch_rows(train_tokens, B, context, config_.seed, uint64_t(step_), first_row, rows);
      loss = model_->loss(batch.inputs, batch.targets);
    }
    // The global batch's mean loss: the mean of the ranks' means (equal numbers of tokens).
    double mean_loss = double(loss.item());
    world.sum(&mean_loss, 1);
    const float loss_value = world.parallel() ? float(mean_loss / world.size()) : loss.item();
    if (!std::isfinite(loss_value))
      throw ValueError("train: the loss is " + std::to_string(loss_value) + " at step " + std::to_string(step_) +
                       " (lr " + std::to_string(lr) + "); lower lr or raise warmup_steps");
    const double reconstruction_value = reconstruction.defined() ? double(reconstruction.item()) : -1.0;
    optimizer_->zero_grad();
    // Only the compressors depend on the reconstruction loss (its other inputs are stop-gradient).
    Tensor objective = reconstruction.defined() ? add(loss, reconstruction) : loss;
    autograd::backward({objective}, {}, false, averager ? averager->hook() : autograd::LeafReady());
    loss = reconstruction = objective = Tensor();
    double allreduce_s = 0.0;  // this step's wait for the gradient sums after its backward
    if (averager) {
      allreduce_s = averager->finish();
      rng::default_generator().set_state({shared.seed, shared.stream, rng::default_generator().state().counter});
    }
    auto clip = [&](const std::vector<Tensor>& group) {
      return config_.grad_clip > 0 ? double(optim::clip_grad_norm(group, config_.grad_clip))
                                   : double(optim::grad_norm(group));
    };
    const double norm = clip(model_params);
    const double compressor_norm = compressor_params.empty() ? -1.0 : clip(compressor_params);
    optimizer_->set_lr(lr);
    optimizer_->step();
    optimizer_->zero_grad();
    ++step_;
    train_time += now_s() - t0;
    result.last_loss = loss_value;

    // A time-budgeted run fixes its length once the first steps are timed (during warmup, whose lr
    // does not depend on the length); the length goes into checkpoints.
    if (!calibrated) {
      if (step_ == first_step + 1) calib_start = now_s();
      if (step_ == first_step + 1 + kCalibrationSteps) {
        double per_step = (now_s() - calib_start) / double(kCalibrationSteps);
        // Estimates cost about a third of a step per batch (forward only).
        double n_batches = config_.eval_batches > 0 ? double(config_.eval_batches) : 50.0;
        double per_eval = n_batches * per_step / 3.0;
        double per_step_all = per_step + (config_.eval_every > 0 ? per_eval / double(config_.eval_every) : 0.0);
        double left = config_.time_budget_s - elapsed() - per_eval - 1.0;
        total = step_ + std::max<int64_t>(1, int64_t(0.98 * left / per_step_all));
        world.broadcast(&total, 1);  // rank 0's clock fixes the length for every rank
        config_.steps = total;
        calibrated = true;
      }
    }

    const bool last = step_ == total;
    if (step_ % config_.log_every == 0 || step_ == first_step + 1 || last) {
      json line = {{"event", "train"},
                   {"step", step_},
                   {"loss", double(loss_value)},
                   {"loss_hex", hex_float(loss_value)},
                   {"lr", lr},
                   {"grad_norm", norm},
                   {"tokens", step_ * B * context},
                   {"elapsed_s", elapsed()},
                   {"tokens_per_s", tokens_per_s()}};
      if (world.parallel()) line["allreduce_s"] = allreduce_s, line["step_s"] = now_s() - t0;
      if (reconstruction_value >= 0) line["reconstruction_loss"] = reconstruction_value;
      if (compressor_norm >= 0) line["compressor_grad_norm"] = compressor_norm;
      log(line);
    }
    bool evaluated = false;
    if (lead && config_.eval_every > 0 && step_ % config_.eval_every == 0 && !last) {
      double e0 = now_s();
      result.valid_bits_per_char = evaluate_valid();
      eval_time = now_s() - e0;
      evaluated = true;
    }
    if (config_.checkpoint_every > 0 && step_ % config_.checkpoint_every == 0 && !last &&
        !config_.checkpoint_path.empty()) {
      check_ranks_agree(params, world, step_);
      if (lead) save_checkpoint(config_.checkpoint_path);
    }
    print_progress(evaluated);
  }
  if (stop_requested().load() && reason == "steps" && step_ < total) reason = "interrupted";

  // The final estimate and checkpoint (also after an interruption: it is a step boundary).
  if (lead && (step_ > first_step || !resumed_)) result.valid_bits_per_char = evaluate_valid();
  check_ranks_agree(params, world, step_);
  if (lead && !config_.checkpoint_path.empty()) save_checkpoint(config_.checkpoint_path);
  result.steps = step_;
  result.elapsed_s = elapsed();
  result.tokens_per_s = tokens_per_s();
  result.reason = reason;
  log({{"event", "end"},
       {"step", step_},
       {"reason", reason},
       {"elapsed_s", result.elapsed_s},
       {"tokens_per_s", result.tokens_per_s},
       {"bits_per_char", result.valid_bits_per_char}});
  print_progress(true);
  stop_requested().store(false);  // this run answered the request; the next one starts afresh
  if (log_) {
    std::fclose(log_);
    log_ = nullptr;
  }
  return result;
}

}  // namespace eformer::train
