"""ETC global-local attention (Ainslie et al. 2020, mechanism "etc") against its float64 PyTorch formulation
(references.torch_etc): the functional form with the relative bias table explicit (forward, gradients of
q, k, v and of the table: the block-sparse kernel's score-bias hook), over several kernel blocks, padded;
the module and its relative_bias parameter; the exact pattern; no causal form; bad options."""
import numpy as np
import pytest

import eformer as ef
from conftest import assert_close, check
from references import etc_labels, torch_etc

models = ef.models

SETTINGS = [  # (N, globals, radius, max_distance): N over several 64-blocks, radius across block edges
    (37, 3, 4, 2), (150, 5, 10, 4), (200, 0, 70, 8), (130, 70, 3, 1), (90, 2, 0, 0), (64, 1, 100, 3)]


def padding(rng, B, N):
    mask = np.arange(N)[None, :] < rng.integers(1, N + 1, size=B)[:, None]
    mask[0] = True
    return mask


@pytest.mark.parametrize("setting", SETTINGS)
def test_functional_form_and_the_bias_gradient_match_the_float64_formulation(rng, setting):
    N, g, r, k = setting
    B, H, d = 2, 3, 8
    q, kk, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    table = 0.7 * rng.standard_normal((H, 2 * k + 3))
    for km in (None, padding(rng, B, N)):
        check(lambda q, kk, v, t: ef.attention(q, kk, v, kind="etc", key_mask=None if km is None else ef.tensor(km),
                                               relative_bias=t, globals=g, radius=r, max_distance=k),
              lambda q, kk, v, t: torch_etc(q, kk, v, t, g, r, k, km), [q, kk, v, table], rng)


def test_without_a_table_it_is_softmax_over_the_pattern(rng):
    B, H, N, d = 1, 2, 100, 8
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: ef.attention(q, k, v, kind="etc", globals=4, radius=6),
          lambda q, k, v: torch_etc(q, k, v, None, 4, 6, 16), [q, k, v], rng)
    pattern = ef.attention_pattern("etc", N, N, heads=1, causal=False, globals=4, radius=6)
    i, j = np.arange(N)[:, None], np.arange(N)[None, :]
    assert np.array_equal(pattern[0], (i < 4) | (j < 4) | (np.abs(i - j) <= 6))


def test_labels_are_clipped_distances_and_two_global_labels():
    lab = etc_labels(8, 2, 3).numpy()
    assert lab[0, 1] == 4 and lab[1, 0] == 2      # within the globals: clip(j - i) + k
    assert lab[0, 5] == 7 and lab[6, 1] == 8      # global-to-long 2k + 1, long-to-global 2k + 2
    assert lab[2, 7] == 6 and lab[7, 2] == 0 and lab[4, 4] == 3


def test_module_matches_the_reference_with_its_bias_parameter(rng):
    import torch
    B, N, D, H = 2, 90, 16, 2
    opts = {"globals": 3, "radius": 5, "max_distance": 2}
    mech = models.make_mechanism("etc", D, H, options=opts)
    params = dict(mech.named_parameters())
    assert tuple(params["relative_bias"].shape) == (H, 7)
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in params.items()}
    x = rng.standard_normal((B, N, D))
    km = padding(rng, B, N)

    def heads(name, src):
        return (src @ p[name + ".weight"].T + p[name + ".bias"]).view(B, N, H, -1).transpose(1, 2)

    t_x = torch.tensor(x, requires_grad=True)
    o = torch_etc(heads("q_proj", t_x), heads("k_proj", t_x), heads("v_proj", t_x), p["relative_bias"], 3, 5, 2, km)
    t_out = o.transpose(1, 2).reshape(B, N, -1) @ p["out_proj.weight"].T + p["out_proj.bias"]
    e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
    out = mech(e_x, None, ef.tensor(km))
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal((B, N, D))
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, "grad x")
    for n, t in params.items():
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"grad {n}")


def test_no_causal_form_and_bad_options_raise():
    with pytest.raises(ValueError, match="'etc' cannot be causal"):
        models.make_mechanism("etc", 16, 2, causal=True)
    q = ef.randn(1, 2, 10, 4)
    with pytest.raises(ValueError, match="no causal form"):
        ef.attention(q, q, q, kind="etc", causal=True)
    for bad in ({"globals": -1}, {"radius": 1.5}, {"max_distance": -2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            models.make_mechanism("etc", 16, 2, options=bad)
    with pytest.raises(ValueError, match="bias table"):
        ef.attention(q, q, q, kind="etc", max_distance=2, relative_bias=ef.randn(2, 5))
    with pytest.raises(ValueError, match="self-attention only"):
        ef.attention(q, ef.randn(1, 2, 12, 4), ef.randn(1, 2, 12, 4), kind="etc")
