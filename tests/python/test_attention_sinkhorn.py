"""Sparse Sinkhorn attention (Tay et al. 2020, mechanism "sinkhorn") against its float64 PyTorch
formulation (references.torch_sinkhorn): the functional form with the sorting network and the Gumbel
noise explicit (forward, gradients of q, k, v and of every sorting-network tensor), SortCut, the causal
variant, padding and a short last block; the module in training mode (Gumbel noise replayed) and in
evaluation; causal leak and streaming = parallel with several blocks; bad options."""
import math

import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check
from references import sinkhorn_balance, torch_sinkhorn

models = ef.models


def draw_network(rng, H, d, hidden, n_max):
    return [rng.standard_normal((H, d, hidden)) / math.sqrt(d), 0.1 * rng.standard_normal((H, hidden)),
            rng.standard_normal((H, hidden, n_max)) / math.sqrt(hidden), 0.1 * rng.standard_normal((H, n_max))]


def padding(rng, B, N):
    mask = np.arange(N)[None, :] < rng.integers(1, N + 1, size=B)[:, None]
    mask[0] = True
    return mask


SETTINGS = [  # (N, block, iterations, temperature, sortcut): N a multiple of the block or not
    (32, 4, 5, 0.75, 0), (37, 5, 8, 1.0, 0), (23, 8, 3, 0.5, 0), (30, 6, 5, 0.75, 2), (41, 4, 4, 0.75, 3),
    (7, 16, 5, 0.75, 0)]


# head dim 8 and block 4: the fused kernels' products through oneDNN where the tile GEMMs need whole vectors;
# head dim 32 with block 16 (or 32): every product of the block attention through the tile GEMMs; with 16
# blocks of 4, the mixing's dP as well.
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("setting,d", [(s, 8) for s in SETTINGS] + [((64, 16, 5, 0.75, 0), 32),
                                                                     ((96, 32, 4, 0.75, 0), 32),
                                                                     ((64, 4, 5, 0.75, 0), 32)])
def test_functional_form_and_every_gradient_match_the_float64_formulation(rng, causal, setting, d):
    N, block, iterations, temperature, sortcut = setting
    if causal and sortcut:
        pytest.skip("SortCut is encoder-only")
    B, H, hidden = 2, 3, 6
    n = -(-N // block)
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    net = draw_network(rng, H, d, hidden, n + 1)
    gumbel = -np.log(-np.log(rng.uniform(size=(B, H, n, n))))
    for km in (None, padding(rng, B, N)):
        def ours(q, k, v, w1, b1, w2, b2, g):
            return ef.attention(q, k, v, kind="sinkhorn", causal=causal,
                                key_mask=None if km is None else ef.tensor(km), sort_w1=w1, sort_b1=b1,
                                sort_w2=w2, sort_b2=b2, gumbel=g, block=block, iterations=iterations,
                                temperature=temperature, sortcut=sortcut)

        def reference(q, k, v, w1, b1, w2, b2, g):
            return torch_sinkhorn(q, k, v, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, block, iterations,
                                  temperature, sortcut, causal, km, g)

        check(ours, reference, [q, k, v, *net, gumbel], rng, grad_inputs=[0, 1, 2, 3, 4, 5, 6])


def check_with_logits_past_exps_range(rng, causal):
    """Sorting logits of several hundred (sort_w2 scaled by 400), forward and gradients vs float64 torch."""
    B, H, N, d, hidden, block = 1, 2, 48, 8, 6, 4
    n = N // block
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    net = draw_network(rng, H, d, hidden, n + 1)
    net[2] = net[2] * 400

    def ours(q, k, v, w2):
        return ef.attention(q, k, v, kind="sinkhorn", causal=causal, sort_w1=ef.tensor(net[0].astype(np.float32)),
                            sort_b1=ef.tensor(net[1].astype(np.float32)), sort_w2=w2,
                            sort_b2=ef.tensor(net[3].astype(np.float32)), block=block)

    def reference(q, k, v, w2):
        return torch_sinkhorn(q, k, v, {"w1": torch.tensor(net[0]), "b1": torch.tensor(net[1]), "w2": w2,
                                        "b2": torch.tensor(net[3])}, block, 8, 0.75, 0, causal)

    # Logits of several hundred carry float32 rounding of about 1e-5 relative into the permutation, and its
    # gradient amplifies it: a few elements of dk reach 2e-4 of the largest (seed 2756634826), so the tolerance
    # is 10x the suite's default; a wrong formula differs by O(1).
    check(ours, reference, [q, k, v, net[2]], rng, atol=1e-4, grad_inputs=[0, 1, 2, 3])


def test_causal_balancing_with_logits_past_exps_range(rng):
    # A trained model's sorting logits divided by the temperature pass 88, where exp overflows: the causal
    # column step keeps a running maximum, so outputs and gradients stay finite and exact; and the native
    # step (its running log-sums) still equals the parallel pass.
    check_with_logits_past_exps_range(rng, True)
    mech = models.make_mechanism("sinkhorn", 16, 2, causal=True, max_len=32, options={"block": 4})
    mech.eval()
    state = {name: t.numpy() * (300 if name.startswith("sort_w") else 1) for name, t in mech.named_parameters()}
    mech.load_state_dict({name: ef.tensor(a.astype(np.float32)) for name, a in state.items()})
    x = rng.standard_normal((2, 30, 16)).astype(np.float32)
    with ef.no_grad():
        base = mech(ef.tensor(x)).numpy()
        stream = mech.start(2)
        pieces = [mech.step(stream, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy()
                  for a, b in [(0, 7), (7, 8), (8, 30)]]
    assert np.isfinite(base).all()
    assert_close(np.concatenate(pieces, 1), base, 1e-4, 1e-5, "step vs forward")


def test_bidirectional_balancing_with_logits_past_exps_range(rng):
    # The bidirectional balancing in its scaling form (kernels/sinkhorn_balance.h) reduces X0 - u - v by the
    # row and the column maxima, forward and backward, so such logits keep outputs and gradients finite and
    # exact. N a multiple of the block: the fused mixing-and-attention node.
    check_with_logits_past_exps_range(rng, False)


def test_the_sorting_matters(rng):
    # Another sorting network gives another output (the sorted block is not ignored).
    B, H, N, d, block = 1, 2, 24, 8, 4
    q, k, v = (ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32)) for _ in range(3))
    outs = []
    for _ in range(2):
        net = [ef.tensor(a.astype(np.float32)) for a in draw_network(rng, H, d, 4, 6)]
        outs.append(ef.attention(q, k, v, kind="sinkhorn", sort_w1=net[0], sort_b1=net[1], sort_w2=net[2],
                                 sort_b2=net[3], block=block).numpy())
    assert np.abs(outs[0] - outs[1]).max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_the_reference_permutation_is_doubly_stochastic(rng, causal):
    # The float64 balancing the references use (the C++ one is checked in tests/attention/sinkhorn_test.cpp).
    n = 9
    P = sinkhorn_balance(torch.tensor(rng.standard_normal((2, 3, n, n))), 60, causal)
    if causal:
        assert torch.allclose(P[..., 1:, :].sum(-1), torch.ones(2, 3, n - 1))
        assert (P.triu() == 0).all()
    else:
        assert torch.allclose(P.sum(-1), torch.ones(2, 3, n), atol=1e-6)
        assert torch.allclose(P.sum(-2), torch.ones(2, 3, n), atol=1e-6)


def module_reference(mech, x, causal, km, gumbel_state, options):
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in mech.named_parameters()}
    B, N, D = x.shape
    H = p["sort_w1"].shape[0]

    def heads(name, src):
        y = src @ p[name + ".weight"].T + p[name + ".bias"]
        return y.view(B, N, H, -1).transpose(1, 2)

    gumbel = None
    if gumbel_state is not None:
        n = -(-N // options["block"])
        now = ef.get_rng_state()
        ef.set_rng_state(gumbel_state)
        u = torch.tensor(ef.rand(B, H, n, n).numpy().astype(np.float64))
        ef.set_rng_state(now)
        gumbel = -torch.log(-torch.log(u + 1e-20) + 1e-20)
    xt = torch.tensor(x, requires_grad=True)
    net = {"w1": p["sort_w1"], "b1": p["sort_b1"], "w2": p["sort_w2"], "b2": p["sort_b2"]}
    o = torch_sinkhorn(heads("q_proj", xt), heads("k_proj", xt), heads("v_proj", xt), net, options["block"],
                       options.get("iterations", 8), options.get("temperature", 0.75), options.get("sortcut", 0),
                       causal, km, gumbel)
    out = o.transpose(1, 2).reshape(B, N, -1) @ p["out_proj.weight"].T + p["out_proj.bias"]
    return out, xt, p


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_module_matches_the_reference_with_its_gumbel_noise(rng, causal, training):
    B, N, D, H = 2, 27, 16, 2
    options = {"block": 4, "iterations": 6, "temperature": 0.9}
    if not causal:
        options["sortcut"] = 2 if training else 0
    mech = models.make_mechanism("sinkhorn", D, H, causal=causal, max_len=32, options=options)
    mech.train(training)
    x = rng.standard_normal((B, N, D))
    km = padding(rng, B, N)
    state = ef.get_rng_state()
    e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
    out = mech(e_x, None, ef.tensor(km))
    t_out, t_x, p = module_reference(mech, x, causal, km, state if training else None, options)
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal(tuple(t_out.shape))
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, "grad x")
    for n, t in mech.named_parameters():
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"grad {n}")
        if n.startswith("sort_"):
            assert np.abs(t.grad.numpy()).max() > 0, f"no gradient reaches {n}"


def test_gumbel_noise_only_in_training_and_only_when_on(rng):
    x = ef.tensor(rng.standard_normal((1, 24, 16)).astype(np.float32))
    mech = models.make_mechanism("sinkhorn", 16, 2, max_len=24, options={"block": 4})
    with ef.no_grad():
        mech.eval()
        a, b = mech(x).numpy(), mech(x).numpy()
        assert np.array_equal(a, b)
        mech.train()
        assert not np.array_equal(mech(x).numpy(), mech(x).numpy())
    quiet = models.make_mechanism("sinkhorn", 16, 2, max_len=24, options={"block": 4, "gumbel": False})
    with ef.no_grad():
        assert np.array_equal(quiet(x).numpy(), quiet(x).numpy())


def test_causal_with_several_blocks_does_not_leak_and_streams(rng):
    D, N, block = 16, 30, 4
    mech = models.make_mechanism("sinkhorn", D, 2, causal=True, max_len=32, options={"block": block})
    mech.eval()
    x = rng.standard_normal((2, N, D)).astype(np.float32)
    with ef.no_grad():
        base = mech(ef.tensor(x)).numpy()
        for t in (0, 3, 4, 13, 27):
            changed = x.copy()
            changed[:, t + 1:] = 5 * rng.standard_normal(changed[:, t + 1:].shape)
            out = mech(ef.tensor(changed)).numpy()
            assert np.array_equal(out[:, :t + 1], base[:, :t + 1]), f"rows <= {t} moved with later tokens"
        state = mech.start(2)
        pieces = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy()
                  for a, b in [(0, 1), (1, 5), (5, 6), (6, 17), (17, 30)]]
    assert_close(np.concatenate(pieces, 1), base, 1e-5, 1e-5, "step vs forward")
    assert mech.streaming_path == "native"
    # Gradients of the outputs up to t reach no later input.
    t = 13
    xl = ef.tensor(x, requires_grad=True)
    up = np.zeros((2, N, D), np.float32)
    up[:, :t + 1] = 1
    mech(xl).backward(ef.tensor(up))
    assert np.all(xl.grad.numpy()[:, t + 1:] == 0)


def test_bad_options_and_inputs_raise():
    with pytest.raises(ValueError, match="sortcut.*encoder-only"):
        models.make_mechanism("sinkhorn", 16, 2, causal=True, max_len=32, options={"sortcut": 1})
    for bad in ({"temperature": 0}, {"block": 0}, {"iterations": 0}, {"gumbel": 1}, {"hidden": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            models.make_mechanism("sinkhorn", 16, 2, max_len=32, options=bad)
    mech = models.make_mechanism("sinkhorn", 16, 2, max_len=32, options={"block": 4})
    with pytest.raises(ValueError, match="max_len"):
        mech(ef.randn(1, 33, 16))
    q = ef.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="sort_w1"):
        ef.attention(q, q, q, kind="sinkhorn")
    w = [ef.randn(2, 4, 3), ef.randn(2, 3), ef.randn(2, 3, 1), ef.randn(2, 1)]
    with pytest.raises(ValueError, match="sorting network has 1 outputs"):
        ef.attention(q, q, q, kind="sinkhorn", block=4, sort_w1=w[0], sort_b1=w[1], sort_w2=w[2], sort_b2=w[3])
    with pytest.raises(ValueError, match="dropout"):
        ef.attention(q, q, q, kind="sinkhorn", dropout=0.1, sort_w1=w[0], sort_b1=w[1], sort_w2=w[2],
                     sort_b2=w[3])
    with pytest.raises(ValueError, match="self-attention only"):
        ef.attention(q, ef.randn(1, 2, 9, 4), ef.randn(1, 2, 9, 4), kind="sinkhorn", sort_w1=w[0], sort_b1=w[1],
                     sort_w2=w[2], sort_b2=w[3])
