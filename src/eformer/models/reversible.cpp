#include "eformer/models/reversible.h"

#include "eformer/autograd/autograd.h"
#include "eformer/core/rng.h"
#include "eformer/models/block.h"
#include "eformer/ops/elementwise.h"

namespace eformer::models {
namespace {

// G_i(x2): the block's mixing branch on the parallel pass.
Tensor mixing(const TransformerBlock& b, const Tensor& x2, const Tensor& key_mask, const Tensor& memory,
              const Tensor& memory_mask) {
  return b.mixing_branch(
      x2, [&](const Tensor& y) { return b.attention_branch(y, key_mask); }, memory, memory_mask);
}

// Backpropagates `grad_out` through branch(input) recomputed with grad on; returns d(input)
// (zeros when the branch does not depend on it) and adds d(memory) into *memory_grad when asked.
struct BranchGrads {
  Tensor input, memory;
};
template <class Branch>
BranchGrads recompute_and_backprop(const Branch& branch, const Tensor& input, const Tensor& memory,
                                   bool memory_needs_grad, const Tensor& grad_out, Tensor* output) {
  Tensor in = input.detach();
  set_requires_grad(in, true);
  Tensor mem = memory.defined() ? memory.detach() : Tensor();
  if (memory_needs_grad) set_requires_grad(mem, true);
  Tensor out;
  {
    autograd::EnableGradGuard enable;
    out = branch(in, mem);
  }
  if (requires_grad(out)) autograd::backward({out}, {grad_out});
  *output = out.detach();
  BranchGrads g{grad(in), memory_needs_grad ? grad(mem) : Tensor()};
  if (!g.input.defined()) g.input = Tensor::zeros(input.shape());
  return g;
}

}  // namespace

Tensor reversible_forward(const nn::ModuleList& blocks, const Tensor& x, const Tensor& key_mask,
                          const Tensor& memory, const Tensor& memory_mask) {
  const int64_t n = blocks.size();
  auto block = [&blocks](int64_t i) -> const TransformerBlock& { return blocks.get<TransformerBlock>(i); };
  rng::Generator& gen = rng::default_generator();
  std::vector<rng::Generator::State> before_g(static_cast<size_t>(n)), before_f(static_cast<size_t>(n));
  Tensor y1 = x, y2 = x;
  {
    autograd::NoGradGuard no_grad;
    for (int64_t i = 0; i < n; ++i) {
      before_g[size_t(i)] = gen.state();
      y1 = add(y1, mixing(block(i), y2, key_mask, memory, memory_mask));
      before_f[size_t(i)] = gen.state();
      y2 = add(y2, block(i).ffn_branch(y1));
    }
  }
  // The node gives y1 + y2 and the mean is taken outside it: the gradient the node receives is then
  // dy1 = dy2 itself, with no half-scaled copy beside the engine's (a GiB at a million tokens).
  Tensor sum;
  {
    autograd::NoGradGuard no_grad;
    sum = add(y1, y2);
  }
  if (!autograd::is_grad_enabled()) return mul_scalar(sum, 0.5f);

  const bool memory_needs_grad = memory.defined() && requires_grad(memory);
  Tensor key_mask_d = key_mask.defined() ? key_mask.detach() : Tensor();
  Tensor memory_mask_d = memory_mask.defined() ? memory_mask.detach() : Tensor();
  Tensor memory_d = memory.defined() ? memory.detach() : Tensor();
  Tensor y1_d = y1.detach(), y2_d = y2.detach();
  // The blocks are captured by reference: the model owns them and outlives its graphs, as with
  // the parameters every other node reaches through its closure.
  const nn::ModuleList* stack = &blocks;
  // mutable: the backward moves the saved outputs out of the closure, so that they are freed as the
  // walk replaces them with each block's inputs (the graph is freed after one backward anyway).
  auto backward_fn = [stack, n, before_g, before_f, y1_d, y2_d, key_mask_d, memory_d, memory_mask_d,
                      memory_needs_grad](const Tensor& grad_out) mutable {
    EF_CHECK(y1_d.defined(), ValueError,
             "reversible: the stack's backward ran already; a reversible stack cannot backpropagate twice "
             "(retain_graph) because it keeps only its outputs");
    auto block = [stack](int64_t i) -> const TransformerBlock& { return stack->get<TransformerBlock>(i); };
    rng::Generator& gen = rng::default_generator();
    const rng::Generator::State now = gen.state();
    Tensor y1 = std::move(y1_d), y2 = std::move(y2_d);
    Tensor dy1 = grad_out, dy2 = grad_out;  // never written in place
    Tensor dmemory;
    // Each step drops what it no longer needs at once: at a million tokens every [N, d] tensor is a
    // GiB, and the peak is set here (y1, x2, dy1, dy2 plus one branch's recomputation).
    for (int64_t i = n - 1; i >= 0; --i) {
      const TransformerBlock& b = block(i);
      // y2 = x2 + F(y1): F's gradient flows into y1; x2 = y2 - F(y1).
      gen.set_state(before_f[size_t(i)]);
      Tensor f;
      BranchGrads gf = recompute_and_backprop([&b](const Tensor& in, const Tensor&) { return b.ffn_branch(in); },
                                              y1, Tensor(), false, dy2, &f);
      y2 = sub(y2, f);  // now x2
      f = Tensor();
      dy1 = add(dy1, gf.input);  // now the total gradient of y1
      gf = BranchGrads{};
      // y1 = x1 + G(x2): G's gradient flows into x2 (and the memory); x1 = y1 - G(x2).
      gen.set_state(before_g[size_t(i)]);
      Tensor g;
      BranchGrads gg = recompute_and_backprop(
          [&](const Tensor& in, const Tensor& mem) { return mixing(b, in, key_mask_d, mem, memory_mask_d); }, y2,
          memory_d, memory_needs_grad, dy1, &g);
      y1 = sub(y1, g);  // now x1
      g = Tensor();
      if (gg.memory.defined()) dmemory = dmemory.defined() ? add(dmemory, gg.memory) : gg.memory;
      dy2 = add(dy2, gg.input);
    }
    gen.set_state(now);
    // x1 = x2 = x at the bottom.
    return std::vector<Tensor>{add(dy1, dy2), dmemory};
  };
  // force: the parameters reached through the blocks are invisible to record.
  return mul_scalar(autograd::record("reversible", sum, {x, memory}, backward_fn, /*force=*/true), 0.5f);
}

Tensor reversible_step(const nn::ModuleList& blocks, const Tensor& x_t,
                       std::vector<std::unique_ptr<attention::RecurrentState>>& states, const Tensor& memory,
                       const Tensor& memory_mask) {
  Tensor y1 = x_t, y2 = x_t;
  for (int64_t i = 0; i < blocks.size(); ++i) {
    const TransformerBlock& b = blocks.get<TransformerBlock>(i);
    attention::RecurrentState& state = *states[size_t(i)];
    y1 = add(y1, b.mixing_branch(
                     y2, [&](const Tensor& y) { return b.attention_step_branch(y, state); }, memory, memory_mask));
    y2 = add(y2, b.ffn_branch(y1));
  }
  return mul_scalar(add(y1, y2), 0.5f);
}

}  // namespace eformer::models
