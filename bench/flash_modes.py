"""flash forward and forward + backward, B=1, H=8, d=64, float32, causal and bidirectional: the median of
--reps timed calls after one warm-up, each (N, direction) in a fresh process. For before/after figures run it
once per build (PYTHONPATH names the build) and label the runs with --label.

    PYTHONPATH=build/python /usr/bin/python3 bench/flash_modes.py [--sizes 4096 16384] [--reps 3] [--label new]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

B, H, d = 1, 8, 64


def worker(N, causal, reps, threads):
    import numpy as np
    import eformer as ef
    ef.set_num_threads(threads)
    rng = np.random.default_rng(0)
    q, k, v, g = [rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(4)]
    ge = ef.tensor(g)
    fwd, both = [], []
    for r in range(reps + 1):
        qe, ke, ve = [ef.tensor(a, requires_grad=True) for a in (q, k, v)]
        t0 = time.perf_counter()
        out = ef.attention(qe, ke, ve, kind="flash", causal=causal)
        t1 = time.perf_counter()
        out.backward(ge)
        t2 = time.perf_counter()
        if r:  # the first call warms up
            fwd.append(t1 - t0)
            both.append(t2 - t0)
    print(json.dumps({"fwd": statistics.median(fwd), "both": statistics.median(both)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--label", default=os.environ.get("PYTHONPATH", ""))
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(int(a.worker[0]), a.worker[1] == "causal", a.reps, a.threads)
    print(f"flash ({a.label}), B={B} H={H} d={d}, {a.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print("| N | direction | fwd ms | fwd+bwd ms |\n|---|---|---|---|")
    for N in a.sizes:
        for direction in ("causal", "bidirectional"):
            out = subprocess.run([sys.executable, __file__, "--worker", str(N), direction, "--reps", str(a.reps),
                                  "--threads", str(a.threads)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {N} | {direction} | {r['fwd'] * 1e3:.0f} | {r['both'] * 1e3:.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
