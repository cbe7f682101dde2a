// The optimizer base: a list of float32 leaf parameters updated in place from their .grad.
// Per-parameter state (moment buffers, step counts) is created on a parameter's first update, as in
// PyTorch, and can be read out and restored for checkpoints as named tensors:
//   "step"         int64 0-d   calls to step()
//   "<i>.step"     int64 0-d   updates applied to parameter i (i is its index in params())
//   "<i>.<buffer>" float32     a state buffer of parameter i, shaped like it (e.g. "0.exp_avg")
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "eformer/core/tensor.h"

namespace eformer::optim {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  const std::string& name() const { return name_; }  // "AdamW", "SGD"
  // Applies one update to every parameter that has a gradient; parameters without one are skipped.
  virtual void step() = 0;
  // Drops every parameter's gradient (PyTorch's default), or with set_to_none = false fills the
  // existing gradients with zeros in place.
  void zero_grad(bool set_to_none = true);

  const std::vector<Tensor>& params() const { return params_; }
  double lr() const { return lr_; }
  void set_lr(double lr);  // ValueError when negative or not finite
  int64_t step_count() const { return step_count_; }

  // The state as named tensors (see above); buffers are the live tensors, not copies.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Replaces the state with copies of `state` (as produced by state_tensors, e.g. loaded from a
  // safetensors file). ValueError on a missing "step", an unknown name, a parameter index out of
  // range or an incomplete parameter state; ShapeError on a wrong shape or dtype.
  void load_state_tensors(const std::map<std::string, Tensor>& state);

 protected:
  // Checks the parameters (defined, float32, contiguous leaves requiring grad, no repeats) and lr.
  Optimizer(std::string name, std::vector<Tensor> params, double lr, std::vector<std::string> buffer_names);

  struct ParamState {
    int64_t steps = 0;            // updates applied to this parameter
    std::vector<Tensor> buffers;  // one per buffer name; empty until the first update
  };
  // The state of parameter i, its buffers created zero-filled on first use.
  ParamState& state_for(size_t i);
  // The gradient of parameter i as contiguous float32 data, or undefined when it has none.
  Tensor grad_for(size_t i) const;

  std::string name_;
  std::vector<Tensor> params_;
  std::vector<ParamState> state_;
  std::vector<std::string> buffer_names_;
  double lr_ = 0.0;
  int64_t step_count_ = 0;
};

}  // namespace eformer::optim
