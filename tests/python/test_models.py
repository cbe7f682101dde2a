"""eformer.models against PyTorch float64 references written here with plain torch ops (same
architecture, weights read back from eformer's safetensors file): decoder LMs in every
position/LN/tying/mechanism combination, causal leaks, incremental decoding, per-layer mechanism
overrides, the encoder classifier and the encoder-decoder with key masks, the mechanism registry
and strict config parsing."""
import json
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eformer as ef
from conftest import assert_close
from references import torch_pma

models = ef.models
torch.set_default_dtype(torch.float64)

# The mechanisms a decoder can use (a bidirectional-only one, such as isab, is refused there).
CAUSAL_KINDS = [e["name"] for e in ef.mechanisms() if e["capabilities"]["causal"]]
SMALL = dict(vocab_size=256, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=16, dropout=0.0)


def make_config(**overrides):
    c = dict(SMALL)
    c.update(overrides)
    return models.ModelConfig(c)


# ---- weights: safetensors written by eformer, read by a pure-Python reader ----------------------

def read_safetensors(path):
    """name -> float64 numpy array; the format: u64 header length, JSON header, raw data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    dtypes = {"F32": np.float32, "I64": np.int64, "BOOL": np.bool_}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[8 + n + begin:8 + n + end]
        out[name] = np.frombuffer(raw, dtype=dtypes[info["dtype"]]).reshape(info["shape"]).astype(np.float64)
    return out


def randomize(model, rng, scale=0.3):
    """Random weights everywhere (LayerNorms near 1), so every parameter matters."""
    state = {}
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.split(".")[-2].startswith("ln") and name.endswith("weight"):
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            v = scale * rng.standard_normal(shape)
        state[name] = ef.tensor(v.astype(np.float32))
    model.load_state_dict(state, strict=False)  # buffers (e.g. the Performer's omega) keep their values


def torch_params(model, tmp_path):
    path = tmp_path / "model.safetensors"
    model.save(path)
    arrays = read_safetensors(path)
    assert sorted(arrays) == sorted(n for n, _ in model.named_parameters())
    return {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}


def compare_grads(model, params, rtol=2e-3):
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        g, t = p.grad.numpy().astype(np.float64), params[name].grad.numpy()
        err = np.max(np.abs(g - t))
        assert err <= rtol * max(np.max(np.abs(t)), 1e-3), f"grad of {name}: max err {err}, max {np.max(np.abs(t))}"


# ---- the torch reference ------------------------------------------------------------------------

def rotary(x, offset=0, base=10000.0):
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    theta = (offset + torch.arange(x.shape[-2], dtype=torch.float64))[:, None] * inv[None, :]
    cos, sin = torch.cat([theta.cos(), theta.cos()], -1), torch.cat([theta.sin(), theta.sin()], -1)
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def sinusoidal(n, d):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(0, d, 2, dtype=torch.float64)
    angle = pos / 10000 ** (i / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = angle.sin()
    pe[:, 1::2] = angle.cos()[:, : d // 2]
    return pe


def linear(p, prefix, x):
    y = x @ p[prefix + ".weight"].T
    return y + p[prefix + ".bias"] if prefix + ".bias" in p else y


def layer_norm(p, prefix, x):
    return F.layer_norm(x, (x.shape[-1],), p[prefix + ".weight"], p[prefix + ".bias"], eps=1e-5)


def mha(p, prefix, x, H, memory=None, causal=False, rope=False, key_mask=None):
    src = x if memory is None else memory
    B, N, D = x.shape
    M, d = src.shape[1], D // H
    q = linear(p, prefix + ".q_proj", x).view(B, N, H, d).transpose(1, 2)
    k = linear(p, prefix + ".k_proj", src).view(B, M, H, d).transpose(1, 2)
    v = linear(p, prefix + ".v_proj", src).view(B, M, H, d).transpose(1, 2)
    if rope:
        q, k = rotary(q), rotary(k)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    allowed = torch.ones(N, M, dtype=torch.bool)
    if causal:
        allowed = torch.arange(M)[None, :] <= torch.arange(N)[:, None] + (M - N)
    allowed = allowed[None, None].expand(B, 1, N, M)
    if key_mask is not None:
        allowed = allowed & torch.tensor(key_mask)[:, None, None, :]
    a = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
    o = (a @ v).transpose(1, 2).reshape(B, N, D)
    return linear(p, prefix + ".out_proj", o)


def block(p, prefix, x, c, causal, key_mask=None, memory=None, memory_mask=None):
    rope = c["positions"] == "rotary"
    H = c["n_heads"]
    mixers = [("ln1", lambda y: mha(p, prefix + ".attn", y, H, causal=causal, rope=rope, key_mask=key_mask))]
    if memory is not None:
        mixers.append(("ln_cross", lambda y: mha(p, prefix + ".cross_attn", y, H, memory=memory,
                                                 key_mask=memory_mask)))
    mixers.append(("ln2", lambda y: linear(p, prefix + ".ffn.fc2", F.gelu(linear(p, prefix + ".ffn.fc1", y)))))
    for ln, f in mixers:
        if c["pre_ln"]:
            x = x + f(layer_norm(p, prefix + "." + ln, x))
        else:
            x = layer_norm(p, prefix + "." + ln, x + f(x))
    return x


def embed(p, prefix, ids, c):
    x = p[prefix + ".tokens.weight"][torch.tensor(ids)]
    N = ids.shape[1]
    if c["positions"] == "learned":
        x = x + p[prefix + ".positions.weight"][:N]
    elif c["positions"] == "sinusoidal":
        x = x + sinusoidal(N, c["d_model"])
    return x


def lm_head(p, h, c, embed_name):
    if c["pre_ln"]:
        h = layer_norm(p, "ln_f", h)
    w = p[embed_name] if c["tie_weights"] else p["head.weight"]
    return h @ w.T


def torch_lm(p, ids, c):
    h = embed(p, "embed", ids, c)
    for i in range(c["n_layers"]):
        h = block(p, f"blocks.{i}", h, c, causal=True)
    return lm_head(p, h, c, "embed.tokens.weight")


def torch_encoder(p, prefix, ids, c, n_layers, key_mask=None):
    h = embed(p, prefix + ".embed", ids, c)
    for i in range(n_layers):
        h = block(p, f"{prefix}.blocks.{i}", h, c, causal=False, key_mask=key_mask)
    return layer_norm(p, prefix + ".ln_f", h) if c["pre_ln"] else h


# ---- the decoder LM -----------------------------------------------------------------------------

LM_CASES = [
    dict(pre_ln=True, positions="learned", tie_weights=True, attention="flash"),
    dict(pre_ln=True, positions="learned", tie_weights=False, attention="full"),
    dict(pre_ln=False, positions="learned", tie_weights=True, attention="full"),
    dict(pre_ln=False, positions="sinusoidal", tie_weights=False, attention="flash"),
    dict(pre_ln=True, positions="sinusoidal", tie_weights=True, attention="full"),
    dict(pre_ln=True, positions="rotary", tie_weights=True, attention="flash"),
    dict(pre_ln=True, positions="rotary", tie_weights=False, attention="full"),
    dict(pre_ln=False, positions="rotary", tie_weights=True, attention="flash"),
]


@pytest.mark.parametrize("case", LM_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_language_model_matches_torch(rng, tmp_path, case):
    config = make_config(**case)
    model = models.LanguageModel(config)
    randomize(model, rng)
    c = config.to_dict()
    ids = rng.integers(0, 256, size=(2, 16))
    targets = rng.integers(0, 256, size=(2, 16))
    p = torch_params(model, tmp_path)

    logits = model(ef.tensor(ids))
    t_logits = torch_lm(p, ids, c)
    assert_close(logits.numpy(), t_logits.detach().numpy(), 1e-4, 1e-5, "logits")

    loss = model.loss(ef.tensor(ids), ef.tensor(targets))
    t_loss = F.cross_entropy(t_logits.reshape(-1, 256), torch.tensor(targets).reshape(-1))
    assert abs(loss.item() - t_loss.item()) <= 1e-4 * max(1.0, abs(t_loss.item()))
    loss.backward()
    t_loss.backward()
    compare_grads(model, p)


def test_lm_shorter_sequence_and_max_len(rng):
    model = models.LanguageModel(make_config())
    assert tuple(model(ef.tensor(rng.integers(0, 256, size=(3, 5)))).shape) == (3, 5, 256)
    with pytest.raises(ValueError, match="max_len"):
        model(ef.tensor(rng.integers(0, 256, size=(1, 17))))


def test_lm_parameter_names(rng):
    untied = models.LanguageModel(make_config(tie_weights=False, positions="learned"))
    names = [n for n, _ in untied.named_parameters()]
    assert names[:2] == ["embed.tokens.weight", "embed.positions.weight"]
    assert "blocks.1.attn.q_proj.weight" in names and "ln_f.weight" in names and names[-1] == "head.weight"
    tied = models.LanguageModel(make_config(pre_ln=False, positions="rotary"))
    names = [n for n, _ in tied.named_parameters()]
    assert "head.weight" not in names and "ln_f.weight" not in names and "embed.positions.weight" not in names


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_causal_no_leak(rng, kind, positions):
    model = models.LanguageModel(make_config(attention=kind, positions=positions))
    randomize(model, rng)
    ids = rng.integers(0, 256, size=(2, 16))
    ef.manual_seed(1)  # every call draws alike (lsh draws its rotations in each training forward)
    base = model(ef.tensor(ids)).numpy()
    for t in [0, 5, 14]:
        changed = ids.copy()
        changed[:, t + 1:] = rng.integers(0, 256, size=(2, 15 - t))
        ef.manual_seed(1)
        out = model(ef.tensor(changed)).numpy()
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1], err_msg=f"leak into position <= {t}")
        assert not np.array_equal(out[:, t + 1:], base[:, t + 1:])


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
@pytest.mark.parametrize("positions", ["learned", "rotary", "sinusoidal"])
@pytest.mark.parametrize("chunks", [[1] * 16, [3, 5, 1, 7]])
def test_incremental_decoding_matches_forward(rng, kind, positions, chunks):
    model = models.LanguageModel(make_config(attention=kind, positions=positions, pre_ln=positions != "sinusoidal"))
    randomize(model, rng)
    model.eval()
    ids = rng.integers(0, 256, size=(2, 16))
    with ef.no_grad():
        full = model(ef.tensor(ids)).numpy()
        state = model.start_decoding(2)
        outs, pos = [], 0
        for n in chunks:
            outs.append(model.step(state, ef.tensor(np.ascontiguousarray(ids[:, pos:pos + n]))).numpy())
            pos += n
            assert state.position == pos
    assert_close(np.concatenate(outs, axis=1), full, 1e-4, 1e-5, "incremental logits")


def test_ffn_chunks_and_dropout(rng):
    """Chunked feed-forward changes nothing; dropout is active in training mode only and replayable."""
    plain = models.LanguageModel(make_config(dropout=0.2))
    chunked = models.LanguageModel(make_config(dropout=0.2, ffn_chunks=4))
    randomize(plain, rng)
    chunked.load_state_dict(plain.state_dict())
    ids, targets = ef.tensor(rng.integers(0, 256, size=(2, 16))), ef.tensor(rng.integers(0, 256, size=(2, 16)))
    ef.manual_seed(7)
    a = plain.loss(ids, targets).item()
    ef.manual_seed(7)
    b = chunked.loss(ids, targets).item()
    ef.manual_seed(8)
    c = plain.loss(ids, targets).item()
    assert abs(a - b) <= 1e-5 * abs(a) and a != c
    plain.eval()
    chunked.eval()
    assert_close(plain(ids).numpy(), chunked(ids).numpy(), 1e-5, 1e-5, "eval")
    np.testing.assert_array_equal(plain(ids).numpy(), plain(ids).numpy())


def test_decoding_past_max_len_with_learned_positions(rng):
    model = models.LanguageModel(make_config())
    state = model.start_decoding(1)
    with ef.no_grad():
        model.step(state, ef.tensor(rng.integers(0, 256, size=(1, 16))))
        with pytest.raises(IndexError, match="max_len"):
            model.step(state, ef.tensor(rng.integers(0, 256, size=(1, 1))))


def test_per_layer_mechanism_override(rng):
    mixed = models.LanguageModel(make_config(layer_attention=["full", {"kind": "flash"}]))
    flash = models.LanguageModel(make_config(attention="full", layer_attention=["flash", "flash"]))
    assert [b.attn.kind for b in mixed.blocks] == ["full", "flash"]
    assert [b.attn.kind for b in flash.blocks] == ["flash", "flash"]
    randomize(mixed, rng)
    flash.load_state_dict(mixed.state_dict())
    ids = ef.tensor(rng.integers(0, 256, size=(2, 16)))
    assert_close(mixed(ids).numpy(), flash(ids).numpy(), 1e-5, 1e-5, "full+flash vs flash+flash")


# ---- encoder models -----------------------------------------------------------------------------

def padding_mask(rng, B, N):
    lengths = rng.integers(3, N + 1, size=B)
    lengths[0] = N - 2
    return np.arange(N)[None, :] < lengths[:, None]


@pytest.mark.parametrize("case", [dict(pre_ln=True, positions="learned", attention="flash"),
                                  dict(pre_ln=False, positions="rotary", attention="full"),
                                  dict(pre_ln=True, positions="learned", attention="flash", pooling="pma")])
def test_sequence_classifier_matches_torch(rng, tmp_path, case):
    config = make_config(arch="encoder", num_classes=5, **case)
    model = models.SequenceClassifier(config)
    randomize(model, rng)
    c = config.to_dict()
    ids = rng.integers(0, 256, size=(3, 12))
    mask = padding_mask(rng, 3, 12)
    labels = rng.integers(0, 5, size=3)
    p = torch_params(model, tmp_path)

    h = torch_encoder(p, "encoder", ids, c, c["n_layers"], key_mask=mask)
    m = torch.tensor(mask, dtype=torch.float64)[:, :, None]
    pooled = torch_pma(p, "pool.", h, mask, c["n_heads"]) if c["pooling"] == "pma" else (h * m).sum(1) / m.sum(1)
    t_logits = linear(p, "classifier", pooled)
    logits = model(ef.tensor(ids), ef.tensor(mask))
    assert_close(logits.numpy(), t_logits.detach().numpy(), 1e-4, 1e-5, "class logits")

    t_loss = F.cross_entropy(t_logits, torch.tensor(labels))
    loss = model.loss(ef.tensor(ids), ef.tensor(labels), ef.tensor(mask))
    assert abs(loss.item() - t_loss.item()) <= 1e-4 * max(1.0, abs(t_loss.item()))
    loss.backward()
    t_loss.backward()
    compare_grads(model, p)

    # Padded tokens do not matter.
    changed = ids.copy()
    changed[~mask] = rng.integers(0, 256, size=int((~mask).sum()))
    assert_close(model(ef.tensor(changed), ef.tensor(mask)).numpy(), logits.numpy(), 1e-6, 1e-6, "padding")


@pytest.mark.parametrize("case", [dict(pre_ln=True, positions="learned", tie_weights=True, attention="flash"),
                                  dict(pre_ln=False, positions="rotary", tie_weights=False, attention="full")])
def test_encoder_decoder_matches_torch(rng, tmp_path, case):
    config = make_config(arch="encoder-decoder", n_encoder_layers=2, **case)
    model = models.EncoderDecoder(config)
    randomize(model, rng)
    c = config.to_dict()
    src = rng.integers(0, 256, size=(2, 10))
    mask = padding_mask(rng, 2, 10)
    tgt_in = rng.integers(0, 256, size=(2, 8))
    tgt_out = rng.integers(0, 256, size=(2, 8))
    p = torch_params(model, tmp_path)

    memory = torch_encoder(p, "encoder", src, c, 2, key_mask=mask)
    h = embed(p, "encoder.embed", tgt_in, c)
    for i in range(c["n_layers"]):
        h = block(p, f"decoder.{i}", h, c, causal=True, memory=memory, memory_mask=mask)
    t_logits = lm_head(p, h, c, "encoder.embed.tokens.weight")
    logits = model(ef.tensor(src), ef.tensor(tgt_in), ef.tensor(mask))
    assert_close(logits.numpy(), t_logits.detach().numpy(), 1e-4, 1e-5, "logits")

    t_loss = F.cross_entropy(t_logits.reshape(-1, 256), torch.tensor(tgt_out).reshape(-1))
    loss = model.loss(ef.tensor(src), ef.tensor(tgt_in), ef.tensor(tgt_out), ef.tensor(mask))
    assert abs(loss.item() - t_loss.item()) <= 1e-4 * max(1.0, abs(t_loss.item()))
    loss.backward()
    t_loss.backward()
    compare_grads(model, p)

    changed = src.copy()
    changed[~mask] = rng.integers(0, 256, size=int((~mask).sum()))
    assert_close(model(ef.tensor(changed), ef.tensor(tgt_in), ef.tensor(mask)).numpy(), logits.numpy(), 1e-6, 1e-6,
                 "padding")


# ---- the mechanism registry ---------------------------------------------------------------------

def test_mechanism_registry():
    assert models.mechanism_names()[:2] == ["full", "flash"]
    with pytest.raises(ValueError, match=r"unknown name 'nope'.*full, flash"):
        models.make_mechanism("nope", 32, 4)
    with pytest.raises(ValueError, match=r"unknown option 'window'.*rotary, rotary_base"):
        models.make_mechanism("flash", 32, 4, options={"window": 3})
    with pytest.raises(ValueError, match="rotary"):
        models.make_mechanism("flash", 32, 4, options={"rotary": 1})
    with pytest.raises(ValueError, match="divisible"):
        models.make_mechanism("full", 30, 4)
    mech = models.make_mechanism("full", 32, 4, causal=True)
    caps = mech.capabilities()
    assert all(caps[c] for c in ("causal", "bidirectional", "cross", "padding_mask", "recurrent"))
    assert not caps["fixed_length"] and mech.name == "full" and mech.streaming_path == "native"
    assert "MultiHeadAttention(kind=full" in repr(mech)


@pytest.mark.parametrize("kind", ["full", "flash"])
@pytest.mark.parametrize("mode", ["causal", "bidirectional-masked", "cross", "rotary"])
def test_mechanism_matches_torch(rng, kind, mode):
    cross, causal, rope = mode == "cross", mode == "causal" or mode == "rotary", mode == "rotary"
    mech = models.make_mechanism(kind, 32, 4, causal=causal, cross=cross, options={"rotary": rope})
    x = rng.standard_normal((2, 7, 32))
    memory = rng.standard_normal((2, 9, 32)) if cross else None
    mask = None
    if mode != "causal" and mode != "rotary":
        mask = padding_mask(rng, 2, 9 if cross else 7)
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in mech.named_parameters()}
    e_x = ef.tensor(x.astype(np.float32), requires_grad=True)
    t_x = torch.tensor(x, requires_grad=True)
    e_mem = ef.tensor(memory.astype(np.float32), requires_grad=True) if cross else None
    t_mem = torch.tensor(memory, requires_grad=True) if cross else None
    out = mech(e_x, e_mem, None if mask is None else ef.tensor(mask))
    t_out = mha({"." + k: v for k, v in p.items()}, "", t_x, 4, memory=t_mem, causal=causal, rope=rope,
                key_mask=mask)
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal(t_out.shape)
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_x.grad.numpy(), t_x.grad.numpy(), 1e-3, 1e-4, "grad x")
    if cross:
        assert_close(e_mem.grad.numpy(), t_mem.grad.numpy(), 1e-3, 1e-4, "grad memory")
    for n, t in mech.named_parameters():
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"grad {n}")


# The rotary, cross-capable mechanisms (the contract suite streams every causal one).
@pytest.mark.parametrize("kind", [e["name"] for e in ef.mechanisms()
                                  if e["capabilities"]["cross"] and any(o["name"] == "rotary" for o in e["options"])])
def test_mechanism_step_matches_causal_forward(rng, kind):
    mech = models.make_mechanism(kind, 32, 4, causal=True, options={"rotary": True})
    x = rng.standard_normal((2, 10, 32)).astype(np.float32)
    with ef.no_grad():
        full = mech(ef.tensor(x)).numpy()
        state = mech.start(2)
        outs = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy()
                for a, b in [(0, 1), (1, 4), (4, 5), (5, 10)]]
    assert state.length == 10
    assert_close(np.concatenate(outs, 1), full, 1e-4, 1e-5, "step vs forward")
    if not next(e for e in ef.mechanisms() if e["name"] == kind)["capabilities"]["cross"]:
        with pytest.raises(ValueError, match="cannot be cross-attention"):
            models.make_mechanism(kind, 32, 4, cross=True)
        return
    cross = models.make_mechanism(kind, 32, 4, cross=True)
    with pytest.raises(ValueError, match="cross-attention"):
        cross.start(2)
    with pytest.raises(ValueError, match="memory"):
        cross(ef.tensor(x))


# ---- configs --------------------------------------------------------------------------------------

def test_config_round_trip():
    c = make_config(positions="rotary", pre_ln=False, layer_attention=["full", {"kind": "flash", "options": {}}],
                    dropout=0.1)
    text = c.to_json()
    assert json.loads(text)["dropout"] == 0.1
    again = models.config_from_json(text)
    assert again == c and again.to_json() == text and models.to_json(again) == text
    assert again.attention_for_layer(0) == {"kind": "full", "options": {}}
    assert models.ModelConfig().d_model == 256  # defaults
    assert models.ModelConfig('{"d_model": 64}', n_heads=8).n_heads == 8


@pytest.mark.parametrize("bad, key", [
    (dict(colour="red"), "colour"),
    (dict(d_model=30), "d_model"),
    (dict(d_model="32"), "d_model"),
    (dict(n_layers=0), "n_layers"),
    (dict(n_heads=0), "n_heads"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(max_len=2.5), "max_len"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(dropout="x"), "dropout"),
    (dict(arch="rnn"), "arch"),
    (dict(positions="alibi"), "positions"),
    (dict(pre_ln=1), "pre_ln"),
    (dict(tie_weights="yes"), "tie_weights"),
    (dict(activation="swish"), "activation"),
    (dict(ffn_chunks=0), "ffn_chunks"),
    (dict(layer_attention=["flash"]), "layer_attention"),
    (dict(layer_attention="flash"), "layer_attention"),
    (dict(attention="nope"), "attention.kind"),
    (dict(attention={"kind": "flash", "opts": {}}), "attention.opts"),
    (dict(layer_attention=["flash", "nope"]), "layer_attention[1].kind"),
    (dict(arch="encoder"), "num_classes"),
    (dict(num_classes=3), "num_classes"),
    (dict(arch="encoder-decoder"), "n_encoder_layers"),
    (dict(n_encoder_layers=2), "n_encoder_layers"),
    (dict(positions="rotary", d_model=36, n_heads=4), "rotary"),
])
def test_invalid_configs(bad, key):
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        make_config(**bad)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="valid keys: arch, vocab_size, d_model"):
        models.config_from_json('{"layers": 3}')


def test_models_reject_wrong_arch():
    with pytest.raises(ValueError, match="arch"):
        models.LanguageModel(make_config(arch="encoder", num_classes=2))
    with pytest.raises(ValueError, match="arch"):
        models.SequenceClassifier(make_config())
    models.LanguageModel(SMALL)  # a dict works too
