"""Transformer-XL relative attention: forward + backward time and allocator peak, fused vs materialized.

    PYTHONPATH=build/python /usr/bin/python3 bench/relative_bench.py [--n 512 1024 2048] [--threads 2]
        [--repeats 3] [--materialized]

q [1, 8, N, 64], k, v [1, 8, K, 64] with K = 2N (memory M = N), r [8, K, 64], u, w [8, 64].
Default: `ef.relative_attention` (the fused tiled kernel). --materialized: the computation it replaced,
composed of the library's ops exactly as relative.cpp did before the fusion (N x K content and position
scores, the relative shift, softmax, the value product). Each size runs in a fresh process; the peak is
the allocator's beyond the inputs, the time the median over --repeats of forward + backward.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def materialized(ef, q, k, v, r, u, w, scale):
    B, H, N, d = q.shape
    K = k.shape[2]
    content = ef.matmul(ef.add(q, ef.reshape(u, [H, 1, d])), k, False, True)
    r_b = ef.contiguous(ef.expand(ef.unsqueeze(r, 0), [B, H, K, d]))
    position = ef.relative_shift(ef.matmul(ef.add(q, ef.reshape(w, [H, 1, d])), r_b, False, True))
    return ef.matmul(ef.softmax(ef.add(content, position) * scale, -1), v)


def one(args):
    import numpy as np
    import eformer as ef

    ef.set_num_threads(args.threads)
    B, H, d, N = 1, 8, 64, args.n[0]
    K = 2 * N
    rng = np.random.default_rng(0)
    shapes = [(B, H, N, d), (B, H, K, d), (B, H, K, d), (H, K, d), (H, d), (H, d)]
    xs = [ef.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in shapes]
    g = ef.tensor(rng.standard_normal((B, H, N, d)).astype(np.float32))
    scale = 1 / np.sqrt(d)
    fn = (lambda: materialized(ef, *xs, scale)) if args.materialized else (lambda: ef.relative_attention(*xs))
    times, peak = [], 0
    for _ in range(args.repeats + 1):  # the first is a warm-up (layout cache, allocator)
        for x in xs:
            x.grad = None
        ef.reset_peak_memory_stats()
        base = ef.memory_stats()["live_bytes"]
        t0 = time.perf_counter()
        fn().backward(g)
        times.append(time.perf_counter() - t0)
        peak = max(peak, ef.memory_stats()["peak_bytes"] - base)
    times = sorted(times[1:])
    print(json.dumps({"n": N, "k": K, "mode": "materialized" if args.materialized else "fused",
                      "seconds": times[len(times) // 2], "peak_mib": peak / 2**20}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--materialized", action="store_true")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)
    for n in args.n:
        cmd = [sys.executable, __file__, "--one", "--n", str(n), "--threads", str(args.threads),
               "--repeats", str(args.repeats)] + (["--materialized"] if args.materialized else [])
        subprocess.run(cmd, check=True, env=os.environ)


if __name__ == "__main__":
    main()
