"""Sparse Sinkhorn attention's native causal step: per-token latency at the end of a long context.

One layer (d_model 512, 8 heads, block 64), evaluation mode: a prefill of N - 64 tokens in one step, then the
last 64 tokens one at a time (one of them opens a block: its row of P is balanced then), and the parallel
causal forward over all N for comparison (what the recompute fallback would pay per token).

    PYTHONPATH=build/python /usr/bin/python3 bench/sinkhorn_step_bench.py [--sizes 4096 16384]
"""
import argparse
import time

import numpy as np

import eformer as ef


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    ef.set_num_threads(a.threads)
    for N in a.sizes:
        mech = ef.models.make_mechanism("sinkhorn", 512, 8, causal=True, max_len=N)
        mech.eval()
        x = np.random.default_rng(0).standard_normal((1, N, 512)).astype(np.float32)
        with ef.no_grad():
            state = mech.start(1)
            t0 = time.perf_counter()
            mech.step(state, ef.tensor(np.ascontiguousarray(x[:, :N - 64])))
            prefill = time.perf_counter() - t0
            times = []
            for at in range(N - 64, N):
                t0 = time.perf_counter()
                mech.step(state, ef.tensor(np.ascontiguousarray(x[:, at:at + 1])))
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mech(ef.tensor(x))
            parallel = time.perf_counter() - t0
        print(f"N={N}: prefill of {N - 64} tokens {prefill:.3f} s; the last 64 tokens one at a time: median "
              f"{1e3 * np.median(times):.2f} ms, max {1e3 * max(times):.2f} ms; parallel forward {parallel:.3f} s",
              flush=True)


if __name__ == "__main__":
    main()
