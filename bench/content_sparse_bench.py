"""Sparse Sinkhorn attention and ETC vs exact attention (flash): forward + backward, float32, eformer only.

sinkhorn runs its functional form with the sorting network's tensors as differentiable inputs (hidden = d,
block 64, 8 iterations, no Gumbel noise); etc with its defaults (16 globals, radius 64, max_distance 16) and
a differentiable relative bias table. Each (contender, direction, N) runs in a fresh subprocess; the median
of the timed repetitions is reported with the allocator peak above the inputs and the peak RSS.

    PYTHONPATH=build/python /usr/bin/python3 bench/content_sparse_bench.py [--sizes 4096 16384] [--reps 2]
        [--contenders sinkhorn etc flash] [--directions bidirectional causal] [--warmup 1]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def worker(contender, causal, N, reps, warmup, threads, H, d):
    import numpy as np
    import eformer as ef
    ef.set_num_threads(threads)
    rng = np.random.default_rng(0)
    q, k, v, g = [rng.standard_normal((1, H, N, d)).astype(np.float32) for _ in range(4)]
    n = -(-N // 64)
    extras = {}
    if contender == "sinkhorn":
        shapes = {"sort_w1": (H, d, d), "sort_b1": (H, d), "sort_w2": (H, d, n), "sort_b2": (H, n)}
        extras = {name: (rng.standard_normal(s) / d ** 0.5).astype(np.float32) for name, s in shapes.items()}
    elif contender == "etc":
        extras = {"relative_bias": (0.1 * rng.standard_normal((H, 35))).astype(np.float32)}
    ge = ef.tensor(g)
    peak = None

    def step():
        nonlocal peak
        qe, ke, ve = (ef.tensor(a, requires_grad=True) for a in (q, k, v))
        ex = {name: ef.tensor(a, requires_grad=True) for name, a in extras.items()}
        ef.reset_peak_memory_stats()
        base = ef.memory_stats()["live_bytes"]
        t0 = time.perf_counter()
        ef.attention(qe, ke, ve, kind=contender, causal=causal, **ex).backward(ge)
        dt = time.perf_counter() - t0
        peak = ef.memory_stats()["peak_bytes"] - base
        return dt

    for _ in range(warmup):
        step()
    times = [step() for _ in range(reps)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"times": times, "peak": peak, "rss": rss}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--contenders", nargs="+", default=["sinkhorn", "etc", "flash"],
                   choices=["sinkhorn", "etc", "flash"])
    p.add_argument("--directions", nargs="+", default=["bidirectional", "causal"],
                   choices=["bidirectional", "causal"])
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        contender, direction, N = a.worker[0], a.worker[1], int(a.worker[2])
        worker(contender, direction == "causal", N, a.reps, a.warmup, a.threads, a.heads, a.head_dim)
        return
    print(f"B=1 H={a.heads} d={a.head_dim}, {a.threads} threads, forward + backward")
    print(f"{'N':>6} {'direction':>13} {'contender':>9} {'median s':>9} {'vs flash':>8} {'peak MiB':>9} "
          f"{'RSS MiB':>8}")
    for N in a.sizes:
        for direction in a.directions:
            res = {}
            for contender in a.contenders:
                if contender == "etc" and direction == "causal":
                    continue  # ETC is bidirectional only
                cmd = [sys.executable, __file__, "--worker", contender, direction, str(N), "--reps", str(a.reps),
                       "--warmup", str(a.warmup),
                       "--threads", str(a.threads), "--heads", str(a.heads), "--head-dim", str(a.head_dim)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res[contender] = json.loads(out.strip().splitlines()[-1])
            flash = statistics.median(res["flash"]["times"]) if "flash" in res else None
            for contender, r in res.items():
                med = statistics.median(r["times"])
                ratio = f"{flash / med:.2f}x" if flash else "-"
                print(f"{N:>6} {direction:>13} {contender:>9} {med:>9.3f} {ratio:>8} {r['peak'] / 2**20:>9.1f} "
                      f"{r['rss'] / 2**20:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
