"""Shared parity harness: eformer (float32) against PyTorch float64 on fresh random inputs.

check(ef_fn, torch_fn, inputs) runs both functions on the same inputs (numpy float64 arrays; the
eformer side gets float32 copies), compares the outputs, then backpropagates the same random
upstream gradient through both and compares every input gradient.
"""
import numpy as np
import pytest
import torch

import eformer as ef

torch.set_default_dtype(torch.float64)


@pytest.fixture
def rng():
    """A fresh generator each run (the seed is printed on failure, so a failure can be replayed)."""
    seed = np.random.SeedSequence().entropy % (2**32)
    print(f"numpy seed {seed}")
    return np.random.default_rng(seed)


def to_ef(a, requires_grad):
    if isinstance(a, np.ndarray) and a.dtype == np.float64:
        return ef.tensor(a.astype(np.float32), requires_grad=requires_grad)
    if isinstance(a, np.ndarray):
        return ef.tensor(a)
    return a


def to_torch(a, requires_grad):
    if isinstance(a, np.ndarray) and a.dtype == np.float64:
        return torch.tensor(a, requires_grad=requires_grad)
    if isinstance(a, np.ndarray):
        return torch.tensor(a)
    return a


def assert_close(actual, expected, rtol, atol, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    # Scale the absolute tolerance by the reference's magnitude (float32 vs float64 rounding).
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


def check(ef_fn, torch_fn, inputs, rng=None, grad=True, rtol=1e-4, atol=1e-5, grad_inputs=None):
    """Compare forward and input gradients. `inputs` is a list of numpy arrays or other args;
    float64 arrays are differentiable unless `grad_inputs` names the indices that are."""
    rng = rng or np.random.default_rng()
    diff = [i for i, a in enumerate(inputs) if isinstance(a, np.ndarray) and a.dtype == np.float64]
    if grad_inputs is not None:
        diff = list(grad_inputs)
    e_in = [to_ef(a, grad and i in diff) for i, a in enumerate(inputs)]
    t_in = [to_torch(a, grad and i in diff) for i, a in enumerate(inputs)]
    e_out, t_out = ef_fn(*e_in), torch_fn(*t_in)
    assert_close(e_out.numpy(), t_out.detach().numpy(), rtol, atol, "forward")
    if not grad or not diff:
        return e_out, t_out
    upstream = rng.standard_normal(tuple(t_out.shape))
    (t_out * torch.tensor(upstream)).sum().backward()
    e_out.backward(ef.tensor(upstream.astype(np.float32)))
    for i in diff:
        assert e_in[i].grad is not None, f"input {i}: no gradient"
        assert_close(e_in[i].grad.numpy(), t_in[i].grad.numpy(), rtol * 10, atol * 10, f"grad of input {i}")
    return e_out, t_out


def on_thread_counts(fn, counts=(1, 2)):
    """fn() run with each library thread count in turn (the count restored after): a list of its results."""
    before = ef.get_num_threads()
    try:
        results = []
        for threads in counts:
            ef.set_num_threads(threads)
            results.append(fn())
        return results
    finally:
        ef.set_num_threads(before)


@pytest.fixture(scope="module")
def word_corpus(tmp_path_factory):
    """About 40 KB of learnable text (1500 lines of 4 to 11 common words), for CLI runs."""
    rng = np.random.default_rng(0)
    words = "and the of to in that he shall unto for his a they be is him lord not them it with all".split()
    lines = [" ".join(words[int(k)] for k in rng.integers(0, len(words), int(rng.integers(4, 12)))) + "."
             for _ in range(1500)]
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
