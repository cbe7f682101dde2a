"""LSH attention (Reformer) and routing attention (Routing Transformer) vs exact attention (flash), forward +
backward, causal, float32, eformer only.

lsh runs with shared QK (k = q, as the mechanism calls it), n_hashes rounds, chunk c and the default
n_buckets (2^round(log2(N / 64))); rotations are drawn inside each call, as in training. routing runs with
shared QK, c = 2^round(log2(sqrt(N))) random unit centroids per head (--clusters to fix c) and window N / c
(the paper's c = sqrt(N)). Each
(contender, N) runs in a fresh subprocess (its own peak RSS); the median of the timed repetitions is
reported, with the allocator peak (eformer.memory_stats()["peak_bytes"] above the inputs).

    PYTHONPATH=build/python /usr/bin/python3 bench/lsh_bench.py [--sizes 4096 16384 65536] [--reps 3]
        [--contenders lsh routing flash] [--clusters C]
"""
import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time


def routing_clusters(N, clusters):
    return clusters if clusters else 1 << round(math.log2(math.sqrt(N)))


def worker(contender, N, reps, warmup, threads, B, H, d, n_hashes, chunk, clusters=0):
    import numpy as np
    import eformer as ef
    ef.set_num_threads(threads)
    rng = np.random.default_rng(0)
    q, v, g = [rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(3)]
    k = rng.standard_normal((B, H, N, d)).astype(np.float32)
    ge = ef.tensor(g)
    c = routing_clusters(N, clusters)
    mu = rng.standard_normal((H, c, d)).astype(np.float32)
    centroids = ef.tensor(mu / np.linalg.norm(mu, axis=-1, keepdims=True))
    peak = None

    def step():
        nonlocal peak
        qe, ve = ef.tensor(q, requires_grad=True), ef.tensor(v, requires_grad=True)
        ke = qe if contender in ("lsh", "routing") else ef.tensor(k, requires_grad=True)
        ef.reset_peak_memory_stats()
        base = ef.memory_stats()["live_bytes"]
        t0 = time.perf_counter()
        if contender == "lsh":
            out = ef.attention(qe, ke, ve, kind="lsh", causal=True, n_hashes=n_hashes, chunk=chunk)
        elif contender == "routing":
            out = ef.attention(qe, ke, ve, kind="routing", causal=True, centroids=centroids, window=max(1, N // c))
        else:
            out = ef.attention(qe, ke, ve, kind="flash", causal=True)
        out.backward(ge)
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
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (1 at sizes >= 65536 for flash)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--clusters", type=int, default=0, help="routing's c (0: 2^round(log2(sqrt(N))))")
    p.add_argument("--contenders", nargs="+", default=["lsh", "flash"], choices=["lsh", "routing", "flash"])
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        contender, N = a.worker[0], int(a.worker[1])
        reps = 1 if contender == "flash" and N >= 65536 else a.reps
        worker(contender, N, reps, 0 if reps == 1 else 1, a.threads, 1, a.heads, a.head_dim, a.n_hashes, a.chunk,
               a.clusters)
        return
    print(f"B=1 H={a.heads} d={a.head_dim} causal, lsh n_hashes={a.n_hashes} chunk={a.chunk}, routing clusters="
          f"{a.clusters or 'sqrt(N)'} window N / clusters, {a.threads} threads, forward + backward")
    print(f"{'N':>7} {'contender':>9} {'median s':>9} {'peak MiB':>9} {'RSS MiB':>8} {'flash/it':>9} "
          f"{'s / (N log2 N) ns':>18}")
    for N in a.sizes:
        res = {}
        for contender in a.contenders:
            cmd = [sys.executable, __file__, "--worker", contender, str(N), "--reps", str(a.reps),
                   "--threads", str(a.threads), "--heads", str(a.heads), "--head-dim", str(a.head_dim),
                   "--n-hashes", str(a.n_hashes), "--chunk", str(a.chunk), "--clusters", str(a.clusters)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[contender] = json.loads(out.strip().splitlines()[-1])
        for contender in a.contenders:
            r = res[contender]
            med = statistics.median(r["times"])
            ratio = (statistics.median(res["flash"]["times"]) / med
                     if "flash" in res and contender != "flash" else float("nan"))
            per = med / (N * math.log2(N)) * 1e9 if contender != "flash" else float("nan")
            print(f"{N:>7} {contender:>9} {med:>9.3f} {r['peak'] / 2**20:>9.1f} {r['rss'] / 2**20:>8.0f} "
                  f"{ratio:>9.2f} {per:>18.2f}", flush=True)


if __name__ == "__main__":
    main()
