"""Exact attention, forward + backward: eformer flash vs eformer full vs PyTorch naive
(softmax(q k^T / sqrt(d)) v with autograd), float32, the same thread count for both libraries.

Every (contender, N, causal) runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own;
the contenders take turns round by round, and the median over all timed repetitions is reported.
GFLOP/s counts 4 B H N M d for the forward and 2.5x that for forward + backward, halved for causal
(the same count for every contender, so GFLOP/s ratios are time ratios). Allocator peak is
eformer.memory_stats()["peak_bytes"] above the inputs (reset before the timed call).

    PYTHONPATH=build/python /usr/bin/python3 bench/attention_bench.py [--sizes 1024 2048 ...]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time



def exact_kinds():
    """The registered exact-attention kinds: softmax mechanisms whose pattern is every key."""
    import eformer as ef
    return [e["name"] for e in ef.mechanisms()
            if e["reference"] == "softmax-pattern" and ef.attention_pattern(e["name"], 2048).all()]
SCORES_LIMIT_BYTES = 6e9  # full / torch materialize B H N M float32 scores (and more in backward)


def flops(B, H, N, M, d, causal):
    f = 4.0 * B * H * N * M * d * 2.5
    return f / 2 if causal else f


def worker(contender, N, causal, reps, warmup, threads, B, H, d):
    import numpy as np
    rng = np.random.default_rng(0)
    q, k, v, g = [rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(4)]
    times, peak = [], None
    if contender == "torch":
        import torch
        torch.set_num_threads(threads)
        mask = torch.ones(N, N, dtype=torch.bool).triu(1) if causal else None
        gt = torch.from_numpy(g)

        def step():
            qt, kt, vt = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
            t0 = time.perf_counter()
            s = (qt @ kt.transpose(-1, -2)) * (1.0 / d ** 0.5)
            if causal:
                s = s.masked_fill(mask, float("-inf"))
            out = torch.softmax(s, -1) @ vt
            out.backward(gt)
            return time.perf_counter() - t0
    else:
        import eformer as ef
        ef.set_num_threads(threads)
        ge = ef.tensor(g)

        def step():
            nonlocal peak
            qe, ke, ve = [ef.tensor(a, requires_grad=True) for a in (q, k, v)]
            ef.reset_peak_memory_stats()
            base = ef.memory_stats()["live_bytes"]
            t0 = time.perf_counter()
            out = ef.attention(qe, ke, ve, kind=contender, causal=causal)
            out.backward(ge)
            dt = time.perf_counter() - t0
            peak = ef.memory_stats()["peak_bytes"] - base
            return dt
    for _ in range(warmup):
        step()
    for _ in range(reps):
        times.append(step())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"times": times, "peak": peak, "rss": rss}))


def sgemm_gflops(threads):
    import numpy as np
    import eformer as ef
    ef.set_num_threads(threads)
    n = 2048
    a, b = [ef.tensor(np.random.rand(n, n).astype(np.float32)) for _ in range(2)]
    ef.matmul(a, b)
    best = min(_timed(lambda: ef.matmul(a, b)) for _ in range(5))
    return 2.0 * n ** 3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--rounds", type=int, default=2, help="subprocess launches per contender and size")
    p.add_argument("--reps", type=int, default=2, help="timed repetitions per launch (1 beyond N = 4096)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--contenders", nargs="+", default=None, help="default: the exact kinds of the registry, torch")
    p.add_argument("--worker", nargs=3, metavar=("CONTENDER", "N", "CAUSAL"), help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    B, H, d = 1, 8, 64
    if args.worker:
        c, n, causal = args.worker
        worker(c, int(n), causal == "1", args.reps, args.warmup, args.threads, B, H, d)
        return
    args.contenders = args.contenders or exact_kinds() + ["torch"]
    gemm = sgemm_gflops(args.threads)
    print(f"B={B} H={H} d={d} float32, {args.threads} threads; eformer sgemm (2048^3) {gemm:.1f} GFLOP/s\n")
    print("| N | causal | contender | median fwd+bwd ms | GFLOP/s | % of sgemm | speedup vs torch | alloc peak MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    skipped = []
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    for N in args.sizes:
        for causal in causals:
            big = N > 4096
            results = {c: {"times": [], "peak": None, "rss": 0} for c in args.contenders}
            for _ in range(args.rounds):
                for c in args.contenders:
                    if c != "flash" and B * H * N * N * 4 > SCORES_LIMIT_BYTES:
                        continue
                    cmd = [sys.executable, __file__, "--worker", c, str(N), "1" if causal else "0",
                           "--reps", str(1 if big else args.reps), "--warmup", str(0 if big else args.warmup),
                           "--threads", str(args.threads)]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        skipped.append(f"{c} N={N} causal={causal}: failed ({out.stderr.strip()[-200:]})")
                        results[c]["times"] = None
                        continue
                    if results[c]["times"] is None:
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    results[c]["times"] += r["times"]
                    results[c]["peak"] = r["peak"]
                    results[c]["rss"] = max(results[c]["rss"], r["rss"])
            med = {c: statistics.median(r["times"]) for c, r in results.items() if r["times"]}
            for c in args.contenders:
                if c not in med:
                    if c != "flash" and B * H * N * N * 4 > SCORES_LIMIT_BYTES:
                        skipped.append(f"{c} N={N}: skipped, its B H N N scores alone would be "
                                       f"{B * H * N * N * 4 / 1e9:.1f} GB")
                    continue
                r, t = results[c], med[c]
                gf = flops(B, H, N, N, d, causal) / t / 1e9
                speed = f"{med['torch'] / t:.2f}x" if "torch" in med else "-"
                peak = f"{r['peak'] / 2**20:.0f}" if r["peak"] is not None else "-"
                print(f"| {N} | {'yes' if causal else 'no'} | {c} | {t * 1e3:.0f} | {gf:.1f} | "
                      f"{100 * gf / gemm:.0f}% | {speed} | {peak} | {r['rss'] / 2**20:.0f} |", flush=True)
    for s in sorted(set(skipped)):
        print(f"\n- {s}")


if __name__ == "__main__":
    main()
