#include "eformer/optim/optimizer.h"

#include <cmath>
#include <cstring>

#include "eformer/autograd/autograd.h"
#include "eformer/core/error.h"

namespace eformer::optim {
namespace {

Tensor int_scalar(int64_t v) { return Tensor::from_vector(std::vector<int64_t>{v}, Shape{}); }

int64_t read_int_scalar(const Tensor& t, const std::string& key) {
  EF_CHECK(t.defined() && t.dtype() == DType::Int64 && t.numel() == 1, ShapeError, "load_state_tensors: '",
           key, "' must be a one-element int64 tensor, got ",
           t.defined() ? t.describe() : "an undefined tensor");
  int64_t v = t.to_int_vector()[0];
  EF_CHECK(v >= 0, ValueError, "load_state_tensors: '", key, "' is ", v, "; expected a count >= 0");
  return v;
}

}  // namespace

Optimizer::Optimizer(std::string name, std::vector<Tensor> params, double lr,
                     std::vector<std::string> buffer_names)
    : name_(std::move(name)), params_(std::move(params)), buffer_names_(std::move(buffer_names)) {
  EF_CHECK(!params_.empty(), ValueError, name_, ": got an empty parameter list");
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    EF_CHECK(p.defined(), ValueError, name_, ": parameter ", i, " is undefined");
    EF_CHECK(p.dtype() == DType::Float32, ValueError, name_, ": parameter ", i, " is ", p.describe(),
             "; expected a float32 tensor");
    EF_CHECK(is_leaf(p) && requires_grad(p), ValueError, name_, ": parameter ", i, " (", p.describe(),
             ") is ", is_leaf(p) ? "a leaf that does not require grad" : "not a leaf (it has a grad_fn)",
             "; expected a leaf tensor with requires_grad=True");
    EF_CHECK(p.is_contiguous(), ValueError, name_, ": parameter ", i, " (", p.describe(),
             ") is a non-contiguous view; expected contiguous storage");
    for (size_t j = 0; j < i; ++j)
      EF_CHECK(params_[j].storage() != p.storage(), ValueError, name_, ": parameters ", j, " and ", i,
               params_[j].is_same(p) ? " are the same tensor" : " share storage", "; each may appear once");
  }
  set_lr(lr);
  state_.resize(params_.size());
}

void Optimizer::set_lr(double lr) {
  EF_CHECK(std::isfinite(lr) && lr >= 0.0, ValueError, name_, ": invalid learning rate ", lr,
           "; expected a finite value >= 0");
  lr_ = lr;
}

void Optimizer::zero_grad(bool set_to_none) {
  for (const Tensor& p : params_) {
    Tensor g = grad(p);
    if (set_to_none || !g.defined()) {
      eformer::zero_grad(p);
    } else if (g.is_contiguous()) {
      std::memset(g.raw_data(), 0, size_t(g.numel()) * dtype_size(g.dtype()));
    } else {
      set_grad(p, Tensor::zeros(g.shape(), g.dtype()));
    }
  }
}

Optimizer::ParamState& Optimizer::state_for(size_t i) {
  ParamState& s = state_[i];
  if (s.buffers.empty())
    for (size_t b = 0; b < buffer_names_.size(); ++b) s.buffers.push_back(Tensor::zeros(params_[i].shape()));
  return s;
}

Tensor Optimizer::grad_for(size_t i) const {
  Tensor g = grad(params_[i]);
  if (!g.defined()) return g;
  EF_CHECK(g.dtype() == DType::Float32, ShapeError, name_, " step: the gradient of parameter ", i, " is ",
           g.describe(), "; expected float32");
  EF_CHECK(g.shape() == params_[i].shape(), ShapeError, name_, " step: parameter ", i, " has shape ",
           shape_str(params_[i].shape()), " but its gradient has shape ", shape_str(g.shape()));
  return g.contiguous_data();
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back("step", int_scalar(step_count_));
  for (size_t i = 0; i < state_.size(); ++i) {
    const ParamState& s = state_[i];
    if (s.steps == 0 && s.buffers.empty()) continue;
    std::string prefix = std::to_string(i) + ".";
    out.emplace_back(prefix + "step", int_scalar(s.steps));
    for (size_t b = 0; b < s.buffers.size(); ++b) out.emplace_back(prefix + buffer_names_[b], s.buffers[b]);
  }
  return out;
}

void Optimizer::load_state_tensors(const std::map<std::string, Tensor>& state) {
  auto step_it = state.find("step");
  EF_CHECK(step_it != state.end(), ValueError, "load_state_tensors: no 'step' entry");
  int64_t step_count = read_int_scalar(step_it->second, "step");
  // Group "<i>.<field>" entries by parameter; anything else is an error.
  std::vector<std::map<std::string, Tensor>> per_param(params_.size());
  for (const auto& [key, t] : state) {
    if (key == "step") continue;
    size_t dot = key.find('.');
    std::string index = key.substr(0, dot);
    bool numeric = dot != std::string::npos && !index.empty() && index.size() < 10 &&
                   index.find_first_not_of("0123456789") == std::string::npos;
    EF_CHECK(numeric, ValueError, "load_state_tensors: unexpected entry '", key,
             "'; expected 'step' or '<param index>.<field>'");
    size_t i = std::stoul(index);
    EF_CHECK(i < params_.size(), ValueError, "load_state_tensors: entry '", key, "' names parameter ", i,
             " but ", name_, " has ", params_.size(), " parameters");
    std::string field = key.substr(dot + 1);
    bool known = field == "step";
    for (const std::string& b : buffer_names_) known = known || field == b;
    if (!known) {
      std::string valid = "step";
      for (const std::string& b : buffer_names_) valid += ", " + b;
      throw ValueError("load_state_tensors: unknown field in '" + key + "' for " + name_ +
                       "; expected one of: " + valid);
    }
    per_param[i][field] = t;
  }
  std::vector<ParamState> loaded(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& fields = per_param[i];
    if (fields.empty()) continue;
    EF_CHECK(fields.size() == buffer_names_.size() + 1, ValueError, "load_state_tensors: parameter ", i,
             " has ", fields.size(), " state entries; expected 'step' and ", buffer_names_.size(),
             " buffers");
    loaded[i].steps = read_int_scalar(fields.at("step"), std::to_string(i) + ".step");
    for (const std::string& b : buffer_names_) {
      const Tensor& t = fields.at(b);
      EF_CHECK(t.defined() && t.dtype() == DType::Float32 && t.shape() == params_[i].shape(), ShapeError,
               "load_state_tensors: '", i, ".", b, "' is ", t.defined() ? t.describe() : "undefined",
               "; expected float32 of shape ", shape_str(params_[i].shape()));
      loaded[i].buffers.push_back(t.clone_data());
    }
  }
  state_ = std::move(loaded);
  step_count_ = step_count;
}

}  // namespace eformer::optim
