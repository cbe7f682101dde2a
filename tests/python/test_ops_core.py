"""Parity of the core op families (elementwise, reductions, shape, matmul) with PyTorch float64."""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import check

BROADCAST_PAIRS = [((3, 4), (3, 4)), ((2, 3, 5), (5,)), ((4, 1), (1, 6)), ((2, 1, 3), (4, 1)), ((1,), (7, 3)),
                   ((), (2, 3))]


@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_broadcast(op, sa, sb, rng):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    if op == "div":
        b = np.sign(b) * (np.abs(b) + 0.5)  # keep away from zero
    check(getattr(ef, op), getattr(torch, op), [a, b], rng)


@pytest.mark.parametrize("op,tfn", [("add", lambda x: x + 1.5), ("sub", lambda x: x - 1.5), ("mul", lambda x: x * -2.5),
                                    ("div", lambda x: x / 4.0)])
def test_scalar_right(op, tfn, rng):
    check(lambda x: getattr(ef, op)(x, {"add": 1.5, "sub": 1.5, "mul": -2.5, "div": 4.0}[op]), tfn,
          [rng.standard_normal((3, 5))], rng)


def test_scalar_left_and_operators(rng):
    x = np.abs(rng.standard_normal((4, 3))) + 0.5
    check(lambda t: 2.0 - t, lambda t: 2.0 - t, [x], rng)
    check(lambda t: 3.0 / t, lambda t: 3.0 / t, [x], rng)
    check(lambda t: -t ** 3, lambda t: -t ** 3, [x], rng)
    check(lambda t: t.pow(0.5), lambda t: t.pow(0.5), [x], rng)


@pytest.mark.parametrize("shape,dim,keepdim", [((5,), None, False), ((3, 4), 0, False), ((3, 4), -1, True),
                                               ((2, 3, 4), (0, 2), False), ((2, 3, 4), 1, True),
                                               ((7, 1, 3), None, False)])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_sum_mean(op, shape, dim, keepdim, rng):
    x = rng.standard_normal(shape)
    tdim = dim if dim is not None else tuple(range(len(shape)))
    check(lambda t: getattr(ef, op)(t, dim=dim, keepdim=keepdim),
          lambda t: getattr(torch, op)(t, dim=tdim, keepdim=keepdim), [x], rng)


@pytest.mark.parametrize("shape,dim", [((6,), 0), ((3, 5), 1), ((3, 5), 0), ((2, 3, 4), -2)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max(shape, dim, keepdim, rng):
    x = rng.standard_normal(shape)
    check(lambda t: ef.max(t, dim, keepdim)[0], lambda t: torch.max(t, dim, keepdim)[0], [x], rng)
    idx = ef.max(ef.tensor(x.astype(np.float32)), dim, keepdim)[1].numpy()
    np.testing.assert_array_equal(idx, torch.max(torch.tensor(x), dim, keepdim)[1].numpy())


@pytest.mark.parametrize("sa,sb,ta,tb", [((4, 6), (6, 5), False, False), ((1, 7), (7, 1), False, False),
                                         ((6, 4), (6, 5), True, False), ((4, 6), (5, 6), False, True),
                                         ((6, 4), (5, 6), True, True), ((3, 4, 6), (3, 6, 5), False, False),
                                         ((2, 3, 4, 6), (6, 5), False, False), ((3, 6, 4), (5, 6), True, True),
                                         ((4, 6), (3, 6, 5), False, False), ((2, 3, 6, 4), (2, 3, 5, 6), True, True)])
def test_matmul(sa, sb, ta, tb, rng):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    tt = lambda x, t: x.transpose(-1, -2) if t else x
    check(lambda x, y: ef.matmul(x, y, ta, tb), lambda x, y: torch.matmul(tt(x, ta), tt(y, tb)), [a, b], rng)


def test_matmul_on_transposed_and_sliced_views(rng):
    a, b = rng.standard_normal((2, 5, 6)), rng.standard_normal((2, 4, 6))
    check(lambda x, y: ef.matmul(x, y.transpose(1, 2)), lambda x, y: x @ y.transpose(1, 2), [a, b], rng)
    c = rng.standard_normal((2, 4, 12))
    check(lambda x, y: ef.matmul(x[:, 1:4], y[:, :, ::2].permute(0, 2, 1)),
          lambda x, y: x[:, 1:4] @ y[:, :, ::2].permute(0, 2, 1), [a, c], rng)
    check(lambda x, y: ef.bmm(x, y, transpose_b=True), lambda x, y: torch.bmm(x, y.transpose(1, 2)), [a, b], rng)


def test_matmul_errors():
    with pytest.raises(ValueError, match="inner sizes"):
        ef.matmul(ef.zeros(2, 3), ef.zeros(4, 5))
    with pytest.raises(ValueError, match="at least 2 dims"):
        ef.matmul(ef.zeros(3), ef.zeros(3, 2))
    with pytest.raises(ValueError, match="batch"):
        ef.matmul(ef.zeros(2, 3, 4), ef.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="3-D"):
        ef.bmm(ef.zeros(3, 4), ef.zeros(4, 5))


def test_shape_ops(rng):
    x = rng.standard_normal((2, 3, 4))
    check(lambda t: t.reshape(4, -1) * 1.0, lambda t: t.reshape(4, -1), [x], rng)
    check(lambda t: ef.transpose(t, 0, 2) * 1.0, lambda t: t.transpose(0, 2), [x], rng)
    check(lambda t: ef.permute(t, [1, 2, 0]).reshape(-1), lambda t: t.permute(1, 2, 0).reshape(-1), [x], rng)
    check(lambda t: ef.flatten(t, 1), lambda t: t.flatten(1), [x], rng)
    check(lambda t: ef.unsqueeze(t, 1) * 2.0, lambda t: t.unsqueeze(1) * 2.0, [x], rng)
    check(lambda t: ef.squeeze(ef.unsqueeze(t, -1), -1) * 2.0, lambda t: t * 2.0, [x], rng)
    check(lambda t: ef.contiguous(ef.transpose(t, 0, 1)), lambda t: t.transpose(0, 1).contiguous(), [x], rng)
    check(lambda t: t[1, :, ::3] * 1.0, lambda t: t[1, :, ::3], [x], rng)
    check(lambda t: t[..., 1:3, None] * 1.0, lambda t: t[..., 1:3, None], [x], rng)
    check(lambda t: ef.narrow(t, 2, 1, 2) * 1.0, lambda t: t.narrow(2, 1, 2), [x], rng)
    y = rng.standard_normal((3, 1))
    check(lambda t: ef.expand(t, [2, 3, 4]) * 1.0, lambda t: t.expand(2, 3, 4), [y], rng)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_split(dim, rng):
    xs = [rng.standard_normal((2, 3, 4)) for _ in range(3)]
    check(lambda a, b, c: ef.cat([a, b, c], dim), lambda a, b, c: torch.cat([a, b, c], dim), xs, rng)
    x = rng.standard_normal((5, 6, 7))
    n = x.shape[dim]
    for sizes in [2, [1, n - 1]]:
        for k in range(2):
            check(lambda t: ef.split(t, sizes, dim)[k] * 1.0, lambda t: torch.split(t, sizes, dim)[k], [x], rng)


def test_shape_errors():
    x = ef.zeros(2, 3)
    with pytest.raises(ValueError, match="reshape"):
        x.reshape(4, 2)
    with pytest.raises(ValueError, match="broadcast"):
        ef.add(ef.zeros(2, 3), ef.zeros(4))
    with pytest.raises(IndexError):
        ef.transpose(x, 0, 2)
    with pytest.raises(ValueError, match="sizes sum"):
        ef.split(x, [1, 1], 1)
    with pytest.raises(ValueError, match="does not match"):
        ef.cat([ef.zeros(2, 3), ef.zeros(3, 3)], 1)
    with pytest.raises(IndexError):
        x[5]
