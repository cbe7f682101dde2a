// Checkpoints: one safetensors file (written atomically) holding everything a run needs to continue
// exactly where it stopped:
//   tensors       "model.<name>"  the model's state_dict (parameters and buffers)
//                 "optim.<name>"  the optimizer's state_tensors ("optim.step", "optim.0.exp_avg", ...)
//                 "memory.<i>"    a model with a memory: layer i's training memory [B, m, D] (the
//                                 models::SegmentMemory the next segment attends to; absent when empty)
//                 "memory.compressed.<i>"  a compressive memory: layer i's compressed memory [B, c, D]
//   __metadata__  "format"          "eformer-checkpoint"
//                 "format_version"  "1"
//                 "eformer_version" the writer's version (informational)
//                 "model_config"    JSON (models::to_json)
//                 "train_config"    JSON (train::to_json; "steps" is the resolved run length)
//                 "step"            optimizer steps completed; the next batch is sample_batch(..., step)
//                 "rng"             JSON {"seed", "stream", "counter"}: the default generator at that
//                                   step boundary (dropout draws of the next step start there)
//                 "elapsed_s"       training wall time so far (for time budgets and tokens/s)
//                 "checksums"       JSON {"<tensor name>": "<16 hex digits>"}: io::checksum64 of each
//                                   tensor's bytes, verified on read (absent in files from before;
//                                   those load with a note on stderr)
// Batches are a pure function of (seed, step), so the step is the whole data position.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eformer/core/rng.h"
#include "eformer/models/language_model.h"
#include "eformer/nn/module.h"
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
  std::map<std::string, Tensor> memory_state;     // without the "memory." prefix; may be empty
};

// Writes model (and optimizer state when `optimizer` is not null) atomically to `path`.
// `memory` (may be null or empty): the training memory of a model with one.
void save_checkpoint(const std::string& path, const models::LanguageModel& model,
                     const optim::Optimizer* optimizer, const CheckpointInfo& info,
                     const models::SegmentMemory* memory = nullptr);
// The checkpoint's training memory for `model` (mem_len from its config): empty when it holds none;
// ShapeError naming the checkpoint when its layers or sizes do not fit the model.
models::SegmentMemory restore_memory(const Checkpoint& checkpoint, const models::LanguageModel& model,
                                     int64_t batch_size);

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

// Weight transfer: a checkpoint's weights in a model of another (compatible) config, e.g. a trained
// softmax Transformer run with Performer attention (Performer paper, sec. 4: a pretrained Transformer
// is converted and fine-tuned). The rule:
//   - every parameter of the new model is in the checkpoint with the same shape and dtype;
//   - every tensor of the checkpoint is a parameter or buffer of the new model (an architecture
//     change that drops weights is not a transfer);
//   - a buffer of the new model that the checkpoint lacks (e.g. Performer's random features
//     "omega", "omega_draw") keeps its freshly initialised value; a buffer it has is loaded (same
//     shape and dtype).
// Anything else is an error naming the checkpoint and the tensors (ValueError for names, ShapeError
// for shapes) and changes nothing.
struct TransferredModel {
  std::shared_ptr<models::LanguageModel> model;  // in eval mode, like load_model's
  std::vector<std::string> fresh_buffers;        // buffers left at their initial values, in model order
};
// A model built from `config` (its fresh values drawn from the default generator) with the
// checkpoint's weights. With config == checkpoint.model_config this equals load_model.
TransferredModel transfer_model(const Checkpoint& checkpoint, const models::ModelConfig& config);
// The rule above, in place into any module (the optimizer's handles see the new values); returns
// the fresh buffers. `source` names the checkpoint in messages.
std::vector<std::string> transfer_state(const std::map<std::string, Tensor>& state, nn::Module& model,
                                        const std::string& source);
// "init: kept fresh buffers: a, b, c" (one line, no newline); "" when there are none.
std::string fresh_buffers_notice(const std::vector<std::string>& fresh_buffers);

// Restores the optimizer state; IOError when the checkpoint has none, errors naming the checkpoint
// when it does not fit the optimizer's parameters.
void restore_optimizer(const Checkpoint& checkpoint, optim::Optimizer& optimizer);

}  // namespace eformer::train
