"""Forward + backward at B = H = 1 (N = 4096, d = 64) on 1 and 2 threads: flash, the block-sparse kernel on
its dense layout, and longformer (w = 512). Median of the middle two of 4 repetitions.

    PYTHONPATH=build/python /usr/bin/python3 bench/sparse_threads.py
"""
import time, numpy as np, eformer as ef, os
N, B, H, d = 4096, 1, 1, 64
rng = np.random.default_rng(0)
q, k, v, g = [rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(4)]
ge = ef.tensor(g)
def run(kind, opts, threads, causal):
    ef.set_num_threads(threads)
    ts = []
    for r in range(4):
        qe, ke, ve = [ef.tensor(a, requires_grad=True) for a in (q, k, v)]
        t0 = time.perf_counter(); out = ef.attention(qe, ke, ve, kind=kind, causal=causal, **opts); out.backward(ge)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[1:3]
print("load", os.getloadavg()[0])
for causal in (False, True):
  for kind, opts in [("flash", {}), ("local", {"block": 1 << 24, "memory": 1 << 24}), ("longformer", {"window": 512})]:
    t1 = np.mean(run(kind, opts, 1, causal)); t2 = np.mean(run(kind, opts, 2, causal))
    print(f"| {'causal' if causal else 'bidirectional'} | {kind if kind != 'local' else 'dense layout'} | {t1*1e3:.0f} | {t2*1e3:.0f} | {t1/t2:.2f}x |", flush=True)
print("load", os.getloadavg()[0])
