"""eformer vs PyTorch (float32, same process, same thread count) on memory-bound ops and matmul.

    PYTHONPATH=build/python /usr/bin/python3 bench/ops_vs_torch.py [--threads 2] [--reps 15]

Each measurement alternates eformer and torch call by call and reports medians, so drift in the
machine's load hits both sides alike. Softmax and layer norm are memory-bound: GB/s counts the
bytes a fused implementation must move (forward: read x, write y; backward: read y or x, read
dy, write dx), 20 bytes per element for forward+backward.
"""
import argparse
import statistics
import time

import numpy as np
import torch

import eformer as ef


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(ef_fn, torch_fn, reps):
    ef_fn(), torch_fn()  # warm up
    te, tt = [], []
    for _ in range(reps):
        te.append(timed(ef_fn))
        tt.append(timed(torch_fn))
    return statistics.median(te), statistics.median(tt)


def fwd_bwd(lib, make_out, x, g):
    def run():
        out = make_out(x)
        out.backward(g)
        x.grad = None
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    ef.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} reps={args.reps} torch {torch.__version__}")

    print("\n| op (forward+backward) | shape | eformer ms | torch ms | eformer GB/s | torch GB/s | speedup |")
    print("|---|---|---|---|---|---|---|")
    for rows, cols in [(4096, 256), (16384, 64), (8192, 1024), (2048, 4096), (1024, 8192)]:
        a = rng.standard_normal((rows, cols)).astype(np.float32)
        g = rng.standard_normal((rows, cols)).astype(np.float32)
        ex, eg = ef.tensor(a, requires_grad=True), ef.tensor(g)
        tx, tg = torch.tensor(a, requires_grad=True), torch.tensor(g)
        w = rng.standard_normal(cols).astype(np.float32)
        ew, eb = ef.tensor(w, requires_grad=True), ef.tensor(w, requires_grad=True)
        tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(w, requires_grad=True)
        cases = [
            ("softmax", lambda t: ef.softmax(t, -1), lambda t: torch.softmax(t, -1)),
            ("layer_norm", lambda t: ef.layer_norm(t, [cols], ew, eb),
             lambda t: torch.nn.functional.layer_norm(t, [cols], tw, tb)),
        ]
        for name, ef_op, torch_op in cases:
            te, tt = compare(fwd_bwd(ef, ef_op, ex, eg), fwd_bwd(torch, torch_op, tx, tg), args.reps)
            gb = 20 * rows * cols / 1e9
            print(f"| {name} | {rows}x{cols} | {te*1e3:.2f} | {tt*1e3:.2f} | {gb/te:.1f} | {gb/tt:.1f} | {tt/te:.2f}x |")

    print("\n| matmul (forward) | eformer GFLOP/s | torch GFLOP/s | speedup |")
    print("|---|---|---|---|")
    for m, k, n in [(256, 256, 256), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 64, 4096), (4096, 4096, 64)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        ea, eb_ = ef.tensor(a), ef.tensor(b)
        ta, tb_ = torch.tensor(a), torch.tensor(b)
        te, tt = compare(lambda: ef.matmul(ea, eb_), lambda: torch.matmul(ta, tb_), args.reps)
        fl = 2 * m * n * k / 1e9
        print(f"| {m}x{k}x{n} | {fl/te:.1f} | {fl/tt:.1f} | {tt/te:.2f}x |")


if __name__ == "__main__":
    main()
