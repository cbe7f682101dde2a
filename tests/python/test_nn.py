"""eformer.nn against torch.nn (float64) with identical weights: forward, input and parameter
gradients; chunked feed-forward; rotary and sinusoidal positions; state dicts; initialisation."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eformer as ef
from conftest import assert_close

nn = ef.nn


def copy_into_torch(ef_module, torch_module, names=None):
    """Copy eformer parameters into a torch module; `names` maps eformer names to torch names."""
    names = names or {}
    t_params = dict(torch_module.named_parameters())
    e_params = ef_module.named_parameters()
    assert len(e_params) == len(t_params)
    with torch.no_grad():
        for name, p in e_params:
            t_params[names.get(name, name)].copy_(torch.tensor(p.numpy().astype(np.float64)))


def compare_module(ef_module, torch_module, x, rng, names=None, rtol=1e-4, atol=1e-5, x_grad=True):
    """Forward on the same input, backward of the same random upstream gradient; compares the
    output, the input gradient and every parameter gradient (by eformer name)."""
    names = names or {}
    copy_into_torch(ef_module, torch_module, names)
    float_input = x.dtype == np.float64
    e_x = ef.tensor(x.astype(np.float32) if float_input else x, requires_grad=float_input and x_grad)
    t_x = torch.tensor(x, requires_grad=float_input and x_grad)
    e_y, t_y = ef_module(e_x), torch_module(t_x)
    assert_close(e_y.numpy(), t_y.detach().numpy(), rtol, atol, "forward")
    upstream = rng.standard_normal(tuple(t_y.shape))
    (t_y * torch.tensor(upstream)).sum().backward()
    e_y.backward(ef.tensor(upstream.astype(np.float32)))
    if float_input and x_grad:
        assert_close(e_x.grad.numpy(), t_x.grad.numpy(), rtol * 10, atol * 10, "grad of input")
    t_params = dict(torch_module.named_parameters())
    for name, p in ef_module.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert_close(p.grad.numpy(), t_params[names.get(name, name)].grad.numpy(), rtol * 10, atol * 10,
                     f"grad of {name}")
    return e_y


# ---- modules vs torch.nn ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (12,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(rng, shape, bias):
    lin = nn.Linear(12, 9, bias=bias)
    assert lin.weight.shape == (9, 12) and (lin.bias is None) == (not bias)
    compare_module(lin, torch.nn.Linear(12, 9, bias=bias), rng.standard_normal(shape), rng)


def test_layer_norm_matches_torch(rng):
    ln = nn.LayerNorm(16, eps=1e-6)
    # Non-trivial affine parameters (the init is ones and zeros).
    ln.load_state_dict({"weight": ef.tensor(rng.standard_normal(16).astype(np.float32)),
                        "bias": ef.tensor(rng.standard_normal(16).astype(np.float32))})
    compare_module(ln, torch.nn.LayerNorm(16, eps=1e-6), rng.standard_normal((3, 4, 16)) * 3 + 1, rng)


def test_embedding_matches_torch(rng):
    emb = nn.Embedding(11, 6)
    ids = rng.integers(0, 11, size=(3, 7)).astype(np.int64)
    ids[0, :3] = 4  # repeated ids accumulate
    compare_module(emb, torch.nn.Embedding(11, 6), ids, rng)
    with pytest.raises(IndexError, match="id 11"):
        emb(ef.tensor(np.array([11], dtype=np.int64)))


@pytest.mark.parametrize("activation,torch_act", [("gelu", torch.nn.GELU()),
                                                   ("gelu_tanh", torch.nn.GELU(approximate="tanh")),
                                                   ("relu", torch.nn.ReLU())])
@pytest.mark.parametrize("chunks", [1, 3])
def test_feed_forward_matches_torch(rng, activation, torch_act, chunks):
    ff = nn.FeedForward(10, 24, dropout=0.0, activation=activation, chunks=chunks)
    ref = torch.nn.Sequential(torch.nn.Linear(10, 24), torch_act, torch.nn.Dropout(0.0), torch.nn.Linear(24, 10))
    names = {"fc1.weight": "0.weight", "fc1.bias": "0.bias", "fc2.weight": "3.weight", "fc2.bias": "3.bias"}
    compare_module(ff, ref, rng.standard_normal((2, 9, 10)), rng, names)


def test_learned_positions_match_torch(rng):
    pos = nn.LearnedPositions(16, 8)

    class Ref(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(16, 8))

        def forward(self, x, offset=0):
            return x + self.weight[offset:offset + x.shape[-2]]

    ref = Ref()
    compare_module(pos, ref, rng.standard_normal((2, 5, 8)), rng)
    pos.zero_grad()
    ref.zero_grad()
    x = rng.standard_normal((5, 8))
    e_x = ef.tensor(x.astype(np.float32))
    assert_close(pos(e_x, offset=11).numpy(), ref(torch.tensor(x), 11).detach().numpy(), 1e-4, 1e-5, "offset 11")
    with pytest.raises(IndexError, match=r"\[12, 17\)"):
        pos(e_x, offset=12)
    assert pos.positions(3, offset=2).shape == (3, 8)


# ---- dropout ----------------------------------------------------------------------------------

def test_dropout_module_only_in_training():
    drop = nn.Dropout(0.4)
    assert drop.training and drop.p == pytest.approx(0.4)
    x = ef.ones(200, 100, requires_grad=True)
    y = drop(x)
    kept = y.numpy() != 0
    assert abs(kept.mean() - 0.6) < 0.02  # 20000 draws: sd 0.0035
    np.testing.assert_allclose(y.numpy()[kept], 1 / 0.6, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), kept / 0.6, rtol=1e-6)
    assert drop.eval() is drop and not drop.training
    state = ef.get_rng_state()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    assert ef.get_rng_state() == state  # no draws in eval
    drop.train()
    assert drop.training


def test_train_eval_propagate_to_children():
    ff = nn.FeedForward(4, 8, dropout=0.5)
    ff.eval()
    assert not ff.training and not ff.dropout.training and not ff.fc1.training
    ff.train(True)
    assert ff.dropout.training
    x = ef.ones(3, 4)
    ff.eval()
    np.testing.assert_array_equal(ff(x).numpy(), ff(x).numpy())


# ---- chunked feed-forward ---------------------------------------------------------------------

def run_ff(ff, x_np, upstream, seed=5):
    x = ef.tensor(x_np, requires_grad=True)
    ff.zero_grad()
    ef.manual_seed(seed)
    y = ff(x)
    state = ef.get_rng_state()
    y.backward(ef.tensor(upstream))
    grads = {name: p.grad.numpy() for name, p in ff.named_parameters()}
    return y.numpy(), x.grad.numpy(), grads, state, ef.get_rng_state()


@pytest.mark.parametrize("d_ff", [24, 26, 27])  # dropout alignment of pieces: 1, 2, 4 rows
def test_chunked_feed_forward_is_bit_identical_in_exact_arithmetic(rng, d_ff):
    """Small integer weights and inputs, ReLU and p = 0.5 (scale 2) make every sum exact in float32
    whatever the GEMM's order, so any difference would be a different dropout mask or a chunking bug."""
    ff = nn.FeedForward(16, d_ff, dropout=0.5, activation="relu")
    ff.load_state_dict({name: ef.tensor(rng.integers(-2, 3, size=p.shape).astype(np.float32))
                        for name, p in ff.state_dict().items()})
    x = rng.integers(-3, 4, size=(3, 50, 16)).astype(np.float32)
    upstream = rng.integers(-2, 3, size=(3, 50, 16)).astype(np.float32)
    results = {chunks: None for chunks in (1, 4, 7, 200)}
    for chunks in results:
        ff.chunks = chunks
        results[chunks] = run_ff(ff, x, upstream)
    y1, gx1, gw1, s1, after1 = results[1]
    assert (y1 != 0).any() and all((g != 0).any() for g in gw1.values())
    for chunks, (y, gx, gw, s, after) in results.items():
        np.testing.assert_array_equal(y, y1, err_msg=f"chunks={chunks}")
        np.testing.assert_array_equal(gx, gx1, err_msg=f"chunks={chunks}")
        for name in gw1:
            np.testing.assert_array_equal(gw[name], gw1[name], err_msg=f"{name}, chunks={chunks}")
        assert s == s1 and after == after1  # the generator ends where the unchunked run leaves it


@pytest.mark.parametrize("d_ff", [64, 66, 67])
def test_chunked_feed_forward_equals_unchunked_with_dropout(rng, d_ff):
    ff = nn.FeedForward(32, d_ff, dropout=0.25)
    x = rng.standard_normal((3, 50, 32)).astype(np.float32)
    upstream = rng.standard_normal((3, 50, 32)).astype(np.float32)
    results = {}
    for chunks in (1, 4, 7):
        ff.chunks = chunks
        results[chunks] = run_ff(ff, x, upstream)
    y1, gx1, gw1, s1, after1 = results[1]
    for chunks in (4, 7):
        y, gx, gw, s, after = results[chunks]
        # Same dropout masks; the GEMM may round a product of fewer rows differently (oneDNN picks its
        # blocking by size), so equal up to rounding order. A different mask would be off by O(1).
        for a, b, what in [(y, y1, "output"), (gx, gx1, "grad of x")] + [(gw[n], gw1[n], n) for n in gw1]:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max(), err_msg=what)
        assert s == s1 and after == after1


def test_chunked_feed_forward_without_grad_and_more_chunks_than_rows(rng):
    ff = nn.FeedForward(8, 16)
    x = ef.tensor(rng.standard_normal((1, 3, 8)).astype(np.float32))
    ref = ff(x).numpy()
    ff.chunks = 10
    with ef.no_grad():
        out = ff(x)
    assert not out.requires_grad
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ff(x).numpy(), ref, rtol=1e-5, atol=1e-6)


def peak_of_step(ff, x_np):
    x = ef.tensor(x_np, requires_grad=True)
    ef.empty_cache()
    base = ef.memory_stats()["live_bytes"]
    ef.reset_peak_memory_stats()
    y = ff(x)
    (y * y).sum().backward()
    peak = ef.memory_stats()["peak_bytes"] - base
    del y
    return peak


def test_chunked_feed_forward_lowers_peak_memory(rng):
    ff = nn.FeedForward(64, 1024)
    x = rng.standard_normal((1, 4096, 64)).astype(np.float32)  # the hidden: 16 MiB
    ff.chunks = 1
    plain = peak_of_step(ff, x)
    ff.chunks = 4
    chunked = peak_of_step(ff, x)
    hidden = 4096 * 1024 * 4
    assert plain > 2 * hidden  # fc1 output, activation output (and more) alive at once
    assert chunked < plain - hidden, (plain, chunked)


# ---- positions --------------------------------------------------------------------------------

def torch_rotary(x, offset=0, base=10000.0):
    """GPT-NeoX / rotate_half reference: x * cos + rotate_half(x) * sin."""
    n, d = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    theta = torch.outer(torch.arange(offset, offset + n, dtype=torch.float64), inv_freq)
    emb = torch.cat([theta, theta], dim=-1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


@pytest.mark.parametrize("offset,base", [(0, 10000.0), (37, 10000.0), (5, 500.0)])
def test_rotary_matches_torch_reference(rng, offset, base):
    from conftest import check
    check(lambda x: nn.apply_rotary(x, offset, base), lambda x: torch_rotary(x, offset, base),
          [rng.standard_normal((2, 3, 11, 16))], rng)


def test_rotary_offset_equals_slice_of_full_sequence(rng):
    x = ef.tensor(rng.standard_normal((1, 2, 12, 8)).astype(np.float32))
    full = nn.apply_rotary(x).numpy()
    tail = nn.apply_rotary(x[:, :, 9:], offset=9).numpy()
    np.testing.assert_allclose(tail, full[:, :, 9:], rtol=1e-6, atol=1e-6)


def test_rotary_scores_depend_only_on_relative_position(rng):
    d = 32
    q = ef.tensor(rng.standard_normal((1, 1, 1, d)).astype(np.float32))
    k = ef.tensor(rng.standard_normal((1, 1, 1, d)).astype(np.float32))

    def score(m, n):
        return float((nn.apply_rotary(q, m).numpy() * nn.apply_rotary(k, n).numpy()).sum())

    for m, n in [(3, 1), (10, 10), (0, 7)]:
        for shift in (1, 50, 1000):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-4, abs=1e-4)
    # q = e_0 and k = e_{d/2} (a pair at the fastest frequency, theta = pos): the score is
    # sin(m - n), odd in m - n, which also pins the direction of the rotation.
    eq = np.zeros((1, 1, 1, d), dtype=np.float32)
    ek = eq.copy()
    eq[..., 0], ek[..., d // 2] = 1, 1
    q, k = ef.tensor(eq), ef.tensor(ek)
    for m, n in [(3, 1), (1, 3), (40, 7)]:
        assert score(m, n) == pytest.approx(math.sin(m - n), abs=1e-5)


def test_rotary_errors():
    with pytest.raises(ValueError, match=r"d = 7 .*even"):
        nn.apply_rotary(ef.zeros(1, 1, 4, 7))
    with pytest.raises(ValueError, match="position_offset = -1"):
        nn.apply_rotary(ef.zeros(1, 1, 4, 8), -1)
    with pytest.raises(ValueError, match="base"):
        nn.apply_rotary(ef.zeros(1, 1, 4, 8), 0, 0.0)


@pytest.mark.parametrize("n,d", [(50, 16), (7, 5), (0, 4)])
def test_sinusoidal_positions_follow_the_formula(n, d):
    pe = nn.sinusoidal_positions(n, d).numpy()
    assert pe.shape == (n, d)
    pos = np.arange(n)[:, None]
    two_i = np.arange(0, d, 2)[None, :]
    angle = pos / 10000.0 ** (two_i / d)
    np.testing.assert_allclose(pe[:, 0::2], np.sin(angle), atol=1e-6)
    np.testing.assert_allclose(pe[:, 1::2], np.cos(angle)[:, : d // 2], atol=1e-6)


# ---- naming, state dicts, files ---------------------------------------------------------------

def test_named_parameters_and_attributes():
    ff = nn.FeedForward(4, 8)
    assert [n for n, _ in ff.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert ff.num_parameters() == 4 * 8 + 8 + 8 * 4 + 4
    assert len(ff.parameters()) == 4 and all(p.requires_grad for p in ff.parameters())
    assert isinstance(ff.fc1, nn.Linear) and ff.fc1.out_features == 8
    assert ff.fc1.weight.shape == (8, 4) and ff.fc2.bias.shape == (4,)
    assert list(ff.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert "FeedForward(d_model=4, d_ff=8" in repr(ff)
    with pytest.raises(AttributeError, match="fc3"):
        ff.fc3
    blocks = nn.ModuleList([nn.Linear(2, 2), nn.LayerNorm(2)])
    assert len(blocks) == 2 and isinstance(blocks[-1], nn.LayerNorm)
    assert [n for n, _ in blocks.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert nn.utils.clip_grad_norm_ is ef.clip_grad_norm_


def test_state_dict_round_trip_through_safetensors(tmp_path):
    ef.manual_seed(1)
    a = nn.FeedForward(6, 10)
    ef.manual_seed(2)
    b = nn.FeedForward(6, 10)
    held = b.fc1.weight  # e.g. an optimizer's handle: sees the loaded values
    path = tmp_path / "ff.safetensors"
    a.save(path)
    assert set(ef.load_safetensors(path)) == set(a.state_dict())
    b.load(path)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(pa.numpy(), pb.numpy(), err_msg=name)
    np.testing.assert_array_equal(held.numpy(), a.fc1.weight.numpy())
    # Interoperates with torch: the same names and [out, in] layout.
    ref = torch.nn.Linear(6, 10)
    ref.load_state_dict({k[4:]: torch.tensor(v.numpy()) for k, v in a.state_dict().items() if k.startswith("fc1.")})
    x = np.ones((1, 6), dtype=np.float32)
    np.testing.assert_allclose(ref(torch.tensor(x, dtype=torch.float64)).detach().numpy(), a.fc1(ef.tensor(x)).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_load_state_dict_errors():
    ff = nn.FeedForward(4, 8)
    sd = {k: v.clone() for k, v in ff.state_dict().items()}
    before = ff.fc1.weight.numpy().copy()
    missing = {k: v for k, v in sd.items() if k != "fc2.bias"}
    with pytest.raises(ValueError, match=r"missing 1 \['fc2.bias'\]"):
        ff.load_state_dict(missing)
    unexpected = dict(sd, **{"fc3.weight": ef.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected 1 \['fc3.weight'\]"):
        ff.load_state_dict(unexpected)
    both = dict(missing, **{"fc3.weight": ef.zeros(2)})
    with pytest.raises(ValueError, match=r"missing 1 \['fc2.bias'\].*unexpected 1 \['fc3.weight'\]"):
        ff.load_state_dict(both)
    wrong = dict(sd, **{"fc1.weight": ef.zeros(4, 8)})
    with pytest.raises(ValueError, match=r"'fc1.weight' expects shape \[8, 4\], found \[4, 8\]"):
        ff.load_state_dict(wrong)
    with pytest.raises(ValueError, match=r"'fc1.weight' expects shape"):
        ff.load_state_dict(wrong, strict=False)  # shapes are checked even when not strict
    np.testing.assert_array_equal(ff.fc1.weight.numpy(), before)  # nothing was copied by a failed load
    # strict=False loads what matches and ignores the rest.
    ff.load_state_dict(dict(missing, **{"fc3.weight": ef.zeros(2), "fc1.weight": ef.zeros(8, 4)}), strict=False)
    assert (ff.fc1.weight.numpy() == 0).all()
    with pytest.raises(OSError):
        ff.load("/nonexistent/ff.safetensors")


# ---- initialisation ---------------------------------------------------------------------------

def test_linear_init_range_and_moments():
    ef.manual_seed(0)
    lin = nn.Linear(256, 512)
    bound = 1 / math.sqrt(256)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # the whole range is used
    # U(-b, b): mean 0, variance b^2 / 3. 131072 draws: the sample mean has sd b / 627.
    assert abs(w.mean()) < bound / 100
    assert w.var() == pytest.approx(bound**2 / 3, rel=0.02)


def test_embedding_and_positions_init_are_standard_normal():
    ef.manual_seed(0)
    for w in (nn.Embedding(1000, 64).weight.numpy(), nn.LearnedPositions(1000, 64).weight.numpy()):
        assert abs(w.mean()) < 0.02 and w.std() == pytest.approx(1.0, rel=0.02)  # 64000 draws
    ln = nn.LayerNorm(5)
    np.testing.assert_array_equal(ln.weight.numpy(), np.ones(5))
    np.testing.assert_array_equal(ln.bias.numpy(), np.zeros(5))


def test_same_seed_same_init():
    def make():
        return nn.FeedForward(8, 16).state_dict()

    ef.manual_seed(42)
    a = make()
    ef.manual_seed(42)
    b = make()
    ef.manual_seed(43)
    c = make()
    for name in a:
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
        assert not np.array_equal(a[name].numpy(), c[name].numpy())


# ---- argument errors --------------------------------------------------------------------------

def test_argument_errors_name_module_value_and_expectation():
    with pytest.raises(ValueError, match=r"Linear: in_features = 0 .*> 0"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match=r"Linear\(in=4, out=3, bias=true\): input .* last dim 5; expected 4"):
        nn.Linear(4, 3)(ef.zeros(2, 5))
    with pytest.raises(ValueError, match=r"LayerNorm\(d=4.*last dim 3; expected 4"):
        nn.LayerNorm(4)(ef.zeros(2, 3))
    with pytest.raises(ValueError, match=r"Embedding: num_embeddings = -2"):
        nn.Embedding(-2, 3)
    with pytest.raises(ValueError, match=r"ids have dtype float32; expected int64"):
        nn.Embedding(4, 3)(ef.zeros(2))
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"Dropout: p = .* is outside \[0, 1\)"):
            nn.Dropout(p)
    with pytest.raises(ValueError, match=r"FeedForward: dropout = 1 is outside"):
        nn.FeedForward(4, 8, dropout=1.0)
    with pytest.raises(ValueError, match=r"unknown name 'swish'; expected one of gelu, gelu_tanh, relu"):
        nn.FeedForward(4, 8, activation="swish")
    with pytest.raises(ValueError, match=r"chunks = 0; expected chunks >= 1"):
        nn.FeedForward(4, 8).chunks = 0
    with pytest.raises(ValueError, match=r"FeedForward\(d_model=4.*last dim 6; expected d_model = 4"):
        nn.FeedForward(4, 8)(ef.zeros(1, 2, 6))
    with pytest.raises(ValueError, match=r"LearnedPositions: max_len = 0"):
        nn.LearnedPositions(0, 4)
    with pytest.raises(ValueError, match=r"sinusoidal_positions: n = 3 and d = 0"):
        nn.sinusoidal_positions(3, 0)
