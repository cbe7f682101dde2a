"""The same MLP trained from C++ (`eformer demo`) and from Python reaches the same loss bit for bit,
on 1 and on 2 threads: the engine's results depend on the seed, not on the front end or the thread count."""
import math
import os
import re
import subprocess

import numpy as np
import pytest

import eformer as ef

CLI = os.path.join(os.path.dirname(ef.__file__), "..", "..", "eformer")
STEPS = 200


def train_in_python(seed, steps, threads, points=1024):
    ef.set_num_threads(threads)
    ef.manual_seed(seed)
    x = ef.randn(points, 2)
    xs = x.numpy().astype(np.float64)
    r = np.sqrt(xs[:, 0] * xs[:, 0] + xs[:, 1] * xs[:, 1])
    y = ef.tensor((r > 0.75).astype(np.int64) + (r > 1.18) + (r > 1.67))

    def weight(*shape, scale):
        return (ef.randn(*shape) * scale).requires_grad_()

    w1, b1 = weight(2, 64, scale=1 / math.sqrt(2)), ef.zeros(64, requires_grad=True)
    w2, b2 = weight(64, 64, scale=0.125), ef.zeros(64, requires_grad=True)
    w3, b3 = weight(64, 4, scale=0.125), ef.zeros(4, requires_grad=True)
    opt = ef.optim.AdamW([w1, b1, w2, b2, w3, b3], lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        h = ef.gelu(x @ w1 + b1)
        h = ef.gelu(h @ w2 + b2)
        loss = ef.cross_entropy(h @ w3 + b3, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def train_in_cli(seed, steps, threads):
    out = subprocess.run([CLI, "demo", "--seed", str(seed), "--steps", str(steps), "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return float.fromhex(re.search(r"final loss \S+ \((\S+)\)", out).group(1))


@pytest.fixture(autouse=True)
def restore_threads():
    n = ef.get_num_threads()
    yield
    ef.set_num_threads(n)


def test_cli_and_python_agree_bit_for_bit_on_1_and_2_threads():
    seed = int(np.random.SeedSequence().entropy % 1000)
    losses = {(front, t): f(seed, STEPS, t) for t in (1, 2)
              for front, f in (("cli", train_in_cli), ("python", train_in_python))}
    assert len(set(losses.values())) == 1, losses
    first = train_in_python(seed, 1, 2)
    assert losses[("cli", 1)] < 0.6 * first, "the MLP did not learn"


def test_demo_rejects_bad_flags():
    for args in (["--steps", "x"], ["--steps", "0"], ["--bogus", "1"], ["--threads"]):
        r = subprocess.run([CLI, "demo", *args], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("eformer: error: demo:"), r.stderr
