"""Routing attention with the paper's balanced clusters (option balance "top": each centroid takes its
`window` most similar tokens, Roy et al. 2021 sec. 4.1) against float64 PyTorch: one cluster taking
every token is exact shared-QK attention; the float64 formulation (references.torch_routing_top) with
fixed centroids where tokens fall in several clusters and in none, with local heads, padding and
clusters of one; the module (bidirectional) against the same formula and its moving average; causal
refused naming the leak; bad input."""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check
from references import (normalized_keys, routing_clusters, routing_top_members, torch_routing_ema,
                        torch_routing_top)
from test_attention_lsh import exact_shared_qk

models = ef.models


def routing_top(q, k, v, centroids, window, key_mask=None, local_heads=0, causal=False):
    return ef.attention(q, k, v, kind="routing", causal=causal, key_mask=key_mask, centroids=centroids,
                        window=window, local_heads=local_heads, balance="top")


def test_one_cluster_taking_every_token_is_exact_shared_qk_attention(rng):
    B, H, N, d = 2, 3, 23, 8
    mu = ef.tensor(rng.standard_normal((H, 1, d)).astype(np.float32))
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    for window in (N, 4 * N):  # window >= N: the cluster is the whole sequence
        check(lambda q, k, v: routing_top(q, k, v, mu, window),
              lambda q, k, v: exact_shared_qk(q, k, v, False), [q, k, v], rng)


SETTINGS = [  # (clusters, window, local_heads, N): c w > N (tokens in several clusters), c w < N (in none)
    (4, 16, 0, 32), (3, 5, 0, 37), (6, 12, 1, 50), (8, 3, 0, 41), (2, 64, 1, 29), (16, 2, 2, 40), (5, 1, 0, 20)]


@pytest.mark.parametrize("clusters,window,local_heads,N", SETTINGS)
def test_fixed_centroids_match_the_float64_algorithm(rng, clusters, window, local_heads, N):
    B, H, d = 2, 3, 8
    mu = rng.standard_normal((H, clusters, d)).astype(np.float32)
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: routing_top(q, k, v, ef.tensor(mu), window, local_heads=local_heads),
          lambda q, k, v: torch_routing_top(q, k, v, torch.tensor(mu.astype(np.float64)), window,
                                            local_heads=local_heads), [q, k, v], rng)


def test_the_settings_cover_several_clusters_and_none(rng):
    # c w > N puts some tokens in several clusters; c w < N leaves some in none (their output 0).
    kn = normalized_keys(torch.tensor(rng.standard_normal((2, 2, 32, 8))))
    count = routing_top_members(kn, torch.tensor(rng.standard_normal((2, 4, 8))), 16).sum(2)
    assert (count >= 2).any() and (count == 0).any()
    B, H, N, d, window = 1, 2, 41, 8, 3
    mu = rng.standard_normal((H, 8, d)).astype(np.float32)
    q, k, v = (rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(3))
    out = routing_top(ef.tensor(q), ef.tensor(k), ef.tensor(v), ef.tensor(mu), window).numpy()
    member = routing_top_members(normalized_keys(torch.tensor(k.astype(np.float64))),
                                 torch.tensor(mu.astype(np.float64)), window)
    none = (member.sum(2) == 0).numpy()
    assert none.sum() >= N // 2 and not out[none].any()


@pytest.mark.parametrize("local_heads", [0, 1])
def test_padding_with_fixed_centroids(rng, local_heads):
    # Sequence 2 has 5 real tokens, fewer than the window: its clusters take those 5.
    B, H, N, d, window = 3, 2, 30, 8, 7
    mu = rng.standard_normal((H, 5, d)).astype(np.float32)
    km = np.arange(N)[None, :] < np.array([N, 17, 5])[:, None]
    km[1, 3] = False
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: routing_top(q, k, v, ef.tensor(mu), window, ef.tensor(km), local_heads),
          lambda q, k, v: torch_routing_top(q, k, v, torch.tensor(mu.astype(np.float64)), window, km,
                                            local_heads), [q, k, v], rng)


def module_parts(mech, x):
    """The module's q (= k) and v heads [B, H, N, dh] in float64 from its parameters."""
    p = {n: torch.tensor(t.numpy().astype(np.float64)) for n, t in mech.named_parameters()}
    B, N, D = x.shape
    H = 4
    xt = torch.tensor(x.astype(np.float64))
    heads = lambda w, b: (xt @ p[w].T + p[b]).view(B, N, H, -1).transpose(1, 2)
    return p, heads("q_proj.weight", "q_proj.bias"), heads("v_proj.weight", "v_proj.bias")


OPTIONS = {"clusters": 4, "window": 12, "local_heads": 1, "decay": 0.9, "seed": 7, "balance": "top"}


def test_the_module_is_the_float64_formula_and_learns_by_the_moving_average(rng):
    B, N, D = 2, 30, 32
    mech = models.make_mechanism("routing", D, 4, causal=False, max_len=64, options=OPTIONS)
    x = rng.standard_normal((B, N, D)).astype(np.float32)
    before = torch.tensor(mech.state_dict()["centroids"].numpy().astype(np.float64))
    p, q, v = module_parts(mech, x)
    heads = torch_routing_top(q, q, v, before, OPTIONS["window"], local_heads=OPTIONS["local_heads"])
    expected = heads.transpose(1, 2).reshape(B, N, D) @ p["out_proj.weight"].T + p["out_proj.bias"]
    mech.train()
    out = mech(ef.tensor(x)).numpy()
    assert_close(out, expected.numpy(), 1e-4, 1e-5, "module output")
    # The update: the nearest-centroid moving average (as routing-transformer's k-means), not the top-w sets.
    kn = normalized_keys(q)
    clusters = routing_clusters(kn, before, OPTIONS["local_heads"])
    ema = torch_routing_ema(before, kn, clusters, OPTIONS["decay"], None, OPTIONS["local_heads"])
    after = mech.state_dict()["centroids"].numpy()
    assert not np.allclose(after, before.numpy(), atol=1e-3), "the centroids did not move"
    assert_close(after, ema.numpy(), 1e-5, 1e-5, "centroids after one step")


def test_causal_is_refused_naming_the_leak(rng):
    q = ef.tensor(rng.standard_normal((1, 2, 8, 4)).astype(np.float32))
    mu = ef.tensor(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="balance = 'top' has no causal form.*leak"):
        routing_top(q, q, q, mu, 4, causal=True)
    with pytest.raises(ValueError, match="balance = 'top' has no causal form.*leak"):
        models.make_mechanism("routing", 16, 2, causal=True, max_len=64, options={"balance": "top"})


def test_bad_input_is_a_clear_error(rng):
    q = ef.tensor(rng.standard_normal((1, 2, 8, 4)).astype(np.float32))
    k = ef.tensor(rng.standard_normal((1, 2, 6, 4)).astype(np.float32))
    mu = ef.tensor(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="balance"):
        ef.attention(q, q, q, kind="routing", centroids=mu, balance="greedy")
    with pytest.raises(ValueError, match="balance"):
        models.make_mechanism("routing", 16, 2, max_len=64, options={"balance": 1})
    with pytest.raises(ValueError, match="self-attention"):
        routing_top(q, k, k, mu, 4)
    with pytest.raises(ValueError, match="centroids"):
        routing_top(q, q, q, ef.tensor(np.ones((3, 3, 4), np.float32)), 4)
    with pytest.raises(ValueError, match="local_heads = 3"):
        routing_top(q, q, q, mu, 4, local_heads=3)
    with pytest.raises(ValueError, match="window"):
        routing_top(q, q, q, mu, 0)
    with pytest.raises(ValueError, match="dropout"):
        ef.attention(q, q, q, kind="routing", centroids=mu, balance="top", dropout=0.1)
