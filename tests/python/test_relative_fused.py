"""Transformer-XL attention through the fused tiled kernel (the position term as the block-sparse
kernel's score bias, attention/kernels/block_sparse.h): forward and the gradients of q, k, v, r, u, w
against the float64 PyTorch formulation of the paper's equations (test_memory.relative_attention_ref,
an explicit gather of R_{i-j} per pair) at sizes spanning several tiles; dropout drops exactly the
elements the materialized computation (scores, relative shift, softmax, dropout) drops; bits do not
depend on the thread count; memory is linear in the number of queries at a fixed memory length."""
import math

import numpy as np
import pytest

import eformer as ef
from conftest import assert_close, check
from test_memory import relative_attention_ref


def inputs(rng, B, H, N, M, d):
    K = N + M
    return [rng.standard_normal(s) for s in [(B, H, N, d), (B, H, K, d), (B, H, K, d), (H, K, d), (H, d), (H, d)]]


# N not a multiple of the kernel's 64-row tile, M = 0 (K = N), M > N, one query over a long memory.
@pytest.mark.parametrize("N,M", [(70, 0), (64, 64), (65, 130), (130, 67), (1, 150), (150, 1)])
def test_fused_relative_attention_matches_the_papers_equations(rng, N, M):
    B, H, d = 2, 2, 12
    scale = 1 / math.sqrt(d)
    check(lambda *a: ef.relative_attention(*a, scale=scale),
          lambda *a: relative_attention_ref(*a, scale), inputs(rng, B, H, N, M, d), rng)


def materialized(q, k, v, r, u, w, scale, p):
    """The computation relative_attention replaced: N x K scores, the relative shift, softmax, dropout."""
    B, H, N, d = q.shape
    K = k.shape[2]
    content = ef.matmul(ef.add(q, ef.reshape(u, [H, 1, d])), k, False, True)
    r_b = ef.contiguous(ef.expand(ef.unsqueeze(r, 0), [B, H, K, d]))
    position = ef.relative_shift(ef.matmul(ef.add(q, ef.reshape(w, [H, 1, d])), r_b, False, True))
    probs = ef.softmax(ef.add(content, position) * scale, -1)
    return ef.matmul(ef.dropout(probs, p, True), v)


def run(fn, arrays, upstream):
    xs = [ef.tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
    out = fn(*xs)
    out.backward(ef.tensor(upstream.astype(np.float32)))
    return [out.numpy()] + [x.grad.numpy() for x in xs]


def test_dropout_drops_the_elements_of_the_materialized_computation(rng):
    B, H, N, M, d, p = 2, 2, 75, 60, 8, 0.3
    scale = 1 / math.sqrt(d)
    arrays = inputs(rng, B, H, N, M, d)
    upstream = rng.standard_normal((B, H, N, d))
    seed = int(rng.integers(1 << 40))
    ef.manual_seed(seed)
    fused = run(lambda *a: ef.relative_attention(*a, scale=scale, dropout=p), arrays, upstream)
    ef.manual_seed(seed)
    reference = run(lambda *a: materialized(*a, scale, p), arrays, upstream)
    for a, b, what in zip(fused, reference, ["out", "dq", "dk", "dv", "dr", "du", "dw"]):
        assert_close(a, b, 1e-4, 1e-5, what)
    ef.manual_seed(seed + 1)  # another mask: a test that can fail
    other = run(lambda *a: ef.relative_attention(*a, scale=scale, dropout=p), arrays, upstream)
    assert not np.allclose(other[0], fused[0])


def test_bit_identical_on_1_2_and_3_threads(rng):
    B, H, N, M, d = 2, 2, 150, 170, 24
    arrays = inputs(rng, B, H, N, M, d)
    upstream = rng.standard_normal((B, H, N, d))
    before = ef.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            ef.set_num_threads(threads)
            results.append(run(lambda *a: ef.relative_attention(*a), arrays, upstream))
    finally:
        ef.set_num_threads(before)
    for other in results[1:]:
        for a, b, what in zip(results[0], other, ["out", "dq", "dk", "dv", "dr", "du", "dw"]):
            assert np.array_equal(a, b), what


def extra_peak(rng, B, H, N, M, d):
    arrays = inputs(rng, B, H, N, M, d)
    xs = [ef.tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
    g = ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32))
    ef.reset_peak_memory_stats()
    base = ef.memory_stats()["live_bytes"]
    ef.relative_attention(*xs).backward(g)
    return ef.memory_stats()["peak_bytes"] - base


def test_memory_is_linear_in_the_queries_at_a_fixed_memory(rng):
    B, H, M, d = 1, 2, 256, 32
    small, large = extra_peak(rng, B, H, 512, M, d), extra_peak(rng, B, H, 2048, M, d)
    # 4x the queries: the inputs and gradients grow 4x (K: 768 -> 2304, 3x); the N x K scores would
    # grow 12x and take 2 x 2048 x 2304 x 4 = 36 MiB per copy at the large size.
    assert large < 5 * small, f"peak {small} -> {large} bytes for 4x the queries"
    assert large < 0.25 * B * H * 2048 * 2304 * 4, f"{large} bytes: as large as the scores"
