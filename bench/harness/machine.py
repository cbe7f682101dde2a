"""What the report records about the machine and the software: CPU model, cores, the thread count used, the
load average, an sgemm rate measured in the run (ours through oneDNN, torch's through its BLAS), versions of
eformer, torch and every peer package, and torch's build configuration (its BLAS backend)."""
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    return 0


def eformer_sgemm(threads, n=2048):
    import eformer as ef
    ef.set_num_threads(threads)
    a, b = (ef.tensor(np.random.default_rng(i).random((n, n), dtype=np.float32)) for i in range(2))
    ef.matmul(a, b)
    best = min(_timed(lambda: ef.matmul(a, b)) for _ in range(5))
    return 2.0 * n ** 3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


TORCH_PROBE = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
n = 2048
a, b = torch.rand(n, n), torch.rand(n, n)
a @ b
best = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(json.dumps({"version": torch.__version__, "config": torch.__config__.show(),
                  "parallel": torch.__config__.parallel_info(), "sgemm_gflops": 2.0 * n ** 3 / best / 1e9}))
"""


def torch_probe(threads):
    """torch's version, build configuration and sgemm rate, from a fresh process (None without torch)."""
    out = subprocess.run([sys.executable, "-c", TORCH_PROBE, str(threads)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(threads):
    import eformer as ef
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "load_average": os.getloadavg(),
            "python": sys.version.split()[0], "executable": sys.executable, "eformer": ef.__version__,
            "eformer_sgemm_gflops": eformer_sgemm(threads), "torch": torch_probe(threads),
            "mem_available_bytes": mem_available_bytes(), "platform": platform.platform()}
