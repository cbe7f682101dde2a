"""The engine's Python surface: RNG replay, allocator counters, autograd API, custom Function,
checkpoint, error mapping."""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close


def test_rng_state_replays_draws():
    ef.manual_seed(123)
    state = ef.get_rng_state()
    a = ef.randn(1000).numpy()
    b = ef.rand(7).numpy()
    ef.set_rng_state(state)
    np.testing.assert_array_equal(ef.randn(1000).numpy(), a)
    np.testing.assert_array_equal(ef.rand(7).numpy(), b)
    assert not np.array_equal(ef.randn(1000).numpy(), a)  # the stream moved on
    ef.manual_seed(124)
    assert not np.array_equal(ef.randn(1000).numpy(), a)


def test_normal_draws_have_normal_moments():
    ef.manual_seed(int(np.random.SeedSequence().entropy % 2**32))
    x = ef.randn(400_000).numpy().astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01  # sd of each is ~0.0016
    assert abs(np.mean(x ** 3)) < 0.03 and abs(np.mean(x ** 4) - 3) < 0.05


def test_memory_stats_count_live_and_peak_bytes():
    ef.reset_peak_memory_stats()
    before = ef.memory_stats()
    t = ef.zeros(1000, 250)  # 1 MB
    mid = ef.memory_stats()
    assert mid["live_bytes"] - before["live_bytes"] == 1_000_000
    del t
    after = ef.memory_stats()
    assert after["live_bytes"] == before["live_bytes"]
    assert after["peak_bytes"] >= before["live_bytes"] + 1_000_000
    assert after["cached_bytes"] >= 1_000_000  # a large block is kept for reuse
    ef.empty_cache()
    assert ef.memory_stats()["cached_bytes"] == 0


def test_autograd_api_like_torch():
    x = ef.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert x.is_leaf and x.requires_grad and x.grad is None and x.grad_fn is None
    y = (x * x).sum()
    assert not y.is_leaf and y.grad_fn == "sum"
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * np.arange(6.0).reshape(2, 3))
    x.grad = None
    with ef.no_grad():
        z = x * 2
    assert not z.requires_grad
    with pytest.raises(ValueError, match="does not require grad"):
        z.sum().backward()
    with pytest.raises(ValueError, match="only leaf"):
        (x * 2).requires_grad = False
    with pytest.raises(ValueError, match="one-element"):
        (x * 2).backward()


class Cube(ef.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(x)
        ctx.scale = scale
        return x * x * x * scale

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x * x * (3 * ctx.scale), None


def test_custom_function_uses_its_backward(rng):
    a = rng.standard_normal((3, 4))
    x = ef.tensor(a.astype(np.float32), requires_grad=True)
    y = Cube.apply(x, 2.0)
    assert y.grad_fn == "Cube"
    y.sum().backward()
    assert_close(x.grad.numpy(), 6 * a * a, 1e-5, 1e-5, "custom backward")


def test_checkpoint_matches_plain_gradients_with_dropout(rng):
    a, w = rng.standard_normal((8, 16)), rng.standard_normal((16, 16))

    def block(x, weight):
        return ef.dropout(ef.gelu(x @ weight), 0.3) @ weight

    grads = []
    for use_checkpoint in (False, True):
        x = ef.tensor(a.astype(np.float32), requires_grad=True)
        weight = ef.tensor(w.astype(np.float32), requires_grad=True)
        ef.manual_seed(7)
        y = ef.checkpoint(block, x, weight) if use_checkpoint else block(x, weight)
        (y * y).sum().backward()
        grads.append((x.grad.numpy(), weight.grad.numpy(), ef.get_rng_state()))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_array_equal(grads[0][1], grads[1][1])
    assert grads[0][2] == grads[1][2]


def test_numpy_round_trip_and_dtypes():
    # The last: 9 MiB and a bit, copied in 1 MiB pieces over the threads, the last piece partial.
    large = np.random.default_rng().standard_normal(9 * 2**18 + 7).astype(np.float32)
    for a in (np.arange(6, dtype=np.int64).reshape(2, 3), np.array([True, False]), np.full((2, 2), 2.5, dtype=np.float32),
              large):
        t = ef.tensor(a)
        assert t.numpy().dtype == a.dtype and np.array_equal(t.numpy(), a)
    assert ef.tensor(np.zeros(3)).dtype == "float32"  # float64 data becomes float32
    assert ef.tensor([[1.0, 2.0]]).shape == (1, 2)
    with pytest.raises(ValueError, match="dtype"):
        ef.tensor(np.array(["a"]))
    with pytest.raises(ValueError):
        ef.tensor(np.zeros(3, dtype=np.int64), requires_grad=True)


def test_errors_map_to_python_exceptions():
    assert issubclass(ef.ShapeError, ValueError) and issubclass(ef.IOError, OSError)
    with pytest.raises(ef.ShapeError, match=r"\[2, 3\]"):
        ef.zeros(2, 3) @ ef.zeros(2, 3)
    with pytest.raises(IndexError):
        ef.softmax(ef.zeros(2, 3), dim=2)
    with pytest.raises(OSError, match="nonexistent"):
        ef.load_safetensors("/nonexistent/file.safetensors")
