// eformer.nn: modules (Linear, LayerNorm, Embedding, Dropout, FeedForward, LearnedPositions) and
// positional functions, named like torch.nn. Modules are held by shared_ptr, so a child returned to
// Python (ff.fc1) is the same object the parent uses, typed as its most derived class.
#include "eformer/nn/nn.h"

#include "bindings.h"

namespace eformer::python {
namespace {

using eformer::nn::Module;

std::string path_arg(const py::object& path) {
  return py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>();
}

py::list named_list(const eformer::nn::NamedTensors& named) {
  py::list out;
  for (const auto& [name, t] : named) out.append(py::make_tuple(name, t));
  return out;
}

// Binds forward and __call__ (the module called like a function, as in torch).
template <class Cls, class... Args>
void callable(Cls& cls, Args&&... args) {
  using M = typename Cls::type;
  auto fwd = [](const M& m, const Tensor& x) { return m.forward(x); };
  cls.def("forward", fwd, py::arg("input"), std::forward<Args>(args)...);
  cls.def("__call__", fwd, py::arg("input"), std::forward<Args>(args)...);
}

}  // namespace

void bind_nn(py::module_& m) {
  namespace nn = eformer::nn;
  py::module_ nm = m.def_submodule("nn",
                                   "Modules (Linear, LayerNorm, Embedding, Dropout, FeedForward, "
                                   "LearnedPositions) and positional encodings, named like torch.nn");

  py::class_<Module, std::shared_ptr<Module>>(nm, "Module")
      .def(
          "named_parameters", [](const Module& mod) { return named_list(mod.named_parameters()); },
          "A list of (dotted name, Tensor) in registration order, e.g. ('fc1.weight', ...).")
      .def("parameters", &Module::parameters)
      .def("named_buffers", [](const Module& mod) { return named_list(mod.named_buffers()); })
      .def("named_children",
           [](const Module& mod) {
             py::list out;
             for (const auto& [name, c] : mod.named_children()) out.append(py::make_tuple(name, c));
             return out;
           })
      .def(
          "state_dict",
          [](const Module& mod) {
            py::dict d;
            for (const auto& [name, t] : mod.state_dict()) d[py::str(name)] = py::cast(t);
            return d;
          },
          "A dict of dotted name -> Tensor (parameters, then buffers); the tensors themselves, not copies.")
      .def(
          "load_state_dict",
          [](Module& mod, const std::map<std::string, Tensor>& state, bool strict) {
            mod.load_state_dict(state, strict);
          },
          py::arg("state_dict"), py::arg("strict") = true,
          "Copy values into the parameters in place. strict: missing or unexpected names raise ValueError "
          "listing them; a shape mismatch always raises ValueError naming the entry and both shapes.")
      .def(
          "save", [](const Module& mod, const py::object& path) { mod.save(path_arg(path)); },
          py::arg("path"), "Write state_dict() as a safetensors file, atomically.")
      .def(
          "load", [](Module& mod, const py::object& path, bool strict) { mod.load(path_arg(path), strict); },
          py::arg("path"), py::arg("strict") = true, "Read a safetensors file into the parameters.")
      .def(
          "train",
          [](const std::shared_ptr<Module>& mod, bool mode) {
            mod->train(mode);
            return mod;
          },
          py::arg("mode") = true)
      .def("eval",
           [](const std::shared_ptr<Module>& mod) {
             mod->eval();
             return mod;
           })
      .def_property_readonly("training", &Module::is_training)
      .def("num_parameters", &Module::num_parameters)
      .def("zero_grad", &Module::zero_grad, "Drop every parameter's accumulated gradient.")
      .def("set_step", &Module::set_step, py::arg("step"),
           "Announce training step `step` to the module tree (Performer feature redraws happen here).")
      .def("__repr__", &Module::describe)
      .def("__getattr__", [](const Module& mod, const std::string& name) -> py::object {
        if (auto c = mod.child(name)) return py::cast(c);
        if (const Tensor* p = mod.find_parameter(name)) return py::cast(*p);
        if (const Tensor* b = mod.find_buffer(name)) return py::cast(*b);
        throw py::attribute_error("'" + mod.type_name() + "' has no attribute, parameter or submodule '" +
                                  name + "'");
      });

  py::class_<nn::ModuleList, Module, std::shared_ptr<nn::ModuleList>>(nm, "ModuleList")
      .def(py::init([](const py::object& modules) {
             auto list = std::make_shared<nn::ModuleList>();
             if (!modules.is_none())
               for (auto item : modules) list->push_back(item.cast<std::shared_ptr<Module>>());
             return list;
           }),
           py::arg("modules") = py::none())
      .def("append", [](nn::ModuleList& l, std::shared_ptr<Module> mod) { l.push_back(std::move(mod)); })
      .def("__len__", &nn::ModuleList::size)
      .def("__getitem__", [](const nn::ModuleList& l, int64_t i) { return l.at(i < 0 ? i + l.size() : i); });

  auto linear = py::class_<nn::Linear, Module, std::shared_ptr<nn::Linear>>(nm, "Linear")
                    .def(py::init<int64_t, int64_t, bool>(), py::arg("in_features"), py::arg("out_features"),
                         py::arg("bias") = true)
                    .def_property_readonly("in_features", &nn::Linear::in_features)
                    .def_property_readonly("out_features", &nn::Linear::out_features)
                    .def_property_readonly("weight", &nn::Linear::weight)
                    .def_property_readonly("bias", [](const nn::Linear& l) -> py::object {
                      return l.has_bias() ? py::cast(l.bias()) : py::none();
                    });
  callable(linear);

  auto norm = py::class_<nn::LayerNorm, Module, std::shared_ptr<nn::LayerNorm>>(nm, "LayerNorm")
                  .def(py::init<int64_t, float>(), py::arg("normalized_shape"), py::arg("eps") = 1e-5f)
                  .def_property_readonly("normalized_shape",
                                         [](const nn::LayerNorm& l) { return py::make_tuple(l.dim()); })
                  .def_property_readonly("eps", &nn::LayerNorm::eps)
                  .def_property_readonly("weight", &nn::LayerNorm::weight)
                  .def_property_readonly("bias", &nn::LayerNorm::bias);
  callable(norm);

  auto emb = py::class_<nn::Embedding, Module, std::shared_ptr<nn::Embedding>>(nm, "Embedding")
                 .def(py::init<int64_t, int64_t>(), py::arg("num_embeddings"), py::arg("embedding_dim"))
                 .def_property_readonly("num_embeddings", &nn::Embedding::num_embeddings)
                 .def_property_readonly("embedding_dim", &nn::Embedding::embedding_dim)
                 .def_property_readonly("weight", &nn::Embedding::weight);
  callable(emb);

  auto drop = py::class_<nn::Dropout, Module, std::shared_ptr<nn::Dropout>>(nm, "Dropout")
                  .def(py::init<float>(), py::arg("p") = 0.5f)
                  .def_property_readonly("p", &nn::Dropout::p);
  callable(drop);

  auto ff = py::class_<nn::FeedForward, Module, std::shared_ptr<nn::FeedForward>>(nm, "FeedForward")
                .def(py::init([](int64_t d_model, int64_t d_ff, float dropout, const std::string& activation,
                                 int64_t chunks) {
                       return std::make_shared<nn::FeedForward>(d_model, d_ff, dropout,
                                                                nn::parse_activation(activation), chunks);
                     }),
                     py::arg("d_model"), py::arg("d_ff"), py::arg("dropout") = 0.0f,
                     py::arg("activation") = "gelu", py::arg("chunks") = 1,
                     "fc2(dropout(activation(fc1(x)))); chunks > 1 processes the positions in pieces under "
                     "checkpoint (Reformer's chunked feed-forward), with identical results.")
                .def_property("chunks", &nn::FeedForward::chunks, &nn::FeedForward::set_chunks)
                .def_property_readonly("d_model", &nn::FeedForward::d_model)
                .def_property_readonly("d_ff", &nn::FeedForward::d_ff)
                .def_property_readonly("activation", [](const nn::FeedForward& f) {
                  return nn::activation_name(f.activation());
                });
  callable(ff);

  auto fwd_pos = [](const nn::LearnedPositions& p, const Tensor& x, int64_t offset) {
    return p.forward(x, offset);
  };
  py::class_<nn::LearnedPositions, Module, std::shared_ptr<nn::LearnedPositions>>(nm, "LearnedPositions")
      .def(py::init<int64_t, int64_t>(), py::arg("max_len"), py::arg("d"))
      .def_property_readonly("max_len", &nn::LearnedPositions::max_len)
      .def_property_readonly("weight", &nn::LearnedPositions::weight)
      .def("forward", fwd_pos, py::arg("input"), py::arg("offset") = 0)
      .def("__call__", fwd_pos, py::arg("input"), py::arg("offset") = 0,
           "input [..., N, d] + weight[offset : offset + N].")
      .def("positions", &nn::LearnedPositions::positions, py::arg("n"), py::arg("offset") = 0);

  nm.def("sinusoidal_positions", &nn::sinusoidal_positions, py::arg("n"), py::arg("d"),
         "[n, d] table: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).");
  nm.def("apply_rotary", &nn::apply_rotary, py::arg("x"), py::arg("offset") = 0, py::arg("base") = 10000.0f,
         "Rotary embedding of x [..., N, d] at positions offset + t, GPT-NeoX 'rotate_half' pairing "
         "(feature i with i + d/2): x * cos + rotate_half(x) * sin.");

  py::module_ utils = nm.def_submodule("utils", "Helpers named like torch.nn.utils");
  if (py::hasattr(m, "clip_grad_norm_")) utils.attr("clip_grad_norm_") = m.attr("clip_grad_norm_");
}

}  // namespace eformer::python
