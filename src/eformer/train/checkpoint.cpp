#include "eformer/train/checkpoint.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <utility>
#include <vector>

#include "eformer/core/error.h"
#include "eformer/eformer.h"
#include "eformer/io/checksum.h"
#include "eformer/io/safetensors.h"

namespace eformer::train {

namespace {

using nlohmann::json;

[[noreturn]] void corrupt(const std::string& path, const std::string& what) {
  throw IOError("checkpoint '" + path + "': " + what);
}

const std::string& meta(const io::SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata.find(key);
  if (it == f.metadata.end()) corrupt(f.source, "metadata has no '" + key + "'");
  return it->second;
}

json meta_json(const io::SafetensorsFile& f, const std::string& key) {
  try {
    return json::parse(meta(f, key));
  } catch (const json::parse_error& e) {
    corrupt(f.source, "metadata '" + key + "' is not valid JSON (" + e.what() + ")");
  }
}

int64_t parse_int64(const io::SafetensorsFile& f, const std::string& key) {
  const std::string& s = meta(f, key);
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < 0) corrupt(f.source, "metadata '" + key + "' = '" + s + "' is not a count");
  return v;
}

// "a, b, c" for up to 8 names, then "... (N in all)".
std::string name_list(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 8; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > 8) out += ", ... (" + std::to_string(names.size()) + " in all)";
  return out;
}

// The checksum of a tensor's bytes (row-major, as the file holds them).
std::string tensor_checksum(const Tensor& t) {
  Tensor c = t.contiguous_data();
  return io::checksum_hex(c.raw_data(), size_t(c.numel()) * dtype_size(c.dtype()));
}

// Every tensor's bytes against metadata "checksums" ({"model.x": "<16 hex digits>", ...}): IOError
// naming the first corrupt tensor. A file from before checksums (none) loads with a note.
void verify_checksums(const io::SafetensorsFile& f) {
  if (!f.metadata.count("checksums")) {
    std::fprintf(stderr, "eformer: note: checkpoint '%s' has no checksums (written by an older eformer); its "
                         "tensors are not verified\n", f.source.c_str());
    return;
  }
  json sums = meta_json(f, "checksums");
  if (!sums.is_object()) corrupt(f.source, "metadata 'checksums' is not a JSON object");
  for (const auto& [name, t] : f.tensors) {
    if (!sums.contains(name) || !sums[name].is_string())
      corrupt(f.source, "metadata 'checksums' has no checksum for tensor '" + name + "'");
    const std::string found = tensor_checksum(t);
    if (found != sums[name].get<std::string>())
      corrupt(f.source, "tensor '" + name + "' is corrupt: its checksum is " + found + ", the file says " +
                            sums[name].get<std::string>());
  }
  for (const auto& [name, sum] : sums.items())
    if (!f.tensors.count(name)) corrupt(f.source, "tensor '" + name + "' has a checksum but is not in the file");
}

}  // namespace

void save_checkpoint(const std::string& path, const models::LanguageModel& model, const optim::Optimizer* optimizer,
                     const CheckpointInfo& info, const models::SegmentMemory* memory) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : model.state_dict()) tensors.emplace_back("model." + name, t);
  if (optimizer)
    for (auto& [name, t] : optimizer->state_tensors()) tensors.emplace_back("optim." + name, t);
  if (memory) {
    for (size_t i = 0; i < memory->layers.size(); ++i)
      tensors.emplace_back("memory." + std::to_string(i), memory->layers[i].contiguous_data());
    for (size_t i = 0; i < memory->compressed.size(); ++i)
      if (memory->compressed[i].size(1) > 0)
        tensors.emplace_back("memory.compressed." + std::to_string(i), memory->compressed[i].contiguous_data());
  }
  json rng{{"seed", info.rng.seed}, {"stream", info.rng.stream}, {"counter", info.rng.counter}};
  json checksums = json::object();
  for (const auto& [name, t] : tensors) checksums[name] = tensor_checksum(t);
  EF_CHECK(std::isfinite(info.elapsed_s) && info.elapsed_s >= 0, ValueError,
           "save_checkpoint: elapsed_s = ", info.elapsed_s, "; expected a finite duration >= 0");
  char elapsed[64];
  std::snprintf(elapsed, sizeof elapsed, "%.17g", info.elapsed_s);
  std::map<std::string, std::string> metadata{
      {"format", kCheckpointFormat},
      {"format_version", std::to_string(kCheckpointVersion)},
      {"eformer_version", kVersion},
      {"model_config", models::to_json(model.config()).dump()},
      {"train_config", info.train_config.dump()},
      {"step", std::to_string(info.step)},
      {"rng", rng.dump()},
      {"elapsed_s", elapsed},
      {"checksums", checksums.dump()},
  };
  io::save_safetensors(path, tensors, metadata);
}

Checkpoint read_checkpoint(const std::string& path) {
  io::SafetensorsFile f;
  try {
    f = io::load_safetensors(path);
  } catch (const IOError& e) {
    throw IOError(std::string("cannot read checkpoint: ") + e.what());
  }
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != kCheckpointFormat)
    corrupt(path, "not an eformer checkpoint (a safetensors file without eformer's \"format\": \"" +
                      std::string(kCheckpointFormat) + "\" metadata)");
  const std::string& version = meta(f, "format_version");
  if (version != std::to_string(kCheckpointVersion))
    corrupt(path, "format version " + version + "; this eformer reads version " +
                      std::to_string(kCheckpointVersion));

  Checkpoint c;
  c.source = path;
  try {
    c.model_config = models::parse_model_config(meta_json(f, "model_config"));
  } catch (const ValueError& e) {
    throw ValueError("checkpoint '" + path + "': invalid model config: " + e.what());
  }
  c.info.train_config = meta_json(f, "train_config");
  if (!c.info.train_config.is_object()) corrupt(path, "metadata 'train_config' is not a JSON object");
  c.info.step = parse_int64(f, "step");
  json rng = meta_json(f, "rng");
  for (const char* k : {"seed", "stream", "counter"})
    if (!rng.is_object() || !rng.contains(k) || !rng[k].is_number_unsigned())
      corrupt(path, "metadata 'rng' must be {\"seed\", \"stream\", \"counter\"} of unsigned integers, got " +
                        rng.dump());
  c.info.rng = {rng["seed"].get<uint64_t>(), rng["stream"].get<uint64_t>(), rng["counter"].get<uint64_t>()};
  const std::string& elapsed = meta(f, "elapsed_s");
  char* end = nullptr;
  c.info.elapsed_s = std::strtod(elapsed.c_str(), &end);
  if (elapsed.empty() || *end != '\0' || !std::isfinite(c.info.elapsed_s) || c.info.elapsed_s < 0)
    corrupt(path, "metadata 'elapsed_s' = '" + elapsed + "' is not a duration");

  verify_checksums(f);
  for (auto& [name, t] : f.tensors) {
    if (name.starts_with("model.")) c.model_state.emplace(name.substr(6), t);
    else if (name.starts_with("optim.")) c.optimizer_state.emplace(name.substr(6), t);
    else if (name.starts_with("memory.")) c.memory_state.emplace(name.substr(7), t);
    else corrupt(path, "unexpected tensor '" + name + "' (names start with \"model.\", \"optim.\" or \"memory.\")");
  }
  if (c.model_state.empty()) corrupt(path, "holds no model tensors");
  return c;
}

void restore_model(const Checkpoint& checkpoint, models::LanguageModel& model) {
  try {
    model.load_state_dict(checkpoint.model_state, /*strict=*/true);
  } catch (const ShapeError& e) {
    throw ShapeError("checkpoint '" + checkpoint.source + "' does not fit its model: " + e.what());
  } catch (const ValueError& e) {
    throw ValueError("checkpoint '" + checkpoint.source + "' does not fit its model: " + e.what());
  }
}

models::SegmentMemory restore_memory(const Checkpoint& checkpoint, const models::LanguageModel& model,
                                     int64_t batch_size) {
  const std::string where = "checkpoint '" + checkpoint.source + "': ";
  if (!model.has_memory()) {
    EF_CHECK(checkpoint.memory_state.empty(), ValueError, where, "holds a training memory but its model has none");
    return {};
  }
  models::SegmentMemory memory = model.start_memory();
  if (checkpoint.memory_state.empty()) return memory;
  const int64_t L = model.config().n_layers, D = model.config().d_model;
  std::map<std::string, Tensor> layers, compressed;
  for (const auto& [name, t] : checkpoint.memory_state)
    (name.starts_with("compressed.") ? compressed : layers).emplace(name, t);
  EF_CHECK(int64_t(layers.size()) == L, ShapeError, where, "holds a memory of ", layers.size(),
           " layers; the model has ", L);
  EF_CHECK(compressed.empty() || (int64_t(compressed.size()) == L && model.config().memory.kind == "compressive"),
           ShapeError, where, "holds a compressed memory of ", compressed.size(), " layers; the model (memory.kind '",
           model.config().memory.kind, "') expects ", model.config().memory.kind == "compressive" ? L : 0);
  auto take = [&](const std::map<std::string, Tensor>& from, const std::string& name, int64_t max_len,
                  std::vector<Tensor>& into) {
    auto it = from.find(name);
    EF_CHECK(it != from.end(), ShapeError, where, "memory tensor '", name, "' is missing");
    const Tensor& t = it->second;
    EF_CHECK(t.dtype() == DType::Float32 && t.dim() == 3 && t.size(0) == batch_size && t.size(2) == D &&
                 t.size(1) >= 1 && t.size(1) <= max_len && (into.empty() || t.size(1) == into[0].size(1)),
             ShapeError, where, "memory.", name, " is ", t.describe(), "; expected Float32 [", batch_size, ", 1..",
             max_len, ", ", D, "], every layer alike");
    into.push_back(t);
  };
  for (int64_t i = 0; i < L; ++i) take(layers, std::to_string(i), memory.mem_len, memory.layers);
  if (!compressed.empty())
    for (int64_t i = 0; i < L; ++i)
      take(compressed, "compressed." + std::to_string(i), memory.cmem_len, memory.compressed);
  return memory;
}

std::shared_ptr<models::LanguageModel> load_model(const Checkpoint& checkpoint) {
  auto model = std::make_shared<models::LanguageModel>(checkpoint.model_config);
  restore_model(checkpoint, *model);
  model->eval();
  return model;
}

std::vector<std::string> transfer_state(const std::map<std::string, Tensor>& state, nn::Module& model,
                                        const std::string& source) {
  const std::string where = "checkpoint '" + source + "' does not fit the model: ";
  std::set<std::string> own;
  std::vector<std::string> missing_parameters, fresh_buffers, unexpected;
  auto check_shape = [&](const std::string& name, const Tensor& dst) {
    const Tensor& src = state.at(name);
    EF_CHECK(src.defined() && src.shape() == dst.shape() && src.dtype() == dst.dtype(), ShapeError, where, "'",
             name, "' is ", src.defined() ? shape_str(src.shape()) : std::string("undefined"), " ",
             src.defined() ? dtype_name(src.dtype()) : "", " in the checkpoint, the model expects ",
             shape_str(dst.shape()), " ", dtype_name(dst.dtype()));
  };
  for (const auto& [name, t] : model.named_parameters()) {
    own.insert(name);
    if (!state.count(name)) missing_parameters.push_back(name);
  }
  for (const auto& [name, t] : model.named_buffers()) {
    own.insert(name);
    if (!state.count(name)) fresh_buffers.push_back(name);
  }
  for (const auto& [name, t] : state)
    if (!own.count(name)) unexpected.push_back(name);
  if (!missing_parameters.empty() || !unexpected.empty()) {
    std::string msg = where;
    if (!missing_parameters.empty())
      msg += std::to_string(missing_parameters.size()) + " parameter(s) of the model not in the checkpoint: " +
             name_list(missing_parameters) + (unexpected.empty() ? "" : "; ");
    if (!unexpected.empty())
      msg += std::to_string(unexpected.size()) + " tensor(s) of the checkpoint not in the model: " +
             name_list(unexpected);
    throw ValueError(msg + " (a transfer keeps every weight: only the model's buffers may be missing)");
  }
  // Shapes before anything is copied: all or nothing.
  for (const auto& [name, t] : model.named_parameters()) check_shape(name, t);
  for (const auto& [name, t] : model.named_buffers())
    if (state.count(name)) check_shape(name, t);
  model.load_state_dict(state, /*strict=*/false);  // every name of `state` is ours; absent buffers stay
  return fresh_buffers;
}

TransferredModel transfer_model(const Checkpoint& checkpoint, const models::ModelConfig& config) {
  TransferredModel t;
  t.model = std::make_shared<models::LanguageModel>(config);
  t.fresh_buffers = transfer_state(checkpoint.model_state, *t.model, checkpoint.source);
  t.model->eval();
  return t;
}

std::string fresh_buffers_notice(const std::vector<std::string>& fresh_buffers) {
  if (fresh_buffers.empty()) return "";
  std::string out = "init: kept fresh buffers: ";
  for (size_t i = 0; i < fresh_buffers.size(); ++i) out += (i ? ", " : "") + fresh_buffers[i];
  return out;
}

void restore_optimizer(const Checkpoint& checkpoint, optim::Optimizer& optimizer) {
  if (checkpoint.optimizer_state.empty())
    corrupt(checkpoint.source, "holds no optimizer state (a weights-only checkpoint cannot be resumed)");
  try {
    optimizer.load_state_tensors(checkpoint.optimizer_state);
  } catch (const ShapeError& e) {
    throw ShapeError("checkpoint '" + checkpoint.source + "': optimizer state does not fit the model: " + e.what());
  } catch (const ValueError& e) {
    throw ValueError("checkpoint '" + checkpoint.source + "': optimizer state does not fit the model: " + e.what());
  }
}

}  // namespace eformer::train
