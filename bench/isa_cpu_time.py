"""CPU time of the hot kernels on one thread, for comparing builds of the engine (native, x86-64-v3,
x86-64-v4) in one run: one thread and process CPU time, so the other load of a shared machine changes
the figures less than wall time. Prints the module's ISA and medians in ms:
flash fwd+bwd (B=1, H=4, N=2048, d=64), causal and not; performer and linear causal at 4096; a 1024^3 matmul.

    PYTHONPATH=<build>/python [EFORMER_ISA=base|avx512] /usr/bin/python3 bench/isa_cpu_time.py
"""
import sys, time, statistics
import numpy as np
import eformer as ef
ef.set_num_threads(1)
rng = np.random.default_rng(0)
def run(kind, N, causal, **kw):
    q, k, v, g = [ef.tensor(rng.standard_normal((1, 4, N, 64)).astype(np.float32), requires_grad=True) for _ in range(4)]
    ts = []
    for i in range(4):
        t0 = time.process_time()
        out = ef.attention(q, k, v, kind=kind, causal=causal, **kw)
        out.backward(g)
        ts.append(time.process_time() - t0)
    return statistics.median(ts[1:]) * 1000
a = ef.randn(1024, 1024); b = ef.randn(1024, 1024)
t0 = time.process_time(); [a @ b for _ in range(5)]; mm = (time.process_time() - t0) / 5 * 1000
print(ef.isa, end=" ")
print(f"flash2048 {run('flash', 2048, False):.0f} flash2048c {run('flash', 2048, True):.0f} "
      f"performer4096c {run('performer', 4096, True):.0f} linear4096c {run('linear', 4096, True):.0f} matmul1024 {mm:.1f}")
