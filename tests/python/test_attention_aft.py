"""The Attention Free Transformer (aft_full, aft_simple, aft_local, aft_conv) against a float64 PyTorch
formulation of the paper's eq. 2 written here from the definition, with no max subtraction and no
softmax (float64 has the range for it): Y_t = sigmoid(Q_t) * sum_t' exp(K_t' + w_t,t') V_t' /
sum_t' exp(K_t' + w_t,t'), over t' <= t when causal. Forward and the gradients of q, k, v and of the
bias in the form each variant takes (w, the factors w_u and w_v, the band, the kernel), causal and
bidirectional, at ordinary scale and at |K| = 80; the module's parameters (the conv kernel's
reparameterization, eq. 8) likewise. Fresh random inputs each run (the seed is printed).
"""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check

B, H, d = 2, 2, 5
VARIANTS = ["aft_full", "aft_full_factors", "aft_simple", "aft_local", "aft_conv"]


def dense_w(kind, bias, N, M, causal):
    """The w [H, N, M] of eq. 2 from the variant's tensor (torch float64), by its definition."""
    if kind == "aft_simple":
        return torch.zeros(H, N, M)
    if kind == "aft_full":
        return bias[0][:, :N, :M]
    if kind == "aft_full_factors":
        return (bias[0] @ bias[1].transpose(1, 2))[:, :N, :M]
    w = bias[0]
    S = w.shape[-1]
    p = S - 1 if causal else (S - 1) // 2  # the window of query t starts at key t - p
    rows = []
    for t in range(N):
        row = []
        for j in range(M):
            i = j - t + p
            if 0 <= i < S:  # inside the window: learned; outside: 0 (not -inf, AFT eq. 4)
                row.append(w[:, t, i] if kind == "aft_local" else w[:, i])
            else:
                row.append(torch.zeros(H))
        rows.append(torch.stack(row, -1))
    return torch.stack(rows, 1)


def eq2(q, k, v, w, causal):
    """AFT eq. 2, per channel: q, k, v [B, H, N or M, d]; w [H, N, M] shared by a head's channels."""
    N, M = q.shape[2], k.shape[2]
    e = torch.exp(k[:, :, None, :, :] + w[None, :, :, :, None])  # [B, H, N, M, d]
    if causal:
        e = e * (torch.arange(M)[None, :] <= torch.arange(N)[:, None]).to(e.dtype)[None, None, :, :, None]
    return torch.sigmoid(q) * (e * v[:, :, None]).sum(3) / e.sum(3)


def bias_inputs(kind, rng, N, M, causal, s=3):
    if kind == "aft_simple":
        return []
    if kind == "aft_full":
        return [rng.standard_normal((H, N + 2, M + 1))]  # larger than needed: the top-left block is used
    if kind == "aft_full_factors":
        return [rng.standard_normal((H, N, 4)), rng.standard_normal((H, M, 4))]
    if kind == "aft_local":
        return [rng.standard_normal((H, N, s if causal else 2 * s - 1))]
    return [rng.standard_normal((H, s + 1))]


def call(kind, causal):
    name = "aft_full" if kind == "aft_full_factors" else kind
    keys = {"aft_full_factors": ["w_u", "w_v"], "aft_simple": []}.get(kind, ["w"])

    def fn(q, k, v, *bias):
        return ef.attention(q, k, v, kind=name, causal=causal, **dict(zip(keys, bias)))
    return fn


@pytest.mark.parametrize("kind", VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kscale", [1.0, 80.0])
def test_functional_form_matches_eq2(rng, kind, causal, kscale):
    N, M = (19, 19) if causal else (19, 13)
    k = np.clip(kscale * rng.standard_normal((B, H, M, d)), -kscale, kscale)
    inputs = [rng.standard_normal((B, H, N, d)), k, rng.standard_normal((B, H, M, d))]
    inputs += bias_inputs(kind, rng, N, M, causal)
    # float32 inputs, exactly: the reference sees what eformer sees.
    inputs = [x.astype(np.float32).astype(np.float64) for x in inputs]
    tol = dict(rtol=1e-4, atol=1e-5) if kscale == 1.0 else dict(rtol=2e-4, atol=2e-5)
    e_out, _ = check(call(kind, causal),
                     lambda q, k, v, *bias: eq2(q, k, v, dense_w(kind, bias, N, M, causal), causal),
                     inputs, rng, **tol)
    assert np.isfinite(e_out.numpy()).all()


@pytest.mark.parametrize("kind", ["aft_full", "aft_local", "aft_conv"])
@pytest.mark.parametrize("causal", [False, True])
def test_constant_bias_still_gives_qkv_eq2_gradients(rng, kind, causal):
    """w needing no gradient (as in the benchmarks) lets the kernels skip dw; q, k, v keep their eq. 2
    gradients."""
    N = M = 37
    inputs = [rng.standard_normal((B, H, N, d)) for _ in range(3)] + bias_inputs(kind, rng, N, M, causal)
    inputs = [x.astype(np.float32).astype(np.float64) for x in inputs]
    check(call(kind, causal), lambda q, k, v, w: eq2(q, k, v, dense_w(kind, [w], N, M, causal), causal),
          inputs, rng, grad_inputs=[0, 1, 2])


def test_local_keeps_global_connectivity(rng):
    """Outside the window the bias is 0, not -inf: a far key still moves the output."""
    N, s = 12, 2
    q, k, v = (rng.standard_normal((1, 1, N, d)).astype(np.float32) for _ in range(3))
    w = np.full((1, N, s), -30.0, dtype=np.float32)  # the window all but shut
    base = ef.attention(ef.tensor(q), ef.tensor(k), ef.tensor(v), kind="aft_local", causal=True,
                        w=ef.tensor(w)).numpy()
    v2 = v.copy()
    v2[:, :, 0] += 5.0  # key 0 is outside the window of the last query
    moved = ef.attention(ef.tensor(q), ef.tensor(k), ef.tensor(v2), kind="aft_local", causal=True,
                         w=ef.tensor(w)).numpy()
    assert np.abs(moved[:, :, -1] - base[:, :, -1]).max() > 1e-2


@pytest.mark.parametrize("name", ["aft_full", "aft_local", "aft_local_factorized", "aft_conv"])
@pytest.mark.parametrize("causal", [False, True])
def test_module_bias_parameters_get_eq2_gradients(rng, name, causal):
    """The module, its bias parameters set to visible values: forward and every parameter gradient
    against eq. 2 with the bias rebuilt from them (factorization eq. 7, band, reparameterization eq. 8)."""
    D, N, heads = 8, 11, 2
    opts = {"aft_full": {"hidden": 3, "heads": heads}, "aft_local": {"window": 3, "heads": heads},
            "aft_local_factorized": {"window": 3, "heads": heads, "factorized": True, "hidden": 4},
            "aft_conv": {"kernel": 4}}[name]
    mech = ef.models.make_mechanism(name.replace("_factorized", ""), D, heads, causal=causal, max_len=16,
                                    options=opts)
    state = {n: t.numpy() for n, t in mech.state_dict().items()}
    for n in ("w", "w_u", "w_v", "gamma", "beta"):
        if n in state:
            state[n] = (rng.standard_normal(state[n].shape) * 0.7).astype(np.float32)
    mech.load_state_dict({n: ef.tensor(np.ascontiguousarray(a)) for n, a in state.items()})
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in mech.named_parameters()}
    x = rng.standard_normal((B, N, D))

    def proj(n, src):
        return (src @ p[n + ".weight"].T + p[n + ".bias"]).view(B, N, heads, -1).transpose(1, 2)

    def reference(x):
        if name == "aft_full":
            w = (p["w_u"] @ p["w_v"].transpose(1, 2))[:, :N, :N]
        elif name == "aft_local":
            w = dense_w("aft_local", [p["w"]], N, N, causal)
        elif name == "aft_local_factorized":  # eq. 7 inside the window |t - t'| < s = 3, 0 outside
            near = (torch.arange(N)[None, :] - torch.arange(N)[:, None]).abs() < 3
            w = (p["w_u"] @ p["w_v"].transpose(1, 2))[:, :N, :N] * near
        else:
            kern = p["kernel"]
            u = p["gamma"][:, None] * (kern - kern.mean(1, keepdim=True)) / kern.std(1, keepdim=True) \
                + p["beta"][:, None]
            w = dense_w("aft_conv", [u], N, N, causal)
        y = eq2(proj("q_proj", x), proj("k_proj", x), proj("v_proj", x), w, causal)
        return y.transpose(1, 2).reshape(B, N, D) @ p["out_proj.weight"].T + p["out_proj.bias"]

    e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
    t_x = torch.tensor(x, requires_grad=True)
    out, t_out = mech(e_x), reference(t_x)
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal(tuple(t_out.shape))
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, "grad x")
    for n, t in mech.named_parameters():
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"grad {n}")


def test_options_and_capabilities_as_documented():
    entries = {e["name"]: e for e in ef.mechanisms()}
    for name in ("aft_full", "aft_simple", "aft_local", "aft_conv"):
        caps = entries[name]["capabilities"]
        assert caps["causal"] and caps["bidirectional"] and caps["recurrent"]
        assert not caps["dropout"] and not caps["cross"] and caps["padding_mask"]
        assert caps["fixed_length"] == (name in ("aft_full", "aft_local"))
    with pytest.raises(ValueError, match="unknown option 'kernel'.*heads, window"):
        ef.models.make_mechanism("aft_local", 8, 2, causal=True, max_len=8, options={"kernel": 3})
    for name, option in (("aft_local", "window"), ("aft_conv", "kernel"), ("aft_full", "hidden")):
        with pytest.raises(ValueError, match=f"option {option} = 4611686018427387904; expected an integer"):
            ef.models.make_mechanism(name, 8, 2, causal=True, max_len=8, options={option: 2**62})
        with pytest.raises(ValueError, match=f"option {option} = 100000; expected at most 65536"):
            ef.models.make_mechanism(name, 8, 2, causal=True, max_len=8, options={option: 100000})
    with pytest.raises(ValueError, match="w \\[heads, N, M\\]"):
        q = ef.tensor(np.zeros((1, 1, 4, 2), dtype=np.float32))
        ef.attention(q, q, q, kind="aft_full")


@pytest.mark.parametrize("kind", VARIANTS)
def test_padded_keys_are_left_out_and_a_query_without_keys_gives_zero(rng, kind):
    N, causal = 9, False
    inputs = [rng.standard_normal((B, H, N, d)) for _ in range(3)] + bias_inputs(kind, rng, N, N, causal)
    inputs = [x.astype(np.float32).astype(np.float64) for x in inputs]
    mask = np.ones((B, N), dtype=bool)
    mask[1] = False  # batch row 1: no real key at all
    mask[0, [2, 5]] = False
    ef_in = [ef.tensor(x.astype(np.float32), requires_grad=True) for x in inputs]
    out = ef.attention(*ef_in[:3], kind="aft_full" if kind == "aft_full_factors" else kind, causal=causal,
                       key_mask=ef.tensor(mask), **dict(zip({"aft_full_factors": ["w_u", "w_v"],
                                                             "aft_simple": []}.get(kind, ["w"]), ef_in[3:])))
    t_in = [torch.tensor(x) for x in inputs]
    w = dense_w(kind, t_in[3:], N, N, causal)
    keep = torch.tensor(mask[0])
    ref = eq2(t_in[0][:1], t_in[1][:1, :, keep], t_in[2][:1, :, keep], w[:, :, keep], causal)
    assert_close(out.numpy()[:1], ref.numpy(), 1e-4, 1e-5, "row 0: padded keys left out")
    assert np.array_equal(out.numpy()[1], np.zeros_like(out.numpy()[1])), "row 1 has no key: 0"
    out.backward(ef.tensor(rng.standard_normal(out.shape).astype(np.float32)))
    for t in ef_in:
        assert np.isfinite(t.grad.numpy()).all()
    assert np.array_equal(ef_in[1].grad.numpy()[1], np.zeros((H, N, d), dtype=np.float32))


@pytest.mark.parametrize("kind", ["aft_full", "aft_full_factors", "aft_local", "aft_conv"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kscale", [1.0, 80.0])
def test_one_bias_head_is_shared_by_every_head(rng, kind, causal, kscale):
    """A bias of one head, w [1, ...], serves all H heads (one GEMM over their columns); its gradient is the sum
    over the heads. Several query blocks (N = 300 > 128 rows), the last partial; |K| = 80: the exact path."""
    N, M = (300, 300) if causal else (300, 261)
    k = np.clip(kscale * rng.standard_normal((B, H, M, d)), -kscale, kscale)
    inputs = [rng.standard_normal((B, H, N, d)), k, rng.standard_normal((B, H, M, d))]
    inputs += [b[:1] for b in bias_inputs(kind, rng, N, M, causal, s=5)]
    inputs = [x.astype(np.float32).astype(np.float64) for x in inputs]

    def reference(q, k, v, *bias):
        shared = [b.expand(H, *b.shape[1:]) for b in bias]  # autograd sums the heads' gradients
        return eq2(q, k, v, dense_w(kind, shared, N, M, causal), causal)
    tol = dict(rtol=1e-4, atol=1e-5) if kscale == 1.0 else dict(rtol=2e-4, atol=2e-5)
    check(call(kind, causal), reference, inputs, rng, **tol)


@pytest.mark.parametrize("kind", ["aft_full", "aft_local"])
def test_one_shared_bias_head_with_padded_keys_equals_the_bias_copied_to_every_head(rng, kind):
    N = 11
    inputs = [rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(3)]
    w = bias_inputs(kind, rng, N, N, False)[0][:1].astype(np.float32)
    mask = np.ones((B, N), dtype=bool)
    mask[0, [1, 6]] = False
    mask[1, 3] = False
    outs = [ef.attention(*(ef.tensor(x) for x in inputs), kind=kind, causal=False, key_mask=ef.tensor(mask),
                         w=ef.tensor(np.ascontiguousarray(np.broadcast_to(ww, (n,) + w.shape[1:]))))
            for n, ww in ((1, w), (H, w))]
    assert_close(outs[0].numpy(), outs[1].numpy(), 1e-5, 1e-6, "shared w vs w copied per head")


def dense_w2d(u, height, width):
    """The w [H, N, N] of 2-D AFT-conv by its definition: u[h, dy + p, dx + p] where key (y', x') is within the
    kernel's footprint of query (y, x) (dy = y' - y, dx = x' - x, p = (s - 1) // 2), 0 elsewhere."""
    Hh, s = u.shape[0], u.shape[1]
    p = (s - 1) // 2
    N = height * width
    w = torch.zeros(Hh, N, N)
    for t in range(N):
        y, x = divmod(t, width)
        for a in range(s):
            for b in range(s):
                yy, xx = y + a - p, x + b - p
                if 0 <= yy < height and 0 <= xx < width:
                    w[:, t, yy * width + xx] = u[:, a, b]
    return w


@pytest.mark.parametrize("s", [3, 4])
def test_conv2d_functional_form_matches_eq2(rng, s):
    height, width = 5, 6
    N = height * width
    inputs = [rng.standard_normal((B, H, N, d)) for _ in range(3)] + [rng.standard_normal((H, s, s))]
    inputs = [x.astype(np.float32).astype(np.float64) for x in inputs]
    check(lambda q, k, v, u: ef.attention(q, k, v, kind="aft_conv", w=u, image_shape=[height, width]),
          lambda q, k, v, u: eq2(q, k, v, dense_w2d(u, height, width), False), inputs, rng)


def test_conv2d_module_with_reparameterization_matches_eq2(rng):
    D, heads, height, width, s = 8, 2, 4, 5, 3
    N = height * width
    mech = ef.models.make_mechanism("aft_conv", D, heads, options={"kernel": s, "image_shape": [height, width]})
    state = {n: t.numpy() for n, t in mech.state_dict().items()}
    state["gamma"] = np.array([0.8, -0.6], dtype=np.float32)
    state["beta"] = np.array([0.3, 0.1], dtype=np.float32)
    mech.load_state_dict({n: ef.tensor(np.ascontiguousarray(a)) for n, a in state.items()})
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in mech.named_parameters()}
    assert p["kernel"].shape == (heads, s, s)
    x = rng.standard_normal((B, N, D))

    def proj(n, src):
        return (src @ p[n + ".weight"].T + p[n + ".bias"]).view(B, N, heads, -1).transpose(1, 2)

    def reference(x):
        kern = p["kernel"].reshape(heads, -1)
        u = p["gamma"][:, None] * (kern - kern.mean(1, keepdim=True)) / kern.std(1, keepdim=True) \
            + p["beta"][:, None]
        y = eq2(proj("q_proj", x), proj("k_proj", x), proj("v_proj", x),
                dense_w2d(u.reshape(heads, s, s), height, width), False)
        return y.transpose(1, 2).reshape(B, N, D) @ p["out_proj.weight"].T + p["out_proj.bias"]

    e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
    t_x = torch.tensor(x, requires_grad=True)
    out, t_out = mech(e_x), reference(t_x)
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal(tuple(t_out.shape))
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, "grad x")
    for n, t in mech.named_parameters():
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"grad {n}")
    with pytest.raises(ValueError, match="image_shape"):
        ef.models.make_mechanism("aft_conv", D, heads, causal=True, options={"image_shape": [4, 5]})
    with pytest.raises(ValueError, match="image_shape = \\[4\\]"):
        ef.models.make_mechanism("aft_conv", D, heads, options={"image_shape": [4]})
    with pytest.raises(Exception, match="21 positions"):
        mech(ef.tensor(rng.standard_normal((1, 21, D)).astype(np.float32)))
