#include "eformer/nn/module.h"

#include <algorithm>
#include <set>

#include "eformer/autograd/autograd.h"
#include "eformer/io/safetensors.h"
#include "eformer/ops/shape.h"

namespace eformer::nn {
namespace {

std::string join_names(const std::vector<std::string>& names) {
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
  return out + "]";
}

}  // namespace

void Module::check_new_name(const std::string& name, const char* what) const {
  EF_CHECK(!name.empty() && name.find('.') == std::string::npos, ValueError, where(), "the ", what, " name '",
           name, "' is invalid; expected a non-empty name without '.'");
  auto taken = [&](const auto& entries) {
    return std::any_of(entries.begin(), entries.end(), [&](const auto& e) { return e.first == name; });
  };
  EF_CHECK(!taken(params_) && !taken(buffers_) && !taken(children_), ValueError, where(), "cannot register ",
           what, " '", name, "': the name is already taken by a parameter, buffer or submodule");
}

Tensor& Module::register_parameter(const std::string& name, Tensor value) {
  check_new_name(name, "parameter");
  EF_CHECK(value.defined(), ValueError, where(), "parameter '", name, "' is an undefined tensor");
  EF_CHECK(value.dtype() == DType::Float32, ShapeError, where(), "parameter '", name, "' has dtype ",
           dtype_name(value.dtype()), "; expected float32");
  EF_CHECK(is_leaf(value), ValueError, where(), "parameter '", name,
           "' is the result of an op; expected a leaf tensor (detach it first)");
  set_requires_grad(value, true);
  params_.emplace_back(name, std::move(value));
  return params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor value) {
  check_new_name(name, "buffer");
  EF_CHECK(value.defined(), ValueError, where(), "buffer '", name, "' is an undefined tensor");
  buffers_.emplace_back(name, value.detach());
  return buffers_.back().second;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> child) {
  check_new_name(name, "submodule");
  EF_CHECK(child != nullptr, ValueError, where(), "submodule '", name, "' is null");
  child->train(training_);
  children_.emplace_back(name, std::move(child));
}

void Module::collect(const std::string& prefix, NamedTensors& params, NamedTensors* buffers) const {
  for (const auto& [name, t] : params_) params.emplace_back(prefix + name, t);
  if (buffers)
    for (const auto& [name, t] : buffers_) buffers->emplace_back(prefix + name, t);
  for (const auto& [name, c] : children_) c->collect(prefix + name + ".", params, buffers);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", out, nullptr);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors params, buffers;
  collect("", params, &buffers);
  return buffers;
}

std::shared_ptr<Module> Module::child(const std::string& name) const {
  for (const auto& [n, c] : children_)
    if (n == name) return c;
  return nullptr;
}

const Tensor* Module::find_parameter(const std::string& name) const {
  for (const auto& [n, t] : params_)
    if (n == name) return &t;
  return nullptr;
}

const Tensor* Module::find_buffer(const std::string& name) const {
  for (const auto& [n, t] : buffers_)
    if (n == name) return &t;
  return nullptr;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, c] : children_) c->train(on);
}

void Module::set_step(int64_t step) {
  on_step(step);
  for (auto& [name, c] : children_) c->set_step(step);
}

void Module::zero_grad() {
  for (const auto& [name, t] : named_parameters()) eformer::zero_grad(t);
}

NamedTensors Module::state_dict() const {
  NamedTensors params, buffers;
  collect("", params, &buffers);
  params.insert(params.end(), buffers.begin(), buffers.end());
  return params;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  const NamedTensors own = state_dict();
  std::vector<std::string> missing, unexpected;
  std::set<std::string> own_names;
  std::vector<std::pair<Tensor, Tensor>> copies;  // (destination, source)
  for (const auto& [name, dst] : own) {
    own_names.insert(name);
    auto it = state.find(name);
    if (it == state.end()) {
      missing.push_back(name);
      continue;
    }
    const Tensor& src = it->second;
    EF_CHECK(src.defined(), ValueError, where(), "load_state_dict: '", name, "' is an undefined tensor");
    EF_CHECK(src.shape() == dst.shape(), ShapeError, where(), "load_state_dict: '", name, "' expects shape ",
             shape_str(dst.shape()), ", found ", shape_str(src.shape()));
    EF_CHECK(src.dtype() == dst.dtype(), ShapeError, where(), "load_state_dict: '", name, "' expects dtype ",
             dtype_name(dst.dtype()), ", found ", dtype_name(src.dtype()));
    copies.emplace_back(dst, src);
  }
  for (const auto& [name, t] : state)
    if (!own_names.count(name)) unexpected.push_back(name);
  if (strict && (!missing.empty() || !unexpected.empty())) {
    std::string msg = where() + "load_state_dict (strict):";
    if (!missing.empty())
      msg += " missing " + std::to_string(missing.size()) + " " + join_names(missing) + ";";
    if (!unexpected.empty())
      msg += " unexpected " + std::to_string(unexpected.size()) + " " + join_names(unexpected) + ";";
    msg += " pass strict=false to load the entries that match";
    throw ValueError(msg);
  }
  // In place, without recording: the parameters stay the same leaves, with the new values.
  autograd::NoGradGuard no_grad;
  for (auto& [dst, src] : copies)
    if (!dst.storage() || src.storage() != dst.storage() || src.offset() != dst.offset())
      copy_into(dst.detach(), src.detach());
}

void Module::save(const std::string& path) const { io::save_safetensors(path, state_dict()); }

void Module::load(const std::string& path, bool strict) {
  io::SafetensorsFile file = io::load_safetensors(path);
  load_state_dict(file.tensors, strict);
}

std::string ModuleList::describe() const { return "ModuleList(size=" + std::to_string(size()) + ")"; }

void ModuleList::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(named_children().size()), std::move(m));
}

const std::shared_ptr<Module>& ModuleList::at(int64_t i) const {
  EF_CHECK(i >= 0 && i < size(), IndexError, where(), "index ", i, " is out of range; expected 0 <= i < ",
           size());
  return named_children()[size_t(i)].second;
}

void ModuleList::throw_wrong_type(int64_t i, const char* expected) const {
  throw ValueError(detail::concat(where(), "element ", i, " is a ", at(i)->describe(),
                                  ", not the requested type (", expected, ")"));
}

}  // namespace eformer::nn
