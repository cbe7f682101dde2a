"""Transformer-XL (Dai et al. 2019) against float64 PyTorch formulations of the paper's equations,
written here without the relative-shift trick: every (query, key) pair gathers its encoding R_{i-j}.
The functional relative attention (forward and gradients), the relative shift, the encodings, and a
whole XL language model over two segments with the memory carried (logits and every parameter's
gradient); the Compressive Transformer over three segments (LM loss, attention-reconstruction loss,
gradients); streaming with memories equals the segment-by-segment pass; the CLI end to end."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eformer as ef
from conftest import assert_close, check
from test_models import compare_grads, layer_norm, linear, randomize, torch_params

torch.set_default_dtype(torch.float64)


def encodings(K, D):
    """R [K, D]: row p is the distance K-1-p; sin in the first D/2 columns, cos in the last."""
    dist = torch.arange(K - 1, -1, -1, dtype=torch.float64)[:, None]
    inv = 1.0 / 10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    return torch.cat([(dist * inv).sin(), (dist * inv).cos()], -1)


def relative_attention_ref(q, k, v, r, u, w, scale):
    """softmax(A) v with relative_probs_ref's scores."""
    return relative_probs_ref(q, k, r, u, w, scale) @ v


def relative_probs_ref(q, k, r, u, w, scale):
    """A_ij = q_i.k_j + q_i.W_R R_{i-j} + u.k_j + w.W_R R_{i-j} (sec. 3.3, terms (a)-(d)), causal;
    the attention probabilities softmax(A) [B, H, N, K]."""
    B, H, N, d = q.shape
    K = k.shape[2]
    M = K - N
    i = torch.arange(N)[:, None]
    j = torch.arange(K)[None, :]
    dist = (M + i - j).clamp(min=0)                     # i - j in absolute positions
    r_ij = r[:, (K - 1 - dist)]                         # [H, N, K, d]: the explicit gather
    a = torch.einsum("bhnd,bhkd->bhnk", q, k)
    b = torch.einsum("bhnd,hnkd->bhnk", q, r_ij)
    c = torch.einsum("hd,bhkd->bhk", u, k)[:, :, None, :]
    e = torch.einsum("hd,hnkd->hnk", w, r_ij)[None]
    scores = (a + b + c + e) * scale
    scores = scores.masked_fill(j > M + i, float("-inf"))
    return torch.softmax(scores, -1)


@pytest.mark.parametrize("N,M", [(5, 0), (4, 6), (7, 3), (1, 9)])
def test_relative_attention_matches_the_papers_equations(rng, N, M):
    B, H, d = 2, 3, 4
    K = N + M
    inputs = [rng.standard_normal(s) for s in [(B, H, N, d), (B, H, K, d), (B, H, K, d), (H, K, d), (H, d), (H, d)]]
    scale = 1 / math.sqrt(d)
    check(lambda *a: ef.relative_attention(*a, scale=scale),
          lambda *a: relative_attention_ref(*a, scale), inputs, rng)


def test_relative_shift_and_encodings(rng):
    x = rng.standard_normal((2, 3, 5))
    y = ef.relative_shift(ef.tensor(x.astype(np.float32))).numpy()
    for i in range(3):
        for j in range(5):
            want = x[:, i, j + 2 - i] if j <= 2 + i else -np.inf
            np.testing.assert_array_equal(y[:, i, j], np.float32(want) if j <= 2 + i else want)
    assert_close(ef.relative_encodings(7, 8).numpy(), encodings(7, 8).numpy(), 1e-6, 1e-6, "R")
    with pytest.raises(ValueError):
        ef.relative_encodings(4, 7)
    with pytest.raises(ValueError):  # ShapeError: more queries than keys
        ef.relative_shift(ef.tensor(np.zeros((4, 3), np.float32)))


XL = dict(vocab_size=256, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=6, dropout=0.0,
          memory={"kind": "xl", "mem_len": 4})


def torch_xl_segment(p, ids, c, mems):
    """One segment through the XL LM with the given memories; returns logits and the new memories."""
    H, D = c["n_heads"], c["d_model"]
    d = D // H
    B, N = ids.shape
    x = p["embed.tokens.weight"][torch.tensor(ids)]     # no absolute positions
    new_mems = []
    for layer in range(c["n_layers"]):
        pre = f"blocks.{layer}"
        mem = mems[layer]
        cat = x if mem is None else torch.cat([mem, x], 1)
        new_mems.append(cat[:, -c["memory"]["mem_len"]:].detach())
        K = cat.shape[1]
        y = layer_norm(p, pre + ".ln1", cat)
        q = linear(p, pre + ".attn.q", y[:, -N:]).view(B, N, H, d).transpose(1, 2)
        k = linear(p, pre + ".attn.k", y).view(B, K, H, d).transpose(1, 2)
        v = linear(p, pre + ".attn.v", y).view(B, K, H, d).transpose(1, 2)
        r = linear(p, pre + ".attn.r", encodings(K, D)).view(K, H, d).transpose(0, 1)
        o = relative_attention_ref(q, k, v, r, p[pre + ".attn.content_bias"], p[pre + ".attn.position_bias"],
                                   1 / math.sqrt(d))
        x = x + linear(p, pre + ".attn.out", o.transpose(1, 2).reshape(B, N, D))
        x = x + linear(p, pre + ".ffn.fc2", F.gelu(linear(p, pre + ".ffn.fc1", layer_norm(p, pre + ".ln2", x))))
    return layer_norm(p, "ln_f", x) @ p["embed.tokens.weight"].T, new_mems


def test_xl_language_model_over_two_segments_matches_torch(rng, tmp_path):
    model = ef.models.LanguageModel(ef.models.ModelConfig(XL))
    assert model.has_memory and model.config.positions == "relative"
    randomize(model, rng)
    c = model.config.to_dict()
    p = torch_params(model, tmp_path)
    ids = rng.integers(0, 256, size=(2, 12))
    targets = rng.integers(0, 256, size=(2, 12))

    memory = model.start_memory()
    model(ef.tensor(ids[:, :6]), memory=memory)
    assert memory.length == 4
    loss = model.loss(ef.tensor(ids[:, 6:]), ef.tensor(targets[:, 6:]), memory=memory)

    _, mems = torch_xl_segment(p, ids[:, :6], c, [None, None])
    t_logits, _ = torch_xl_segment(p, ids[:, 6:], c, mems)
    t_loss = F.cross_entropy(t_logits.reshape(-1, 256), torch.tensor(targets[:, 6:]).reshape(-1))
    assert abs(loss.item() - t_loss.item()) <= 1e-4 * max(1.0, abs(t_loss.item()))
    for p_ in p.values():
        p_.grad = None
    loss.backward()
    t_loss.backward()
    compare_grads(model, p)


def test_xl_streaming_equals_the_segment_by_segment_pass(rng):
    model = ef.models.LanguageModel(ef.models.ModelConfig(XL))
    model.eval()
    ids = rng.integers(0, 256, size=(1, 15))
    memory = model.start_memory()
    parallel = np.concatenate([model(ef.tensor(ids[:, t:t + 6]), memory=memory).numpy() for t in (0, 6, 12)], 1)
    state = model.start_decoding(1)
    steps = np.concatenate([model.step(state, ef.tensor(ids[:, t:t + 1])).numpy() for t in range(15)], 1)
    assert_close(steps, parallel, 1e-5, 1e-5, "streaming")


def test_memory_config_errors():
    with pytest.raises(ValueError, match="mem_len"):
        ef.models.ModelConfig(dict(XL, memory={"kind": "xl"}))
    with pytest.raises(ValueError, match="positions 'relative'"):
        ef.models.ModelConfig(dict(XL, positions="learned"))
    plain = ef.models.LanguageModel(ef.models.ModelConfig(dict(d_model=16, n_heads=2, n_layers=1, d_ff=16)))
    with pytest.raises(ValueError, match="no memory"):
        plain.start_memory()


def test_cli_trains_evaluates_generates_and_describes_memory_models(word_corpus, tmp_path):
    """train / eval --mem-len / generate --mem-len / info on a tiny XL and compressive model."""
    import json
    import subprocess

    from test_train_cli import CLI

    def run(*args):
        p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p

    for kind, memory in [("xl", {"kind": "xl", "mem_len": 16}),
                         ("compressive", {"kind": "compressive", "mem_len": 16, "cmem_len": 8,
                                          "compression_rate": 2, "compression": "mean_pool"})]:
        run_file = tmp_path / f"{kind}.json"
        run_file.write_text(json.dumps({
            "model": dict(d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=16, dropout=0.0, memory=memory),
            "train": dict(steps=12, batch_size=4, lr=0.003, warmup_steps=2, log_every=1, eval_every=6,
                          eval_batches=4, checkpoint_every=6, seed=1)}))
        out = tmp_path / kind
        run("train", "--config", run_file, "--data", word_corpus, "--out", out, "--quiet")
        lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        train = [x for x in lines if x["event"] == "train"]
        assert len(train) == 12
        if kind == "compressive":  # evictions start at the second segment: the loss is logged apart
            assert all("reconstruction_loss" in x for x in train[1:]) and "reconstruction_loss" not in train[0]
        ckpt = out / "checkpoint.safetensors"
        short = json.loads(run("eval", ckpt, "--json", "--max-batches", 3, "--batch-size", 2).stdout)
        longer = json.loads(run("eval", ckpt, "--json", "--max-batches", 3, "--batch-size", 2,
                                "--mem-len", 64).stdout)
        assert short["mem_len"] == 16 and longer["mem_len"] == 64
        assert short["targets"] == longer["targets"] == 3 * 2 * 16
        assert short["bits_per_char"] != longer["bits_per_char"]
        g = run("generate", ckpt, "--max-new-tokens", 80, "--greedy", "--no-echo", "--mem-len", 32)
        assert len(g.stdout.strip("\n")) > 0 and "relative attention: native" in g.stderr
        info = run("info", ckpt).stdout
        assert f"{kind} relative attention" in info and "training memory of 16 states per layer saved" in info
    bad = subprocess.run([CLI, "eval", str(ckpt), "--mem-len", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--mem-len" in bad.stderr


COMPRESSIVE = dict(XL, memory={"kind": "compressive", "mem_len": 6, "cmem_len": 4, "compression_rate": 2,
                               "compression": "conv"})


def torch_compress(p, layer, kind, rows, rate, usage):
    """f_c (Rae et al. 2020, sec. 3.1) of rows [B, n c, D] -> [B, n, D]. conv: kernel = stride = c;
    dilated_conv: torch's conv1d with kernel c, dilation n, stride 1; most_used: the n rows of the highest
    usage [B, n c] (ties to the older row: a stable sort), in position order."""
    B, L, D = rows.shape
    n = L // rate
    if kind == "most_used":
        keep = torch.sort(-usage, dim=1, stable=True).indices[:, :n].sort(dim=1).values
        return torch.gather(rows, 1, keep[:, :, None].expand(B, n, D))
    w, b = p[f"compressors.{layer}.conv.weight"], p[f"compressors.{layer}.conv.bias"]
    if kind == "conv":
        return rows.reshape(B, n, rate * D) @ w.T + b
    taps = w.view(D, rate, D).permute(0, 2, 1)  # [out, in, c]: tap j is the j-th block of D columns
    return F.conv1d(rows.transpose(1, 2), taps, b, dilation=n).transpose(1, 2)


def torch_compressive_segment(p, ids, c, mems, cmems):
    """One segment of the Compressive Transformer (Rae et al. 2020): attention over [cmem; mem; segment],
    then the evicted memories compressed by f_c (torch_compress; most_used's usage: the layer's attention
    probabilities of the segment's queries, averaged over heads and queries), and the attention-
    reconstruction loss sum_l mean (attn(h, old) - attn(h, f_c(old)))^2 with content attention by the
    layer's weights, h and old stop-gradient. Returns logits, new mems, new cmems, reconstruction loss."""
    H, D = c["n_heads"], c["d_model"]
    d, rate, kind = D // H, c["memory"]["compression_rate"], c["memory"]["compression"]
    B, N = ids.shape
    x = p["embed.tokens.weight"][torch.tensor(ids)]
    new_mems, new_cmems, recon = [], [], 0.0

    def content_attention(pre, h, m):
        w = {k: p[f"{pre}.attn.{k}.weight"].detach() for k in ("q", "k", "v", "out")}
        q = (h @ w["q"].T).view(B, -1, H, d).transpose(1, 2)
        k = (m @ w["k"].T).view(B, -1, H, d).transpose(1, 2)
        v = (m @ w["v"].T).view(B, -1, H, d).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
        return a.transpose(1, 2).reshape(B, -1, D) @ w["out"].T

    for layer in range(c["n_layers"]):
        pre = f"blocks.{layer}"
        context = [t for t in (cmems[layer], mems[layer]) if t is not None]
        cat = torch.cat(context + [x], 1)
        K = cat.shape[1]
        y = layer_norm(p, pre + ".ln1", cat)
        q = linear(p, pre + ".attn.q", y[:, -N:]).view(B, N, H, d).transpose(1, 2)
        k = linear(p, pre + ".attn.k", y).view(B, K, H, d).transpose(1, 2)
        v = linear(p, pre + ".attn.v", y).view(B, K, H, d).transpose(1, 2)
        r = linear(p, pre + ".attn.r", encodings(K, D)).view(K, H, d).transpose(0, 1)
        probs = relative_probs_ref(q, k, r, p[pre + ".attn.content_bias"], p[pre + ".attn.position_bias"],
                                   1 / math.sqrt(d))
        usage = probs.detach().mean(dim=(1, 2))  # [B, K]: keys [cmem; mem; segment]

        all_mem = torch.cat(([mems[layer]] if mems[layer] is not None else []) + [x.detach()], 1).detach()
        keep = c["memory"]["mem_len"]
        new_mems.append(all_mem[:, -keep:])
        old = all_mem[:, :-keep] if all_mem.shape[1] > keep else None
        cm = cmems[layer]
        if old is not None:
            n = old.shape[1] // rate
            first = old.shape[1] - n * rate  # the oldest remainder of fewer than `rate` rows is dropped
            skip = cm.shape[1] if cm is not None else 0
            old = old[:, first:]
            fresh = torch_compress(p, layer, kind, old, rate, usage[:, skip + first:skip + first + old.shape[1]])
            h = x.detach()
            recon = recon + ((content_attention(pre, h, fresh) - content_attention(pre, h, old).detach()) ** 2).mean()
            cm = torch.cat(([cm] if cm is not None else []) + [fresh.detach()], 1)[:, -c["memory"]["cmem_len"]:]
        new_cmems.append(cm)

        o = probs @ v
        x = x + linear(p, pre + ".attn.out", o.transpose(1, 2).reshape(B, N, D))
        x = x + linear(p, pre + ".ffn.fc2", F.gelu(linear(p, pre + ".ffn.fc1", layer_norm(p, pre + ".ln2", x))))
    return layer_norm(p, "ln_f", x) @ p["embed.tokens.weight"].T, new_mems, new_cmems, recon


@pytest.mark.parametrize("compression", ["conv", "dilated_conv", "most_used"])
def test_compressive_model_and_reconstruction_loss_match_torch(rng, tmp_path, compression):
    config = dict(COMPRESSIVE, memory=dict(COMPRESSIVE["memory"], compression=compression))
    model = ef.models.LanguageModel(ef.models.ModelConfig(config))
    randomize(model, rng)
    c = model.config.to_dict()
    p = torch_params(model, tmp_path)
    ids = rng.integers(0, 256, size=(2, 21))
    targets = rng.integers(0, 256, size=(2, 21))
    memory = model.start_memory()
    mems, cmems = [None, None], [None, None]
    # The second and third segments evict 6 memories each (3 compressed slots, a dilation of 3); the
    # short fourth evicts 3, of which the newest 2 make one slot and the oldest is dropped.
    for start, length in [(0, 6), (6, 6), (12, 6), (18, 3)]:
        seg = slice(start, start + length)
        loss = model.loss(ef.tensor(ids[:, seg]), ef.tensor(targets[:, seg]), memory=memory)
        t_logits, mems, cmems, t_recon = torch_compressive_segment(p, ids[:, seg], c, mems, cmems)
        for layer in range(2):  # the compressed memory itself (most_used: the selection)
            if cmems[layer] is None:
                assert memory.compressed_length == 0
            else:
                assert_close(memory.compressed[layer].numpy(), cmems[layer].detach().numpy(), 1e-5, 1e-5,
                             f"compressed memory of layer {layer} after the segment at {start}")
    assert memory.compressed_length == 4
    t_loss = F.cross_entropy(t_logits.reshape(-1, 256), torch.tensor(targets[:, 18:]).reshape(-1))
    assert abs(loss.item() - t_loss.item()) <= 1e-4 * max(1.0, abs(t_loss.item()))
    recon = memory.reconstruction
    assert abs(recon.item() - t_recon.item()) <= 1e-4 * max(1e-3, abs(t_recon.item()))
    (loss + recon).backward()
    (t_loss + t_recon).backward()
    compare_grads(model, p)


@pytest.mark.parametrize("compression", ["dilated_conv", "most_used"])
def test_cli_trains_with_the_papers_other_compressions(word_corpus, tmp_path, compression):
    """A short `eformer train` with dilated_conv / most_used: finite losses, the reconstruction loss logged
    (trained on by dilated_conv, a measure only for most_used), `info` names the function; a misspelt one
    exits with 2 and the valid names."""
    import json
    import subprocess

    from test_train_cli import CLI

    memory = {"kind": "compressive", "mem_len": 8, "cmem_len": 8, "compression_rate": 2, "compression": compression}
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({
        "model": dict(d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=16, dropout=0.0, memory=memory),
        "train": dict(steps=4, batch_size=2, lr=0.003, warmup_steps=1, log_every=1, eval_every=4, eval_batches=2,
                      seed=3)}))
    p = subprocess.run([CLI, "train", "--config", run_file, "--data", word_corpus, "--out", tmp_path / "out", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    train = [x for x in map(json.loads, (tmp_path / "out" / "log.jsonl").read_text().splitlines())
             if x["event"] == "train"]
    assert len(train) == 4 and all(math.isfinite(x["loss"]) for x in train)
    assert all(math.isfinite(x["reconstruction_loss"]) for x in train)  # segments of 16 > mem_len 8: all evict
    info = subprocess.run([CLI, "info", tmp_path / "out" / "checkpoint.safetensors"], capture_output=True, text=True)
    assert info.returncode == 0 and f"at rate 2 by {compression}" in info.stdout
    memory["compression"] = compression.replace("_", "-")
    run_file.write_text(json.dumps({"model": dict(d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=16,
                                                  memory=memory), "train": dict(steps=1)}))
    bad = subprocess.run([CLI, "train", "--config", run_file, "--data", word_corpus, "--out", tmp_path / "bad"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "memory.compression" in bad.stderr and "most_used" in bad.stderr, bad.stderr
    with pytest.raises(ValueError, match="memory.compression = 'dilated'; expected one of .*most_used"):
        ef.models.ModelConfig(dict(COMPRESSIVE, memory=dict(COMPRESSIVE["memory"], compression="dilated")))
