"""Parity of the indexing op families (select, cumsum, gather/scatter/sort, depthwise conv1d,
embedding) with PyTorch float64."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eformer as ef
from conftest import check


# --- masked_fill / where ---------------------------------------------------------------------

@pytest.mark.parametrize("xs,ms", [((3, 5), (3, 5)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 1)), ((4, 1, 6), (1, 5, 1)),
                                   ((7,), ()), ((2, 1, 3, 3), (2, 4, 1, 1))])
def test_masked_fill(xs, ms, rng):
    x, mask = rng.standard_normal(xs), np.asarray(rng.random(ms) < 0.4)
    check(lambda t, m: ef.masked_fill(t, m, -2.5), lambda t, m: torch.masked_fill(t, m, -2.5), [x, mask], rng)
    check(lambda t, m: t.masked_fill(m, 0.0), lambda t, m: t.masked_fill(m, 0.0), [x, mask], rng)


def test_masked_fill_inf_for_attention(rng):
    x, mask = rng.standard_normal((2, 5, 5)), np.triu(np.ones((5, 5), dtype=bool), 1)
    out = ef.masked_fill(ef.tensor(x.astype(np.float32)), ef.tensor(mask), float("-inf")).numpy()
    assert np.all(np.isneginf(out[:, mask])) and np.all(np.isfinite(out[:, ~mask]))


@pytest.mark.parametrize("cs,a_s,bs", [((3, 4), (3, 4), (3, 4)), ((3, 1), (1, 4), (3, 4)), ((5,), (2, 5), ()),
                                       ((2, 1, 3), (4, 1), (1, 4, 3)), ((), (3,), (2, 3))])
def test_where(cs, a_s, bs, rng):
    cond, a, b = np.asarray(rng.random(cs) < 0.5), rng.standard_normal(a_s), np.asarray(rng.standard_normal(bs))
    check(ef.where, torch.where, [cond, a, b], rng)


def test_where_scalar_and_partial_grad(rng):
    cond, a = rng.random((4, 3)) < 0.5, rng.standard_normal((4, 3))
    check(lambda c, t: ef.where(c, t, 0.0), lambda c, t: torch.where(c, t, torch.tensor(0.0)), [cond, a], rng)
    check(lambda c, t: ef.where(c, 1.5, t), lambda c, t: torch.where(c, torch.tensor(1.5), t), [cond, a], rng)
    b = rng.standard_normal((4, 3))
    check(ef.where, torch.where, [cond, a, b], rng, grad_inputs=[2])


def test_select_errors():
    x = ef.zeros(2, 3)
    with pytest.raises(ValueError, match="bool"):
        ef.masked_fill(x, ef.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        ef.masked_fill(x, ef.tensor(np.ones((4,), dtype=bool)), 1.0)
    with pytest.raises(ValueError, match="bool"):
        ef.where(ef.tensor(np.ones((2, 3), dtype=np.int64)), x, x)
    with pytest.raises(ValueError, match="broadcast"):
        ef.where(ef.tensor(np.ones((2, 3), dtype=bool)), x, ef.zeros(4))


# --- cumsum ----------------------------------------------------------------------------------

def torch_cumsum(t, dim, reverse):
    return torch.flip(torch.cumsum(torch.flip(t, [dim]), dim), [dim]) if reverse else torch.cumsum(t, dim)


@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 5), 0), ((3, 5), 1), ((3, 5), -1), ((2, 3, 4), 1),
                                       ((2, 3, 300), 1), ((4, 1, 3), 0), ((2, 9, 1), -2), ((1,), -1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum(shape, dim, reverse, rng):
    x = rng.standard_normal(shape)
    check(lambda t: ef.cumsum(t, dim, reverse=reverse), lambda t: torch_cumsum(t, dim, reverse), [x], rng)


def test_cumsum_method_and_long_rows(rng):
    x = rng.standard_normal((3, 2000))
    check(lambda t: t.cumsum(-1), lambda t: t.cumsum(-1), [x], rng)
    check(lambda t: ef.cumsum(t.transpose(0, 1), 0, True), lambda t: torch_cumsum(t.transpose(0, 1), 0, True), [x],
          rng)


@pytest.mark.parametrize("shape,dim", [((7,), 0), ((4, 9), 1), ((5, 3, 6), 1), ((3, 5, 2), 0), ((2, 3, 4), -1)])
def test_logcumsumexp(shape, dim, rng):
    x = 3 * rng.standard_normal(shape)
    check(lambda t: ef.logcumsumexp(t, dim), lambda t: torch.logcumsumexp(t, dim), [x], rng)


def test_logcumsumexp_is_finite_where_log_cumsum_exp_overflows(rng):
    # Values past exp's float range (the causal Sinkhorn logits of a trained model reach them), and a
    # very negative prefix: the running maximum keeps every output and gradient finite and exact.
    x = rng.standard_normal((4, 12)) * 300
    x[:, :3] -= 2000
    check(lambda t: ef.logcumsumexp(t, 1), lambda t: torch.logcumsumexp(t, 1), [x], rng)
    x[:, :3] = -1e30  # a masking sentinel: the outputs stay finite
    assert np.isfinite(ef.logcumsumexp(ef.tensor(x.astype(np.float32)), 1).numpy()).all()


def test_logcumsumexp_errors():
    with pytest.raises(IndexError):
        ef.logcumsumexp(ef.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="float32"):
        ef.logcumsumexp(ef.tensor(np.ones((3,), dtype=np.int64)), 0)


def test_cumsum_errors():
    with pytest.raises(IndexError):
        ef.cumsum(ef.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="float32"):
        ef.cumsum(ef.tensor(np.ones((3,), dtype=np.int64)), 0)


# --- gather / scatter_add / argsort ----------------------------------------------------------

@pytest.mark.parametrize("xs,dim,index_shape", [((5,), 0, (8,)), ((4, 6), 0, (7, 6)), ((4, 6), 1, (4, 3)),
                                                ((4, 6), -1, (4, 9)), ((3, 5, 7), 1, (3, 2, 7)),
                                                ((3, 5, 7), 0, (2, 4, 5)), ((3, 5, 7), -1, (2, 5, 3))])
def test_gather(xs, dim, index_shape, rng):
    x = rng.standard_normal(xs)
    index = rng.integers(0, xs[dim], size=index_shape)  # repeats: the gradient accumulates
    check(lambda t, i: ef.gather(t, dim, i), lambda t, i: torch.gather(t, dim, i), [x, index], rng)
    check(lambda t, i: t.gather(dim, i), lambda t, i: t.gather(dim, i), [x, index], rng)


@pytest.mark.parametrize("xs,dim,index_shape,src_shape", [((5,), 0, (12,), (12,)), ((4, 6), 0, (9, 6), (9, 6)),
                                                          ((4, 6), 1, (4, 10), (4, 10)), ((4, 6), -1, (3, 4), (5, 5)),
                                                          ((3, 5, 7), 1, (3, 8, 7), (3, 8, 7)),
                                                          ((3, 5, 7), 0, (6, 4, 7), (7, 5, 7)),
                                                          ((3, 5, 7), -1, (2, 5, 9), (3, 5, 9))])
def test_scatter_add(xs, dim, index_shape, src_shape, rng):
    x, src = rng.standard_normal(xs), rng.standard_normal(src_shape)
    index = rng.integers(0, xs[dim], size=index_shape)  # more entries than slots: indices collide
    # torch reads only index's block of src (its backward mishandles a larger src, so slice it there)
    block = tuple(slice(0, k) for k in index_shape)
    check(lambda t, i, s: ef.scatter_add(t, dim, i, s), lambda t, i, s: torch.scatter_add(t, dim, i, s[block]),
          [x, index, src], rng)
    check(lambda t, i, s: t.scatter_add(dim, i, s), lambda t, i, s: t.scatter_add(dim, i, s[block]), [x, index, src],
          rng)


def test_scatter_add_all_to_one_slot(rng):
    x, src = rng.standard_normal((3, 200)), rng.standard_normal((50, 200))
    index = np.zeros((50, 200), dtype=np.int64)
    check(lambda t, i, s: ef.scatter_add(t, 0, i, s), lambda t, i, s: torch.scatter_add(t, 0, i, s), [x, index, src],
          rng)


@pytest.mark.parametrize("shape,dim", [((9,), 0), ((4, 7), -1), ((4, 7), 0), ((3, 5, 6), 1), ((2, 300), 1)])
@pytest.mark.parametrize("descending", [False, True])
def test_argsort_many_ties(shape, dim, descending, rng):
    x = rng.integers(0, 3, size=shape).astype(np.float32)  # few distinct values: many ties
    got = ef.argsort(ef.tensor(x), dim, descending).numpy()
    expected = np.argsort(-x if descending else x, axis=dim, kind="stable")
    np.testing.assert_array_equal(got, expected)
    assert ef.argsort(ef.tensor(x), dim, descending).dtype == "int64"
    np.testing.assert_array_equal(got, torch.argsort(torch.tensor(x), dim=dim, descending=descending,
                                                     stable=True).numpy())


def test_argsort_distinct_and_method(rng):
    x = rng.standard_normal((5, 11)).astype(np.float32)
    t = ef.tensor(x)
    np.testing.assert_array_equal(t.argsort(), np.argsort(x, axis=-1, kind="stable"))
    np.testing.assert_array_equal(ef.argsort(t, descending=True, stable=True).numpy(),
                                  torch.argsort(torch.tensor(x), descending=True).numpy())


def test_argsort_nan_sorts_last():
    x = np.array([1.0, np.nan, -1.0, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(ef.argsort(ef.tensor(x)).numpy(), [2, 3, 0, 1])
    np.testing.assert_array_equal(ef.argsort(ef.tensor(x), descending=True).numpy(), [1, 0, 3, 2])


def test_index_errors():
    x = ef.zeros(3, 4)
    with pytest.raises(IndexError, match=r"index 4 .*dim 1 of size 4"):
        ef.gather(x, 1, ef.tensor(np.array([[0, 4]])))
    with pytest.raises(IndexError, match=r"index -1 .*size 3"):
        ef.gather(x, 0, ef.tensor(np.array([[-1]])))
    with pytest.raises(ValueError, match="int64"):
        ef.gather(x, 1, ef.tensor(np.array([[0.0]], dtype=np.float32)))
    with pytest.raises(ValueError, match="dims"):
        ef.gather(x, 1, ef.tensor(np.array([0, 1])))
    with pytest.raises(ValueError, match="larger"):
        ef.gather(x, 1, ef.tensor(np.zeros((5, 1), dtype=np.int64)))
    with pytest.raises(IndexError):
        ef.gather(x, 2, ef.tensor(np.zeros((1, 1), dtype=np.int64)))
    with pytest.raises(IndexError, match=r"index 7 .*dim 0 of size 3"):
        ef.scatter_add(x, 0, ef.tensor(np.array([[7]])), ef.zeros(1, 1))
    with pytest.raises(ValueError, match="src"):
        ef.scatter_add(x, 0, ef.tensor(np.zeros((2, 2), dtype=np.int64)), ef.zeros(1, 2))
    with pytest.raises(ValueError, match="float32"):
        ef.argsort(ef.tensor(np.array([1, 2])))


# --- depthwise conv1d ------------------------------------------------------------------------

def torch_depthwise(x, w, b, causal):
    K, N = w.shape[1], x.shape[1]
    xt = x.transpose(1, 2)
    if causal:
        out = F.conv1d(xt, w.unsqueeze(1), b, padding=K - 1, groups=w.shape[0])[..., :N]
    else:  # (K-1)//2 on the left, the rest (the extra one for even K) on the right
        out = F.conv1d(F.pad(xt, ((K - 1) // 2, K - 1 - (K - 1) // 2)), w.unsqueeze(1), b, groups=w.shape[0])
    return out.transpose(1, 2)


@pytest.mark.parametrize("K", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,N,C", [(2, 9, 5), (1, 3, 4), (3, 16, 1)])
def test_depthwise_conv1d(B, N, C, K, causal, rng):
    x, w, b = rng.standard_normal((B, N, C)), rng.standard_normal((C, K)), rng.standard_normal(C)
    check(lambda t, u, v: ef.depthwise_conv1d(t, u, v, causal=causal), lambda t, u, v: torch_depthwise(t, u, v, causal),
          [x, w, b], rng)
    check(lambda t, u: ef.depthwise_conv1d(t, u, causal=causal), lambda t, u: torch_depthwise(t, u, None, causal),
          [x, w], rng)


@pytest.mark.parametrize("K", [2, 4, 5])
@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_depthwise_conv1d_centred_is_torch_same(K, rng):
    x, w = rng.standard_normal((2, 8, 3)), rng.standard_normal((3, K))
    check(lambda t, u: ef.depthwise_conv1d(t, u),
          lambda t, u: F.conv1d(t.transpose(1, 2), u.unsqueeze(1), padding="same", groups=3).transpose(1, 2), [x, w],
          rng)


def test_depthwise_conv1d_partial_grads(rng):
    x, w, b = rng.standard_normal((2, 6, 3)), rng.standard_normal((3, 3)), rng.standard_normal(3)
    for which in ([0], [1], [2], [1, 2]):
        check(lambda t, u, v: ef.depthwise_conv1d(t, u, v, causal=True),
              lambda t, u, v: torch_depthwise(t, u, v, True), [x, w, b], rng, grad_inputs=which)


def test_depthwise_conv1d_long_sequence_grads(rng):
    x, w, b = rng.standard_normal((2, 700, 6)), rng.standard_normal((6, 4)), rng.standard_normal(6)
    check(lambda t, u, v: ef.depthwise_conv1d(t, u, v, causal=True), lambda t, u, v: torch_depthwise(t, u, v, True),
          [x, w, b], rng)


@pytest.mark.parametrize("K", [1, 2, 4, 7])
def test_depthwise_conv1d_causal_does_not_leak(K, rng):
    x = rng.standard_normal((2, 12, 3)).astype(np.float32)
    w = ef.tensor(rng.standard_normal((3, K)).astype(np.float32))
    base = ef.depthwise_conv1d(ef.tensor(x), w, causal=True).numpy()
    for t in range(12):
        y = x.copy()
        y[:, t + 1:] += rng.standard_normal(y[:, t + 1:].shape).astype(np.float32) * 10
        out = ef.depthwise_conv1d(ef.tensor(y), w, causal=True).numpy()
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
    # ... while the centred conv does look ahead for K > 1
    if K > 2:
        y = x.copy()
        y[:, 5:] += 1.0
        assert not np.array_equal(ef.depthwise_conv1d(ef.tensor(y), w).numpy()[:, 4],
                                  ef.depthwise_conv1d(ef.tensor(x), w).numpy()[:, 4])


def test_depthwise_conv1d_errors():
    x = ef.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="weight has shape"):
        ef.depthwise_conv1d(x, ef.zeros(4, 3))
    with pytest.raises(ValueError, match="weight has shape"):
        ef.depthwise_conv1d(x, ef.zeros(3))
    with pytest.raises(ValueError, match="weight has shape"):
        ef.depthwise_conv1d(x, ef.zeros(3, 0))
    with pytest.raises(ValueError, match="bias has shape"):
        ef.depthwise_conv1d(x, ef.zeros(3, 2), ef.zeros(2))
    with pytest.raises(ValueError, match="input has shape"):
        ef.depthwise_conv1d(ef.zeros(5, 3), ef.zeros(3, 2))


# --- embedding -------------------------------------------------------------------------------

@pytest.mark.parametrize("ids_shape,V,D", [((7,), 5, 3), ((2, 6), 4, 8), ((3, 4, 5), 11, 1), ((40,), 3, 300)])
def test_embedding(ids_shape, V, D, rng):
    ids = rng.integers(0, V, size=ids_shape)  # more ids than rows: repeats accumulate in dweight
    w = rng.standard_normal((V, D))
    check(ef.embedding, F.embedding, [ids, w], rng)


def test_embedding_errors():
    w = ef.zeros(4, 2)
    with pytest.raises(IndexError, match=r"id 4 .*V=4"):
        ef.embedding(ef.tensor(np.array([0, 4])), w)
    with pytest.raises(IndexError, match=r"id -1 "):
        ef.embedding(ef.tensor(np.array([-1])), w)
    with pytest.raises(ValueError, match="int64"):
        ef.embedding(ef.tensor(np.array([0.0], dtype=np.float32)), w)
    with pytest.raises(ValueError, match="weight has shape"):
        ef.embedding(ef.tensor(np.array([0])), ef.zeros(4))
