// Define-by-run reverse-mode autograd. An op computes its output with plain kernels, then
// `record` attaches a node holding the backward closure, when grad mode is on and an input
// requires a gradient. `backward` walks the graph in reverse topological order.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "eformer/core/tensor.h"

namespace eformer {

namespace autograd {
struct Node;
}

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;                              // accumulated gradient of a leaf
  std::shared_ptr<autograd::Node> grad_fn;  // null for leaves
};

namespace autograd {

// Gradients for each input of a node, given the gradient of its output. An entry may be an
// undefined Tensor where that input needs no gradient.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

struct Node {
  ~Node();  // iterative: a long chain must not recurse once per node
  std::string name;
  std::vector<std::shared_ptr<AutogradMeta>> inputs;  // null where the input needs no gradient
  std::vector<Shape> input_shapes;
  BackwardFn backward;
};

bool is_grad_enabled();
// Disables recording in a scope (like torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};
// Enables recording in a scope (used by checkpoint's recompute inside backward).
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

// Attaches `backward` to `output` if grad mode is on and some input requires a gradient
// (or `force`). Closures must capture detached tensors, never `output` itself.
Tensor record(const char* name, Tensor output, const std::vector<Tensor>& inputs, BackwardFn backward,
              bool force = false);

// Called once per leaf as soon as its .grad is complete (every node with an edge to it has run), while
// the rest of the backward still runs: data-parallel training starts reducing gradients there.
using LeafReady = std::function<void(const AutogradMeta* leaf)>;

// Accumulates d(roots)/d(leaves) into the leaves' .grad, seeding each root with its grad
// (an undefined grad means ones, allowed for one-element roots only). The gradients are the same
// with or without `on_leaf_ready`.
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads = {},
              bool retain_graph = false, const LeafReady& on_leaf_ready = {});

// A custom op: forward runs without recording, backward is written by hand.
class Function {
 public:
  virtual ~Function() = default;
  virtual std::string name() const { return "Function"; }
  virtual Tensor forward(const std::vector<Tensor>& inputs) = 0;
  virtual std::vector<Tensor> backward(const Tensor& grad_output) = 0;
  static Tensor apply(const std::shared_ptr<Function>& fn, const std::vector<Tensor>& inputs);
};

// Runs fn(inputs) without saving intermediates; in backward, recomputes it with the same random
// draws (the default generator's state is replayed) and backpropagates through the recomputation.
// Parameters captured by fn receive their gradients too.
Tensor checkpoint(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& inputs);

}  // namespace autograd

// Tensor-level autograd accessors (methods in Python: x.requires_grad, x.grad, x.backward()).
bool requires_grad(const Tensor& t);
// Marks a leaf as requiring (or not) a gradient; a non-leaf cannot be changed.
void set_requires_grad(const Tensor& t, bool value);
bool is_leaf(const Tensor& t);
Tensor grad(const Tensor& t);  // undefined when none accumulated
void set_grad(const Tensor& t, const Tensor& g);
void zero_grad(const Tensor& t);  // drops the accumulated gradient
void backward(const Tensor& root, const Tensor& grad = {}, bool retain_graph = false);

}  // namespace eformer
