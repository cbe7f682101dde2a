"""The registry-driven contract suite, Python side: every mechanism in eformer.mechanisms(), for each
capability it declares, against its float64 PyTorch reference (references.py, keyed by the entry's
`reference`), with no line written here per mechanism:
  - the functional form (forward, q/k/v gradients), causal and bidirectional, padded, N != M;
  - the module (projections included): forward, input and every parameter gradient, in each mode;
  - causal leak, streaming step == parallel pass, attention dropout statistics.
The C++ side (tests/attention/contract_test.cpp) adds threads, recomputation and checkpoints.
"""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check
from references import REFERENCES

models = ef.models
ENTRIES = {e["name"]: e for e in ef.mechanisms()}
NAMES = list(ENTRIES)


def modes(entry, cross=False):
    caps = entry["capabilities"]
    out = [m for m in ("bidirectional", "causal") if caps[m]]
    return out + (["cross"] if cross and caps["cross"] else [])


def random_padding(rng, B, M):
    """1..M real tokens followed by padding, per batch row; row 0 keeps every key."""
    mask = np.arange(M)[None, :] < rng.integers(1, M + 1, size=B)[:, None]
    mask[0] = True
    return mask


@pytest.mark.parametrize("name", NAMES)
def test_every_mechanism_has_a_reference(name):
    entry = ENTRIES[name]
    assert entry["reference"] in REFERENCES, (
        f"{name} declares reference {entry['reference']!r}; add its float64 formulation to references.py")
    assert entry["description"] and (entry["functional"] or entry["reference"] != "softmax-pattern")


@pytest.mark.parametrize("name", [n for n in NAMES if ENTRIES[n]["functional"]])
def test_functional_form_matches_the_float64_reference(rng, name):
    entry, ref = ENTRIES[name], REFERENCES[ENTRIES[name]["reference"]]
    B, H, d = 2, 3, 8
    for mode in modes(entry):
        causal = mode == "causal"
        # N != M only where keys may come from elsewhere (self-attention-only mechanisms need N == M).
        for N, M in ([(37, 37)] if causal or not entry["capabilities"]["cross"] else [(37, 37), (20, 45)]):
            masked = entry["capabilities"]["padding_mask"]
            km = random_padding(rng, B, M) if masked else None
            kwargs, ctx = ref.functional_kwargs(entry, d, rng, dict(B=B, H=H, N=N, M=M, causal=causal))
            q, k, v = rng.standard_normal((B, H, N, d)), rng.standard_normal((B, H, M, d)), \
                rng.standard_normal((B, H, M, d))
            check(lambda q, k, v: ef.attention(q, k, v, kind=name, causal=causal,
                                               key_mask=None if km is None else ef.tensor(km), **kwargs),
                  lambda q, k, v: ref.heads(entry, q, k, v, causal, km, ctx), [q, k, v], rng)


@pytest.mark.parametrize("name", NAMES)
def test_module_matches_the_float64_reference(rng, name):
    entry, ref = ENTRIES[name], REFERENCES[ENTRIES[name]["reference"]]
    B, N, D, H = 2, 29, 32, 4
    for mode in modes(entry, cross=True):
        causal, cross = mode == "causal", mode == "cross"
        M = 17 if cross else N
        mech = models.make_mechanism(name, D, H, causal=causal, cross=cross, max_len=64)
        params = dict(mech.named_parameters())
        if not {"v_proj.weight", "out_proj.weight"} <= set(params):
            pytest.fail(f"{name}: the module reference projects with q/k/v/out_proj; "
                        f"add a module formulation for parameters {sorted(params)}")
        p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in params.items()}
        ctx = ref.module_context(entry, mech, p)
        x = rng.standard_normal((B, N, D))
        memory = rng.standard_normal((B, M, D)) if cross else None
        km = random_padding(rng, B, M) if entry["capabilities"]["padding_mask"] else None

        def reference(x, memory):
            def heads(prefix, src):
                y = src @ p[prefix + ".weight"].T + p[prefix + ".bias"]
                return y.view(B, src.shape[1], H, -1).transpose(1, 2)
            src = x if memory is None else memory
            q = heads("q_proj", x) if "q_proj.weight" in p else None
            k = heads("k_proj", src) if "k_proj.weight" in p else heads("q_proj", src)
            o = ref.heads(entry, q, k, heads("v_proj", src), causal, km, ctx)
            return o.transpose(1, 2).reshape(B, N, -1) @ p["out_proj.weight"].T + p["out_proj.bias"]

        e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
        t_x = torch.tensor(x, requires_grad=True)
        e_mem = ef.tensor(memory.astype(np.float32), requires_grad=True) if cross else None
        t_mem = torch.tensor(memory, requires_grad=True) if cross else None
        out = mech(e_x, e_mem, None if km is None else ef.tensor(km))
        t_out = reference(t_x, t_mem)
        assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, f"{mode}: forward")
        up = rng.standard_normal(tuple(t_out.shape))
        out.backward(ef.tensor(up.astype(np.float32)))
        (t_out * torch.tensor(up)).sum().backward()
        assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, f"{mode}: grad x")
        if cross:
            assert_close(e_mem.grad.numpy(), t_mem.grad.numpy(), 1e-3, 1e-4, f"{mode}: grad memory")
        for n, t in params.items():
            assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"{mode}: grad {n}")


@pytest.mark.parametrize("name", [n for n in NAMES if ENTRIES[n]["capabilities"]["causal"]])
def test_causal_mechanisms_do_not_leak_and_stream(rng, name):
    D, N, t = 32, 40, 17
    mech = models.make_mechanism(name, D, 4, causal=True, max_len=64, positions="rotary")
    mech.eval()
    x = rng.standard_normal((2, N, D)).astype(np.float32)
    with ef.no_grad():
        base = mech(ef.tensor(x)).numpy()
        changed = x.copy()
        changed[:, t + 1:] += 10 * rng.standard_normal(changed[:, t + 1:].shape).astype(np.float32)
        out = mech(ef.tensor(changed)).numpy()
        assert np.array_equal(out[:, :t + 1], base[:, :t + 1]), "past outputs moved with future tokens"
        assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3
        state = mech.start(2)
        pieces = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy()
                  for a, b in [(0, 1), (1, 2), (2, 9), (9, 40)]]
    assert_close(np.concatenate(pieces, 1), base, 1e-5, 1e-5, f"step ({mech.streaming_path}) vs forward")
    assert (mech.streaming_path == "native") == ENTRIES[name]["capabilities"]["recurrent"]


@pytest.mark.parametrize("name", NAMES)
def test_attention_dropout_drops_or_is_refused(rng, name):
    D, N = 32, 64
    causal = ENTRIES[name]["capabilities"]["causal"]
    if not ENTRIES[name]["capabilities"]["dropout"]:
        with pytest.raises(ValueError, match="no attention probabilities to drop"):
            models.make_mechanism(name, D, 4, causal=causal, max_len=N, dropout=0.5)
        return
    mech = models.make_mechanism(name, D, 4, causal=causal, max_len=N, dropout=0.5)
    x = ef.tensor(rng.standard_normal((2, N, D)).astype(np.float32))
    mech.eval()
    with ef.no_grad():
        clean = mech(x).numpy()
        mech.train()
        ef.manual_seed(3)
        a = mech(x).numpy()
        ef.manual_seed(3)
        b = mech(x).numpy()
        ef.manual_seed(4)
        c = mech(x).numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.allclose(a, clean, atol=1e-3)
    # Dropout keeps the expectation: the mean over many draws approaches the clean output.
    with ef.no_grad():
        mean = np.mean([mech(x).numpy() for _ in range(200)], axis=0)
    err, spread = np.abs(mean - clean).mean(), np.abs(a - clean).mean()
    assert err < spread / 5, (err, spread)


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_and_patterns(name):
    entry = ENTRIES[name]
    with pytest.raises(ValueError, match=f"'{name}'.*unknown option 'no_such_option'"):
        models.make_mechanism(name, 32, 4, causal=entry["capabilities"]["causal"], max_len=16,
                              options={"no_such_option": 1})
    if entry["pattern"]:
        pattern = ef.attention_pattern(name, 9, 5, heads=2, causal=False)
        assert pattern.dtype == np.bool_ and pattern.shape == (2, 9, 5)
    else:
        with pytest.raises(ValueError, match="not pattern-based"):
            ef.attention_pattern(name, 9)
