// Module: the unit models are built from (like torch.nn.Module). A module owns named parameters
// (leaf tensors that require a gradient), named buffers (state saved with the weights but not
// trained, e.g. fixed random features) and named submodules, all kept in registration order.
// Dotted names ("blocks.0.ffn.fc1.weight") come from walking that tree, so state_dict() files are
// laid out like PyTorch's and interoperate through safetensors.
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "eformer/core/tensor.h"

namespace eformer::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  // `type_name` names the module in error messages ("Linear", "FeedForward").
  explicit Module(std::string type_name) : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& type_name() const { return type_name_; }
  // A one-line description for messages and repr, e.g. "Linear(in=4, out=3, bias=true)".
  virtual std::string describe() const { return type_name_ + "()"; }

  // Registers a float32 leaf as a parameter (marking it requires_grad) and returns a reference to
  // the stored handle (stable for the module's lifetime). Names are non-empty, without '.', and
  // unique among this module's parameters, buffers and children: otherwise a ValueError.
  Tensor& register_parameter(const std::string& name, Tensor value);
  // Registers state that is saved and loaded with the parameters but not trained (no gradient).
  Tensor& register_buffer(const std::string& name, Tensor value);
  // Registers a child; its parameters appear under "<name>.".
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> child) {
    add_child(name, child);
    return child;
  }

  // Everything below walks the tree depth-first in registration order: own parameters first,
  // then each child's.
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const {
    return children_;
  }
  // The named direct child / own parameter / own buffer, or nullptr when there is none.
  std::shared_ptr<Module> child(const std::string& name) const;
  const Tensor* find_parameter(const std::string& name) const;
  const Tensor* find_buffer(const std::string& name) const;
  int64_t num_parameters() const;  // total elements over all parameters

  // Training mode (dropout active) for this module and every descendant.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Tells this module and every descendant that training step `step` (0-based) is about to run;
  // the trainer calls it before each step. Modules with step-dependent state (Performer feature
  // redraws) override on_step.
  void set_step(int64_t step);
  virtual void on_step(int64_t /*step*/) {}
  // Drops every parameter's accumulated gradient.
  void zero_grad();

  // Parameters, then buffers, in the order above (the tensors themselves, not copies).
  NamedTensors state_dict() const;
  // Copies values into the parameters and buffers in place (handles held elsewhere, e.g. by an
  // optimizer, see the new values). Everything is checked before anything is copied:
  // strict: names missing from `state` and names in `state` that are not ours are a ValueError
  // listing them; non-strict: both are ignored. A shape or dtype mismatch is always a ShapeError
  // naming the entry, the expected and the found shape.
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);
  // state_dict() as a safetensors file (written atomically), and back.
  void save(const std::string& path) const;
  void load(const std::string& path, bool strict = true);

 protected:
  // For subclasses that check an argument: "Linear(in=4, out=3, bias=true): " prefixes.
  std::string where() const { return describe() + ": "; }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> child);
  void check_new_name(const std::string& name, const char* what) const;
  void collect(const std::string& prefix, NamedTensors& params, NamedTensors* buffers) const;

  std::string type_name_;
  bool training_ = true;
  // deques: register_* returns references that must stay valid as more entries are added.
  std::deque<std::pair<std::string, Tensor>> params_;
  std::deque<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// Indexed children named "0", "1", ... (like torch.nn.ModuleList).
class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  std::string describe() const override;
  void push_back(std::shared_ptr<Module> m);
  int64_t size() const { return int64_t(named_children().size()); }
  // IndexError when i is outside [0, size()).
  const std::shared_ptr<Module>& at(int64_t i) const;
  const std::shared_ptr<Module>& operator[](int64_t i) const { return at(i); }
  // The child cast to M; ValueError naming its actual type when it is not an M.
  template <class M>
  M& get(int64_t i) const {
    auto p = std::dynamic_pointer_cast<M>(at(i));
    if (!p) throw_wrong_type(i, typeid(M).name());
    return *p;
  }

 private:
  [[noreturn]] void throw_wrong_type(int64_t i, const char* expected) const;
};

}  // namespace eformer::nn
