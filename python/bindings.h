// Shared declarations of the Python module's translation units (one per area).
#pragma once
#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "eformer/eformer.h"

namespace eformer::python {
namespace py = pybind11;

void bind_tensor(py::module_& m);       // tensor.cpp: Tensor, numpy, autograd, allocator, rng
void bind_ops_core(py::module_& m);     // ops_core.cpp: elementwise, reduce, shape, matmul
void bind_ops_math(py::module_& m);     // ops_math.cpp: activations, softmax, layer norm, dropout, loss
void bind_ops_index(py::module_& m);    // ops_index.cpp: select, cumsum, gather/scatter/sort, conv1d, embedding
void bind_io_optim(py::module_& m);     // io_optim.cpp: safetensors, optimizers, schedules
void bind_attention(py::module_& m);    // attention.cpp: eformer.attention(q, k, v, kind=...)
// A Capabilities as a dict of bools (attention.cpp), shared by the registry listing and Mechanism.
py::dict capabilities_to_python(const attention::Capabilities& c);
void bind_nn(py::module_& m);           // nn.cpp: eformer.nn modules
void bind_data(py::module_& m);         // data.cpp: tokenizer, corpora, batches
void bind_data_tasks(py::module_& dm);  // tasks.cpp: Fashion-MNIST, ListOps, Pathfinder, PNG (into eformer.data)
void bind_models(py::module_& m);       // models.cpp: mechanisms, model configs, LanguageModel
void bind_train(py::module_& m);        // train.cpp: training loop, checkpoints, generation

// A dims argument: an int or a sequence of ints (like torch's dim=).
std::vector<int64_t> dims_arg(const py::object& dim, int64_t ndim);

// A Python value (dict, list, number, ...) or a JSON string as JSON.
inline nlohmann::json to_json_value(const py::object& o) {
  if (py::isinstance<py::str>(o)) return nlohmann::json::parse(o.cast<std::string>());
  return nlohmann::json::parse(py::module_::import("json").attr("dumps")(o).cast<std::string>());
}

}  // namespace eformer::python
