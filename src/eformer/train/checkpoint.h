// Checkpoints: one safetensors file (written atomically) holding everything a run needs to continue
// exactly where it stopped:
//   tensors       "model.<name>"  the model's state_dict (parameters and buffers)
//                 "optim.<name>"  the optimizer's state_tensors ("optim.step", "optim.0.exp_avg", ...)
//   __metadata__  "format"          "eformer-checkpoint"
//                 "format_version"  "1"
//                 "eformer_version" the writer's version (informational)
//                 "model_config"    JSON (models::to_json)
//                 "train_config"    JSON (train::to_json; "steps" is the resolved run length)
//                 "step"            optimizer steps completed; the next batch is sample_batch(..., step)
//                 "rng"             JSON {"seed", "stream", "counter"}: the default generator at that
//                                   step boundary (dropout draws of the next step start there)
//                 "elapsed_s"       training wall time so far (for time budgets and tokens/s)
// Batches are a pure function of (seed, step), so the step is the whole data position.
#pragma once
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "eformer/core/rng.h"
#include "eformer/models/language_model.h"
#include "eformer/optim/optimizer.h"

namespace eformer::train {

inline constexpr const char* kCheckpointFormat = "eformer-checkpoint";
inline constexpr int kCheckpointVersion = 1;

struct CheckpointInfo {
  nlohmann::json train_config = nlohmann::json::object();
  int64_t step = 0;
  rng::Generator::State rng;
  double elapsed_s = 0.0;
};

struct Checkpoint {
  std::string source;  // the path, for messages
  models::ModelConfig model_config;
  CheckpointInfo info;
  std::map<std::string, Tensor> model_state;      // without the "model." prefix
  std::map<std::string, Tensor> optimizer_state;  // without the "optim." prefix; may be empty
};

// Writes model (and optimizer state when `optimizer` is not null) atomically to `path`.
void save_checkpoint(const std::string& path, const models::LanguageModel& model,
                     const optim::Optimizer* optimizer, const CheckpointInfo& info);

// Reads and validates a checkpoint's format, version, metadata and tensor names; IOError naming the
// file for anything that is not a readable eformer checkpoint (truncated, plain safetensors, newer
// version), ValueError for an invalid model config inside.
Checkpoint read_checkpoint(const std::string& path);

// A model built from the checkpoint's config with its weights (strict: a missing or unexpected
// tensor, or a wrong shape, is an error naming the checkpoint and the tensor).
std::shared_ptr<models::LanguageModel> load_model(const Checkpoint& checkpoint);
inline std::shared_ptr<models::LanguageModel> load_model(const std::string& path) {
  return load_model(read_checkpoint(path));
}
// Copies the checkpoint's weights into `model` (same checks as load_model).
void restore_model(const Checkpoint& checkpoint, models::LanguageModel& model);
// Restores the optimizer state; IOError when the checkpoint has none, errors naming the checkpoint
// when it does not fit the optimizer's parameters.
void restore_optimizer(const Checkpoint& checkpoint, optim::Optimizer& optimizer);

}  // namespace eformer::train
