"""Axial attention (Ho et al. 2019) beyond the contract suite: the module with an explicit image_shape and
a partly filled last row against the float64 softmax over its row/column pattern (forward, input and
parameter gradients), causal and bidirectional; the pattern's size is N (h + w) / 2 per head pair, the
O(N sqrt N) of a square image; a causal image leaks nothing and streams like the parallel pass. Fresh
random inputs each run (the seed is printed).
"""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close
from references import SoftmaxPattern

models = ef.models
B, D, H = 2, 32, 4


@pytest.mark.parametrize("causal", [False, True])
def test_module_with_an_image_shape_matches_the_float64_reference(rng, causal):
    h, w, N = 5, 6, 27
    entry = next(e for e in ef.mechanisms() if e["name"] == "axial")
    mech = models.make_mechanism("axial", D, H, causal=causal, options={"image_shape": [h, w]}, max_len=h * w)
    assert dict(mech.pattern_options) == {"image_shape": (h, w)}
    params = dict(mech.named_parameters())
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in params.items()}
    x = rng.standard_normal((B, N, D))
    km = None if causal else np.arange(N)[None, :] < np.array([[N], [N - 4]])

    def lin(name, t):
        return t @ p[name + ".weight"].T + p[name + ".bias"]

    def heads(t):
        return t.view(B, N, H, -1).transpose(1, 2)

    t_x = torch.tensor(x, requires_grad=True)
    o = SoftmaxPattern().heads(entry, heads(lin("q_proj", t_x)), heads(lin("k_proj", t_x)),
                               heads(lin("v_proj", t_x)), causal, km, SoftmaxPattern().module_context(entry, mech))
    t_out = lin("out_proj", o.transpose(1, 2).reshape(B, N, D))
    e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
    out = mech(e_x, None, None if km is None else ef.tensor(km))
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal((B, N, D))
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, "grad x")
    for n, t in params.items():
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"grad {n}")


def test_pattern_is_rows_and_columns():
    h = w = 8
    p = ef.attention_pattern("axial", h * w, heads=2, image_shape=[h, w])
    assert p[0].sum() == h * w * w and p[1].sum() == h * w * h  # each pixel: its row, its column
    rows, cols = np.nonzero(p[1])
    assert np.all(rows % w == cols % w)
    causal = ef.attention_pattern("axial", h * w, heads=2, causal=True, image_shape=[h, w])
    assert not np.any(np.triu(causal[0] | causal[1], 1))


def test_causal_image_does_not_leak_and_streams(rng):
    mech = models.make_mechanism("axial", D, H, causal=True, options={"image_shape": [7, 7]}, max_len=49)
    mech.eval()
    x = rng.standard_normal((B, 45, D)).astype(np.float32)
    with ef.no_grad():
        base = mech(ef.tensor(x)).numpy()
        for t in (5, 20, 40):
            changed = x.copy()
            changed[:, t + 1:] += 3.0
            assert np.array_equal(mech(ef.tensor(changed)).numpy()[:, :t + 1], base[:, :t + 1])
        state = mech.start(B)
        steps = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, i:i + 1]))).numpy() for i in range(45)]
    assert_close(np.concatenate(steps, 1), base, 1e-5, 1e-5, "step vs forward")
    with pytest.raises(ValueError, match="image_shape"):
        models.make_mechanism("axial", D, H, causal=True, options={"image_shape": [7, 7]}, max_len=50)


def _axial_float64(q, k, v, heads_on_rows, width, causal, key_mask):
    """softmax(q k^T / sqrt(d) over the axial pattern) v in float64: query i at pixel i (causal: N == M),
    key j at pixel j; row heads see their row, the others their column; a query with no key gives 0."""
    N, M = q.shape[2], k.shape[2]
    i, j = torch.arange(N)[:, None], torch.arange(M)[None, :]
    same_row, same_col = i // width == j // width, i % width == j % width
    allowed = torch.stack([same_row if h < heads_on_rows else same_col for h in range(q.shape[1])])[None]
    if causal:
        allowed = allowed & (j <= i)
    if key_mask is not None:
        allowed = allowed & torch.tensor(key_mask)[:, None, None, :]
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    p = torch.softmax(s.masked_fill(~allowed, -float("inf")), -1).nan_to_num(0.0)
    return p @ v


@pytest.mark.parametrize("H_, N, M, causal, masked", [(3, 30, 30, False, True), (3, 23, 30, False, False),
                                                      (5, 29, 29, True, False), (1, 17, 17, False, True),
                                                      (2, 64, 64, True, True)])
def test_functional_form_both_axes_match_float64_with_gradients(rng, H_, N, M, causal, masked):
    """The fused line path (one node for both axes): odd head counts (rows take ceil(H / 2)), one head, a
    partly filled last row, N != M, key masks; forward and the gradients of q, k and v."""
    d = 16
    width = int(np.ceil(np.sqrt(max(N, M))))
    q, k, v = (rng.standard_normal((2, H_, n, d)) for n in (N, M, M))
    km = (rng.random((2, M)) < 0.8) if masked else None
    e = [ef.tensor(x.astype(np.float32), requires_grad=True) for x in (q, k, v)]
    out = ef.attention(*e, kind="axial", causal=causal, key_mask=None if km is None else ef.tensor(km))
    t = [torch.tensor(x, requires_grad=True) for x in (q, k, v)]
    ref = _axial_float64(*t, (H_ + 1) // 2, width, causal, km)
    assert_close(out.numpy(), ref.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal(ref.shape)
    out.backward(ef.tensor(up.astype(np.float32)))
    (ref * torch.tensor(up)).sum().backward()
    for name, a, b in zip("qkv", e, t):
        assert_close(a.grad.numpy(), b.grad.numpy(), 1e-3, 1e-4, f"grad {name}")
