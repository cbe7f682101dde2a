"""CPU time per call of bidirectional aft_full (eformer) or the torch pseudo-code peer, at a fixed thread
count: a measure that other processes' load does not inflate (their work does not run on our CPU time), for
comparing builds and libraries on a shared machine. One (library, shape) per process; prints
"wall_ms/cpuCPU_ms", the medians of REPS calls after one warm-up.

    PYTHONPATH=build/python .peers/bin/python bench/aft_cpu_time.py LIB N THREADS MODE WGRAD REPS [SHAPE]

LIB: eformer or torch; MODE: fwd (under no_grad) or fwdbwd; WGRAD: 1 to take w's gradient too; SHAPE: harness
(B=1, H=8, d=64, one bias head w [1, N, N], the default) or issue (B=8, H=1, d=256). The torch form is the
harness's torch-paper peer: sigmoid(Q) exp(w - max) @ (exp(K - max) V) / exp(w - max) @ exp(K - max), the
heads' channels side by side under the one bias head.
"""
import statistics
import sys
import time

import numpy as np

lib, N, threads, mode, wgrad, reps = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                      sys.argv[5] == "1", int(sys.argv[6]))
B, H, d = (8, 1, 256) if len(sys.argv) > 7 and sys.argv[7] == "issue" else (1, 8, 64)
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(3))
w = (0.1 * rng.standard_normal((1, N, N))).astype(np.float32)

if lib == "torch":
    import torch
    torch.set_num_threads(threads)

    def run():
        qt, kt, vt = (torch.tensor(x, requires_grad=(mode != "fwd")) for x in (q, k, v))
        wt = torch.tensor(w, requires_grad=(wgrad and mode != "fwd"))

        def f():
            q2, k2, v2 = (x.transpose(1, 2).reshape(B, 1, N, H * d) for x in (qt, kt, vt))
            ek = torch.exp(k2 - k2.amax(dim=2, keepdim=True).detach())
            ew = torch.exp(wt - wt.amax(dim=-1, keepdim=True).detach())
            return torch.sigmoid(q2) * (ew @ (ek * v2)) / (ew @ ek)
        if mode == "fwd":
            with torch.no_grad():
                return f()
        f().backward(torch.ones(B, 1, N, H * d))
else:
    import eformer as ef
    ef.set_num_threads(threads)
    g = ef.tensor(np.ones(q.shape, np.float32))

    def run():
        if mode == "fwd":
            with ef.no_grad():
                return ef.attention(ef.tensor(q), ef.tensor(k), ef.tensor(v), kind="aft_full", causal=False,
                                    w=ef.tensor(w))
        qe, ke, ve = (ef.tensor(x, requires_grad=True) for x in (q, k, v))
        we = ef.tensor(w, requires_grad=wgrad)
        ef.attention(qe, ke, ve, kind="aft_full", causal=False, w=we).backward(g)

run()
wall, cpu = [], []
for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    wall.append((time.perf_counter() - t0) * 1e3)
    cpu.append((time.process_time() - c0) * 1e3)
print(f"{statistics.median(wall):.0f}/cpu{statistics.median(cpu):.0f}")
