// eformer.train: evaluation (bits per character), text generation, checkpoints. The training loop
// itself is the CLI's `eformer train` (or a Python loop over models, optim and data).
#include "eformer/train/checkpoint.h"
#include "eformer/train/config.h"
#include "eformer/train/evaluate.h"
#include "eformer/train/generate.h"

#include "bindings.h"

namespace eformer::python {
namespace {

using models::LanguageModel;

py::object json_to_python(const nlohmann::json& j) { return py::module_::import("json").attr("loads")(j.dump()); }
nlohmann::json python_to_json(const py::object& o) {
  return nlohmann::json::parse(py::module_::import("json").attr("dumps")(o).cast<std::string>());
}

std::string path_arg(const py::object& path) {
  return py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>();
}

data::TokenSource source_arg(const py::object& source, const std::string& split) {
  if (py::isinstance<data::Corpus>(source))
    return data::TokenSource(source.cast<const data::Corpus&>(), data::parse_split(split));
  EF_CHECK(py::isinstance<Tensor>(source), ValueError,
           "train.evaluate: source must be a data.Corpus or a 1-D int64 Tensor of token ids, got ",
           std::string(py::str(py::type::of(source).attr("__name__"))));
  return data::TokenSource(source.cast<Tensor>());
}

train::SamplingOptions sampling(double temperature, int64_t top_k, double top_p, uint64_t seed) {
  train::SamplingOptions o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = seed;
  train::validate(o);
  return o;
}

py::dict info_dict(const train::Checkpoint& c) {
  py::dict d;
  d["step"] = c.info.step;
  d["rng"] = py::make_tuple(c.info.rng.seed, c.info.rng.stream, c.info.rng.counter);
  d["elapsed_s"] = c.info.elapsed_s;
  d["train_config"] = json_to_python(c.info.train_config);
  d["model_config"] = json_to_python(models::to_json(c.model_config));
  return d;
}

}  // namespace

void bind_train(py::module_& m) {
  py::module_ tm = m.def_submodule("train", "Evaluation (bits per character), generation and checkpoints");

  tm.def(
      "evaluate",
      [](LanguageModel& model, const py::object& source, const std::string& split, int64_t context,
         int64_t batch_size, int64_t max_batches) {
        train::EvalResult r = train::evaluate(model, source_arg(source, split), context, batch_size, max_batches);
        py::dict d;
        d["bits_per_char"] = r.bits_per_char;
        d["loss"] = r.loss;
        d["targets"] = r.targets;
        d["batches"] = r.batches;
        d["total_batches"] = r.total_batches;
        return d;
      },
      py::arg("model"), py::arg("source"), py::arg("split") = "valid", py::arg("context") = 0,
      py::arg("batch_size") = 16, py::arg("max_batches") = 0,
      "Bits per character of `model` on a split of a data.Corpus (or on a 1-D int64 Tensor of ids):\n"
      "non-overlapping windows of `context` tokens (0: the model's max_len); max_batches > 0 scores\n"
      "that many batches spread over the split. Returns {bits_per_char, loss, targets, batches,\n"
      "total_batches}.");

  tm.def(
      "generate",
      [](LanguageModel& model, const py::object& prompt, int64_t max_new_tokens, double temperature,
         int64_t top_k, double top_p, uint64_t seed, const std::string& on_full) {
        train::GenerateOptions o;
        o.sampling = sampling(temperature, top_k, top_p, seed);
        o.max_new_tokens = max_new_tokens;
        EF_CHECK(on_full == "slide" || on_full == "stop", ValueError,
                 "train.generate: on_full must be 'slide' or 'stop', got '", on_full, "'");
        o.on_full = on_full == "slide" ? train::ContextPolicy::Slide : train::ContextPolicy::Stop;
        std::string p = py::isinstance<py::bytes>(prompt) ? std::string(prompt.cast<py::bytes>())
                                                           : prompt.cast<std::string>();
        std::string out;
        {
          py::gil_scoped_release release;
          out = train::generate_text(model, p, o);
        }
        return py::bytes(out).attr("decode")("utf-8", "replace");
      },
      py::arg("model"), py::arg("prompt") = "", py::arg("max_new_tokens") = 256, py::arg("temperature") = 1.0,
      py::arg("top_k") = 0, py::arg("top_p") = 1.0, py::arg("seed") = 0, py::arg("on_full") = "slide",
      "Continues `prompt` (str or bytes) with up to max_new_tokens sampled bytes and returns them as\n"
      "text (invalid UTF-8 replaced). temperature 0 is greedy; top_k 0 and top_p 1 are off. The same\n"
      "seed gives the same text. on_full: 'slide' (re-encode the last max_len / 2 tokens and go on) or\n"
      "'stop' when the context is full.");

  tm.def(
      "sampling_distribution",
      [](const Tensor& logits, double temperature, int64_t top_k, double top_p) {
        EF_CHECK(logits.dim() == 1, ShapeError, "train.sampling_distribution: logits must be 1-D, got ",
                 shape_str(logits.shape()));
        Tensor l = logits.contiguous_data();
        return train::sampling_distribution(l.data<float>(), l.numel(), sampling(temperature, top_k, top_p, 0));
      },
      py::arg("logits"), py::arg("temperature") = 1.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
      "The distribution generate() draws a token from, given one row of logits (a list of floats).");

  tm.def(
      "save_checkpoint",
      [](const py::object& path, const LanguageModel& model, optim::Optimizer* optimizer, int64_t step,
         const py::object& train_config, double elapsed_s) {
        train::CheckpointInfo info;
        info.train_config = train_config.is_none() ? nlohmann::json::object() : python_to_json(train_config);
        EF_CHECK(info.train_config.is_object(), ValueError, "train.save_checkpoint: train_config must be a dict");
        EF_CHECK(step >= 0, ValueError, "train.save_checkpoint: step must be >= 0, got ", step);
        info.step = step;
        info.rng = rng::default_generator().state();
        info.elapsed_s = elapsed_s;
        train::save_checkpoint(path_arg(path), model, optimizer, info);
      },
      py::arg("path"), py::arg("model"), py::arg("optimizer") = nullptr, py::arg("step") = 0,
      py::arg("train_config") = py::none(), py::arg("elapsed_s") = 0.0,
      "Writes an eformer checkpoint (atomically): the model's weights, the optimizer's state (when\n"
      "given), the step, the default generator's state and train_config (a dict).");

  tm.def(
      "load_checkpoint",
      [](const py::object& path) {
        train::Checkpoint c = train::read_checkpoint(path_arg(path));
        auto model = train::load_model(c);
        return py::make_tuple(model, info_dict(c));
      },
      py::arg("path"),
      "Reads and validates a checkpoint: returns (LanguageModel in eval mode, info dict with step,\n"
      "rng (seed, stream, counter), elapsed_s, train_config, model_config). An optimizer built over\n"
      "the returned model's parameters can be passed later to restore_optimizer.");

  tm.def(
      "restore_optimizer",
      [](const py::object& path, optim::Optimizer& optimizer) {
        train::restore_optimizer(train::read_checkpoint(path_arg(path)), optimizer);
      },
      py::arg("path"), py::arg("optimizer"), "Loads a checkpoint's optimizer state into `optimizer`.");

  tm.def(
      "read_run_config",
      [](const py::object& path) {
        train::RunConfig r = train::parse_run_config(train::read_run_json(path_arg(path)));
        return py::make_tuple(json_to_python(models::to_json(r.model)), json_to_python(train::to_json(r.train)));
      },
      py::arg("path"), "Parses a run file (or preset path): returns (model config dict, train config dict).");
  tm.def("preset_path", &train::preset_path, py::arg("name"), "The file of a preset name ('small', 'tiny').");
}

}  // namespace eformer::python
