// Safetensors files, optimizers, learning-rate schedules and gradient clipping.
#include "bindings.h"
#include "eformer/io/io.h"
#include "eformer/optim/optim.h"

namespace eformer::python {
namespace {

std::string path_arg(const py::object& path) {
  return py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>();
}

std::vector<std::pair<std::string, Tensor>> named_tensors_arg(const py::object& tensors) {
  EF_CHECK(py::hasattr(tensors, "items"), ValueError,
           "save_safetensors: tensors must be a dict of name -> Tensor, got ",
           std::string(py::str(py::type::of(tensors).attr("__name__"))));
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto item : tensors.attr("items")()) {
    auto kv = item.cast<py::tuple>();
    EF_CHECK(py::isinstance<py::str>(kv[0]), ValueError, "save_safetensors: tensor names must be str, got ",
             std::string(py::repr(kv[0])));
    std::string name = kv[0].cast<std::string>();
    EF_CHECK(py::isinstance<Tensor>(kv[1]), ValueError, "save_safetensors: the value for '", name, "' is a ",
             std::string(py::str(py::type::of(kv[1]).attr("__name__"))), ", expected an eformer Tensor");
    out.emplace_back(name, kv[1].cast<Tensor>());
  }
  return out;
}

std::map<std::string, std::string> metadata_arg(const py::object& metadata) {
  std::map<std::string, std::string> out;
  if (metadata.is_none()) return out;
  EF_CHECK(py::hasattr(metadata, "items"), ValueError,
           "save_safetensors: metadata must be a dict of str -> str");
  for (auto item : metadata.attr("items")()) {
    auto kv = item.cast<py::tuple>();
    EF_CHECK(py::isinstance<py::str>(kv[0]) && py::isinstance<py::str>(kv[1]), ValueError,
             "save_safetensors: metadata entries must be str -> str, got ", std::string(py::repr(kv[0])),
             ": ", std::string(py::repr(kv[1])));
    out[kv[0].cast<std::string>()] = kv[1].cast<std::string>();
  }
  return out;
}

// A Tensor or an iterable of Tensors (a list, a generator such as model.parameters()).
std::vector<Tensor> params_arg(const py::object& params, const char* who) {
  if (py::isinstance<Tensor>(params)) return {params.cast<Tensor>()};
  std::vector<Tensor> out;
  for (auto p : py::iter(params)) {
    EF_CHECK(py::isinstance<Tensor>(p), ValueError, who, ": params must be Tensors, got ",
             std::string(py::str(py::type::of(p).attr("__name__"))),
             py::isinstance<py::dict>(p) ? " (parameter groups are not supported)" : "");
    out.push_back(p.cast<Tensor>());
  }
  return out;
}

py::dict tensors_dict(const std::map<std::string, Tensor>& tensors) {
  py::dict d;
  for (const auto& [name, t] : tensors) d[py::str(name)] = py::cast(t);
  return d;
}

}  // namespace

void bind_io_optim(py::module_& m) {
  using namespace eformer::optim;

  m.def(
      "save_safetensors",
      [](const py::object& path, const py::object& tensors, const py::object& metadata) {
        std::string p = path_arg(path);
        auto named = named_tensors_arg(tensors);
        auto meta = metadata_arg(metadata);
        py::gil_scoped_release release;
        io::save_safetensors(p, named, meta);
      },
      py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::none(),
      "Write a dict of name -> Tensor (and optional str -> str metadata) as a safetensors file, atomically.");
  m.def(
      "load_safetensors",
      [](const py::object& path, bool with_metadata) -> py::object {
        std::string p = path_arg(path);
        io::SafetensorsFile file;
        {
          py::gil_scoped_release release;
          file = io::load_safetensors(p);
        }
        py::dict tensors = tensors_dict(file.tensors);
        if (!with_metadata) return tensors;
        return py::make_tuple(tensors, py::cast(file.metadata));
      },
      py::arg("path"), py::arg("with_metadata") = false,
      "Read a safetensors file: a dict of name -> Tensor, or (dict, metadata) with with_metadata=True. "
      "Raises eformer.IOError (an OSError) naming the problem when the file is malformed.");
  m.def(
      "_parse_safetensors",
      [](const py::bytes& data) {
        io::SafetensorsFile file = io::parse_safetensors(std::string(data));
        return py::make_tuple(tensors_dict(file.tensors), py::cast(file.metadata));
      },
      "Parse safetensors bytes held in memory: (dict, metadata).");

  auto clip = [](const py::object& params, double max_norm) {
    auto ps = params_arg(params, "clip_grad_norm_");
    py::gil_scoped_release release;
    return clip_grad_norm(ps, max_norm);
  };
  const char* clip_doc =
      "Scale the gradients in place so that their global L2 norm is at most max_norm (as "
      "torch.nn.utils.clip_grad_norm_); returns the norm before clipping.";
  m.def("clip_grad_norm_", clip, py::arg("parameters"), py::arg("max_norm"), clip_doc);

  py::module_ om =
      m.def_submodule("optim", "Optimizers (AdamW, SGD), learning-rate schedules, gradient clipping");
  om.def("clip_grad_norm_", clip, py::arg("parameters"), py::arg("max_norm"), clip_doc);
  om.def("warmup_cosine", &warmup_cosine, py::arg("step"), py::arg("warmup_steps"), py::arg("total_steps"),
         py::arg("lr"), py::arg("min_lr") = 0.0,
         "Linear warmup (lr * (step + 1) / warmup_steps), then cosine decay to min_lr at total_steps.");

  py::class_<Optimizer>(om, "Optimizer")
      .def("step",
           [](Optimizer& o) {
             py::gil_scoped_release release;
             o.step();
           })
      .def(
          "zero_grad", [](Optimizer& o, bool set_to_none) { o.zero_grad(set_to_none); },
          py::arg("set_to_none") = true, "Drop every parameter's gradient (or zero it in place).")
      .def_property("lr", &Optimizer::lr, &Optimizer::set_lr)
      .def_property_readonly("params", [](const Optimizer& o) { return o.params(); })
      .def_property_readonly("step_count", &Optimizer::step_count)
      .def(
          "state_tensors",
          [](const Optimizer& o) {
            py::dict d;
            for (const auto& [name, t] : o.state_tensors()) d[py::str(name)] = py::cast(t);
            return d;
          },
          "The state as a dict of name -> Tensor ('step', '<i>.step', '<i>.<buffer>'), e.g. for "
          "save_safetensors.")
      .def(
          "load_state_tensors",
          [](Optimizer& o, const std::map<std::string, Tensor>& state) { o.load_state_tensors(state); },
          py::arg("state"))
      .def("__repr__", [](const Optimizer& o) {
        return o.name() + "(" + std::to_string(o.params().size()) +
               " params, lr=" + std::string(py::repr(py::float_(o.lr()))) + ")";
      });

  py::class_<AdamW, Optimizer>(om, "AdamW")
      .def(py::init([](const py::object& params, double lr, std::pair<double, double> betas, double eps,
                       double weight_decay) {
             return std::make_unique<AdamW>(params_arg(params, "AdamW"),
                                            AdamWOptions{lr, betas.first, betas.second, eps, weight_decay});
           }),
           py::arg("params"), py::arg("lr") = 1e-3, py::arg("betas") = std::make_pair(0.9, 0.999),
           py::arg("eps") = 1e-8, py::arg("weight_decay") = 1e-2)
      .def_property_readonly(
          "betas", [](const AdamW& o) { return std::make_pair(o.options().beta1, o.options().beta2); })
      .def_property_readonly("eps", [](const AdamW& o) { return o.options().eps; })
      .def_property_readonly("weight_decay", [](const AdamW& o) { return o.options().weight_decay; });

  py::class_<SGD, Optimizer>(om, "SGD")
      .def(py::init([](const py::object& params, double lr, double momentum, double dampening,
                       double weight_decay, bool nesterov) {
             return std::make_unique<SGD>(params_arg(params, "SGD"),
                                          SGDOptions{lr, momentum, dampening, weight_decay, nesterov});
           }),
           py::arg("params"), py::arg("lr") = 1e-3, py::arg("momentum") = 0.0, py::arg("dampening") = 0.0,
           py::arg("weight_decay") = 0.0, py::arg("nesterov") = false)
      .def_property_readonly("momentum", [](const SGD& o) { return o.options().momentum; })
      .def_property_readonly("dampening", [](const SGD& o) { return o.options().dampening; })
      .def_property_readonly("weight_decay", [](const SGD& o) { return o.options().weight_decay; })
      .def_property_readonly("nesterov", [](const SGD& o) { return o.options().nesterov; });
}

}  // namespace eformer::python
