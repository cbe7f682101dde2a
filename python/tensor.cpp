// Tensor, numpy conversion, autograd, allocator counters, RNG and threads.
#include <algorithm>
#include <cstring>
#include <limits>

#include "bindings.h"
#include "eformer/core/parallel.h"

namespace eformer::python {
namespace {

// ValueError when a value of `arr` would change on conversion to `dt`: a finite float beyond
// float32's range (it would become inf), an integer beyond int64's (uint64 would wrap negative), a
// float that is not a whole number in int64's range.
void check_fits(const py::module_& np, const py::array& arr, DType dt) {
  const char kind = arr.dtype().kind();
  if (arr.size() == 0 || dt == DType::Bool) return;
  auto any = [](const py::object& mask) { return mask.attr("any")().cast<bool>(); };
  if (dt == DType::Float32 && kind == 'f' && arr.itemsize() > 4) {  // float32 and float16 always fit
    py::object beyond = np.attr("isfinite")(arr).attr("__and__")(
        np.attr("abs")(arr).attr("__gt__")(double(std::numeric_limits<float>::max())));
    EF_CHECK(!any(beyond), ValueError, "tensor: a finite value beyond float32's range (", std::numeric_limits<float>::max(),
             ") would become inf; scale the data or clip it");
  }
  if (dt == DType::Int64 && kind == 'u' && arr.itemsize() == 8)
    EF_CHECK(!any(arr.attr("__gt__")(py::int_(std::numeric_limits<int64_t>::max()))), ValueError,
             "tensor: a uint64 value beyond int64's range (2^63 - 1) would wrap negative");
  if (dt == DType::Int64 && kind == 'f') {
    py::object whole = np.attr("isfinite")(arr).attr("__and__")(np.attr("equal")(np.attr("floor")(arr), arr));
    py::object in_range = np.attr("abs")(arr).attr("__lt__")(9.2233720368547758e18);
    EF_CHECK(whole.attr("__and__")(in_range).attr("all")().cast<bool>(), ValueError,
             "tensor: int64 from floats needs whole numbers in int64's range; got a fraction, inf, nan or a "
             "value beyond 2^63");
  }
}

Tensor from_numpy(const py::object& data, const py::object& dtype) {
  py::module_ np = py::module_::import("numpy");
  py::array arr = np.attr("asarray")(data);
  std::string want = dtype.is_none() ? "" : py::str(dtype).cast<std::string>();
  char kind = arr.dtype().kind();
  DType dt;
  if (want == "float32" || (want.empty() && kind == 'f')) {
    dt = DType::Float32;
  } else if (want == "int64" || (want.empty() && (kind == 'i' || kind == 'u'))) {
    dt = DType::Int64;
  } else if (want == "bool" || (want.empty() && kind == 'b')) {
    dt = DType::Bool;
  } else {
    throw ValueError("tensor: cannot make a tensor of dtype '" + (want.empty() ? std::string(py::str(arr.dtype())) : want) +
                     "'; expected float32, int64 or bool data");
  }
  check_fits(np, arr, dt);
  Shape shape(arr.shape(), arr.shape() + arr.ndim());
  Tensor t = Tensor::empty(shape, dt);
  py::array conv;
  switch (dt) {
    case DType::Float32: conv = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr); break;
    case DType::Int64: conv = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr); break;
    case DType::Bool: conv = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(arr); break;
    default: break;
  }
  if (!conv) throw ValueError("tensor: could not convert the data to " + std::string(dtype_name(dt)));
  // Large arrays by 1 MiB pieces over the threads (one core alone does not reach the memory bandwidth).
  const size_t bytes = size_t(t.numel()) * dtype_size(dt);
  constexpr int64_t kPiece = int64_t(1) << 20;
  auto* dst = static_cast<char*>(t.raw_data());
  const auto* src = static_cast<const char*>(conv.data());
  parallel::parallel_for((int64_t(bytes) + kPiece - 1) / kPiece, 4, [&](int64_t p0, int64_t p1) {
    const size_t begin = size_t(p0 * kPiece), end = std::min(bytes, size_t(p1 * kPiece));
    std::memcpy(dst + begin, src + begin, end - begin);
  });
  return t;
}

py::array to_numpy(const Tensor& t) {
  Tensor c = t.contiguous_data();
  std::vector<py::ssize_t> shape(c.shape().begin(), c.shape().end());
  py::array out;
  switch (c.dtype()) {
    case DType::Float32: out = py::array_t<float>(shape); break;
    case DType::Int64: out = py::array_t<int64_t>(shape); break;
    case DType::Bool: out = py::array_t<bool>(shape); break;
    default: throw ValueError(std::string("numpy: dtype ") + dtype_name(c.dtype()) + " has no numpy equivalent here");
  }
  std::memcpy(out.mutable_data(), c.raw_data(), size_t(c.numel()) * dtype_size(c.dtype()));
  return out;
}

Shape shape_arg(const py::args& args) {
  try {
    if (args.size() == 1 && !py::isinstance<py::int_>(args[0])) return args[0].cast<Shape>();
    return args.cast<Shape>();
  } catch (const py::cast_error&) {
    throw ValueError("shape: expected sizes that are ints in int64's range, got " +
                     std::string(py::str(args.size() == 1 ? py::object(args[0]) : py::object(args))));
  }
}

DType dtype_arg(const std::string& s) {
  if (s == "float32") return DType::Float32;
  if (s == "int64") return DType::Int64;
  if (s == "bool") return DType::Bool;
  throw ValueError("dtype '" + s + "' is not one of float32, int64, bool");
}

Tensor with_grad(Tensor t, bool needs_grad) {
  if (needs_grad) set_requires_grad(t, true);
  return t;
}

}  // namespace

void bind_tensor(py::module_& m) {
  py::class_<Tensor>(m, "Tensor")
      .def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape())); })
      .def_property_readonly("dtype", [](const Tensor& t) { return std::string(dtype_name(t.dtype())); })
      .def_property_readonly("ndim", &Tensor::dim)
      .def("dim", &Tensor::dim)
      .def("numel", &Tensor::numel)
      .def("size", [](const Tensor& t, py::object dim) -> py::object {
            if (dim.is_none()) return py::tuple(py::cast(t.shape()));
            return py::int_(t.size(dim.cast<int64_t>()));
          }, py::arg("dim") = py::none())
      .def("is_contiguous", &Tensor::is_contiguous)
      .def("numpy", &to_numpy)
      .def("item", [](const Tensor& t) -> py::object {
            EF_CHECK(t.numel() == 1, ShapeError, "item: tensor of shape ", shape_str(t.shape()), " has ", t.numel(),
                     " elements; expected 1");
            return to_numpy(t).attr("reshape")(-1)[py::int_(0)].attr("item")();
          })
      .def("tolist", [](const Tensor& t) { return to_numpy(t).attr("tolist")(); })
      .def("detach", &Tensor::detach)
      .def("clone", [](const Tensor& t) { return add_scalar(t, 0.f); })
      .def_property("requires_grad", [](const Tensor& t) { return requires_grad(t); },
                    [](const Tensor& t, bool v) { set_requires_grad(t, v); })
      .def("requires_grad_", [](const Tensor& t, bool v) { set_requires_grad(t, v); return t; },
           py::arg("requires_grad") = true)
      .def_property("grad", [](const Tensor& t) -> py::object {
            Tensor g = grad(t);
            return g.defined() ? py::cast(g) : py::none();
          },
          [](const Tensor& t, py::object g) { set_grad(t, g.is_none() ? Tensor() : g.cast<Tensor>()); })
      .def_property_readonly("is_leaf", [](const Tensor& t) { return is_leaf(t); })
      .def_property_readonly("grad_fn", [](const Tensor& t) -> py::object {
            auto& meta = t.autograd_meta();
            if (!meta || !meta->grad_fn) return py::none();
            return py::str(meta->grad_fn->name);
          })
      .def("backward", [](const Tensor& t, py::object gradient, bool retain_graph) {
            backward(t, gradient.is_none() ? Tensor() : gradient.cast<Tensor>(), retain_graph);
          }, py::arg("gradient") = py::none(), py::arg("retain_graph") = false)
      .def("__repr__", [](const Tensor& t) {
            std::string body = py::str(to_numpy(t));
            std::string extra = requires_grad(t) ? ", requires_grad=True" : "";
            return "tensor(" + body + extra + ", dtype=" + dtype_name(t.dtype()) + ")";
          })
      .def("__len__", [](const Tensor& t) {
            EF_CHECK(t.dim() > 0, ShapeError, "len() of a 0-d tensor");
            return t.shape()[0];
          })
      .def("__array__", [](const Tensor& t, py::args) { return to_numpy(t); });

  m.def("tensor", [](const py::object& data, bool requires_grad, const py::object& dtype) {
        return with_grad(from_numpy(data, dtype), requires_grad);
      }, py::arg("data"), py::arg("requires_grad") = false, py::arg("dtype") = py::none(),
      "A tensor holding a copy of `data` (a numpy array, list or number).");
  m.def("from_numpy", [](const py::object& a) { return from_numpy(a, py::none()); });
  m.def("zeros", [](py::args shape, const std::string& dtype, bool rg) {
        return with_grad(Tensor::zeros(shape_arg(shape), dtype_arg(dtype)), rg);
      }, py::kw_only(), py::arg("dtype") = "float32", py::arg("requires_grad") = false);
  m.def("ones", [](py::args shape, const std::string& dtype, bool rg) {
        return with_grad(Tensor::full(shape_arg(shape), 1.0, dtype_arg(dtype)), rg);
      }, py::kw_only(), py::arg("dtype") = "float32", py::arg("requires_grad") = false);
  m.def("full", [](const Shape& shape, double value, const std::string& dtype, bool rg) {
        return with_grad(Tensor::full(shape, value, dtype_arg(dtype)), rg);
      }, py::arg("size"), py::arg("fill_value"), py::kw_only(), py::arg("dtype") = "float32",
      py::arg("requires_grad") = false);
  m.def("randn", [](py::args shape, bool rg) {
        Tensor t = Tensor::empty(shape_arg(shape));
        rng::normal_(t.data<float>(), t.numel());
        return with_grad(t, rg);
      }, py::kw_only(), py::arg("requires_grad") = false, "Normal draws from the seeded default generator.");
  m.def("rand", [](py::args shape, bool rg) {
        Tensor t = Tensor::empty(shape_arg(shape));
        rng::uniform_(t.data<float>(), t.numel());
        return with_grad(t, rg);
      }, py::kw_only(), py::arg("requires_grad") = false, "Uniform [0, 1) draws from the seeded default generator.");

  // Autograd.
  m.def("is_grad_enabled", &autograd::is_grad_enabled);
  m.def("_set_grad_enabled", [](bool on) {
    // Guards are scoped in C++; from Python the context manager in __init__.py toggles the flag.
    static thread_local std::unique_ptr<autograd::NoGradGuard> guard;
    if (!on && !guard) guard = std::make_unique<autograd::NoGradGuard>();
    if (on) guard.reset();
  });
  m.def("backward", [](const std::vector<Tensor>& tensors, const std::vector<Tensor>& grads, bool retain_graph) {
        autograd::backward(tensors, grads, retain_graph);
      }, py::arg("tensors"), py::arg("grad_tensors") = std::vector<Tensor>{}, py::arg("retain_graph") = false);
  m.def("_record_custom", [](const std::string& name, const Tensor& out, const std::vector<Tensor>& inputs,
                             py::function backward_fn) {
    return autograd::record(name.c_str(), out, inputs, [backward_fn, name](const Tensor& g) {
      py::gil_scoped_acquire gil;
      py::list grads = backward_fn(g);
      std::vector<Tensor> result;
      for (auto item : grads) result.push_back(item.is_none() ? Tensor() : item.cast<Tensor>());
      return result;
    });
  });
  m.def("checkpoint", [](py::function fn, py::args inputs) {
        std::vector<Tensor> ins;
        for (auto a : inputs) ins.push_back(a.cast<Tensor>());
        return autograd::checkpoint([fn](const std::vector<Tensor>& xs) {
          py::gil_scoped_acquire gil;
          py::tuple args(xs.size());
          for (size_t i = 0; i < xs.size(); ++i) args[i] = py::cast(xs[i]);
          return fn(*args).cast<Tensor>();
        }, ins);
      }, "checkpoint(fn, *inputs): run fn without saving activations; recompute it (same random draws) in backward.");

  // Allocator, RNG, threads.
  m.def("memory_stats", [] {
    auto s = allocator::stats();
    py::dict d;
    d["live_bytes"] = s.live_bytes;
    d["peak_bytes"] = s.peak_bytes;
    d["allocations"] = s.allocations;
    d["cached_bytes"] = s.cached_bytes;
    return d;
  });
  m.def("reset_peak_memory_stats", &allocator::reset_peak);
  m.def("empty_cache", &allocator::empty_cache, "Return cached large blocks to the system.");
  m.def("manual_seed", [](uint64_t seed) { rng::manual_seed(seed); });
  m.def("get_rng_state", [] {
    auto s = rng::default_generator().state();
    return py::make_tuple(s.seed, s.stream, s.counter);
  });
  m.def("set_rng_state", [](std::tuple<uint64_t, uint64_t, uint64_t> s) {
    rng::default_generator().set_state({std::get<0>(s), std::get<1>(s), std::get<2>(s)});
  });
  m.def("philox", [](uint64_t seed, uint64_t stream, uint64_t counter) {
    auto w = rng::philox(seed, stream, counter);
    return py::make_tuple(w[0], w[1], w[2], w[3]);
  });
  m.def("set_num_threads", &parallel::set_num_threads);
  m.def("get_num_threads", &parallel::num_threads);
}

}  // namespace eformer::python
