"""The block-sparse family against flash: forward + backward, B=1, H=8, d=64, float32, causal by default.

Each (contender, N) runs in a fresh subprocess (its allocator peak and peak RSS are its own); a sparse
contender is called once untimed first (it builds and caches its layout), then timed; flash is timed
cold (it has no layout). Reported: the median time, the speedup over flash measured in the same run,
the block pairs the kernel computes (from eformer.attention_layout) and its rate counting only those
blocks (4 b^2 d flops per pair forward, 2.5x that for forward + backward, as attention_bench.py counts),
and the allocator peak above the inputs. `dense` is the kernel on the dense layout (local attention with
one block holding every key): the kernel's own dense rate at the same block size. EFORMER_SPARSE_BLOCK=<b>
runs the kernel at another block size. "density" is pairs over the causal (or full) block triangle, summed
over parts (the two parts of strided and fixed have their own orders).

    PYTHONPATH=build/python /usr/bin/python3 bench/sparse_bench.py [--sizes 4096 16384] [--reps 1]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONTENDERS = {
    "flash": ("flash", {}),
    "sparse_strided": ("sparse_strided", {"l": 128}),
    "sparse_fixed": ("sparse_fixed", {"l": 128, "c": 16}),
    "longformer": ("longformer", {"window": 512}),
    "bigbird": ("bigbird", {"block": 64, "global_blocks": 2, "random_blocks": 3}),
    "local": ("local", {"block": 64, "memory": 64}),
    "dense": ("local", {"block": 1 << 24, "memory": 1 << 24}),  # one block holds every key (the option's maximum)
}
B, H, d = 1, 8, 64


def options_for(name, N, sqrt_l):
    kind, opts = CONTENDERS[name]
    if sqrt_l and kind in ("sparse_strided", "sparse_fixed"):
        opts = dict(opts, l=int(round(N ** 0.5)))
    return kind, opts


def worker(name, N, causal, reps, threads, sqrt_l):
    import numpy as np
    import eformer as ef
    ef.set_num_threads(threads)
    kind, opts = options_for(name, N, sqrt_l)
    rng = np.random.default_rng(0)
    q, k, v, g = [rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(4)]
    ge = ef.tensor(g)
    pairs, block = None, None
    if kind != "flash":
        layout = ef.attention_layout(kind, N, heads=H, causal=causal, **opts)
        pairs, block = sum(p["pairs"] for p in layout), layout[0]["block"]
    times, peak = [], None

    def step():
        nonlocal peak
        qe, ke, ve = [ef.tensor(a, requires_grad=True) for a in (q, k, v)]
        ef.reset_peak_memory_stats()
        base = ef.memory_stats()["live_bytes"]
        t0 = time.perf_counter()
        out = ef.attention(qe, ke, ve, kind=kind, causal=causal, **opts)
        out.backward(ge)
        dt = time.perf_counter() - t0
        peak = ef.memory_stats()["peak_bytes"] - base
        return dt
    if kind != "flash":
        step()  # builds the layout
    for _ in range(reps):
        times.append(step())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"times": times, "peak": peak, "rss": rss, "pairs": pairs, "block": block}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS))
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--sqrt-l", action="store_true", help="l = round(sqrt(N)) for sparse_strided and sparse_fixed")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--worker", nargs=2, metavar=("CONTENDER", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    causal = not args.bidirectional
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), causal, args.reps, args.threads, args.sqrt_l)
        return
    print(f"B={B} H={H} d={d} float32, {'causal' if causal else 'bidirectional'}, forward + backward, "
          f"{args.threads} threads, load average before: {os.getloadavg()[0]:.2f}\n")
    print("| N | contender | options | median ms | vs flash | block pairs | density | kernel GFLOP/s "
          "(computed blocks) | alloc peak MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for N in args.sizes:
        res = {}
        for name in args.contenders:
            cmd = [sys.executable, __file__, "--worker", name, str(N), "--reps", str(args.reps),
                   "--threads", str(args.threads)] + (["--bidirectional"] if not causal else []) + \
                (["--sqrt-l"] if args.sqrt_l else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {N} | {name} | failed: {out.stderr.strip()[-200:]} |")
                continue
            res[name] = json.loads(out.stdout.strip().splitlines()[-1])
        flash = statistics.median(res["flash"]["times"]) if "flash" in res else None
        for name, r in res.items():
            t = statistics.median(r["times"])
            ratio = f"{flash / t:.2f}x" if flash else "-"
            if r["pairs"] is not None:
                b = r["block"]
                nb = (N + b - 1) // b
                all_pairs = H * (nb * (nb + 1) // 2 if causal else nb * nb)
                rate = f"{4 * b * b * d * 2.5 * r['pairs'] / t / 1e9:.1f}"
                pairs, density = str(r["pairs"]), f"{r['pairs'] / all_pairs:.3f}"
            else:
                pairs, density, rate = "-", "-", "-"
            opts = json.dumps(options_for(name, N, args.sqrt_l)[1]) if name != "dense" else "dense layout"
            print(f"| {N} | {name} | `{opts}` | {t * 1e3:.0f} | {ratio} | {pairs} | {density} | {rate} | "
                  f"{r['peak'] / 2**20:.0f} | {r['rss'] / 2**20:.0f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
