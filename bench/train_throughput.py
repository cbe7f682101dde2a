"""Training throughput (tokens/s) of the `small` preset's architecture: eformer vs the same model in PyTorch,
same batch, context, optimizer and thread count, on random byte batches (the data pipeline is not timed).

    PYTHONPATH=build/python /usr/bin/python3 bench/train_throughput.py [--steps 12] [--threads 2]
    PYTHONPATH=build/python .peers/bin/python bench/train_throughput.py     # against current PyTorch

Architecture (presets/small.json, but with learned positions on both sides): 4 pre-LN layers, d_model 256, 4 heads, d_ff 1024 (GELU), learned
positions, tied LM head, context 256, batch 16, dropout 0, AdamW. The PyTorch model uses plain modules and
torch's fused scaled_dot_product_attention (is_causal) where it has one (2.0+), else naive causal attention
(Debian's torch 1.13).
"""
import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import eformer as ef

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


class TorchBlock(torch.nn.Module):
    def __init__(self, d, h, d_ff):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d)
        self.fc1, self.fc2 = torch.nn.Linear(d, d_ff), torch.nn.Linear(d_ff, d)

    def forward(self, x, mask):
        B, N, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, N, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        if hasattr(F, "scaled_dot_product_attention"):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D // self.h)
            a = torch.softmax(s.masked_fill(mask, float("-inf")), -1) @ v
        x = x + self.out(a.transpose(1, 2).reshape(B, N, D))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TorchLM(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.tok = torch.nn.Embedding(m["vocab_size"], m["d_model"])
        self.pos = torch.nn.Embedding(m["max_len"], m["d_model"])
        self.blocks = torch.nn.ModuleList(TorchBlock(m["d_model"], m["n_heads"], m["d_ff"]) for _ in range(m["n_layers"]))
        self.ln_f = torch.nn.LayerNorm(m["d_model"])

    def forward(self, ids):
        N = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(N))
        mask = torch.triu(torch.ones(N, N, dtype=torch.bool), 1)
        for b in self.blocks:
            x = b(x, mask)
        return self.ln_f(x) @ self.tok.weight.T


def time_steps(step, steps):
    step()  # warm up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ef.set_num_threads(args.threads)
    preset = json.load(open(os.path.join(ROOT, "presets", "small.json")))
    m, t = preset["model"], preset["train"]
    m = dict(m, positions="learned")  # the PyTorch model's (the preset now uses rotary; same math on both sides)
    B, N = t["batch_size"], m["max_len"]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (B, N + 1))

    ef_model = ef.models.LanguageModel(json.dumps(m))
    ef_opt = ef.optim.AdamW(ef_model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    ex, ey = ef.tensor(ids[:, :-1]), ef.tensor(ids[:, 1:])

    def ef_step():
        loss = ef_model.loss(ex, ey)
        ef_opt.zero_grad()
        loss.backward()
        ef_opt.step()

    tm = TorchLM(m)
    t_opt = torch.optim.AdamW(tm.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    tx, ty = torch.tensor(ids[:, :-1]), torch.tensor(ids[:, 1:])

    def torch_step():
        loss = F.cross_entropy(tm(tx).reshape(-1, m["vocab_size"]), ty.reshape(-1))
        t_opt.zero_grad()
        loss.backward()
        t_opt.step()

    te, tt = time_steps(ef_step, args.steps), time_steps(torch_step, args.steps)
    tokens = B * N
    print(f"threads={args.threads} batch={B} context={N} steps={args.steps} (median step time)")
    print("| implementation | ms/step | tokens/s |\n|---|---|---|")
    print(f"| eformer (flash) | {te*1e3:.0f} | {tokens/te:,.0f} |")
    print(f"| PyTorch {torch.__version__} | {tt*1e3:.0f} | {tokens/tt:,.0f} |")
    print(f"eformer / PyTorch throughput: {tt/te:.2f}x")


if __name__ == "__main__":
    main()
