"""CPU time per forward + backward call of one mechanism's functional form (eformer.attention), B=1, H=8, d=64,
float32, at a fixed thread count: the figure least moved by other processes' load (their work does not run on
our CPU time), for comparing two builds on a shared machine. Prints the medians of wall and CPU time over REPS
calls after one warm-up (the calls include making q, k, v tensors from numpy, as the harness's worker does).

    PYTHONPATH=build/python /usr/bin/python3 bench/attention_cpu_time.py KIND N [THREADS] [REPS] [causal]
"""
import statistics
import sys
import time

import numpy as np

import eformer as ef

kind, N = sys.argv[1], int(sys.argv[2])
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 10
causal = len(sys.argv) > 5 and sys.argv[5] == "causal"
ef.set_num_threads(threads)
rng = np.random.default_rng(0)
q, k, v, g = (rng.standard_normal((1, 8, N, 64)).astype(np.float32) for _ in range(4))
grad = ef.tensor(g)


def call():
    qt, kt, vt = (ef.tensor(x, requires_grad=True) for x in (q, k, v))
    ef.attention(qt, kt, vt, kind=kind, causal=causal).backward(grad)


call()
wall, cpu = [], []
for _ in range(reps):
    w0, c0 = time.perf_counter(), time.process_time()
    call()
    wall.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
print(f"{kind} N={N} {'causal' if causal else 'bidir'} threads={threads}: wall {1e3 * statistics.median(wall):.1f} ms,"
      f" cpu {1e3 * statistics.median(cpu):.1f} ms (medians of {reps})")
