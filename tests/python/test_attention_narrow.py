"""narrow_attention (kernels/narrow_attention.h: exact attention by whole GEMMs over kept probabilities when one
side is short, the kernel under linformer and isab) against the float64 torch formulation of
test_attention_exact: forward and the gradients of q, k, v at sizes whose query and key chunks leave
remainders, causal, padded, with an explicit scale; dropout dropping flash's elements; the bits on 1 and 2
threads; the flash fallback beyond kNarrowSideMax; errors. Fresh random inputs each run (the seed is printed).
"""
import numpy as np
import pytest

import eformer as ef
from conftest import check, on_thread_counts
from test_attention_exact import qkv, random_key_mask, torch_attention

# (N, M): a few keys or a few queries. Chunks hold about 64K scores (at least 32 rows) and the backward sums dK, dV
# over groups of 8 chunks: 130 x 600 and 2000 x 37 give two chunks with a remainder, 2000 x 300 two groups (the
# second a chunk and a remainder); 1 x 300 a single query.
SIZES = [(300, 37), (37, 300), (130, 600), (600, 130), (2000, 37), (37, 2000), (2000, 300), (1, 300), (300, 1),
         (65, 65)]


def narrow(q, k, v, **kw):
    return ef.narrow_attention(q, k, v, **kw)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("N,M", SIZES)
def test_matches_torch(rng, causal, masked, N, M):
    B, H, d = 2, 2, 24
    q, k, v = qkv(rng, B, H, N, M, d)
    km = random_key_mask(rng, B, M, allow_empty=True) if masked else None
    check(lambda q, k, v, km: narrow(q, k, v, causal=causal, key_mask=km),
          lambda q, k, v, km: torch_attention(q, k, v, causal, None if km is None else km.numpy()),
          [q, k, v, km], rng)


@pytest.mark.parametrize("d", [1, 17, 64])
def test_head_dims_and_scale(rng, d):
    q, k, v = qkv(rng, 1, 3, 90, 40, d)
    check(lambda q, k, v: narrow(q, k, v, scale=0.3), lambda q, k, v: torch_attention(q, k, v, scale=0.3),
          [q, k, v], rng)


def test_only_some_inputs_need_gradients(rng):
    # ISAB's inducing queries need no gradient in the functional form: dq is skipped, dk and dv are not.
    q, k, v = qkv(rng, 2, 2, 16, 300, 8)
    check(narrow, torch_attention, [q, k, v], rng, grad_inputs=[1, 2])
    check(narrow, torch_attention, [q, k, v], rng, grad_inputs=[0])


def outputs_and_grads(fn, q, k, v, g, **kw):
    ts = [ef.tensor(a.astype(np.float32), requires_grad=True) for a in (q, k, v)]
    out = fn(*ts, **kw)
    out.backward(ef.tensor(g.astype(np.float32)))
    return [out.numpy()] + [t.grad.numpy() for t in ts]


def test_dropout_drops_flashs_elements(rng):
    B, H, N, M, d = 2, 2, 150, 70, 16
    q, k, v = qkv(rng, B, H, N, M, d)
    g = rng.standard_normal((B, H, N, d))
    km = ef.tensor(random_key_mask(rng, B, M))
    results = []
    for fn in (narrow, lambda *a, **kw: ef.attention(*a, kind="flash", **kw)):
        ef.manual_seed(11)
        results.append(outputs_and_grads(fn, q, k, v, g, key_mask=km, dropout=0.3))
    for a, b, what in zip(*results, ["out", "dq", "dk", "dv"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()), err_msg=what)
    without = outputs_and_grads(narrow, q, k, v, g, key_mask=km)
    assert np.abs(results[0][0] - without[0]).max() > 1e-2  # the dropout did something


def test_bit_identical_on_1_and_2_threads(rng):
    B, H, N, M, d = 2, 3, 2000, 300, 40  # two groups of query chunks per head, summed after
    q, k, v = qkv(rng, B, H, N, M, d)
    g = rng.standard_normal((B, H, N, d))
    km = ef.tensor(random_key_mask(rng, B, M))
    results = on_thread_counts(lambda: outputs_and_grads(narrow, q, k, v, g, causal=True, key_mask=km))
    for a, b, what in zip(*results, ["out", "dq", "dk", "dv"]):
        assert np.array_equal(a, b), what


def test_both_sides_long_is_flash(rng):
    q, k, v = qkv(rng, 1, 1, 520, 530, 8)  # min(N, M) > 512: the flash kernel, the same math
    check(lambda q, k, v: narrow(q, k, v, causal=True), lambda q, k, v: torch_attention(q, k, v, True),
          [q, k, v], rng)


def test_errors(rng):
    q, k, v = [ef.tensor(a.astype(np.float32)) for a in qkv(rng, 2, 2, 5, 7, 8)]
    with pytest.raises(ValueError, match="v is Tensor"):
        ef.narrow_attention(q, k, ef.zeros(2, 2, 6, 8))
    with pytest.raises(ValueError, match="expected 4 dims"):
        ef.narrow_attention(ef.zeros(2, 5, 8), k, v)
    with pytest.raises(ValueError, match=r"expected \[batch, keys\] = \[2, 7\]"):
        ef.narrow_attention(q, k, v, key_mask=ef.tensor(np.ones((2, 5), dtype=bool)))
    with pytest.raises(ValueError, match="scale = 0"):
        ef.narrow_attention(q, k, v, scale=0.0)
