// Training configuration and run files (presets/*.json, --config), parsed strictly: unknown keys,
// wrong types and invalid values are ValueErrors naming the key, the value and what is valid.
//
// A run file is {"model": {...}, "train": {...}}: "model" is a models::ModelConfig (config.h of
// models), "train" a TrainConfig below; either may be left out (defaults). Overrides
// ("key=value", the CLI's --set) address a key as "model.<key>" or "train.<key>", or by its bare
// name when only one section has it ("lr", "d_model"); nested keys are dotted
// ("model.attention.kind=full"). The value is JSON when it parses as JSON, else a string.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "eformer/models/config.h"

namespace eformer::train {

struct TrainConfig {
  // Length of the run. steps > 0: that many optimizer steps (the cosine schedule spans them).
  // time_budget_s > 0 with steps == 0: the trainer times its first steps and fixes `steps` to what
  // fits the budget (recorded in checkpoints, so a resumed run keeps the same schedule), and stops
  // early if the budget runs out anyway. Both set: whichever comes first.
  int64_t steps = 0;
  double time_budget_s = 0.0;
  int64_t batch_size = 16;
  double lr = 1e-3;            // peak learning rate (after warmup)
  double min_lr = 1e-4;        // end of the cosine decay
  int64_t warmup_steps = 100;  // linear warmup (optim::warmup_cosine)
  double weight_decay = 0.1;   // AdamW, decoupled
  double beta1 = 0.9;
  double beta2 = 0.99;
  double grad_clip = 1.0;  // L2 norm of the model's gradients, and apart of the compressors'; 0: off
  int64_t log_every = 10;         // a "train" line in the log every k steps (and the first and last)
  int64_t eval_every = 0;         // a "valid" estimate every k steps; 0: only at the end
  int64_t eval_batches = 16;      // batches of the valid split per estimate, spread over it; 0: all
  int64_t checkpoint_every = 0;   // a checkpoint every k steps; 0: only at the end
  uint64_t seed = 0;              // initialisation, dropout and the batch order
  std::string data;               // corpus path; empty: the default corpus
  std::string checkpoint_path;    // empty: no checkpoints
  std::string log_path;           // JSONL; empty: no log
};

TrainConfig parse_train_config(const nlohmann::json& j);
nlohmann::json to_json(const TrainConfig& c);
// ValueError on values no run can use (also called by parse_train_config).
void validate(const TrainConfig& c);

struct RunConfig {
  models::ModelConfig model;
  TrainConfig train;
};

// Parses a run file's JSON object (see the top of this file).
RunConfig parse_run_config(const nlohmann::json& j);
// Reads and parses a run file; IOError when unreadable, ValueError (naming the file) when invalid.
nlohmann::json read_run_json(const std::string& path);
// Applies one "key=value" override to a run file's JSON (before parse_run_config).
void apply_override(nlohmann::json& run, const std::string& assignment);

// The presets folder: $EFORMER_PRESETS when set, else presets/ in the resource folder (io/resources.h);
// IOError naming where it looked when there is none.
std::string presets_dir();
// A preset name ("small", "tiny") -> its file; a value containing '/' or ending in ".json" is taken
// as a path. ValueError listing the available presets when there is no such file.
std::string preset_path(const std::string& name_or_path);

}  // namespace eformer::train
