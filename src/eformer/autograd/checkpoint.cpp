// checkpoint(fn, inputs): forward without saving, recompute in backward (Chen et al. 2016).
// The default generator's state at the forward is replayed in the recompute, so dropout and every
// other random draw inside fn are identical; afterwards the generator continues where it was.
#include "eformer/autograd/autograd.h"
#include "eformer/core/rng.h"

namespace eformer::autograd {

Tensor checkpoint(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& inputs) {
  const rng::Generator::State rng_at_forward = rng::default_generator().state();
  Tensor out;
  {
    NoGradGuard no_grad;
    out = fn(inputs);
  }
  if (!is_grad_enabled()) return out;
  // Capture detached inputs (not the graph behind them) and which of them need a gradient.
  std::vector<Tensor> saved;
  std::vector<bool> needs_grad;
  for (const Tensor& t : inputs) {
    saved.push_back(t.defined() ? t.detach() : Tensor());
    needs_grad.push_back(t.defined() && requires_grad(t));
  }
  auto backward_fn = [fn, saved, needs_grad, rng_at_forward](const Tensor& grad_output) {
    std::vector<Tensor> detached;
    for (size_t i = 0; i < saved.size(); ++i) {
      Tensor d = saved[i].defined() ? saved[i].detach() : Tensor();
      if (needs_grad[i]) set_requires_grad(d, true);
      detached.push_back(d);
    }
    rng::Generator& gen = rng::default_generator();
    const rng::Generator::State rng_now = gen.state();
    gen.set_state(rng_at_forward);
    Tensor recomputed;
    {
      EnableGradGuard enable;
      recomputed = fn(detached);
    }
    gen.set_state(rng_now);
    if (requires_grad(recomputed)) autograd::backward({recomputed}, {grad_output});
    std::vector<Tensor> grads;
    for (const Tensor& d : detached) grads.push_back(d.defined() ? grad(d) : Tensor());
    return grads;
  };
  // force: parameters captured by fn are invisible here, so the output always joins the graph.
  return record("checkpoint", out, inputs, backward_fn, /*force=*/true);
}

}  // namespace eformer::autograd
