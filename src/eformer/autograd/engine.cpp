// The backward engine: Kahn's algorithm over the nodes reachable from the roots.
#include <unordered_map>

#include "eformer/autograd/autograd.h"

namespace eformer {
namespace autograd {
namespace {

// out-of-place a + b for same-shape float tensors (no graph; autograd sits below ops).
Tensor add_plain(const Tensor& a, const Tensor& b) {
  Tensor ac = a.contiguous_data(), bc = b.contiguous_data();
  Tensor out = Tensor::empty(a.shape());
  const float *pa = ac.data<float>(), *pb = bc.data<float>();
  float* po = out.data<float>();
  for (int64_t i = 0, n = out.numel(); i < n; ++i) po[i] = pa[i] + pb[i];
  return out;
}

void accumulate_into_leaf(AutogradMeta& meta, Tensor g) {
  if (!meta.grad.defined()) {
    // Own it: backward closures may return tensors shared with others (add returns g twice).
    meta.grad = g.is_uniquely_owned() ? std::move(g) : g.clone_data();
  } else {
    float* p = meta.grad.data<float>();
    Tensor gc = g.contiguous_data();
    const float* q = gc.data<float>();
    for (int64_t i = 0, n = meta.grad.numel(); i < n; ++i) p[i] += q[i];
  }
}

}  // namespace

Node::~Node() {
  // Destroying a node drops its inputs' metas, whose grad_fns drop theirs, and so on: one stack
  // frame per node. Instead, take over every input node that nobody else holds and free the
  // chain in a loop (each stolen node has its inputs cleared before it dies, so it recurses no further).
  std::vector<std::shared_ptr<Node>> stack;
  auto steal_inputs = [&stack](Node& n) {
    for (auto& meta : n.inputs)
      if (meta && meta.use_count() == 1 && meta->grad_fn && meta->grad_fn.use_count() == 1)
        stack.push_back(std::move(meta->grad_fn));
    n.inputs.clear();
  };
  steal_inputs(*this);
  while (!stack.empty()) {
    std::shared_ptr<Node> n = std::move(stack.back());
    stack.pop_back();
    steal_inputs(*n);
  }
}

Tensor record(const char* name, Tensor output, const std::vector<Tensor>& inputs, BackwardFn backward,
              bool force) {
  if (!is_grad_enabled()) return output;
  bool any = force;
  for (const Tensor& t : inputs) any = any || (t.defined() && requires_grad(t));
  if (!any) return output;
  auto node = std::make_shared<Node>();
  node->name = name;
  for (const Tensor& t : inputs) {
    bool needs = t.defined() && requires_grad(t);
    node->inputs.push_back(needs ? t.autograd_meta() : nullptr);
    node->input_shapes.push_back(t.defined() ? t.shape() : Shape{});
  }
  node->backward = std::move(backward);
  // A fresh view, so the recorded history never leaks onto a tensor shared with an input.
  Tensor out = output.detach();
  auto meta = std::make_shared<AutogradMeta>();
  meta->requires_grad = true;
  meta->grad_fn = std::move(node);
  out.autograd_meta() = std::move(meta);
  return out;
}

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph,
              const LeafReady& on_leaf_ready) {
  EF_CHECK(grads.empty() || grads.size() == roots.size(), ValueError, "backward: ", roots.size(),
           " roots but ", grads.size(), " gradients");
  std::unordered_map<AutogradMeta*, Tensor> leaf_grads;  // applied at the end, in one pass
  std::unordered_map<Node*, Tensor> pending;             // gradient flowing into each node's output
  std::unordered_map<Node*, int> deps;                   // edges from not-yet-run nodes
  std::unordered_map<AutogradMeta*, int> leaf_deps;      // the same for leaves (with on_leaf_ready)
  std::vector<std::shared_ptr<Node>> stack, ready;

  auto seed = [&](const Tensor& root, const Tensor& g) {
    EF_CHECK(requires_grad(root), ValueError,
             "backward: the tensor does not require grad and has no grad_fn (", root.describe(), ")");
    Tensor grad = g;
    if (!grad.defined()) {
      EF_CHECK(root.numel() == 1, ShapeError, "backward: an implicit gradient needs a one-element output, got ",
               root.describe(), "; pass the gradient explicitly");
      grad = Tensor::full(root.shape(), 1.0);
    }
    EF_CHECK(grad.shape() == root.shape(), ShapeError, "backward: gradient shape ", shape_str(grad.shape()),
             " differs from the output's ", shape_str(root.shape()));
    auto& meta = root.autograd_meta();
    if (!meta->grad_fn) {
      Tensor& slot = leaf_grads[meta.get()];
      slot = slot.defined() ? add_plain(slot, grad) : grad;
      return;
    }
    Node* n = meta->grad_fn.get();
    Tensor& slot = pending[n];
    slot = slot.defined() ? add_plain(slot, grad) : grad;
    stack.push_back(meta->grad_fn);
  };
  for (size_t i = 0; i < roots.size(); ++i) seed(roots[i], grads.empty() ? Tensor() : grads[i]);

  // Count dependencies with an iterative DFS (deep graphs must not overflow the stack).
  std::vector<std::shared_ptr<Node>> roots_nodes = stack;
  std::unordered_map<Node*, bool> seen;
  while (!stack.empty()) {
    auto n = stack.back();
    stack.pop_back();
    if (seen[n.get()]) continue;
    seen[n.get()] = true;
    for (auto& in : n->inputs) {
      if (in && in->grad_fn) {
        deps[in->grad_fn.get()]++;
        stack.push_back(in->grad_fn);
      } else if (in && on_leaf_ready) {
        leaf_deps[in.get()]++;
      }
    }
  }
  for (auto& n : roots_nodes)
    if (deps[n.get()] == 0 && seen[n.get()]) {
      ready.push_back(n);
      seen[n.get()] = false;  // queue once
    }

  NoGradGuard no_grad;
  while (!ready.empty()) {
    auto node = ready.back();
    ready.pop_back();
    Tensor g = std::move(pending[node.get()]);
    pending.erase(node.get());
    EF_CHECK(node->backward != nullptr, ValueError, "backward: the graph through '", node->name,
             "' was already freed; pass retain_graph=true to backpropagate twice");
    std::vector<Tensor> input_grads = node->backward(g);
    EF_CHECK(input_grads.size() == node->inputs.size(), Error, "backward of '", node->name, "' returned ",
             input_grads.size(), " gradients for ", node->inputs.size(), " inputs");
    if (!retain_graph) node->backward = nullptr;
    for (size_t i = 0; i < node->inputs.size(); ++i) {
      auto& in = node->inputs[i];
      // A leaf whose last contribution this was is complete: accumulate it now and say so.
      auto leaf_done = [&] {
        if (!on_leaf_ready || !in || in->grad_fn || --leaf_deps[in.get()] != 0) return;
        auto found = leaf_grads.find(in.get());
        if (found == leaf_grads.end()) return;  // no gradient reached it: reported at the end
        accumulate_into_leaf(*in, std::move(found->second));
        leaf_grads.erase(found);
        on_leaf_ready(in.get());
      };
      if (!in || !input_grads[i].defined()) {
        leaf_done();
        continue;
      }
      const Tensor& gi = input_grads[i];
      EF_CHECK(gi.shape() == node->input_shapes[i], Error, "backward of '", node->name, "': gradient ", i,
               " has shape ", shape_str(gi.shape()), ", input has ", shape_str(node->input_shapes[i]));
      if (!in->grad_fn) {
        Tensor& slot = leaf_grads[in.get()];
        slot = slot.defined() ? add_plain(slot, gi) : gi;
        leaf_done();
        continue;
      }
      Node* next = in->grad_fn.get();
      Tensor& slot = pending[next];
      slot = slot.defined() ? add_plain(slot, gi) : gi;
      if (--deps[next] == 0) ready.push_back(in->grad_fn);
    }
  }
  for (auto& [meta, g] : leaf_grads) {
    accumulate_into_leaf(*meta, std::move(g));
    if (on_leaf_ready) on_leaf_ready(meta);
  }
}

Tensor Function::apply(const std::shared_ptr<Function>& fn, const std::vector<Tensor>& inputs) {
  Tensor out;
  {
    NoGradGuard no_grad;
    out = fn->forward(inputs);
  }
  return record(fn->name().c_str(), out, inputs, [fn](const Tensor& g) { return fn->backward(g); });
}

}  // namespace autograd

bool requires_grad(const Tensor& t) {
  auto& m = t.autograd_meta();
  return m && m->requires_grad;
}

void set_requires_grad(const Tensor& t, bool value) {
  auto& m = t.autograd_meta();
  EF_CHECK(!(m && m->grad_fn), ValueError,
           "set_requires_grad: only leaf tensors can change requires_grad; detach() the tensor first");
  if (value) t.check_dtype(DType::Float32, "set_requires_grad");
  if (!m) m = std::make_shared<AutogradMeta>();
  m->requires_grad = value;
}

bool is_leaf(const Tensor& t) {
  auto& m = t.autograd_meta();
  return !(m && m->grad_fn);
}

Tensor grad(const Tensor& t) {
  auto& m = t.autograd_meta();
  return m ? m->grad : Tensor();
}

void set_grad(const Tensor& t, const Tensor& g) {
  EF_CHECK(!g.defined() || g.shape() == t.shape(), ShapeError, "set_grad: gradient shape ",
           shape_str(g.shape()), " differs from the tensor's ", shape_str(t.shape()));
  auto& m = t.autograd_meta();
  if (!m) m = std::make_shared<AutogradMeta>();
  m->grad = g;
}

void zero_grad(const Tensor& t) {
  auto& m = t.autograd_meta();
  if (m) m->grad = Tensor();
}

void backward(const Tensor& root, const Tensor& grad, bool retain_graph) {
  autograd::backward(std::vector<Tensor>{root}, std::vector<Tensor>{grad}, retain_graph);
}

}  // namespace eformer
