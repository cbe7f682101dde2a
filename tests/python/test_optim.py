"""Optimizers, schedules and gradient clipping against PyTorch (float64 reference)."""
import math

import numpy as np
import pytest
import torch

import eformer as ef

SHAPES = [(4, 3), (7,), (), (2, 3, 5)]


def make_params(rng, shapes=SHAPES):
    values = [rng.standard_normal(s) for s in shapes]
    e = [ef.tensor(v.astype(np.float32), requires_grad=True) for v in values]
    t = [torch.tensor(v, requires_grad=True) for v in values]
    return e, t


def run_trajectory(rng, e_params, t_params, e_opt, t_opt, steps=20, skip=None):
    for step in range(steps):
        for i, (ep, tp) in enumerate(zip(e_params, t_params)):
            if skip is not None and skip(step, i):
                ep.grad, tp.grad = None, None
                continue
            g = rng.standard_normal(tp.shape)
            ep.grad = ef.tensor(np.asarray(g, dtype=np.float32))
            tp.grad = torch.tensor(g)
        e_opt.step()
        t_opt.step()
        for i, (ep, tp) in enumerate(zip(e_params, t_params)):
            np.testing.assert_allclose(ep.numpy(), tp.detach().numpy(), rtol=2e-5, atol=2e-6,
                                       err_msg=f"step {step} param {i}")


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=0.05, betas=(0.0, 0.5), eps=1e-3, weight_decay=0.0),
])
def test_adamw_matches_torch(rng, kwargs):
    e, t = make_params(rng)
    run_trajectory(rng, e, t, ef.optim.AdamW(e, **kwargs), torch.optim.AdamW(t, **kwargs))


def test_adamw_skips_params_without_grad_like_torch(rng):
    # Per-parameter step counts (bias correction) must follow torch when some steps lack a gradient.
    e, t = make_params(rng)
    skip = lambda step, i: (step + i) % 3 == 0
    run_trajectory(rng, e, t, ef.optim.AdamW(e, lr=0.01), torch.optim.AdamW(t, lr=0.01), skip=skip)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
])
def test_sgd_matches_torch(rng, kwargs):
    e, t = make_params(rng)
    skip = lambda step, i: step == 3 and i == 1
    run_trajectory(rng, e, t, ef.optim.SGD(e, **kwargs), torch.optim.SGD(t, **kwargs), skip=skip)


def test_changing_lr_matches_torch(rng):
    e, t = make_params(rng)
    eo, to = ef.optim.AdamW(e, lr=0.01), torch.optim.AdamW(t, lr=0.01)
    for step in range(10):
        lr = ef.optim.warmup_cosine(step, 3, 10, 0.02, 0.001)
        eo.lr = lr
        for g in to.param_groups:
            g["lr"] = lr
        run_trajectory(rng, e, t, eo, to, steps=1)
    assert eo.step_count == 10
    assert eo.lr == pytest.approx(ef.optim.warmup_cosine(9, 3, 10, 0.02, 0.001))


def test_zero_grad_drops_grads(rng):
    e, _ = make_params(rng)
    opt = ef.optim.SGD(e, lr=0.1)
    for p in e:
        p.grad = ef.ones(*p.shape)
    opt.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) for p in e)
    opt.zero_grad()
    assert all(p.grad is None for p in e)
    before = [p.numpy().copy() for p in e]
    opt.step()  # no gradients: nothing moves
    for p, b in zip(e, before):
        np.testing.assert_array_equal(p.numpy(), b)


def test_step_updates_in_place_and_works_with_backward(rng):
    w = ef.tensor(rng.standard_normal((3, 2)).astype(np.float32), requires_grad=True)
    tw = torch.tensor(w.numpy().astype(np.float64), requires_grad=True)
    x = rng.standard_normal((4, 3))
    view = w.detach()  # shares storage: sees the in-place update
    eo, to = ef.optim.SGD([w], lr=0.1, momentum=0.9), torch.optim.SGD([tw], lr=0.1, momentum=0.9)
    for _ in range(5):
        eo.zero_grad()
        to.zero_grad()
        ef.sum(ef.matmul(ef.tensor(x.astype(np.float32)), w) ** 2).backward()
        ((torch.tensor(x) @ tw) ** 2).sum().backward()
        eo.step()
        to.step()
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(view.numpy(), w.numpy())


def test_state_tensors_and_restore(rng):
    e, _ = make_params(rng)
    opt = ef.optim.SGD(e, lr=0.1, momentum=0.9)
    for p in e:
        p.grad = ef.ones(*p.shape)
    opt.step()
    state = opt.state_tensors()
    assert state["step"].item() == 1
    assert sorted(state) == sorted(["step"] + [f"{i}.{f}" for i in range(len(e)) for f in ("step", "momentum_buffer")])
    np.testing.assert_array_equal(state["0.momentum_buffer"].numpy(), np.ones((4, 3), np.float32))
    other = ef.optim.SGD(e, lr=0.1, momentum=0.9)
    other.load_state_tensors(state)
    assert other.step_count == 1
    with pytest.raises(ValueError, match="unknown field in '0.exp_avg'"):
        other.load_state_tensors({**state, "0.exp_avg": ef.zeros(4, 3)})
    with pytest.raises(ValueError, match="names parameter 9"):
        other.load_state_tensors({**state, "9.step": state["step"]})
    with pytest.raises(ValueError, match="no 'step' entry"):
        other.load_state_tensors({k: v for k, v in state.items() if k != "step"})
    with pytest.raises(ValueError, match="expected float32 of shape \\[4, 3\\]"):
        other.load_state_tensors({**state, "0.momentum_buffer": ef.zeros(3)})
    with pytest.raises(ValueError, match="parameter 0 has 1 state entries"):
        other.load_state_tensors({k: v for k, v in state.items() if k != "0.momentum_buffer"})


# ---- schedule ----

def reference_warmup_cosine(step, warmup, total, lr, min_lr):
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup,total,min_lr", [(10, 100, 0.0), (0, 50, 1e-5), (5, 5, 1e-4), (1, 2, 0.0)])
def test_warmup_cosine_formula(warmup, total, min_lr):
    lr = 3e-4
    for step in range(total + 5):
        assert ef.optim.warmup_cosine(step, warmup, total, lr, min_lr) == pytest.approx(
            reference_warmup_cosine(step, warmup, total, lr, min_lr), rel=1e-12, abs=1e-15)
    if warmup:
        assert ef.optim.warmup_cosine(0, warmup, total, lr, min_lr) == pytest.approx(lr / warmup)
        assert ef.optim.warmup_cosine(warmup - 1, warmup, total, lr, min_lr) == pytest.approx(lr)
    assert ef.optim.warmup_cosine(total, warmup, total, lr, min_lr) == min_lr


def test_warmup_cosine_errors():
    with pytest.raises(ValueError, match="step is -1"):
        ef.optim.warmup_cosine(-1, 10, 100, 1e-3)
    with pytest.raises(ValueError, match="total_steps \\(5\\) is less than warmup_steps \\(10\\)"):
        ef.optim.warmup_cosine(0, 10, 5, 1e-3)
    with pytest.raises(ValueError, match="min_lr"):
        ef.optim.warmup_cosine(0, 10, 100, 1e-3, 1e-2)


# ---- clipping ----

@pytest.mark.parametrize("max_norm", [0.5, 1.0, 1e6, 0.0])
def test_clip_grad_norm_matches_torch(rng, max_norm):
    e, t = make_params(rng)
    for i, (ep, tp) in enumerate(zip(e, t)):
        if i == 2:
            continue  # a parameter without a gradient is skipped
        g = rng.standard_normal(tp.shape) * 3
        ep.grad = ef.tensor(g.astype(np.float32))
        tp.grad = torch.tensor(g)
    total_e = ef.clip_grad_norm_(e, max_norm)
    total_t = torch.nn.utils.clip_grad_norm_(t, max_norm)
    assert isinstance(total_e, float)
    assert total_e == pytest.approx(float(total_t), rel=1e-6)
    for ep, tp in zip(e, t):
        if tp.grad is None:
            assert ep.grad is None
        else:
            np.testing.assert_allclose(ep.grad.numpy(), tp.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert ef.optim.clip_grad_norm_ is not None


def test_clip_grad_norm_single_tensor_and_large_deterministic(rng):
    g = rng.standard_normal(300_000).astype(np.float32)
    p = ef.tensor(np.zeros(300_000, np.float32), requires_grad=True)
    norms, saved = [], ef.get_num_threads()
    try:
        for threads in (1, 2, 3):
            ef.set_num_threads(threads)
            p.grad = ef.tensor(g)
            norms.append(ef.clip_grad_norm_(p, 1e9))
    finally:
        ef.set_num_threads(saved)
    assert norms[0] == norms[1] == norms[2]
    assert norms[0] == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-6)


def test_clip_grad_norm_errors_and_empty(rng):
    p = ef.zeros(3, requires_grad=True)
    assert ef.clip_grad_norm_([p], 1.0) == 0.0
    with pytest.raises(ValueError, match="max_norm is -1"):
        ef.clip_grad_norm_([p], -1.0)


# ---- validation ----

def test_optimizer_argument_errors():
    p = ef.zeros(3, requires_grad=True)
    cases = [
        (lambda: ef.optim.AdamW([p], lr=-1.0), "invalid learning rate -1"),
        (lambda: ef.optim.AdamW([p], betas=(1.0, 0.999)), "invalid beta1 1"),
        (lambda: ef.optim.AdamW([p], betas=(0.9, -0.1)), "invalid beta2 -0.1"),
        (lambda: ef.optim.AdamW([p], eps=0.0), "invalid eps 0"),
        (lambda: ef.optim.AdamW([p], weight_decay=-0.1), "invalid weight_decay -0.1"),
        (lambda: ef.optim.SGD([p], lr=0.1, momentum=-0.5), "invalid momentum -0.5"),
        (lambda: ef.optim.SGD([p], lr=0.1, nesterov=True), "nesterov momentum requires a momentum > 0"),
        (lambda: ef.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
        (lambda: ef.optim.SGD([], lr=0.1), "empty parameter list"),
        (lambda: ef.optim.SGD([ef.zeros(3)], lr=0.1), "does not require grad"),
        (lambda: ef.optim.SGD([p * 2.0], lr=0.1), "not a leaf"),
        (lambda: ef.optim.SGD([ef.zeros(3, dtype="int64")], lr=0.1), "expected a float32 tensor"),
        (lambda: ef.optim.SGD([p, p], lr=0.1), "parameters 0 and 1 are the same tensor"),
        (lambda: ef.optim.SGD([p, 3], lr=0.1), "params must be Tensors, got int"),
        (lambda: ef.optim.SGD([{"params": [p]}], lr=0.1), "parameter groups are not supported"),
    ]
    for make, needle in cases:
        with pytest.raises(ValueError, match=needle.replace("(", "\\(")):
            make()
    opt = ef.optim.AdamW([p])
    with pytest.raises(ValueError, match="invalid learning rate -0.5"):
        opt.lr = -0.5
    assert opt.betas == (0.9, 0.999) and opt.weight_decay == 0.01 and opt.eps == 1e-8
