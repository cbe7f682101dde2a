"""Kernelized attention (kind="performer" and kind="linear", Performer / Linear Transformer) against
a float64 torch reference of the same formula (the estimator's statistics: test_performer_estimation.py).

Semantics under test (1/sqrt(m) factors left out, they cancel):
  x = q sqrt(scale), y = k sqrt(scale) for softmax and gaussian (scale default 1/sqrt(d)); other kernels
  take q and k as they are. a = x omega^T (projection) or a = x.
  softmax positive exp(a - |x|^2/2)   softmax trig exp(|x|^2/2) [sin a, cos a]
  gaussian positive exp(a - |x|^2)    gaussian trig [sin a, cos a]
  relu(a), elu(a) + 1, exp(a), a
  out_i = sum_j w_ij v_j / sum_j w_ij, w_ij = phi(q_i) . phi(k_j) over the allowed keys (key_mask;
  causal: j <= i); a query with no allowed key (or a zero denominator) outputs 0.
"""
import math

import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check
from references import SHIFT_INVARIANT, allowed_mask, normalized, torch_features, torch_kernelized  # noqa: F401

models = ef.models

# The torch reference (torch_features, allowed_mask, normalized, torch_kernelized) is shared with the
# contract suite: references.py.

def torch_softmax_attention(q, k, v, scale=None):
    d = q.shape[-1]
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d) if scale is None else scale)
    return torch.softmax(s, -1) @ v


def random_key_mask(rng, B, M):
    """Padding per batch row: 1..M real tokens followed by padding."""
    return np.arange(M)[None, :] < rng.integers(1, M + 1, size=B)[:, None]


# ---- inputs per feature map ---------------------------------------------------------------------

# (kernel, features, projection): every combination the library allows.
COMBOS = [("softmax", "positive", True), ("softmax", "trig", True), ("gaussian", "positive", True),
          ("gaussian", "trig", True)] + [(kern, "positive", proj) for kern in ("relu", "elu", "exp", "identity")
                                         for proj in (True, False)]
COMBO_IDS = [f"{k}-{f}-{'proj' if p else 'noproj'}" for k, f, p in COMBOS]

# (N, d, m): every N in {1, 7, 64, 65, 200} (chunks of 64), every d in {8, 16, 64}, every m in {8, 33}.
SIZES = [(1, 8, 8), (7, 16, 33), (64, 64, 8), (65, 8, 33), (200, 64, 33), (130, 16, 8)]


def push_from_kinks(rng, x, omega, projection, sample):
    """Redraw rows of x [..., n, d] whose pre-activations a come within 1e-4 (relative) of relu's kink,
    so float32 and float64 agree on every sign and the gradients are comparable."""
    x = x.copy()
    rows = x.reshape(-1, x.shape[-1])
    for r in range(rows.shape[0]):
        while True:
            a = omega @ rows[r] if projection else rows[r]
            size = np.linalg.norm(omega, axis=1) * np.linalg.norm(rows[r]) if projection else 1.0
            if np.all(np.abs(a) > 1e-4 * size):
                break
            rows[r] = sample(rows.shape[1])
    return rows.reshape(x.shape)


def make_inputs(rng, kernel, features, projection, B, H, N, d, m):
    """q, k, v and omega (float32 values) at scales where the float32 result is well conditioned."""
    omega = rng.standard_normal((m, d))
    sample = lambda *s: rng.standard_normal(s)  # noqa: E731
    if features == "trig":
        sample = lambda *s: 0.15 * rng.standard_normal(s)  # noqa: E731  cos(a_i - b_j) ~ 0.9: no cancellation
    elif kernel == "exp" and projection:
        sample = lambda *s: rng.standard_normal(s) / math.sqrt(d)  # noqa: E731  a ~ N(0, 1)
    elif kernel == "identity":
        # w_ij = a_i . b_j must stay away from 0: non-negative inputs and omega.
        sample = lambda *s: rng.uniform(0.1, 1.0, s)  # noqa: E731
        omega = np.abs(omega)
    elif kernel == "relu":
        # relu's derivative does not shrink with the feature, so a denominator far below
        # |phi_q| |phi_k| (one small overlapping feature: a query with one key) would amplify
        # float32 rounding in the gradients. Half of the features are kept clearly positive: with
        # projection, non-negative inputs and half of omega's rows non-negative; without, half of
        # the coordinates shifted away from 0. The other half is cut by relu.
        if projection:
            omega[: m // 2] = np.abs(omega[: m // 2])
            sample = lambda *s: np.abs(rng.standard_normal(s)) + 0.1  # noqa: E731
        else:
            def sample(*s):
                z = rng.standard_normal(s)
                z[..., : d // 2] = np.abs(z[..., : d // 2]) + 0.3
                return z
    q, k = sample(B, H, N, d), sample(B, H, N, d)
    if kernel == "relu":
        q = push_from_kinks(rng, q, omega, projection, sample)
        k = push_from_kinks(rng, k, omega, projection, sample)
    return q, k, rng.standard_normal((B, H, N, d)), omega.astype(np.float32)


def options(kernel, features, projection):
    o = {"kernel": kernel, "projection": projection}
    if kernel in SHIFT_INVARIANT:
        o["features"] = features
    return o


# ---- 1. exactness for a given omega -------------------------------------------------------------

@pytest.mark.parametrize("kernel,features,projection", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_torch_given_omega(rng, kernel, features, projection, causal, masked):
    B, H = 2, 2
    for N, d, m in SIZES:
        q, k, v, omega = make_inputs(rng, kernel, features, projection, B, H, N, d, m)
        e_omega = ef.tensor(omega) if projection else None
        t_omega = torch.tensor(omega.astype(np.float64)) if projection else None
        km = random_key_mask(rng, B, N) if masked else None
        opts = options(kernel, features, projection)
        check(lambda q, k, v, km: ef.attention(q, k, v, kind="performer", causal=causal, key_mask=km,
                                               omega=e_omega, **opts),
              lambda q, k, v, km: torch_kernelized(q, k, v, t_omega, kernel, features, projection, causal, km),
              [q, k, v, km], rng)


@pytest.mark.parametrize("causal", [False, True])
def test_cross_lengths_and_explicit_scale(rng, causal):
    # N != M (bidirectional only) and an explicit scale for the kernels that use one.
    B, H, d, m = 2, 3, 16, 24
    N, M = (50, 50) if causal else (37, 90)
    omega = rng.standard_normal((m, d)).astype(np.float32)
    t_omega = torch.tensor(omega.astype(np.float64))
    for kernel in SHIFT_INVARIANT:
        q, k, v = (rng.standard_normal((B, H, N, d)), rng.standard_normal((B, H, M, d)),
                   rng.standard_normal((B, H, M, d)))
        km = random_key_mask(rng, B, M)
        check(lambda q, k, v, km: ef.attention(q, k, v, kind="performer", causal=causal, key_mask=km, scale=0.4,
                                               omega=ef.tensor(omega), kernel=kernel),
              lambda q, k, v, km: torch_kernelized(q, k, v, t_omega, kernel, "positive", True, causal, km, 0.4),
              [q, k, v, km], rng)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("N,d", [(1, 8), (65, 16), (200, 64)])
def test_linear_kind_is_elu_plus_one(rng, causal, masked, N, d):
    B, H = 2, 2
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    km = random_key_mask(rng, B, N) if masked else None

    def closed_form(q, k, v, km):
        phi_q, phi_k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        return normalized(phi_q @ phi_k.transpose(-1, -2), v, allowed_mask(B, N, N, causal, km))

    check(lambda q, k, v, km: ef.attention(q, k, v, kind="linear", causal=causal, key_mask=km), closed_form,
          [q, k, v, km], rng)


@pytest.mark.parametrize("kind", ["performer", "linear"])
@pytest.mark.parametrize("causal", [False, True])
def test_rows_without_keys_are_zero(rng, kind, causal):
    B, H, N, d = 2, 2, 70, 16
    q, k, v = (ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32), requires_grad=True)
               for _ in range(3))
    km = np.ones((B, N), dtype=bool)
    km[1] = False  # batch row 1 is all padding
    opts = {"m": 16} if kind == "performer" else {}
    out = ef.attention(q, k, v, kind=kind, causal=causal, key_mask=ef.tensor(km), **opts)
    out.backward(ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32)))
    o = out.numpy()
    assert np.all(np.isfinite(o)) and np.all(o[1] == 0) and np.all(np.any(o[0] != 0, -1))
    for t, what in zip((q, k, v), "qkv"):
        g = t.grad.numpy()
        assert np.all(np.isfinite(g)) and np.all(g[1] == 0), f"gradient of {what}"


# ---- 2. the core, with the keys' log-scales -------------------------------------------------------

@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("causal,N,M", [(c, n, n) for c in (False, True) for n in (1, 64, 65, 200)]
                         + [(False, 37, 130), (False, 130, 37)])
def test_core_with_log_scales(rng, causal, masked, N, M):
    B, H, F, dv = 2, 2, 12, 5
    phi_q = rng.uniform(0.05, 1.0, (B, H, N, F))
    phi_k = rng.uniform(0.05, 1.0, (B, H, M, F))
    v = rng.standard_normal((B, H, M, dv))
    log_scale = rng.uniform(-30, 30, (B, H, M))
    km = random_key_mask(rng, B, M) if masked else None

    def reference(pq, pk, v, l, km):
        w = (pq @ pk.transpose(-1, -2)) * torch.exp(l - l.detach().max())[:, :, None, :]  # a common factor
        return normalized(w, v, allowed_mask(B, N, M, causal, km))

    check(lambda pq, pk, v, l, km: ef.kernelized_attention(pq, pk, v, l, causal=causal, key_mask=km), reference,
          [phi_q, phi_k, v, log_scale, km], rng)
    # Without log-scales: the same as log_scale = 0.
    check(lambda pq, pk, v: ef.kernelized_attention(pq, pk, v, causal=causal),
          lambda pq, pk, v: normalized(pq @ pk.transpose(-1, -2), v, allowed_mask(B, N, M, causal, None)),
          [phi_q, phi_k, v], rng)


@pytest.mark.parametrize("causal", [False, True])
def test_core_huge_log_scales_stay_finite(rng, causal):
    B, H, N, F, dv = 1, 2, 150, 8, 4
    phi_q, phi_k = (ef.tensor(rng.uniform(0, 1, (B, H, N, F)).astype(np.float32), requires_grad=True)
                    for _ in range(2))
    v_np = rng.standard_normal((B, H, N, dv)).astype(np.float32)
    v = ef.tensor(v_np, requires_grad=True)
    log_scale = ef.tensor(rng.uniform(-2000, 2000, (B, H, N)).astype(np.float32), requires_grad=True)
    out = ef.kernelized_attention(phi_q, phi_k, v, log_scale, causal=causal)
    out.backward(ef.tensor(np.ones((B, H, N, dv), dtype=np.float32)))
    o = out.numpy()
    assert np.all(np.isfinite(o)) and np.all(np.abs(o) <= np.abs(v_np).max() * (1 + 1e-5))
    for t in (phi_q, phi_k, v, log_scale):
        assert np.all(np.isfinite(t.grad.numpy()))


@pytest.mark.parametrize("kind", ["performer", "linear"])
def test_bit_identical_on_1_and_2_threads_and_no_gradient_to_omega(rng, kind):
    B, H, N, d = 2, 3, 200, 16
    x = [rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(3)]
    g = ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32))
    km = ef.tensor(random_key_mask(rng, B, N))
    omega = ef.tensor(rng.standard_normal((24, d)).astype(np.float32), requires_grad=True)
    opts = {"omega": omega} if kind == "performer" else {}
    before = ef.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            ef.set_num_threads(threads)
            for causal in (False, True):
                ts = [ef.tensor(a, requires_grad=True) for a in x]
                out = ef.attention(*ts, kind=kind, causal=causal, key_mask=km, **opts)
                out.backward(g)
                results.append([out.numpy()] + [t.grad.numpy() for t in ts])
    finally:
        ef.set_num_threads(before)
    for a, b, what in zip(results[0] + results[1], results[2] + results[3], ["out", "dq", "dk", "dv"] * 2):
        assert np.array_equal(a, b), what
    assert omega.grad is None, "an explicit omega must receive no gradient"


# ---- 3. large logits -----------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["softmax", "gaussian"])
def test_large_logits_do_not_overflow(rng, causal, kernel):
    B, H, N, d = 2, 2, 130, 16
    norms_q = rng.uniform(30, 100, (B, H, N, 1))
    norms_k = rng.uniform(30, 100, (B, H, N, 1))
    q = rng.standard_normal((B, H, N, d))
    k = rng.standard_normal((B, H, N, d))
    q *= norms_q / np.linalg.norm(q, axis=-1, keepdims=True)
    k *= norms_k / np.linalg.norm(k, axis=-1, keepdims=True)
    k[:, :, ::3] = -q[:, :, ::3]  # some keys with hugely negative x . y as well
    v = rng.standard_normal((B, H, N, d)).astype(np.float32)
    ts = [ef.tensor(a.astype(np.float32), requires_grad=True) for a in (q, k)] + [ef.tensor(v, requires_grad=True)]
    ef.manual_seed(int(rng.integers(1 << 30)))
    out = ef.attention(*ts, kind="performer", causal=causal, kernel=kernel, m=32)
    out.backward(ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32)))
    o = out.numpy()
    assert np.all(np.isfinite(o)), "output overflowed"
    assert np.abs(o).max() <= np.abs(v).max() * (1 + 1e-5) + 1e-6, "out is not a weighted average of v"
    for t, what in zip(ts, "qkv"):
        assert np.all(np.isfinite(t.grad.numpy())), f"gradient of {what} overflowed"


# ---- 4. errors ------------------------------------------------------------------------------------

def test_errors(rng):
    q, k, v = (ef.tensor(rng.standard_normal((2, 2, 5, 8)).astype(np.float32)) for _ in range(3))
    assert {"performer", "linear"} <= set(ef.attention_kinds())
    with pytest.raises(ValueError, match="kernel.*softmax, gaussian"):
        ef.attention(q, k, v, kind="performer", kernel="cosine")
    with pytest.raises(ValueError, match="trig"):
        ef.attention(q, k, v, kind="performer", kernel="relu", features="trig")
    with pytest.raises(ValueError, match="projection"):
        ef.attention(q, k, v, kind="performer", kernel="softmax", projection=False)
    with pytest.raises(ValueError, match="projection"):
        ef.attention(q, k, v, kind="performer", kernel="gaussian", projection=False)
    for m in (0, -3):
        with pytest.raises(ValueError, match="m = "):
            ef.attention(q, k, v, kind="performer", m=m)
    with pytest.raises(ValueError, match="features"):
        ef.attention(q, k, v, kind="performer", features="negative")
    with pytest.raises(ValueError, match="unknown option 'window'"):
        ef.attention(q, k, v, kind="performer", window=3)
    with pytest.raises(ValueError, match="omega"):
        ef.attention(q, k, v, kind="performer", omega=ef.zeros(16, 7))
    with pytest.raises(ValueError, match="omega"):
        ef.attention(q, k, v, kind="performer", omega=ef.zeros(16, 8, 1))
    with pytest.raises(ValueError, match="m = 4"):
        ef.attention(q, k, v, kind="performer", omega=ef.zeros(16, 8), m=4)
    with pytest.raises(ValueError, match="omega"):
        ef.attention(q, k, v, kind="linear", omega=ef.zeros(8, 8))
    with pytest.raises(ValueError, match="scale"):
        ef.attention(q, k, v, kind="performer", kernel="relu", scale=0.5)
    with pytest.raises(ValueError, match="scale"):
        ef.attention(q, k, v, kind="linear", scale=0.5)
    k7, v7 = ef.zeros(2, 2, 7, 8), ef.zeros(2, 2, 7, 8)
    ef.attention(q, k7, v7, kind="performer")  # N != M is fine without causal
    with pytest.raises(ValueError, match="causal"):
        ef.attention(q, k7, v7, kind="performer", causal=True)
    with pytest.raises(ValueError, match="key_mask"):
        ef.attention(q, k, v, kind="performer", key_mask=ef.tensor(np.ones((2, 4), dtype=bool)))
    with pytest.raises(ValueError, match="key_mask"):
        ef.attention(q, k, v, kind="linear", key_mask=ef.zeros(2, 5))
    with pytest.raises(ValueError, match="flash.: unknown option .m.; valid options: none"):
        ef.attention(q, k, v, kind="flash", m=8)
    with pytest.raises(ValueError, match="chi or fixed"):
        ef.draw_omega(8, 8, norms="gaussian")
    with pytest.raises(ValueError, match="m = 0"):
        ef.draw_omega(0, 8)
    # The core.
    phi = ef.tensor(rng.uniform(0, 1, (2, 2, 5, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="phi_k"):
        ef.kernelized_attention(phi, ef.zeros(2, 2, 5, 3), v)
    with pytest.raises(ValueError, match="v is"):
        ef.kernelized_attention(phi, phi, ef.zeros(2, 2, 6, 8))
    with pytest.raises(ValueError, match="log_scale_k"):
        ef.kernelized_attention(phi, phi, v, ef.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="causal"):
        ef.kernelized_attention(phi, ef.zeros(2, 2, 7, 4), ef.zeros(2, 2, 7, 8), causal=True)
    with pytest.raises(ValueError, match="key_mask"):
        ef.kernelized_attention(phi, phi, v, key_mask=ef.tensor(np.ones((2, 6), dtype=bool)))
    # The mechanism's options.
    with pytest.raises(ValueError, match="unknown option 'window'.*redraw"):
        models.make_mechanism("performer", 32, 4, options={"window": 2})
    with pytest.raises(ValueError, match="redraw"):
        models.make_mechanism("performer", 32, 4, options={"redraw": -1})
    with pytest.raises(ValueError, match="trig"):
        models.make_mechanism("linear", 32, 4, options={"features": "trig"})


# ---- 5. the mechanism -----------------------------------------------------------------------------

# (name, options). Trig features are left out here: their denominators may come near 0 for the
# projections' default initialization, which makes float32 comparisons meaningless.
MECHANISMS = {"performer": ("performer", {}), "performer-relu": ("performer", {"kernel": "relu", "m": 12}),
              "linear": ("linear", {}), "performer-exp-noproj": ("performer", {"kernel": "exp", "projection": False}),
              "performer-gaussian-rotary": ("performer", {"kernel": "gaussian", "rotary": True, "ortho": False})}
# Compared with torch: no rotary, and no relu (a pre-activation near its kink may take another side
# in float32 and change the gradient).
TORCH_MECHANISMS = {"performer": ("performer", {}), "performer-gaussian-fixed": ("performer", {
    "kernel": "gaussian", "norms": "fixed", "m": 20}), "linear": ("linear", {}),
    "performer-elu": ("performer", {"kernel": "elu", "m": 10})}


@pytest.mark.parametrize("name,opts", MECHANISMS.values(), ids=MECHANISMS.keys())
def test_mechanism_does_not_leak(rng, name, opts):
    D, N, t = 32, 150, 70
    mech = models.make_mechanism(name, D, 4, causal=True, options=opts)
    x = rng.standard_normal((2, N, D)).astype(np.float32)
    base = mech(ef.tensor(x)).numpy()
    changed = x.copy()
    changed[:, t + 1:] += 10 * rng.standard_normal(changed[:, t + 1:].shape).astype(np.float32)
    out = mech(ef.tensor(changed)).numpy()
    assert_close(out[:, :t + 1], base[:, :t + 1], 0, 1e-6, "past outputs moved with future tokens")
    assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3  # the change does reach later outputs
    # No gradient from past outputs reaches future tokens.
    e_x = ef.tensor(x, requires_grad=True)
    g = np.zeros((2, N, D), dtype=np.float32)
    g[:, :t + 1] = rng.standard_normal((2, t + 1, D))
    mech(e_x).backward(ef.tensor(g))
    dx = e_x.grad.numpy()
    assert np.abs(dx[:, t + 1:]).max() <= 1e-6 * np.abs(dx).max()


@pytest.mark.parametrize("name,opts", MECHANISMS.values(), ids=MECHANISMS.keys())
def test_mechanism_step_matches_forward(rng, name, opts):
    D, N = 32, 150
    mech = models.make_mechanism(name, D, 4, causal=True, options=opts)
    x = rng.standard_normal((2, N, D)).astype(np.float32)
    with ef.no_grad():
        full = mech(ef.tensor(x)).numpy()
        for bounds in ([(i, i + 1) for i in range(N)],
                       [(0, 1), (1, 3), (3, 10), (10, 80), (80, 81), (81, 146), (146, 150)]):
            state = mech.start(2)
            outs = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy() for a, b in bounds]
            assert state.length == N
            assert_close(np.concatenate(outs, 1), full, 1e-5, 1e-5, f"step in {len(bounds)} pieces vs forward")


@pytest.mark.parametrize("name,opts", TORCH_MECHANISMS.values(), ids=TORCH_MECHANISMS.keys())
@pytest.mark.parametrize("mode", ["bidirectional", "causal", "cross"])
def test_mechanism_matches_torch(rng, name, opts, mode):
    # Projections, heads (d = 8), the features with the mechanism's own omega, and out_proj; random
    # padding of the keys in every mode.
    B, N, M, D, H = 2, 70, 70 if mode != "cross" else 45, 32, 4
    causal, cross = mode == "causal", mode == "cross"
    mech = models.make_mechanism(name, D, H, causal=causal, cross=cross, options=opts)
    fm = {"kernel": "elu" if name == "linear" else "softmax", "features": "positive", "projection": name != "linear"}
    fm.update({k: v for k, v in opts.items() if k in fm})
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in mech.named_parameters()}
    omega = None if mech.omega is None else torch.tensor(mech.omega.numpy().astype(np.float64))
    assert (omega is None) == (not fm["projection"])
    if omega is not None:
        assert omega.shape == (opts.get("m", round(8 * math.log(8))), 8)
    x = rng.standard_normal((B, N, D))
    memory = rng.standard_normal((B, M, D)) if cross else None
    km = random_key_mask(rng, B, M)

    def reference(x, memory):
        def heads(prefix, src):
            y = src @ p[prefix + ".weight"].T + p[prefix + ".bias"]
            return y.view(B, src.shape[1], H, D // H).transpose(1, 2)
        src = x if memory is None else memory
        o = torch_kernelized(heads("q_proj", x), heads("k_proj", src), heads("v_proj", src), omega, fm["kernel"],
                             fm["features"], fm["projection"], causal, km)
        return o.transpose(1, 2).reshape(B, N, D) @ p["out_proj.weight"].T + p["out_proj.bias"]

    e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
    t_x = torch.tensor(x, requires_grad=True)
    e_mem = ef.tensor(memory.astype(np.float32), requires_grad=True) if cross else None
    t_mem = torch.tensor(memory, requires_grad=True) if cross else None
    out = mech(e_x, e_mem, ef.tensor(km))
    t_out = reference(t_x, t_mem)
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal(tuple(t_out.shape))
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, "grad x")
    if cross:
        assert_close(e_mem.grad.numpy(), t_mem.grad.numpy(), 1e-3, 1e-4, "grad memory")
    for n, t in mech.named_parameters():
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"grad {n}")


def test_mechanism_redraws(rng):
    ef.manual_seed(int(rng.integers(1 << 40)))
    mech = models.make_mechanism("performer", 32, 4, causal=True, options={"redraw": 5, "m": 12})
    mech.train()
    omega = lambda: mech.omega.numpy().copy()  # noqa: E731
    first = omega()
    assert first.shape == (12, 8) and mech.draw_index == 0
    mech.set_step(4)
    assert np.array_equal(omega(), first) and mech.draw_index == 0
    mech.set_step(5)
    second = omega()
    assert mech.draw_index == 1 and not np.array_equal(second, first)
    mech.eval()
    mech.set_step(10)  # evaluation keeps the saved omega
    assert np.array_equal(omega(), second) and mech.draw_index == 1
    mech.train()
    mech.set_step(12)
    third = omega()
    assert mech.draw_index == 2 and not np.array_equal(third, second) and not np.array_equal(third, first)
    mech.set_step(7)  # replay: the same step gives the same omega
    assert np.array_equal(omega(), second)
    mech.set_step(0)
    assert np.array_equal(omega(), first)
    mech.set_step(14)
    state = mech.state_dict()
    assert {"omega", "omega_draw"} <= set(state)
    assert np.array_equal(state["omega"].numpy(), third)
    assert state["omega_draw"].numpy()[1] == 2
    # omega is a pure function of omega_draw = (seed, index): another mechanism loaded from this state
    # replays every draw.
    other = models.make_mechanism("performer", 32, 4, causal=True, options={"redraw": 5, "m": 12})
    assert not np.array_equal(other.omega.numpy(), third)
    other.load_state_dict(state)
    assert np.array_equal(other.omega.numpy(), third) and other.draw_index == 2
    other.train()
    other.set_step(6)
    assert np.array_equal(other.omega.numpy(), second)
    x = ef.tensor(rng.standard_normal((1, 9, 32)).astype(np.float32))
    mech.set_step(8)
    assert np.array_equal(mech(x).numpy(), other(x).numpy())
    # redraw = 0: never; "linear" has no omega.
    never = models.make_mechanism("performer", 32, 4, options={"redraw": 0})
    never.train()
    before = never.omega.numpy().copy()
    never.set_step(100000)
    assert np.array_equal(never.omega.numpy(), before)
    linear = models.make_mechanism("linear", 32, 4, causal=True)
    assert linear.omega is None and "omega" not in linear.state_dict()
    linear.set_step(5000)


def test_mechanism_seeded_construction(rng):
    seed = int(rng.integers(1 << 40))
    ef.manual_seed(seed)
    a = models.make_mechanism("performer", 32, 4)
    ef.manual_seed(seed)
    b = models.make_mechanism("performer", 32, 4)
    assert np.array_equal(a.omega.numpy(), b.omega.numpy())
    c = models.make_mechanism("performer", 32, 4)
    assert not np.array_equal(a.omega.numpy(), c.omega.numpy())
