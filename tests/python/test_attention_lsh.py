"""LSH attention (Reformer, mechanism "lsh") against float64 PyTorch: the degenerate case that is exact
shared-QK attention, the documented algorithm with fixed rotations (references.torch_lsh), causal leak,
streaming = parallel with buckets that overflow the cache, rotation draws and redraws, bad input."""
import math

import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check
from references import LSH_SELF_SCORE, lsh_bucket_factors, torch_lsh

models = ef.models


def lsh(q, k, v, rotations, chunk, causal=False, key_mask=None, n_buckets=None):
    return ef.attention(q, k, v, kind="lsh", causal=causal, key_mask=key_mask, rotations=rotations, chunk=chunk,
                        n_buckets=n_buckets)


def exact_shared_qk(q, k, v, causal):
    """softmax(q k^T / sqrt(d)) v with k^ = k / |k|, no token attending itself unless nothing else is
    visible (causal row 0), written from the paper's definition, not from torch_lsh."""
    N, d = q.shape[2], q.shape[3]
    kn = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-12)
    s = (q @ kn.transpose(-1, -2)) / math.sqrt(d)
    i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    allowed = (j < i) if causal else (j != i)
    allowed = allowed | ((i == 0) & (j == 0) if causal else torch.zeros(N, N, dtype=torch.bool))
    return torch.softmax(s.masked_fill(~allowed, -math.inf), -1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_n_buckets_1_is_exact_shared_qk_attention(rng, causal):
    # The option form of the degenerate case: no hashing at all (the Reformer's "full attention" rows).
    B, H, N, d = 1, 2, 19, 8
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: ef.attention(q, k, v, kind="lsh", causal=causal, n_buckets=1, n_hashes=1, chunk=N),
          lambda q, k, v: exact_shared_qk(q, k, v, causal), [q, k, v], rng)
    mech = models.make_mechanism("lsh", 16, 2, causal=causal, max_len=32, options={"n_buckets": 1, "chunk": 32})
    assert tuple(mech.forward(ef.randn(1, 32, 16)).shape) == (1, 32, 16)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_one_bucket_one_chunk_is_exact_shared_qk_attention(rng, causal, n_hashes):
    B, H, N, d = 2, 3, 23, 8
    # Zero rotations put every key in bucket 0; a chunk of N covers the sequence (2c - 1 >= N too).
    rotations = ef.tensor(np.zeros((n_hashes, H, d, 2), np.float32))
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: lsh(q, k, v, rotations, N, causal),
          lambda q, k, v: exact_shared_qk(q, k, v, causal), [q, k, v], rng)


SETTINGS = [  # (n_hashes, n_buckets, chunk, N): N not a multiple of chunk in most; 512: factorized, 32 x 16
    (1, 4, 4, 32), (2, 8, 5, 37), (4, 2, 8, 50), (3, 16, 3, 41), (2, 4, 64, 29), (2, 512, 2, 40)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes,n_buckets,chunk,N", SETTINGS)
def test_fixed_rotations_match_the_float64_algorithm(rng, causal, n_hashes, n_buckets, chunk, N):
    B, H, d = 2, 2, 8
    columns = sum(b // 2 for b in lsh_bucket_factors(n_buckets))
    r = rng.standard_normal((n_hashes, H, d, columns)).astype(np.float32)
    rotations, r64 = ef.tensor(r), torch.tensor(r.astype(np.float64))
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: lsh(q, k, v, rotations, chunk, causal, n_buckets=n_buckets),
          lambda q, k, v: torch_lsh(q, k, v, r64, chunk, causal, n_buckets=n_buckets), [q, k, v], rng)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_with_fixed_rotations(rng, causal):
    B, H, N, d, chunk = 3, 2, 30, 8, 4
    r = rng.standard_normal((2, H, d, 4)).astype(np.float32)
    km = np.arange(N)[None, :] < np.array([N, 17, 5])[:, None]
    km[1, 3] = False
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    check(lambda q, k, v: lsh(q, k, v, ef.tensor(r), chunk, causal, ef.tensor(km)),
          lambda q, k, v: torch_lsh(q, k, v, torch.tensor(r.astype(np.float64)), chunk, causal, km), [q, k, v], rng)


def test_self_score_is_the_documented_constant(rng):
    # A query whose bucket holds nothing else attends itself only (weight 1 on its own value).
    B, H, N, d = 1, 1, 2, 4
    q = rng.standard_normal((B, H, N, d)).astype(np.float32)
    v = rng.standard_normal((B, H, N, d)).astype(np.float32)
    r = np.zeros((1, H, d, 1), np.float32)
    out = lsh(ef.tensor(q), ef.tensor(q), ef.tensor(v), ef.tensor(r), 1, causal=True).numpy()
    assert_close(out[0, 0, 0], v[0, 0, 0], 1e-6, 1e-6, "first token: itself only")
    assert LSH_SELF_SCORE == -1e5


@pytest.mark.parametrize("causal", [True])
def test_causal_functional_form_does_not_leak(rng, causal):
    B, H, N, d, chunk = 2, 2, 64, 8, 4
    r = ef.tensor(rng.standard_normal((3, H, d, 4)).astype(np.float32))
    q, k, v = (rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(3))
    base = lsh(ef.tensor(q), ef.tensor(k), ef.tensor(v), r, chunk, True).numpy()
    for t in [0, 20, 50]:
        q2, k2, v2 = q.copy(), k.copy(), v.copy()
        for x in (q2, k2, v2):
            x[:, :, t + 1:] = rng.standard_normal(x[:, :, t + 1:].shape)
        tq, tk, tv = (ef.tensor(x, requires_grad=True) for x in (q2, k2, v2))
        out = lsh(tq, tk, tv, r, chunk, True)
        assert np.array_equal(out.numpy()[:, :, :t + 1], base[:, :, :t + 1]), f"leak into positions <= {t}"
        g = np.zeros(out.shape, np.float32)
        g[:, :, :t + 1] = 1.0
        out.backward(ef.tensor(g))
        for x in (tq, tk, tv):
            assert not np.any(x.grad.numpy()[:, :, t + 1:]), "gradient reaches the future"


def test_streaming_equals_parallel_with_overflowing_buckets(rng):
    # 8 buckets, chunk 2 (cache of 3 keys per bucket), 3 rounds over 60 tokens: most buckets overflow.
    mech = models.make_mechanism("lsh", 32, 4, causal=True, max_len=128, positions="rotary",
                                 options={"n_buckets": 8, "chunk": 2, "n_hashes": 3})
    mech.eval()
    x = rng.standard_normal((2, 60, 32)).astype(np.float32)
    with ef.no_grad():
        full = mech(ef.tensor(x)).numpy()
        state = mech.start(2)
        pieces = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy()
                  for a, b in [(0, 1), (1, 2), (2, 13), (13, 40), (40, 41), (41, 60)]]
    assert mech.streaming_path == "native" and state.length == 60
    assert_close(np.concatenate(pieces, 1), full, 1e-5, 1e-5, "step vs forward")


def test_rotations_are_drawn_from_the_default_generator_and_replayed():
    x = ef.tensor(np.random.default_rng(0).standard_normal((1, 40, 16)).astype(np.float32))
    mech = models.make_mechanism("lsh", 16, 2, max_len=64, options={"n_buckets": 8, "chunk": 4})
    mech.train()
    ef.manual_seed(5)
    a = mech(x).numpy()
    ra = mech.state_dict()["rotations"].numpy().copy()
    ef.manual_seed(5)
    b = mech(x).numpy()
    c = mech(x).numpy()  # the generator moved on: new rotations
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert ra.shape == (4, 2, 8, 4) and not np.array_equal(ra, mech.state_dict()["rotations"].numpy())
    mech.eval()  # evaluation uses the buffer: the latest draw
    with ef.no_grad():
        assert np.array_equal(mech(x).numpy(), mech(x).numpy())


def test_fixed_rotations_come_from_the_seed():
    def make():
        return models.make_mechanism("lsh", 16, 2, max_len=64, options={"redraw": False, "seed": 11})
    m1, m2 = make(), make()
    r1 = m1.state_dict()["rotations"].numpy()
    assert np.array_equal(r1, m2.state_dict()["rotations"].numpy())
    m1.train()
    m1(ef.tensor(np.ones((1, 8, 16), np.float32)))
    assert np.array_equal(r1, m1.state_dict()["rotations"].numpy()), "redraw = false redrew"


def test_bad_input_is_a_clear_error(rng):
    q = ef.tensor(rng.standard_normal((1, 2, 8, 4)).astype(np.float32))
    k = ef.tensor(rng.standard_normal((1, 2, 6, 4)).astype(np.float32))
    r = ef.tensor(np.zeros((1, 2, 4, 2), np.float32))
    with pytest.raises(ValueError, match="self-attention"):
        ef.attention(q, k, k, kind="lsh")
    with pytest.raises(ValueError, match="rotations"):
        ef.attention(q, q, q, kind="lsh", rotations=ef.tensor(np.zeros((1, 3, 4, 2), np.float32)))
    with pytest.raises(ValueError, match="power of two"):
        ef.attention(q, q, q, kind="lsh", rotations=ef.tensor(np.zeros((1, 2, 4, 3), np.float32)))
    with pytest.raises(ValueError, match="pass n_buckets"):
        ef.attention(q, q, q, kind="lsh", rotations=ef.tensor(np.zeros((1, 2, 4, 256), np.float32)))
    with pytest.raises(ValueError, match="columns"):  # 512 buckets take 24 columns
        ef.attention(q, q, q, kind="lsh", rotations=ef.tensor(np.zeros((1, 2, 4, 256), np.float32)), n_buckets=512)
    with pytest.raises(ValueError, match="n_hashes = 2"):
        ef.attention(q, q, q, kind="lsh", rotations=r, n_hashes=2)
    with pytest.raises(ValueError, match="dropout"):
        ef.attention(q, q, q, kind="lsh", rotations=r, dropout=0.1)
    with pytest.raises(ValueError, match="chunk"):
        ef.attention(q, q, q, kind="lsh", chunk=0)
    with pytest.raises(ValueError, match="n_buckets = 6"):
        models.make_mechanism("lsh", 16, 2, max_len=64, options={"n_buckets": 6})
    with pytest.raises(ValueError, match="max_len"):
        models.make_mechanism("lsh", 16, 2)
    with pytest.raises(ValueError, match="cross"):
        models.make_mechanism("lsh", 16, 2, cross=True, max_len=64)
