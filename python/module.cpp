// The Python module eformer._C; python/eformer/__init__.py re-exports it.
#include <cstdio>
#include <string>
#include <vector>

#include "bindings.h"
#include "common.h"  // cli/: cli::run

namespace eformer::python {

std::vector<int64_t> dims_arg(const py::object& dim, int64_t ndim) {
  std::vector<int64_t> dims;
  if (dim.is_none()) {
    for (int64_t i = 0; i < ndim; ++i) dims.push_back(i);
  } else if (py::isinstance<py::int_>(dim)) {
    dims.push_back(dim.cast<int64_t>());
  } else {
    try {
      dims = dim.cast<std::vector<int64_t>>();
    } catch (const py::cast_error&) {  // pybind's "Unable to cast Python instance" names no argument
      throw ValueError("dim: expected an int or a sequence of ints, got " + std::string(py::repr(dim)));
    }
  }
  return dims;
}

}  // namespace eformer::python

// The module's name is compiled in (CMake builds one per ISA: _C, and _C_avx512 in portable builds).
#ifndef EFORMER_MODULE_NAME
#define EFORMER_MODULE_NAME _C
#endif
#ifndef EFORMER_ISA_NAME
#define EFORMER_ISA_NAME "unknown"
#endif

PYBIND11_MODULE(EFORMER_MODULE_NAME, m) {
  namespace py = pybind11;
  using namespace eformer::python;
  m.doc() = "eformer: efficient Transformers on the CPU";
  m.attr("__version__") = eformer::kVersion;
  m.attr("__isa__") = EFORMER_ISA_NAME;  // what the engine in this module was compiled for
  m.def(
      "_cli",
      [](std::vector<std::string> args) {
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        py::gil_scoped_release release;
        const int rc = eformer::cli::run(int(args.size()), argv.data());
        std::fflush(nullptr);
        return rc;
      },
      py::arg("argv"), "Runs the eformer command line (argv[0] is the program name); returns its exit code.");
  // Base first: pybind11 tries the most recently registered translator first.
  static py::exception<eformer::Error> error(m, "Error", PyExc_RuntimeError);
  py::register_exception<eformer::ShapeError>(m, "ShapeError", PyExc_ValueError);
  py::register_exception<eformer::ValueError>(m, "ValueError", PyExc_ValueError);
  py::register_exception<eformer::IndexError>(m, "IndexError", PyExc_IndexError);
  py::register_exception<eformer::IOError>(m, "IOError", PyExc_OSError);
  py::register_exception<eformer::MemoryError>(m, "MemoryError", PyExc_MemoryError);
  bind_tensor(m);
  bind_ops_core(m);
  bind_ops_math(m);
  bind_ops_index(m);
  bind_io_optim(m);
  bind_attention(m);
  bind_nn(m);
  bind_data(m);
  bind_models(m);
  bind_train(m);
}
