"""Module parity for a mechanism built with chosen options (the contract suite builds each with its
defaults): the module's forward, input gradient and every parameter gradient against its float64
reference, q/k/v/out projections included. `context(mech, params)` gives the reference's context from the
module and its parameters as float64 torch leaves."""
import numpy as np
import torch

import eformer as ef
from conftest import assert_close
from references import REFERENCES

models = ef.models


def module_parity(rng, name, options, causal, context, B=2, N=29, D=32, H=4, max_len=64, key_mask=None):
    entry = next(e for e in ef.mechanisms() if e["name"] == name)
    ref = REFERENCES[entry["reference"]]
    mech = models.make_mechanism(name, D, H, causal=causal, max_len=max_len, options=options)
    params = dict(mech.named_parameters())
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in params.items()}
    ctx = context(mech, p)
    x = rng.standard_normal((B, N, D))

    def heads(prefix, src):
        y = src @ p[prefix + ".weight"].T + p[prefix + ".bias"]
        return y.view(B, src.shape[1], H, -1).transpose(1, 2)

    def reference(x):
        q = heads("q_proj", x) if "q_proj.weight" in p else None
        k = heads("k_proj", x) if "k_proj.weight" in p else q
        o = ref.heads(entry, q, k, heads("v_proj", x), causal, key_mask, ctx)
        return o.transpose(1, 2).reshape(B, N, -1) @ p["out_proj.weight"].T + p["out_proj.bias"]

    e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
    t_x = torch.tensor(x, requires_grad=True)
    out = mech(e_x, None, None if key_mask is None else ef.tensor(key_mask))
    t_out = reference(t_x)
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, f"{name} {options}: forward")
    up = rng.standard_normal(tuple(t_out.shape))
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, f"{name} {options}: grad x")
    for n, t in params.items():
        assert t.grad is not None, f"{name} {options}: no gradient reaches {n}"
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"{name} {options}: grad {n}")
    return mech


def leak_and_stream(rng, name, options, D=32, H=4, N=40, t=17, max_len=64):
    """A causal module: future inputs leave past outputs bit-identical; step() in pieces = the parallel pass."""
    mech = models.make_mechanism(name, D, H, causal=True, max_len=max_len, options=options, positions="rotary")
    mech.eval()
    x = rng.standard_normal((2, N, D)).astype(np.float32)
    with ef.no_grad():
        base = mech(ef.tensor(x)).numpy()
        changed = x.copy()
        changed[:, t + 1:] += 10 * rng.standard_normal(changed[:, t + 1:].shape).astype(np.float32)
        out = mech(ef.tensor(changed)).numpy()
        assert np.array_equal(out[:, :t + 1], base[:, :t + 1]), f"{name} {options}: past outputs moved"
        assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3
        state = mech.start(2)
        pieces = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy()
                  for a, b in [(0, 1), (1, 2), (2, 9), (9, N)]]
    assert_close(np.concatenate(pieces, 1), base, 1e-5, 1e-5, f"{name} {options}: step vs forward")
    return mech
