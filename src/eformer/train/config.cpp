#include "eformer/train/config.h"

#include "eformer/io/resources.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "eformer/core/error.h"
#include "eformer/io/atomic_file.h"

namespace eformer::train {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::vector<std::string>& train_keys() {
  static const std::vector<std::string> keys = {
      "steps",      "time_budget_s", "batch_size",   "lr",         "min_lr",     "warmup_steps",
      "weight_decay", "beta1",       "beta2",        "grad_clip",  "log_every",  "eval_every",
      "eval_batches", "checkpoint_every", "seed",    "data",       "checkpoint_path", "log_path"};
  return keys;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

int64_t get_int(const json& j, const char* key) {
  EF_CHECK(j.is_number_integer(), ValueError, "train config: '", key, "' must be an integer, got ", j.dump());
  return j.get<int64_t>();
}
double get_number(const json& j, const char* key) {
  EF_CHECK(j.is_number(), ValueError, "train config: '", key, "' must be a number, got ", j.dump());
  double v = j.get<double>();
  EF_CHECK(std::isfinite(v), ValueError, "train config: '", key, "' must be finite, got ", j.dump());
  return v;
}
std::string get_string(const json& j, const char* key) {
  EF_CHECK(j.is_string(), ValueError, "train config: '", key, "' must be a string, got ", j.dump());
  return j.get<std::string>();
}

}  // namespace

void validate(const TrainConfig& c) {
  // The upper bounds keep step counts and tensor sizes far from overflow (the memory estimate
  // judges what fits); 1e9 s is about 31 years.
  EF_CHECK(c.steps >= 0 && c.steps <= (int64_t(1) << 40), ValueError,
           "train config: 'steps' must be in [0, 2^40], got ", c.steps);
  EF_CHECK(c.time_budget_s >= 0 && c.time_budget_s <= 1e9, ValueError,
           "train config: 'time_budget_s' must be in [0, 1e9] seconds (--minutes at most 1.6e7), got ",
           c.time_budget_s);
  EF_CHECK(c.batch_size >= 1 && c.batch_size <= (int64_t(1) << 20), ValueError,
           "train config: 'batch_size' must be in [1, 2^20], got ", c.batch_size);
  EF_CHECK(c.lr > 0, ValueError, "train config: 'lr' must be > 0, got ", c.lr);
  EF_CHECK(c.min_lr >= 0 && c.min_lr <= c.lr, ValueError, "train config: 'min_lr' must be in [0, lr = ", c.lr,
           "], got ", c.min_lr);
  EF_CHECK(c.warmup_steps >= 0, ValueError, "train config: 'warmup_steps' must be >= 0, got ", c.warmup_steps);
  EF_CHECK(c.weight_decay >= 0, ValueError, "train config: 'weight_decay' must be >= 0, got ", c.weight_decay);
  EF_CHECK(c.beta1 >= 0 && c.beta1 < 1, ValueError, "train config: 'beta1' must be in [0, 1), got ", c.beta1);
  EF_CHECK(c.beta2 >= 0 && c.beta2 < 1, ValueError, "train config: 'beta2' must be in [0, 1), got ", c.beta2);
  EF_CHECK(c.grad_clip >= 0, ValueError, "train config: 'grad_clip' must be >= 0 (0: off), got ", c.grad_clip);
  EF_CHECK(c.log_every >= 1, ValueError, "train config: 'log_every' must be >= 1, got ", c.log_every);
  EF_CHECK(c.eval_every >= 0, ValueError, "train config: 'eval_every' must be >= 0 (0: only at the end), got ",
           c.eval_every);
  EF_CHECK(c.eval_batches >= 0, ValueError, "train config: 'eval_batches' must be >= 0 (0: all), got ",
           c.eval_batches);
  EF_CHECK(c.checkpoint_every >= 0, ValueError,
           "train config: 'checkpoint_every' must be >= 0 (0: only at the end), got ", c.checkpoint_every);
}

TrainConfig parse_train_config(const json& j) {
  EF_CHECK(j.is_object(), ValueError, "train config: expected a JSON object, got ", j.dump());
  TrainConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (k == "steps") c.steps = get_int(v, "steps");
    else if (k == "time_budget_s") c.time_budget_s = get_number(v, "time_budget_s");
    else if (k == "batch_size") c.batch_size = get_int(v, "batch_size");
    else if (k == "lr") c.lr = get_number(v, "lr");
    else if (k == "min_lr") c.min_lr = get_number(v, "min_lr");
    else if (k == "warmup_steps") c.warmup_steps = get_int(v, "warmup_steps");
    else if (k == "weight_decay") c.weight_decay = get_number(v, "weight_decay");
    else if (k == "beta1") c.beta1 = get_number(v, "beta1");
    else if (k == "beta2") c.beta2 = get_number(v, "beta2");
    else if (k == "grad_clip") c.grad_clip = get_number(v, "grad_clip");
    else if (k == "log_every") c.log_every = get_int(v, "log_every");
    else if (k == "eval_every") c.eval_every = get_int(v, "eval_every");
    else if (k == "eval_batches") c.eval_batches = get_int(v, "eval_batches");
    else if (k == "checkpoint_every") c.checkpoint_every = get_int(v, "checkpoint_every");
    else if (k == "seed") {
      EF_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), ValueError,
               "train config: 'seed' must be a non-negative integer, got ", v.dump());
      c.seed = v.get<uint64_t>();
    } else if (k == "data") c.data = get_string(v, "data");
    else if (k == "checkpoint_path") c.checkpoint_path = get_string(v, "checkpoint_path");
    else if (k == "log_path") c.log_path = get_string(v, "log_path");
    else
      throw ValueError("train config: unknown key '" + k + "'; valid keys: " + join(train_keys()));
  }
  validate(c);
  return c;
}

json to_json(const TrainConfig& c) {
  return json{{"steps", c.steps},
              {"time_budget_s", c.time_budget_s},
              {"batch_size", c.batch_size},
              {"lr", c.lr},
              {"min_lr", c.min_lr},
              {"warmup_steps", c.warmup_steps},
              {"weight_decay", c.weight_decay},
              {"beta1", c.beta1},
              {"beta2", c.beta2},
              {"grad_clip", c.grad_clip},
              {"log_every", c.log_every},
              {"eval_every", c.eval_every},
              {"eval_batches", c.eval_batches},
              {"checkpoint_every", c.checkpoint_every},
              {"seed", c.seed},
              {"data", c.data},
              {"checkpoint_path", c.checkpoint_path},
              {"log_path", c.log_path}};
}

RunConfig parse_run_config(const json& j) {
  EF_CHECK(j.is_object(), ValueError, "run config: expected a JSON object with \"model\" and \"train\", got ",
           j.dump());
  for (auto it = j.begin(); it != j.end(); ++it)
    EF_CHECK(it.key() == "model" || it.key() == "train" || it.key() == "description", ValueError,
             "run config: unknown key '", it.key(), "'; valid keys: model, train, description");
  RunConfig r;
  r.model = models::parse_model_config(j.value("model", json::object()));
  r.train = parse_train_config(j.value("train", json::object()));
  return r;
}

json read_run_json(const std::string& path) {
  std::string text = io::read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw ValueError("config '" + path + "' is not valid JSON: " + e.what());
  }
}

void apply_override(json& run, const std::string& assignment) {
  size_t eq = assignment.find('=');
  EF_CHECK(eq != std::string::npos && eq > 0, ValueError, "--set expects key=value, got '", assignment, "'");
  std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value;
  try {
    value = json::parse(text);
  } catch (const json::parse_error&) {
    value = text;  // a bare string, e.g. attention.kind=full
  }
  std::vector<std::string> path;
  std::stringstream ss(key);
  for (std::string part; std::getline(ss, part, '.');) {
    EF_CHECK(!part.empty(), ValueError, "--set: bad key '", key, "'");
    path.push_back(part);
  }
  if (path[0] != "model" && path[0] != "train") {
    // A bare name: the section that has it (train keys are fixed; anything else is a model key,
    // which parse_model_config then checks).
    bool is_train = std::find(train_keys().begin(), train_keys().end(), path[0]) != train_keys().end();
    path.insert(path.begin(), is_train ? "train" : "model");
  }
  EF_CHECK(path.size() >= 2, ValueError, "--set: '", key, "' names a section, not a key");
  if (!run.is_object()) run = json::object();
  json* node = &run;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    json& child = (*node)[path[i]];
    if (child.is_null()) child = json::object();
    // "attention": "flash" is shorthand for {"kind": "flash"}: attention.kind / attention.options.m apply.
    if (child.is_string() && path[i] == "attention") child = json{{"kind", child}};
    EF_CHECK(child.is_object(), ValueError, "--set: '", key, "': '", path[i], "' is not an object");
    node = &child;
  }
  (*node)[path.back()] = value;
}

std::string presets_dir() {
  const char* env = std::getenv("EFORMER_PRESETS");
  if (env && *env) return env;
  const std::string dir = io::find_resource("presets");
  EF_CHECK(!dir.empty(), IOError, "presets: no presets folder found; looked in ", io::resource_search_description(),
           " (set EFORMER_PRESETS to a folder of preset files, or EFORMER_HOME to an eformer share/eformer)");
  return dir;
}

std::string preset_path(const std::string& name) {
  bool is_path = name.find('/') != std::string::npos || name.ends_with(".json");
  if (is_path) {
    EF_CHECK(fs::is_regular_file(name), IOError, "preset file '", name, "' does not exist");
    return name;
  }
  std::string dir = presets_dir();
  fs::path p = fs::path(dir) / (name + ".json");
  if (fs::is_regular_file(p)) return p.string();
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".json") names.push_back(e.path().stem().string());
  std::sort(names.begin(), names.end());
  throw ValueError("unknown preset '" + name + "'; presets in " + dir + ": " +
                   (names.empty() ? std::string("(none)") : join(names)));
}

}  // namespace eformer::train
