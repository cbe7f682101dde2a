"""Exact attention (kind="full" and kind="flash") against a float64 torch reference.

Semantics under test: causal is bottom-right aligned (query i sees key j iff j <= i + M - N), key_mask
[B, M] is True at real tokens, and a query row with no attendable key outputs 0 with zero gradients.
"""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import check, on_thread_counts

# The exact kinds, from the registry: softmax mechanisms whose pattern is every key (at N = 2048,
# where the default windows and strides of the sparse family leave keys out).
KINDS = [e["name"] for e in ef.mechanisms()
         if e["reference"] == "softmax-pattern" and ef.attention_pattern(e["name"], 2048).all()]


def allowed_mask(B, N, M, causal, key_mask):
    """Bool [B, 1, N, M]: may query i attend key j."""
    allowed = torch.ones(B, 1, N, M, dtype=torch.bool)
    if causal:
        i = torch.arange(N)[:, None]
        j = torch.arange(M)[None, :]
        allowed = allowed & (j <= i + (M - N))
    if key_mask is not None:
        allowed = allowed & torch.as_tensor(key_mask)[:, None, None, :]
    return allowed


def torch_attention(q, k, v, causal=False, key_mask=None, scale=None):
    B, _, N, d = q.shape
    M = k.shape[2]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    allowed = allowed_mask(B, N, M, causal, key_mask)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    has_key = allowed.any(-1, keepdim=True)
    s = torch.where(has_key, s, torch.zeros_like(s))  # rows with no key: avoid softmax of all -inf
    p = torch.softmax(s, -1) * allowed
    return p @ v


def random_key_mask(rng, B, M, allow_empty=False):
    """Padding per batch row: a random number of real tokens followed by padding."""
    lo = 0 if allow_empty else 1
    lengths = rng.integers(lo, M + 1, size=B)
    return np.arange(M)[None, :] < lengths[:, None]


def qkv(rng, B, H, N, M, d):
    return (rng.standard_normal((B, H, N, d)), rng.standard_normal((B, H, M, d)),
            rng.standard_normal((B, H, M, d)))


SIZES = [(1, 1), (7, 7), (63, 63), (65, 65), (200, 200), (7, 130), (130, 7), (65, 200), (200, 63)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("N,M", SIZES)
def test_matches_torch(rng, kind, causal, masked, N, M):
    B, H, d = 2, 3, 32
    q, k, v = qkv(rng, B, H, N, M, d)
    km = random_key_mask(rng, B, M) if masked else None
    check(lambda q, k, v, km: ef.attention(q, k, v, kind=kind, causal=causal, key_mask=km),
          lambda q, k, v, km: torch_attention(q, k, v, causal, None if km is None else km.numpy()),
          [q, k, v, km], rng)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [32, 64, 128, 40, 1, 17])
def test_head_dims(rng, kind, causal, d):
    B, H, N, M = 2, 2, 70, 150
    q, k, v = qkv(rng, B, H, N, M, d)
    km = random_key_mask(rng, B, M)
    check(lambda q, k, v, km: ef.attention(q, k, v, kind=kind, causal=causal, key_mask=km),
          lambda q, k, v, km: torch_attention(q, k, v, causal, km.numpy()), [q, k, v, km], rng)


@pytest.mark.parametrize("kind", KINDS)
def test_explicit_scale(rng, kind):
    q, k, v = qkv(rng, 1, 2, 33, 40, 16)
    check(lambda q, k, v: ef.attention(q, k, v, kind=kind, scale=0.7),
          lambda q, k, v: torch_attention(q, k, v, scale=0.7), [q, k, v], rng)


def run(kind, q, k, v, g, **kw):
    """Output and gradients (numpy) of eformer attention for float32 inputs and upstream g."""
    ts = [ef.tensor(a.astype(np.float32), requires_grad=True) for a in (q, k, v)]
    out = ef.attention(*ts, kind=kind, **kw)
    out.backward(ef.tensor(g.astype(np.float32)))
    return [out.numpy()] + [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N,M", [(65, 65), (200, 130), (130, 200), (1, 300)])
def test_flash_agrees_with_full(rng, causal, N, M):
    q, k, v = qkv(rng, 2, 2, N, M, 64)
    g = rng.standard_normal((2, 2, N, 64))
    km = random_key_mask(rng, 2, M)
    a = run("full", q, k, v, g, causal=causal, key_mask=ef.tensor(km))
    b = run("flash", q, k, v, g, causal=causal, key_mask=ef.tensor(km))
    for x, y, what in zip(a, b, ["out", "dq", "dk", "dv"]):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=2e-5 * max(1.0, np.abs(x).max()), err_msg=what)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_without_keys_are_zero(rng, kind):
    # N > M with causal: the first N - M queries see no key; batch row 1 is all padding.
    B, H, N, M, d = 2, 2, 90, 40, 24
    q, k, v = qkv(rng, B, H, N, M, d)
    g = rng.standard_normal((B, H, N, d))
    km = np.ones((B, M), dtype=bool)
    km[1] = False
    out, dq, dk, dv = run(kind, q, k, v, g, causal=True, key_mask=ef.tensor(km))
    for a in (out, dq, dk, dv):
        assert np.all(np.isfinite(a))
    assert np.all(out[:, :, : N - M] == 0) and np.all(dq[:, :, : N - M] == 0)
    assert np.all(out[1] == 0) and np.all(dq[1] == 0) and np.all(dk[1] == 0) and np.all(dv[1] == 0)
    check(lambda q, k, v, km: ef.attention(q, k, v, kind=kind, causal=True, key_mask=km),
          lambda q, k, v, km: torch_attention(q, k, v, True, km.numpy()), [q, k, v, km], rng)


@pytest.mark.parametrize("N,M", [(150, 150), (100, 230)])
def test_causal_does_not_leak(rng, N, M):
    B, H, d = 2, 2, 32
    q, k, v = qkv(rng, B, H, N, M, d)
    t = 70  # outputs of queries <= t may depend only on keys <= t + M - N
    base = run("flash", q, k, v, np.ones((B, H, N, d)), causal=True)[0]
    for which in range(3):
        x = [q.copy(), k.copy(), v.copy()]
        start = t + 1 if which == 0 else t + (M - N) + 1
        x[which][:, :, start:] += 100 * rng.standard_normal(x[which][:, :, start:].shape)
        out = run("flash", *x, np.ones((B, H, N, d)), causal=True)[0]
        assert np.array_equal(out[:, :, : t + 1], base[:, :, : t + 1]), f"leak through input {which}"
    # And no gradient reaches future keys from the past outputs.
    g = np.zeros((B, H, N, d))
    g[:, :, : t + 1] = 1.0
    _, _, dk, dv = run("flash", q, k, v, g, causal=True)
    assert np.all(dk[:, :, t + (M - N) + 1 :] == 0) and np.all(dv[:, :, t + (M - N) + 1 :] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_bit_identical_on_1_and_2_threads(rng, kind):
    B, H, N, M, d = 2, 3, 200, 190, 40
    q, k, v = qkv(rng, B, H, N, M, d)
    g = rng.standard_normal((B, H, N, d))
    km = ef.tensor(random_key_mask(rng, B, M))
    results = on_thread_counts(lambda: run(kind, q, k, v, g, causal=True, key_mask=km))
    for a, b, what in zip(*results, ["out", "dq", "dk", "dv"]):
        assert np.array_equal(a, b), what


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N,M", [(700, 700), (520, 900), (900, 333)])
def test_flash_at_one_head_matches_torch(rng, causal, N, M):
    # B = H = 1 with many 128-key tiles: the backward splits the key blocks into several groups.
    q, k, v = qkv(rng, 1, 1, N, M, 32)
    km = random_key_mask(rng, 1, M)
    check(lambda q, k, v, km: ef.attention(q, k, v, kind="flash", causal=causal, key_mask=km),
          lambda q, k, v, km: torch_attention(q, k, v, causal, km.numpy()), [q, k, v, km], rng)


def test_flash_bit_identical_on_1_2_and_3_threads_at_one_head(rng):
    N, M, d = 1000, 1100, 24
    q, k, v = qkv(rng, 1, 1, N, M, d)
    g = rng.standard_normal((1, 1, N, d))
    km = ef.tensor(random_key_mask(rng, 1, M))
    before = ef.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            ef.set_num_threads(threads)
            ef.manual_seed(0)  # the same dropout mask on every run
            results.append(run("flash", q, k, v, g, causal=True, key_mask=km, dropout=0.1))
    finally:
        ef.set_num_threads(before)
    for other in results[1:]:
        for a, b, what in zip(results[0], other, ["out", "dq", "dk", "dv"]):
            assert np.array_equal(a, b), what


def test_flash_memory_is_linear_in_n(rng):
    B, H, N, d = 1, 8, 4096, 64
    q, k, v = [ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32), requires_grad=True)
               for _ in range(3)]
    g = ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32))
    ef.reset_peak_memory_stats()
    base = ef.memory_stats()["live_bytes"]
    out = ef.attention(q, k, v, kind="flash", causal=True)
    out.backward(g)
    extra = ef.memory_stats()["peak_bytes"] - base
    one_head_tensor = B * H * N * d * 4
    # Saved: out and lse; backward: dq, dk, dv and K^T, V^T copies, plus per-thread tiles and [N, d]
    # buffers: a few [B, H, N, d] tensors, while the scores would be 8 x N x N x 4 = 512 MiB.
    assert extra < 10 * one_head_tensor, f"flash used {extra} bytes beyond its inputs"
    assert extra < 0.25 * B * H * N * N * 4


def test_errors(rng):
    q, k, v = [ef.tensor(a.astype(np.float32)) for a in qkv(rng, 2, 2, 5, 7, 8)]
    with pytest.raises(ValueError, match="v is Tensor"):
        ef.attention(q, k, ef.zeros(2, 2, 6, 8))
    with pytest.raises(ValueError, match=r"k is Tensor\[2, 2, 7, 4\]"):
        ef.attention(q, ef.zeros(2, 2, 7, 4), ef.zeros(2, 2, 7, 4))
    with pytest.raises(ValueError, match="expected 4 dims"):
        ef.attention(ef.zeros(2, 5, 8), k, v)
    with pytest.raises(ValueError, match="key_mask has dtype float32"):
        ef.attention(q, k, v, key_mask=ef.zeros(2, 7))
    with pytest.raises(ValueError, match=r"expected \[batch, keys\] = \[2, 7\]"):
        ef.attention(q, k, v, key_mask=ef.tensor(np.ones((2, 5), dtype=bool)))
    with pytest.raises(ValueError, match="unknown kind 'fast'.*full, flash"):
        ef.attention(q, k, v, kind="fast")
    assert ef.attention_kinds()[:2] == ["full", "flash"]
