"""Routing attention (Roy et al. 2021, mechanism "routing") against float64 PyTorch: one cluster and
one window is exact shared-QK attention, the documented algorithm with fixed centroids
(references.torch_routing) with several clusters, local heads and padding, the moving average of the
centroids (references.torch_routing_ema), causal leak (evaluation and training forwards), streaming =
parallel with clusters that overflow the cache, bad input."""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check
from references import normalized_keys, routing_clusters, torch_routing, torch_routing_ema
from test_attention_lsh import exact_shared_qk

models = ef.models


def routing(q, k, v, centroids, window, causal=False, key_mask=None, local_heads=0):
    return ef.attention(q, k, v, kind="routing", causal=causal, key_mask=key_mask, centroids=centroids,
                        window=window, local_heads=local_heads)


@pytest.mark.parametrize("causal", [False, True])
def test_one_cluster_one_window_is_exact_shared_qk_attention(rng, causal):
    B, H, N, d = 2, 3, 23, 8
    mu = ef.tensor(rng.standard_normal((H, 1, d)).astype(np.float32))
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: routing(q, k, v, mu, N, causal),
          lambda q, k, v: exact_shared_qk(q, k, v, causal), [q, k, v], rng)


SETTINGS = [  # (clusters, window, local_heads, N): N not a multiple of the window in most
    (2, 4, 0, 32), (4, 5, 0, 37), (3, 8, 1, 50), (8, 3, 0, 41), (5, 64, 1, 29), (16, 2, 2, 40)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("clusters,window,local_heads,N", SETTINGS)
def test_fixed_centroids_match_the_float64_algorithm(rng, causal, clusters, window, local_heads, N):
    B, H, d = 2, 2, 8
    mu = rng.standard_normal((H, clusters, d)).astype(np.float32)
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: routing(q, k, v, ef.tensor(mu), window, causal, local_heads=local_heads),
          lambda q, k, v: torch_routing(q, k, v, torch.tensor(mu.astype(np.float64)), window, causal,
                                        local_heads=local_heads), [q, k, v], rng)


def test_several_clusters_are_really_used(rng):
    # The settings above route for real: random keys spread over most of the centroids.
    kn = normalized_keys(torch.tensor(rng.standard_normal((2, 2, 50, 8))))
    clusters = routing_clusters(kn, torch.tensor(rng.standard_normal((2, 8, 8))))
    assert len(torch.unique(clusters)) >= 5


@pytest.mark.parametrize("causal", [False, True])
def test_padding_with_fixed_centroids(rng, causal):
    B, H, N, d, window = 3, 2, 30, 8, 4
    mu = rng.standard_normal((H, 3, d)).astype(np.float32)
    km = np.arange(N)[None, :] < np.array([N, 17, 5])[:, None]
    km[1, 3] = False
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: routing(q, k, v, ef.tensor(mu), window, causal, ef.tensor(km)),
          lambda q, k, v: torch_routing(q, k, v, torch.tensor(mu.astype(np.float64)), window, causal, km),
          [q, k, v], rng)


def test_causal_functional_form_does_not_leak(rng):
    B, H, N, d, window = 2, 2, 64, 8, 4
    mu = ef.tensor(rng.standard_normal((H, 4, d)).astype(np.float32))
    q, k, v = (rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(3))
    base = routing(ef.tensor(q), ef.tensor(k), ef.tensor(v), mu, window, True, local_heads=1).numpy()
    for t in [0, 20, 50]:
        q2, k2, v2 = q.copy(), k.copy(), v.copy()
        for x in (q2, k2, v2):
            x[:, :, t + 1:] = rng.standard_normal(x[:, :, t + 1:].shape)
        tq, tk, tv = (ef.tensor(x, requires_grad=True) for x in (q2, k2, v2))
        out = routing(tq, tk, tv, mu, window, True, local_heads=1)
        assert np.array_equal(out.numpy()[:, :, :t + 1], base[:, :, :t + 1]), f"leak into positions <= {t}"
        g = np.zeros(out.shape, np.float32)
        g[:, :, :t + 1] = 1.0
        out.backward(ef.tensor(g))
        for x in (tq, tk, tv):
            assert not np.any(x.grad.numpy()[:, :, t + 1:]), "gradient reaches the future"


OPTIONS = {"clusters": 4, "window": 3, "local_heads": 1, "decay": 0.9, "seed": 7}


def test_a_training_forward_does_not_leak_either(rng):
    # The moving average runs after the forward: a training forward's past outputs do not see the
    # future through the centroids (two fresh modules, one input changed after t).
    x = rng.standard_normal((2, 40, 32)).astype(np.float32)
    t = 17
    changed = x.copy()
    changed[:, t + 1:] += 5 * rng.standard_normal(changed[:, t + 1:].shape).astype(np.float32)
    outs = []
    for inp in (x, changed):
        ef.manual_seed(1)
        mech = models.make_mechanism("routing", 32, 4, causal=True, max_len=64, options=OPTIONS)
        mech.train()
        outs.append(mech(ef.tensor(inp)).numpy())
    assert np.array_equal(outs[0][:, :t + 1], outs[1][:, :t + 1])
    assert np.abs(outs[0][:, t + 1:] - outs[1][:, t + 1:]).max() > 1e-3


def test_streaming_equals_parallel_with_overflowing_clusters(rng):
    # 4 clusters, window 2 (a cache of 3 keys per cluster) over 60 tokens: every cluster overflows;
    # one local head (a sliding window of 3).
    mech = models.make_mechanism("routing", 32, 4, causal=True, max_len=128, positions="rotary",
                                 options={"clusters": 4, "window": 2, "local_heads": 1})
    mech.eval()
    x = rng.standard_normal((2, 60, 32)).astype(np.float32)
    with ef.no_grad():
        full = mech(ef.tensor(x)).numpy()
        state = mech.start(2)
        pieces = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy()
                  for a, b in [(0, 1), (1, 2), (2, 13), (13, 40), (40, 41), (41, 60)]]
    assert mech.streaming_path == "native" and state.length == 60
    assert_close(np.concatenate(pieces, 1), full, 1e-5, 1e-5, "step vs forward")


@pytest.mark.parametrize("padded", [False, True])
def test_the_moving_average_matches_the_float64_formula(rng, padded):
    B, N, D, H = 2, 30, 32, 4
    mech = models.make_mechanism("routing", D, H, causal=True, max_len=64, options=OPTIONS)
    mech.train()
    before = torch.tensor(mech.state_dict()["centroids"].numpy().astype(np.float64))
    p = {n: torch.tensor(t.numpy().astype(np.float64)) for n, t in mech.named_parameters()}
    x = rng.standard_normal((B, N, D)).astype(np.float32)
    km = np.arange(N)[None, :] < np.array([N, 11])[:, None] if padded else None
    mech(ef.tensor(x), None, None if km is None else ef.tensor(km))
    after = mech.state_dict()["centroids"].numpy()
    q = (torch.tensor(x.astype(np.float64)) @ p["q_proj.weight"].T + p["q_proj.bias"]).view(B, N, H, -1)
    kn = normalized_keys(q.transpose(1, 2))
    clusters = routing_clusters(kn, before, OPTIONS["local_heads"])
    expected = torch_routing_ema(before, kn, clusters, OPTIONS["decay"], km, OPTIONS["local_heads"])
    assert not np.allclose(after, before.numpy(), atol=1e-3), "the centroids did not move"
    assert_close(after, expected.numpy(), 1e-5, 1e-5, "centroids after one step")
    # Evaluation routes with them and learns nothing.
    mech.eval()
    with ef.no_grad():
        mech(ef.tensor(x))
    assert np.array_equal(mech.state_dict()["centroids"].numpy(), after)


def test_bad_input_is_a_clear_error(rng):
    q = ef.tensor(rng.standard_normal((1, 2, 8, 4)).astype(np.float32))
    k = ef.tensor(rng.standard_normal((1, 2, 6, 4)).astype(np.float32))
    mu = ef.tensor(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="self-attention"):
        routing(q, k, k, mu, 4)
    with pytest.raises(ValueError, match="centroids"):
        ef.attention(q, q, q, kind="routing")
    with pytest.raises(ValueError, match="centroids"):
        routing(q, q, q, ef.tensor(np.ones((3, 3, 4), np.float32)), 4)
    with pytest.raises(ValueError, match="local_heads = 3"):
        routing(q, q, q, mu, 4, local_heads=3)
    with pytest.raises(ValueError, match="window"):
        routing(q, q, q, mu, 0)
    with pytest.raises(ValueError, match="dropout"):
        ef.attention(q, q, q, kind="routing", centroids=mu, dropout=0.1)
    with pytest.raises(ValueError, match="decay"):
        models.make_mechanism("routing", 16, 2, max_len=64, options={"decay": -0.1})
    with pytest.raises(ValueError, match="max_len"):
        models.make_mechanism("routing", 16, 2)
    with pytest.raises(ValueError, match="cross"):
        models.make_mechanism("routing", 16, 2, cross=True, max_len=64)
