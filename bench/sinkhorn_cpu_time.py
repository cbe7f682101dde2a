"""CPU time per forward + backward of our sinkhorn at the shape of bench/sinkhorn_peer.py (B=1, H=8, d=64, block
64, 8 iterations, temperature 0.75, its inputs and sort net from seed 0), at a fixed thread count: a measure that
other processes' load inflates far less than wall-clock time, for comparing builds on a shared machine. Prints
the median and the minimum process CPU time of REPS calls after one warm-up, and each call's; then the
median minor page faults of a call (fresh pages: what did not fit the allocator's cache) and the allocator's
peak over the calls.

    PYTHONPATH=build/python /usr/bin/python3 bench/sinkhorn_cpu_time.py N THREADS REPS [causal]
"""
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sinkhorn_peer  # noqa: E402  (make_call: the peer script's own timed call)

import eformer as ef  # noqa: E402

N, threads, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
causal = len(sys.argv) > 4 and sys.argv[4] == "causal"
ef.set_num_threads(threads)
call = sinkhorn_peer.make_call("eformer", causal, N, 8, 64)
call()
times, faults = [], []
ef.reset_peak_memory_stats()
for _ in range(reps):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.process_time()
    call()
    times.append(time.process_time() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(f"N={N} {'causal' if causal else 'bidirectional'} threads={threads}: CPU median "
      f"{statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms, calls "
      f"{[round(t * 1e3, 1) for t in times]}; minor faults per call {statistics.median(faults):.0f}, "
      f"allocator peak {ef.memory_stats()['peak_bytes'] / 2**20:.0f} MiB")
