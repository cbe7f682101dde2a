"""The FAVOR+ estimator (kind="performer" without an explicit omega) against exact softmax attention, and
the random matrices of ef.draw_omega: the error falls with m, orthogonal features beat i.i.d. ones, positive
features beat trigonometric ones where the softmax kernel is small (Performer, sec. 2-4), and omega's
orthogonality, norms and reproducibility. Margins are set from measured ratios, well inside them.
"""
import math

import numpy as np
import torch

import eformer as ef
from test_attention_kernelized import torch_softmax_attention

# ---- estimation: FAVOR+ vs exact softmax attention ----------------------------------------------

def estimation_errors(q, k, v, exact, seeds, **opts):
    """Per-seed mean squared error of performer attention (a fresh omega per seed) against `exact`."""
    e_q, e_k, e_v = (ef.tensor(a.astype(np.float32)) for a in (q, k, v))
    errors = []
    for s in seeds:
        ef.manual_seed(int(s))
        out = ef.attention(e_q, e_k, e_v, kind="performer", **opts).numpy()
        errors.append(np.mean((out.astype(np.float64) - exact) ** 2))
    errors = np.asarray(errors)
    return errors.mean(), errors.std(ddof=1) / math.sqrt(len(errors))


def exact_softmax(q, k, v):
    return torch_softmax_attention(*(torch.tensor(a) for a in (q, k, v))).numpy()


def test_estimation_error_falls_with_m(rng):
    # q, k ~ 0.3 N(0, 1), d = 16: the estimator is in its 1/m regime (MSE ratio 16 in theory;
    # simulations of the same estimator give 10-13 with 50 seeds).
    B, H, N, d = 1, 4, 64, 16
    q, k = (0.3 * rng.standard_normal((B, H, N, d)) for _ in range(2))
    v = rng.standard_normal((B, H, N, d))
    exact = exact_softmax(q, k, v)
    seeds = rng.integers(1 << 40, size=100)
    small, _ = estimation_errors(q, k, v, exact, seeds[:50], m=16)
    large, _ = estimation_errors(q, k, v, exact, seeds[50:], m=256)
    print(f"MSE m=16 {small:.3g}, m=256 {large:.3g}, ratio {small / large:.3g}")
    assert small > 5 * large


def test_orthogonal_features_beat_iid(rng):
    # m = d = 16 at q, k ~ 0.3 N(0, 1): simulations give MSE(iid) / MSE(ortho) = 1.25-1.36, the
    # difference 8-10 standard errors with 200 seeds each.
    B, H, N, d = 1, 4, 64, 16
    q, k = (0.3 * rng.standard_normal((B, H, N, d)) for _ in range(2))
    v = rng.standard_normal((B, H, N, d))
    exact = exact_softmax(q, k, v)
    seeds = rng.integers(1 << 40, size=400)
    ortho, se_o = estimation_errors(q, k, v, exact, seeds[:200], m=16, ortho=True)
    iid, se_i = estimation_errors(q, k, v, exact, seeds[200:], m=16, ortho=False)
    z = (iid - ortho) / math.hypot(se_o, se_i)
    print(f"MSE ortho {ortho:.3g} +- {se_o:.2g}, iid {iid:.3g} +- {se_i:.2g}, ratio {iid / ortho:.3g}, z {z:.3g}")
    assert z > 4 and iid > 1.1 * ortho


def test_positive_features_beat_trig_where_the_kernel_is_small(rng):
    # Keys opposite the queries: x . y in about [-2, -0.2], so exp(x . y) is small relative to the
    # trig features' exp(|x|^2/2 + |y|^2/2); simulations give MSE ratios above 1e4.
    B, H, N, d = 1, 4, 64, 16
    u = rng.standard_normal(d)
    u *= 2 / np.linalg.norm(u)
    q = u + 0.3 * rng.standard_normal((B, H, N, d))
    k = -u + 0.3 * rng.standard_normal((B, H, N, d))
    v = rng.standard_normal((B, H, N, d))
    exact = exact_softmax(q, k, v)
    seeds = rng.integers(1 << 40, size=60)
    positive, _ = estimation_errors(q, k, v, exact, seeds[:30], m=64, features="positive")
    trig, _ = estimation_errors(q, k, v, exact, seeds[30:], m=64, features="trig")
    print(f"MSE positive {positive:.3g}, trig {trig:.3g}")
    assert positive < 1e-3 and trig > 100 * positive


def test_draws_follow_the_default_generator(rng):
    q, k, v = (ef.tensor(rng.standard_normal((1, 2, 20, 8)).astype(np.float32)) for _ in range(3))
    seed = int(rng.integers(1 << 40))
    ef.manual_seed(seed)
    a = ef.attention(q, k, v, kind="performer", m=8).numpy()
    b = ef.attention(q, k, v, kind="performer", m=8).numpy()  # a fresh omega each call
    ef.manual_seed(seed)
    c = ef.attention(q, k, v, kind="performer", m=8).numpy()
    assert not np.array_equal(a, b) and np.array_equal(a, c)


# ---- draw_omega --------------------------------------------------------------------------------

def test_draw_omega_orthogonal_blocks(rng):
    d, m = 16, 40
    seed = int(rng.integers(1 << 40))
    for norms in ("chi", "fixed"):
        w = ef.draw_omega(m, d, ortho=True, norms=norms, seed=seed).numpy().astype(np.float64)
        assert w.shape == (m, d)
        for r0 in range(0, m, d):
            g = w[r0:r0 + d]
            gram = g @ g.T
            n = np.sqrt(np.diag(gram))
            off = gram / np.outer(n, n) - np.eye(len(g))
            assert np.abs(off).max() < 1e-5, f"block at row {r0} is not orthogonal ({norms})"
        # Rows of different blocks are independent: not orthogonal.
        cos = (w[:d] @ w[d:2 * d].T) / np.outer(np.linalg.norm(w[:d], axis=1), np.linalg.norm(w[d:2 * d], axis=1))
        assert np.abs(cos).max() > 0.1
    iid = ef.draw_omega(m, d, ortho=False, seed=seed).numpy().astype(np.float64)
    n = np.linalg.norm(iid, axis=1)
    cos = (iid[:d] @ iid[:d].T) / np.outer(n[:d], n[:d]) - np.eye(d)
    assert np.abs(cos).max() > 0.1, "i.i.d. rows came out orthogonal"


def test_draw_omega_norms(rng):
    d, m = 16, 4096
    seed = int(rng.integers(1 << 40))
    for ortho in (True, False):
        fixed = ef.draw_omega(m, d, ortho=ortho, norms="fixed", seed=seed).numpy().astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(fixed, axis=1), math.sqrt(d), rtol=1e-5)
        chi = np.linalg.norm(ef.draw_omega(m, d, ortho=ortho, norms="chi", seed=seed).numpy().astype(np.float64),
                             axis=1)
        # E[chi_d] = sqrt(2) Gamma((d+1)/2) / Gamma(d/2); its std is about 0.7, so the mean of 4096
        # rows is within 0.011 (one standard error) of it.
        mean = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
        assert abs(chi.mean() - mean) < 0.06, f"ortho={ortho}: mean norm {chi.mean()} vs {mean}"
        assert 0.5 < chi.std() < 0.9 and chi.min() > 0
    entries = ef.draw_omega(m, d, ortho=False, seed=seed).numpy().astype(np.float64)
    assert abs(entries.mean()) < 0.02 and abs(entries.var() - 1) < 0.03


def test_draw_omega_is_a_function_of_seed_and_stream(rng):
    seed = int(rng.integers(1 << 40))
    for ortho in (True, False):
        a = ef.draw_omega(20, 8, ortho=ortho, seed=seed, stream=3).numpy()
        assert np.array_equal(a, ef.draw_omega(20, 8, ortho=ortho, seed=seed, stream=3).numpy())
        assert not np.array_equal(a, ef.draw_omega(20, 8, ortho=ortho, seed=seed, stream=4).numpy())
        assert not np.array_equal(a, ef.draw_omega(20, 8, ortho=ortho, seed=seed + 1, stream=3).numpy())
