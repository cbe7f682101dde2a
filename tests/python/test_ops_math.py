"""Parity of activations, softmax, layer norm, dropout and cross-entropy with PyTorch float64."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eformer as ef
from conftest import check

SHAPES = [(7,), (3, 5), (2, 3, 17), (1, 1), (4, 1031)]


def positive(rng, shape):
    return np.abs(rng.standard_normal(shape)) + 0.1


ACTIVATIONS = {
    "exp": (ef.exp, torch.exp, None),
    "log": (ef.log, torch.log, positive),
    "sqrt": (ef.sqrt, torch.sqrt, positive),
    "tanh": (ef.tanh, torch.tanh, None),
    "sigmoid": (ef.sigmoid, torch.sigmoid, None),
    "relu": (ef.relu, torch.relu, None),
    "gelu": (ef.gelu, F.gelu, None),
    "gelu_tanh": (lambda t: ef.gelu(t, approximate="tanh"), lambda t: F.gelu(t, approximate="tanh"), None),
    "elu": (ef.elu, F.elu, None),
    "elu_alpha": (lambda t: ef.elu(t, alpha=0.3), lambda t: F.elu(t, alpha=0.3), None),
    "softplus": (ef.softplus, F.softplus, None),
    "softplus_beta": (lambda t: ef.softplus(t, beta=2.0, threshold=3.0),
                      lambda t: F.softplus(t, beta=2.0, threshold=3.0), None),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name, shape, rng):
    ef_fn, torch_fn, make = ACTIVATIONS[name]
    x = make(rng, shape) if make else 2.0 * rng.standard_normal(shape)
    if name == "relu":
        x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    check(ef_fn, torch_fn, [x], rng)


def test_activation_methods_and_views(rng):
    x = rng.standard_normal((4, 6))
    check(lambda t: t.T.exp().tanh(), lambda t: t.T.exp().tanh(), [x], rng)
    check(lambda t: t[:, ::2].sigmoid().relu(), lambda t: t[:, ::2].sigmoid().relu(), [x], rng)
    check(lambda t: t.softmax(0), lambda t: t.softmax(0), [x], rng)


def test_activation_extremes():
    x = np.array([-1e4, -100.0, -88.5, -30.0, 0.0, 30.0, 88.0, 1e4], dtype=np.float32)
    t = torch.tensor(x)
    np.testing.assert_allclose(ef.sigmoid(ef.tensor(x)).numpy(), torch.sigmoid(t).numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(ef.softplus(ef.tensor(x)).numpy(), F.softplus(t).numpy(), rtol=1e-6)
    np.testing.assert_allclose(ef.gelu(ef.tensor(x)).numpy(), F.gelu(t).numpy(), rtol=1e-6)
    np.testing.assert_allclose(ef.elu(ef.tensor(x)).numpy(), F.elu(t).numpy(), rtol=1e-6)
    np.testing.assert_allclose(ef.exp(ef.tensor(x[:-1])).numpy(), torch.exp(t[:-1]).numpy(), rtol=1e-6)


def test_gelu_bad_approximate():
    with pytest.raises(ValueError, match="approximate"):
        ef.gelu(ef.zeros(3), approximate="fast")


def test_activation_rejects_int():
    with pytest.raises(ValueError, match="float32"):
        ef.exp(ef.tensor(np.arange(3)))


SOFTMAX_CASES = [((9,), 0), ((3, 5), -1), ((3, 5), 0), ((2, 3, 17), 1), ((2, 3, 17), -1), ((2, 3, 17), 0),
                 ((4, 2000), -1), ((2, 300, 3), 2), ((2, 5, 300), 1), ((1, 1), 0)]


@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax(op, shape, dim, rng):
    x = 3.0 * rng.standard_normal(shape)
    check(lambda t: getattr(ef, op)(t, dim), lambda t: getattr(torch, op)(t, dim), [x], rng)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_is_stable_for_large_logits(op, rng):
    x = rng.standard_normal((3, 8)) * 10 + np.array([[1000.0], [-1000.0], [0.0]])
    check(lambda t: getattr(ef, op)(t, -1), lambda t: getattr(torch, op)(t, -1), [x], rng)


def test_softmax_masked_entries_are_zero():
    x = np.array([[0.0, -np.inf, 1.0, -np.inf]], dtype=np.float32)
    y = ef.softmax(ef.tensor(x), -1).numpy()
    assert y[0, 1] == 0.0 and y[0, 3] == 0.0
    np.testing.assert_allclose(y, torch.softmax(torch.tensor(x), -1).numpy(), rtol=1e-6)


def test_softmax_bad_dim():
    with pytest.raises(IndexError, match="dim 2"):
        ef.softmax(ef.zeros(3, 4), 2)


LN_CASES = [((3, 8), (8,)), ((2, 5, 7), (7,)), ((2, 5, 7), (5, 7)), ((13,), (13,)), ((4, 1), (1,)),
            ((70, 33), (33,)), ((2, 3, 4, 5), (4, 5))]


@pytest.mark.parametrize("affine", ["none", "weight", "bias", "both"])
@pytest.mark.parametrize("shape,nshape", LN_CASES)
def test_layer_norm(shape, nshape, affine, rng):
    x = rng.standard_normal(shape) * 2 + 0.5
    w = rng.standard_normal(nshape) if affine in ("weight", "both") else None
    b = rng.standard_normal(nshape) if affine in ("bias", "both") else None
    inputs = [x] + [a for a in (w, b) if a is not None]

    def unpack(args):
        it = iter(args[1:])
        return args[0], (next(it) if w is not None else None), (next(it) if b is not None else None)

    def ef_fn(*args):
        t, wt, bt = unpack(args)
        return ef.layer_norm(t, list(nshape), weight=wt, bias=bt, eps=1e-5)

    def torch_fn(*args):
        t, wt, bt = unpack(args)
        return F.layer_norm(t, nshape, weight=wt, bias=bt, eps=1e-5)

    check(ef_fn, torch_fn, inputs, rng)


def test_layer_norm_int_shape_and_eps(rng):
    x = rng.standard_normal((3, 6)) * 0.01
    check(lambda t: ef.layer_norm(t, 6, eps=1e-2), lambda t: F.layer_norm(t, (6,), eps=1e-2), [x], rng)


def test_layer_norm_many_rows_weight_grad(rng):
    # More rows than gradient blocks, an odd row count: the blocked weight/bias sums stay exact.
    x, w, b = rng.standard_normal((1001, 24)), rng.standard_normal(24), rng.standard_normal(24)
    check(lambda t, wt, bt: ef.layer_norm(t, [24], wt, bt), lambda t, wt, bt: F.layer_norm(t, (24,), wt, bt),
          [x, w, b], rng)


def test_layer_norm_errors():
    x = ef.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="does not match the trailing dims"):
        ef.layer_norm(x, [3])
    with pytest.raises(ValueError, match="weight has shape"):
        ef.layer_norm(x, [4], weight=ef.zeros(3))
    with pytest.raises(ValueError, match="bias has shape"):
        ef.layer_norm(x, [3, 4], bias=ef.zeros(4))
    with pytest.raises(ValueError, match="has only 3"):
        ef.layer_norm(x, [1, 2, 3, 4])


def test_dropout_scaling_and_keep_fraction():
    ef.manual_seed(123)
    n = 200000
    for p in [0.1, 0.5, 0.9]:
        x = ef.ones(n)
        y = ef.dropout(x, p).numpy()
        kept = y != 0
        assert abs(kept.mean() - (1 - p)) < 0.01
        np.testing.assert_allclose(y[kept], np.float32(1.0) / np.float32(1 - p), rtol=1e-6)


def test_dropout_gradient_is_mask_times_scale(rng):
    ef.manual_seed(7)
    x = ef.tensor(rng.standard_normal((37, 53)).astype(np.float32) + 5.0, requires_grad=True)  # no zeros
    y = ef.dropout(x, 0.3)
    g = rng.standard_normal((37, 53)).astype(np.float32)
    y.backward(ef.tensor(g))
    mask = y.numpy() != 0
    scale = np.float32(1.0) / np.float32(0.7)
    np.testing.assert_allclose(x.grad.numpy(), np.where(mask, g * scale, 0.0), rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), np.where(mask, x.numpy() * scale, 0.0), rtol=1e-6)


def test_dropout_same_seed_same_mask_and_fresh_draws():
    ef.manual_seed(42)
    a = ef.dropout(ef.ones(1000), 0.5).numpy()
    b = ef.dropout(ef.ones(1000), 0.5).numpy()
    ef.manual_seed(42)
    c = ef.dropout(ef.ones(1000), 0.5).numpy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)


def test_dropout_matches_rand():
    # Element i is kept iff the uniform draw ef.rand gives element i is >= p.
    ef.manual_seed(5)
    u = ef.rand(1001).numpy()
    ef.manual_seed(5)
    y = ef.dropout(ef.ones(1001), 0.25).numpy()
    np.testing.assert_array_equal(y != 0, u >= 0.25)


def test_dropout_identity_cases():
    x = ef.tensor(np.arange(5, dtype=np.float32))
    state = ef.get_rng_state()
    np.testing.assert_array_equal(ef.dropout(x, 0.5, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(ef.dropout(x, 0.0).numpy(), x.numpy())
    assert ef.get_rng_state() == state  # no draws consumed


def test_dropout_checkpoint_replay(rng):
    data = rng.standard_normal((16, 33)).astype(np.float32)
    ef.manual_seed(11)
    x1 = ef.tensor(data, requires_grad=True)
    ef.sum(ef.dropout(x1, 0.5) * x1).backward()
    ef.manual_seed(11)
    x2 = ef.tensor(data, requires_grad=True)
    ef.sum(ef.checkpoint(lambda t: ef.dropout(t, 0.5) * t, x2)).backward()
    np.testing.assert_array_equal(x1.grad.numpy(), x2.grad.numpy())


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match="outside"):
        ef.dropout(ef.ones(3), p)


CE_SHAPES = [(1, 2), (5, 7), (13, 3), (8, 1000)]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", CE_SHAPES)
def test_cross_entropy(shape, reduction, rng):
    n, c = shape
    x = 3.0 * rng.standard_normal(shape)
    target = rng.integers(0, c, n).astype(np.int64)
    if n > 2:
        target[rng.choice(n, n // 3, replace=False)] = -100
    check(lambda t, y: ef.cross_entropy(t, y, reduction=reduction),
          lambda t, y: F.cross_entropy(t, y, reduction=reduction), [x, target], rng)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n,d,c,chunk_rows", [(1, 3, 2, 0), (13, 8, 7, 3), (40, 16, 256, 0), (33, 5, 300, 8)])
def test_linear_cross_entropy(n, d, c, chunk_rows, reduction, rng):
    # The chunked LM head and loss: cross_entropy(h @ w.T, target), forward and both gradients.
    h, w = rng.standard_normal((n, d)), rng.standard_normal((c, d)) / np.sqrt(d)
    target = rng.integers(0, c, n).astype(np.int64)
    if n > 2:
        target[rng.choice(n, n // 3, replace=False)] = -100
    check(lambda x, y, t: ef.linear_cross_entropy(x, y, t, reduction=reduction, chunk_rows=chunk_rows),
          lambda x, y, t: F.cross_entropy(x @ y.T, t, reduction=reduction), [h, w, target], rng)


def test_linear_cross_entropy_chunks_agree_and_errors(rng):
    h, w = ef.tensor(rng.standard_normal((50, 8)).astype(np.float32)), ef.tensor(rng.standard_normal((11, 8)).astype(np.float32))
    t = ef.tensor(rng.integers(0, 11, 50).astype(np.int64))
    whole = ef.linear_cross_entropy(h, w, t, reduction="none").numpy()
    for rows in (1, 7, 50, 1000):
        np.testing.assert_allclose(ef.linear_cross_entropy(h, w, t, reduction="none", chunk_rows=rows).numpy(), whole,
                                   rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"h \[N, D\] and weight \[C, D\]"):
        ef.linear_cross_entropy(h, ef.zeros(11, 9), t)
    with pytest.raises(ValueError, match="chunk_rows = -1"):
        ef.linear_cross_entropy(h, w, t, chunk_rows=-1)
    with pytest.raises(IndexError, match="target 11 at position 0"):
        ef.linear_cross_entropy(h, w, ef.tensor(np.full(50, 11, dtype=np.int64)))


def test_cross_entropy_custom_ignore_index(rng):
    x = rng.standard_normal((6, 4))
    target = np.array([0, 3, 2, 3, 1, 3], dtype=np.int64)
    check(lambda t, y: ef.cross_entropy(t, y, ignore_index=3), lambda t, y: F.cross_entropy(t, y, ignore_index=3),
          [x, target], rng)


def test_cross_entropy_all_ignored_is_nan_like_torch():
    x = ef.zeros(3, 4, requires_grad=True)
    loss = ef.cross_entropy(x, ef.tensor(np.full(3, -100, dtype=np.int64)))
    assert np.isnan(loss.item())
    assert np.isnan(F.cross_entropy(torch.zeros(3, 4), torch.full((3,), -100)).item())
    assert ef.cross_entropy(x, ef.tensor(np.full(3, -100, dtype=np.int64)), reduction="sum").item() == 0.0


def test_cross_entropy_errors():
    x = ef.zeros(3, 4)
    with pytest.raises(IndexError, match="target 4 at position 1"):
        ef.cross_entropy(x, ef.tensor(np.array([0, 4, 1], dtype=np.int64)))
    with pytest.raises(IndexError, match="target -1"):
        ef.cross_entropy(x, ef.tensor(np.array([0, -1, 1], dtype=np.int64)))
    with pytest.raises(ValueError, match="int64"):
        ef.cross_entropy(x, ef.tensor(np.array([0, 1, 1], dtype=np.float32)))
    with pytest.raises(ValueError, match=r"expected \[3\]"):
        ef.cross_entropy(x, ef.tensor(np.array([0, 1], dtype=np.int64)))
    with pytest.raises(ValueError, match="expected 2 dims"):
        ef.cross_entropy(ef.zeros(4), ef.tensor(np.array([0], dtype=np.int64)))
    with pytest.raises(ValueError, match="reduction"):
        ef.cross_entropy(x, ef.tensor(np.array([0, 1, 1], dtype=np.int64)), reduction="avg")
