// eformer.models: attention mechanisms (the registry), model configs, and whole models
// (LanguageModel, SequenceClassifier, EncoderDecoder) as eformer.nn.Module objects.
#include <optional>

#include "bindings.h"
#include "eformer/attention/mechanisms/axial.h"
#include "eformer/attention/mechanisms/exact.h"
#include "eformer/attention/mechanisms/performer.h"
#include "eformer/models/models.h"

namespace eformer::python {
namespace {

using attention::Mechanism;
using attention::RecurrentState;
using models::ModelConfig;
using nlohmann::json;

py::object to_python(const json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

// A ModelConfig, a dict or a JSON string.
ModelConfig config_arg(const py::object& o) {
  if (py::isinstance<ModelConfig>(o)) return o.cast<ModelConfig>();
  return models::parse_model_config(to_json_value(o));
}

Tensor opt(const std::optional<Tensor>& t) { return t ? *t : Tensor(); }

// Holds a RecurrentState for Python (start() returns a unique_ptr).
struct PyRecurrentState {
  std::shared_ptr<RecurrentState> state;
};

}  // namespace

void bind_models(py::module_& m) {
  py::module_ mm = m.def_submodule("models", "Attention mechanisms, model configs and Transformer models");
  py::object module_base = m.attr("nn").attr("Module");

  // ---- mechanisms ----------------------------------------------------------------------------
  py::class_<PyRecurrentState>(mm, "RecurrentState")
      .def_property_readonly("length", [](const PyRecurrentState& s) { return s.state->length(); });

  auto fwd = [](Mechanism& mech, const Tensor& x, const std::optional<Tensor>& memory,
                const std::optional<Tensor>& key_mask) {
    return mech.forward(x, opt(memory), opt(key_mask));
  };
  py::class_<Mechanism, nn::Module, std::shared_ptr<Mechanism>>(mm, "Mechanism")
      .def("forward", fwd, py::arg("x"), py::arg("memory") = py::none(), py::arg("key_mask") = py::none())
      .def("__call__", fwd, py::arg("x"), py::arg("memory") = py::none(), py::arg("key_mask") = py::none(),
           "x [B, N, D] (memory [B, M, D] for cross-attention; key_mask Bool [B, N or M]) -> [B, N, D].")
      .def("capabilities", [](const Mechanism& mech) { return capabilities_to_python(mech.capabilities()); })
      .def_property_readonly("name", &Mechanism::name)
      .def_property_readonly("streaming_path", &Mechanism::streaming_path,
                             "'native' or the fallback (recompute over the kept inputs) used by step().")
      .def(
          "start", [](const Mechanism& mech, int64_t batch) { return PyRecurrentState{mech.start(batch)}; },
          py::arg("batch"), "A fresh streaming state (e.g. an empty KV cache) for `batch` sequences.")
      .def(
          "step",
          [](Mechanism& mech, PyRecurrentState& s, const Tensor& x) { return mech.step(x, *s.state); },
          py::arg("state"), py::arg("x"), "Consume x [B, T, D]; returns [B, T, D] equal to the causal pass.");

  py::class_<attention::MultiHeadAttention, Mechanism, std::shared_ptr<attention::MultiHeadAttention>>(
      mm, "MultiHeadAttention")
      .def_property_readonly("kind", &attention::MultiHeadAttention::kind)
      .def_property_readonly("rotary",
                             [](const attention::MultiHeadAttention& a) { return a.multi_head().rotary; });

  py::class_<attention::PerformerAttention, Mechanism, std::shared_ptr<attention::PerformerAttention>>(
      mm, "PerformerAttention")
      .def_property_readonly(
          "omega",
          [](const attention::PerformerAttention& a) -> py::object {
            return a.omega().defined() ? py::cast(a.omega()) : py::none();
          },
          "The random matrix omega [m, head_dim] (None without projection).")
      .def_property_readonly("draw_index", &attention::PerformerAttention::draw_index,
                             "Which draw omega is (step // redraw at the last redraw).");

  py::class_<attention::AxialAttention, Mechanism, std::shared_ptr<attention::AxialAttention>>(mm, "AxialAttention")
      .def_property_readonly(
          "pattern_options",
          [](const attention::AxialAttention& a) {
            py::dict d;
            if (a.image_width() > 0) d["image_shape"] = py::make_tuple(a.image_height(), a.image_width());
            return d;
          },
          "The options that give attention_pattern this module's layout ({'image_shape': (h, w)}).");

  mm.def("mechanism_names", &attention::mechanism_names, "The registered mechanism names.");
  mm.def(
      "make_mechanism",
      [](const std::string& name, int64_t d_model, int64_t n_heads, bool causal, bool cross,
         const py::object& options, int64_t max_len, float dropout, const std::string& positions) {
        attention::MechanismConfig c;
        c.d_model = d_model;
        c.n_heads = n_heads;
        c.causal = causal;
        c.cross = cross;
        c.max_len = max_len;
        c.dropout = dropout;
        c.positions = positions;
        c.options = options.is_none() ? json::object() : to_json_value(options);
        return attention::make_mechanism(name, c);
      },
      py::arg("name"), py::arg("d_model"), py::arg("n_heads"), py::arg("causal") = false,
      py::arg("cross") = false, py::arg("options") = py::none(), py::arg("max_len") = 0,
      py::arg("dropout") = 0.0f, py::arg("positions") = "none",
      "Build a registered mechanism; unknown names or options, and a capability it lacks (e.g. causal),\n"
      "raise ValueError. dropout: attention dropout (training mode); positions: the model's scheme\n"
      "(\"rotary\" turns rotary on by default).");

  // ---- configs -------------------------------------------------------------------------------
  py::class_<ModelConfig>(mm, "ModelConfig")
      .def(py::init([](const py::object& o, const py::kwargs& kw) {
             py::dict d;
             if (!o.is_none()) {
               if (py::isinstance<py::str>(o))
                 d = py::module_::import("json").attr("loads")(o);
               else
                 d = py::reinterpret_steal<py::dict>(PyDict_Copy(py::dict(o).ptr()));  // never the caller's dict
             }
             for (auto item : kw) d[item.first] = item.second;
             return models::parse_model_config(to_json_value(d));
           }),
           py::arg("config") = py::none(),
           "From a dict or JSON string and/or keyword arguments; strict (unknown keys, wrong types and "
           "invalid "
           "values raise ValueError).")
      .def("to_json", [](const ModelConfig& c) { return models::to_json(c).dump(); })
      .def("to_dict", [](const ModelConfig& c) { return to_python(models::to_json(c)); })
      .def("__repr__", [](const ModelConfig& c) { return "ModelConfig(" + models::to_json(c).dump() + ")"; })
      .def("__eq__", [](const ModelConfig& a,
                        const ModelConfig& b) { return models::to_json(a) == models::to_json(b); })
      .def("attention_for_layer",
           [](const ModelConfig& c, int64_t i) {
             const auto& a = models::attention_for_layer(c, i);
             return to_python(json{{"kind", a.kind}, {"options", a.options}});
           })
      .def_readonly("arch", &ModelConfig::arch)
      .def_readonly("vocab_size", &ModelConfig::vocab_size)
      .def_readonly("d_model", &ModelConfig::d_model)
      .def_readonly("n_heads", &ModelConfig::n_heads)
      .def_readonly("n_layers", &ModelConfig::n_layers)
      .def_readonly("n_encoder_layers", &ModelConfig::n_encoder_layers)
      .def_readonly("d_ff", &ModelConfig::d_ff)
      .def_readonly("max_len", &ModelConfig::max_len)
      .def_readonly("dropout", &ModelConfig::dropout)
      .def_readonly("pre_ln", &ModelConfig::pre_ln)
      .def_readonly("positions", &ModelConfig::positions)
      .def_readonly("tie_weights", &ModelConfig::tie_weights)
      .def_readonly("num_classes", &ModelConfig::num_classes)
      .def_readonly("ffn_chunks", &ModelConfig::ffn_chunks)
      .def_readonly("activation", &ModelConfig::activation)
      .def_readonly("attention_dropout", &ModelConfig::attention_dropout)
      .def_readonly("block", &ModelConfig::block)
      .def_property_readonly("memory", [](const ModelConfig& c) { return to_python(models::to_json(c)["memory"]); });
  mm.def(
      "config_from_json", [](const std::string& s) { return models::parse_model_config(json::parse(s)); },
      py::arg("json"), "Parse a model config from a JSON string (strict).");
  mm.def(
      "to_json", [](const ModelConfig& c) { return models::to_json(c).dump(); }, py::arg("config"));

  // ---- models --------------------------------------------------------------------------------
  py::class_<models::DecodeState, std::shared_ptr<models::DecodeState>>(mm, "DecodeState")
      .def_readonly("position", &models::DecodeState::position)
      .def_property_readonly("num_layers", [](const models::DecodeState& s) { return s.layers.size(); });

  py::class_<models::SegmentMemory, std::shared_ptr<models::SegmentMemory>>(
      mm, "SegmentMemory", "A Transformer-XL memory: per layer the input states of the last mem_len tokens.")
      .def_readonly("mem_len", &models::SegmentMemory::mem_len)
      .def_property_readonly("length", &models::SegmentMemory::length)
      .def_property_readonly("layers", [](const models::SegmentMemory& m) { return m.layers; })
      .def_readonly("cmem_len", &models::SegmentMemory::cmem_len)
      .def_property_readonly("compressed_length", &models::SegmentMemory::compressed_length)
      .def_property_readonly("compressed", [](const models::SegmentMemory& m) { return m.compressed; })
      .def_property_readonly(
          "reconstruction",
          [](const models::SegmentMemory& m) -> py::object {
            return m.reconstruction.defined() ? py::cast(m.reconstruction) : py::none();
          },
          "The attention-reconstruction loss of the last forward (compressive; None when nothing was evicted).")
      .def("clear", &models::SegmentMemory::clear);

  using models::LanguageModel;
  auto lm_fwd = [](LanguageModel& lm, const Tensor& ids, const std::shared_ptr<models::SegmentMemory>& memory) {
    return memory ? lm.forward(ids, *memory) : lm.forward(ids);
  };
  py::class_<LanguageModel, nn::Module, std::shared_ptr<LanguageModel>>(mm, "LanguageModel")
      .def(py::init([](const py::object& c) { return std::make_shared<LanguageModel>(config_arg(c)); }),
           py::arg("config"))
      .def_property_readonly("config", &LanguageModel::config)
      .def("forward", lm_fwd, py::arg("ids"), py::arg("memory") = py::none())
      .def("__call__", lm_fwd, py::arg("ids"), py::arg("memory") = py::none(),
           "ids Int64 [B, N] -> logits [B, N, vocab]. memory: a SegmentMemory (models with a memory), updated.")
      .def(
          "loss",
          [](LanguageModel& m, const Tensor& ids, const Tensor& targets, const std::string& reduction,
             const std::shared_ptr<models::SegmentMemory>& memory) {
            return memory ? m.loss(ids, targets, *memory, parse_reduction(reduction))
                          : m.loss(ids, targets, parse_reduction(reduction));
          },
          py::arg("ids"), py::arg("targets"), py::arg("reduction") = "mean", py::arg("memory") = py::none())
      .def_property_readonly("has_memory", &LanguageModel::has_memory)
      .def(
          "start_memory",
          [](const LanguageModel& lm, int64_t mem_len) {
            return std::make_shared<models::SegmentMemory>(lm.start_memory(mem_len));
          },
          py::arg("mem_len") = 0, "An empty memory keeping mem_len states per layer (0: the config's).")
      .def(
          "start_decoding",
          [](LanguageModel& lm, int64_t batch, int64_t mem_len) {
            return std::make_shared<models::DecodeState>(lm.start_decoding(batch, mem_len));
          },
          py::arg("batch"), py::arg("mem_len") = 0)
      .def(
          "step",
          [](LanguageModel& lm, models::DecodeState& s, const Tensor& ids) { return lm.step(s, ids); },
          py::arg("state"), py::arg("ids"), "Feed ids [B, T]; their logits [B, T, vocab].");

  using models::SequenceClassifier;
  auto cls_fwd = [](const SequenceClassifier& c, const Tensor& ids, const std::optional<Tensor>& mask) {
    return c.forward(ids, opt(mask));
  };
  py::class_<SequenceClassifier, nn::Module, std::shared_ptr<SequenceClassifier>>(mm, "SequenceClassifier")
      .def(py::init([](const py::object& c) { return std::make_shared<SequenceClassifier>(config_arg(c)); }),
           py::arg("config"))
      .def_property_readonly("config", &SequenceClassifier::config)
      .def("forward", cls_fwd, py::arg("ids"), py::arg("key_mask") = py::none())
      .def("__call__", cls_fwd, py::arg("ids"), py::arg("key_mask") = py::none())
      .def(
          "loss",
          [](const SequenceClassifier& c, const Tensor& ids, const Tensor& labels,
             const std::optional<Tensor>& mask) { return c.loss(ids, labels, opt(mask)); },
          py::arg("ids"), py::arg("labels"), py::arg("key_mask") = py::none());

  auto pma_fwd = [](const models::PmaPooling& p, const Tensor& z, const std::optional<Tensor>& mask) {
    return p.forward(z, opt(mask));
  };
  py::class_<models::PmaPooling, nn::Module, std::shared_ptr<models::PmaPooling>>(mm, "PmaPooling")
      .def(py::init<int64_t, int64_t>(), py::arg("d_model"), py::arg("n_heads"),
           "The Set Transformer's pooling by multihead attention with one seed, PMA_1(Z) = MAB(S, rFF(Z)).")
      .def("forward", pma_fwd, py::arg("z"), py::arg("key_mask") = py::none())
      .def("__call__", pma_fwd, py::arg("z"), py::arg("key_mask") = py::none(),
           "z [B, N, D] (key_mask Bool [B, N]) -> [B, D].");

  using models::EncoderDecoder;
  auto ed_fwd = [](const EncoderDecoder& e, const Tensor& src, const Tensor& tgt,
                   const std::optional<Tensor>& mask) { return e.forward(src, tgt, opt(mask)); };
  py::class_<EncoderDecoder, nn::Module, std::shared_ptr<EncoderDecoder>>(mm, "EncoderDecoder")
      .def(py::init([](const py::object& c) { return std::make_shared<EncoderDecoder>(config_arg(c)); }),
           py::arg("config"))
      .def_property_readonly("config", &EncoderDecoder::config)
      .def("forward", ed_fwd, py::arg("src"), py::arg("tgt"), py::arg("src_mask") = py::none())
      .def("__call__", ed_fwd, py::arg("src"), py::arg("tgt"), py::arg("src_mask") = py::none())
      .def(
          "encode",
          [](const EncoderDecoder& e, const Tensor& src, const std::optional<Tensor>& mask) {
            return e.encode(src, opt(mask));
          },
          py::arg("src"), py::arg("src_mask") = py::none())
      .def(
          "loss",
          [](const EncoderDecoder& e, const Tensor& src, const Tensor& tgt_in, const Tensor& tgt_out,
             const std::optional<Tensor>& mask) { return e.loss(src, tgt_in, tgt_out, opt(mask)); },
          py::arg("src"), py::arg("tgt_in"), py::arg("tgt_out"), py::arg("src_mask") = py::none());
  (void)module_base;
}

}  // namespace eformer::python
