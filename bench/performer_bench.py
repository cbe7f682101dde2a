"""Kernelized attention, forward + backward, vs N: eformer performer (FAVOR+, causal and bidirectional),
eformer linear (elu + 1, causal), eformer flash (exact, causal), and the PyTorch peer
(bench/performer_torch.py: FAVOR+ causal by cumulative sums, and bidirectional), float32, the same
thread count for both libraries, B=1, H=8, d=64, m = round(d ln d) = 266, the same omega for every
performer (eformer.draw_omega(m, d, seed=0), passed explicitly).

Every (contender, N) runs in a fresh subprocess. Its first call is untimed and measures memory: the peak
RSS above the inputs (VmHWM reset through /proc/self/clear_refs, after eformer.empty_cache(), so the
figure is the same measure for both libraries) and, for eformer, the allocator peak above the inputs
(eformer.memory_stats()["peak_bytes"]). Then R timed calls; the median is reported. A contender is
skipped at N where its time, extrapolated from its last N (N^2 for flash, N for the others), would pass
--time-limit seconds per call, and the torch causal form where its [H, N, m, d] cumsum tensor would pass
--torch-limit-gb or, at about 4.2x that tensor, the memory available.

PyTorch allocates through glibc malloc, which maps blocks over 32 MiB fresh from the kernel on every call
and unmaps them when freed, so torch's time includes first-touch page faults on all its large
temporaries; eformer's allocator keeps freed large blocks (BENCHMARKS.md, "The allocator cache"). The
third table (wall vs CPU time and page faults per call) shows how much of each time is that.

    PYTHONPATH=build/python /usr/bin/python3 bench/performer_bench.py [--ns 1024 2048 ...] [--repeats 3]
    PYTHONPATH=build/python /usr/bin/python3 bench/performer_bench.py --generation [--contexts 1024 8192 65536]

--generation: per-token latency of the recurrent step of ef.models.make_mechanism(name, 512, 8,
causal=True) for "performer" (state S, z: O(1) per token) and "flash" (a KV cache: O(context) per token).
The context is fed through start/step in chunks of --chunk tokens under no_grad, then --gen-steps
single-token steps are timed at that context (median). One state per mechanism grows through the
contexts in increasing order. Flash's chunked prefill is quadratic: it stops where the projected
remaining prefill passes --prefill-limit seconds, and the table says so.
"""
import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

B, H, D_HEAD = 1, 8, 64
M_FEATURES = round(D_HEAD * math.log(D_HEAD))  # 266

# name -> (library, kind, causal, time growth exponent in N)
CONTENDERS = {
    "ef-performer-causal": ("eformer", "performer", True, 1),
    "ef-performer-bidir": ("eformer", "performer", False, 1),
    "ef-linear-causal": ("eformer", "linear", True, 1),
    "ef-flash-causal": ("eformer", "flash", True, 2),
    "torch-performer-causal": ("torch", "performer", True, 1),
    "torch-performer-bidir": ("torch", "performer", False, 1),
    # The same, with glibc malloc told to keep freed memory (no mmap, no trim): torch's big temporaries
    # are then reused instead of page-faulted in afresh on every call, as eformer's allocator cache does.
    "torch-performer-causal-heap": ("torch", "performer", True, 1),
    "torch-performer-bidir-heap": ("torch", "performer", False, 1),
    # not in the default list; --contenders may add them
    "ef-linear-bidir": ("eformer", "linear", False, 1),
    "torch-linear-causal": ("torch", "linear", True, 1),
    "torch-linear-bidir": ("torch", "linear", False, 1),
}
DEFAULT_CONTENDERS = list(CONTENDERS)[:6]
# Peak RSS of torch's causal cumsum form, forward + backward, over the size of its [H, N, F, d] cumsum
# tensor (measured 4.2 at N = 1024 and 2048: the forward holds the einsum and its cumsum, the backward
# their gradients). Used to skip N that would not fit in the memory available.
TORCH_CAUSAL_PEAK_FACTOR = 4.2


# ---- memory measurement -------------------------------------------------------------------------

def _status_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1))


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0) and returns the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def mem_available():
    with open("/proc/meminfo") as f:
        return int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) * 1024


def peak_rss():
    return _status_kib("VmHWM") * 1024


# ---- one contender at one N (subprocess) --------------------------------------------------------

def worker(name, N, repeats, threads, omega_path):
    import numpy as np
    library, kind, causal, _ = CONTENDERS[name]
    rng = np.random.default_rng(0)
    q, k, v, g = [rng.standard_normal((B, H, N, D_HEAD)).astype(np.float32) for _ in range(4)]
    omega = np.load(omega_path)
    alloc_peak = None
    if library == "torch":
        import torch
        import performer_torch as pt
        torch.set_num_threads(threads)
        gt, omega_t = torch.from_numpy(g), torch.from_numpy(omega)

        def call():
            qt, kt, vt = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
            t0 = time.perf_counter()
            if kind == "performer":
                out = pt.performer_attention(qt, kt, vt, omega_t, causal=causal)
            else:
                out = pt.elu_linear_attention(qt, kt, vt, causal=causal)
            out.backward(gt)
            return time.perf_counter() - t0

        def measured_call():
            base = reset_peak_rss()
            call()
            return peak_rss() - base
    else:
        import eformer as ef
        ef.set_num_threads(threads)
        ge, omega_e = ef.tensor(g), ef.tensor(omega)
        extra = {"omega": omega_e} if kind == "performer" else {}

        def call():
            qe, ke, ve = [ef.tensor(a, requires_grad=True) for a in (q, k, v)]
            t0 = time.perf_counter()
            out = ef.attention(qe, ke, ve, kind=kind, causal=causal, **extra)
            out.backward(ge)
            return time.perf_counter() - t0

        def measured_call():
            nonlocal alloc_peak
            ef.empty_cache()
            ef.reset_peak_memory_stats()
            live = ef.memory_stats()["live_bytes"]
            base = reset_peak_rss()
            call()
            alloc_peak = ef.memory_stats()["peak_bytes"] - live
            return peak_rss() - base
    rss = measured_call()  # also the warmup
    times, cpu, faults = [], [], []
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        times.append(call())
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        faults.append(r1.ru_minflt - r0.ru_minflt)
    print(json.dumps({"times": times, "rss_peak": rss, "alloc_peak": alloc_peak,
                      "cpu": statistics.median(cpu), "faults": statistics.median(faults)}))


# ---- the sweep ----------------------------------------------------------------------------------

def torch_causal_bytes(kind, N):
    import performer_torch as pt
    F = M_FEATURES if kind == "performer" else D_HEAD
    return pt.causal_context_bytes(B, H, N, F, D_HEAD)


def run_sweep(args):
    import numpy as np
    import eformer as ef
    for c in args.contenders:
        if c not in CONTENDERS:
            sys.exit(f"unknown contender {c!r}; known: {', '.join(CONTENDERS)}")
    omega = ef.draw_omega(M_FEATURES, D_HEAD, ortho=True, norms="chi", seed=0).numpy()
    fd, omega_path = tempfile.mkstemp(suffix=".npy", prefix="omega_")
    os.close(fd)
    np.save(omega_path, omega.astype(np.float32))
    print(f"B={B} H={H} d={D_HEAD} m={M_FEATURES} float32, {args.threads} threads, forward+backward, "
          f"median of {args.repeats} (after 1 untimed call that measures memory)\n", flush=True)
    results = {}  # (contender, N) -> dict
    notes = []
    last = {}  # contender -> (N, median seconds)
    try:
        for N in sorted(args.ns):
            for c in args.contenders:
                library, kind, causal, growth = CONTENDERS[c]
                if library == "torch" and causal:
                    size = torch_causal_bytes(kind, N)
                    if size > args.torch_limit_gb * 1e9:
                        notes.append(f"{c} N={N}: skipped, its cumsum tensor [H, N, F, d] alone would be "
                                     f"{size / 1e9:.1f} GB (> {args.torch_limit_gb:g} GB)")
                        continue
                    need, avail = size * TORCH_CAUSAL_PEAK_FACTOR, mem_available()
                    if need > 0.9 * avail:
                        notes.append(f"{c} N={N}: skipped, its peak would be ~{need / 1e9:.1f} GB "
                                     f"({TORCH_CAUSAL_PEAK_FACTOR}x its {size / 1e9:.1f} GB cumsum tensor) with "
                                     f"{avail / 1e9:.1f} GB available")
                        continue
                if c in last:
                    n0, t0 = last[c]
                    est = t0 * (N / n0) ** growth
                    if est > args.time_limit:
                        notes.append(f"{c} N={N}: skipped, estimated {est:.0f} s per call (from {t0:.1f} s at "
                                     f"N={n0}, grows as N^{growth}) > {args.time_limit:g} s")
                        continue
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", c, str(N), "--repeats",
                       str(args.repeats), "--threads", str(args.threads), "--omega", omega_path]
                env = dict(os.environ)
                if c.endswith("-heap"):
                    env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 62), MALLOC_TOP_PAD_=str(1 << 30))
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    notes.append(f"{c} N={N}: failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["median"] = statistics.median(r["times"])
                results[(c, N)] = r
                last[c] = (N, r["median"])
            print_row(args, results, N, first=(N == min(args.ns)))
    finally:
        os.unlink(omega_path)
    print_summary(args, results, notes)


def _ms(r):
    return f"{r['median'] * 1e3:.0f}" if r else "-"


def _mib(x):
    return f"{x / 2**20:.0f}" if x is not None else "-"


def _ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


def print_row(args, results, N, first):
    cs = args.contenders
    if first:
        head = ["N"] + [f"{c} ms / MiB" for c in cs] + \
               ["torch/ef causal performer time", "torch-heap/ef time", "torch/ef causal performer peak",
                "flash/performer causal time"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    cells = [str(N)]
    for c in cs:
        r = results.get((c, N))
        cells.append(f"{_ms(r)} / {_mib(r['rss_peak'])}" if r else "-")
    get = lambda c, key: results[(c, N)][key] if (c, N) in results else None  # noqa: E731
    cells.append(_ratio(get("torch-performer-causal", "median"), get("ef-performer-causal", "median")))
    cells.append(_ratio(get("torch-performer-causal-heap", "median"), get("ef-performer-causal", "median")))
    cells.append(_ratio(get("torch-performer-causal", "rss_peak"), get("ef-performer-causal", "rss_peak")))
    cells.append(_ratio(get("ef-flash-causal", "median"), get("ef-performer-causal", "median")))
    print("| " + " | ".join(cells) + " |", flush=True)


def print_summary(args, results, notes):
    ns = sorted(args.ns)
    ef_cs = [c for c in args.contenders if CONTENDERS[c][0] == "eformer"]
    print("\nMiB above = peak RSS above the inputs (the same measure for both libraries).")
    if ef_cs:
        print("\neformer allocator peak above the inputs, MiB:\n")
        print("| N | " + " | ".join(ef_cs) + " |")
        print("|" + "---|" * (len(ef_cs) + 1))
        for N in ns:
            cells = [_mib(results[(c, N)]["alloc_peak"]) if (c, N) in results else "-" for c in ef_cs]
            print(f"| {N} | " + " | ".join(cells) + " |")
    print("\nWhere the time goes, per timed call (medians): wall ms / CPU ms (user + sys, all threads) / page faults. "
          "Wall far above CPU / threads means waiting, e.g. on first-touch page faults of fresh memory:\n")
    print("| N | " + " | ".join(args.contenders) + " |")
    print("|" + "---|" * (len(args.contenders) + 1))
    for N in ns:
        cells = [f"{r['median'] * 1e3:.0f} / {r['cpu'] * 1e3:.0f} / {r['faults']:.0f}"
                 if (r := results.get((c, N))) else "-" for c in args.contenders]
        print(f"| {N} | " + " | ".join(cells) + " |")
    # Crossover of performer causal and flash causal.
    both = [N for N in ns if ("ef-performer-causal", N) in results and ("ef-flash-causal", N) in results]
    if both:
        ratio = {N: results[("ef-flash-causal", N)]["median"] / results[("ef-performer-causal", N)]["median"]
                 for N in both}
        wins = [N for N in both if ratio[N] > 1 and all(ratio[n] > 1 for n in both if n >= N)]
        # flash ~ a N^2 and performer ~ b N, so flash/performer ~ N (a / b): 1 at N / ratio(N). The
        # estimate is taken from the measured N whose ratio is closest to 1.
        ref = min(both, key=lambda n: abs(math.log(ratio[n])))
        estimate = ref / ratio[ref]
        if wins:
            print(f"\nCrossover: performer causal beats flash causal from N = {wins[0]} on (measured; "
                  f"flash/performer = {ratio[wins[0]]:.2f}x there); break-even estimated at N ~ {estimate:.0f} "
                  f"(flash ~ N^2, performer ~ N, from N={ref}).")
        else:
            print(f"\nCrossover: not reached up to N = {both[-1]} (flash/performer = {ratio[both[-1]]:.2f}x "
                  f"there); break-even estimated at N ~ {estimate:.0f} (flash ~ N^2, performer ~ N, from N={ref}).")
    for n in notes:
        print(f"- {n}")


# ---- generation latency -------------------------------------------------------------------------

def gen_worker(name, contexts, chunk, steps, threads, prefill_limit):
    import numpy as np
    import eformer as ef
    ef.set_num_threads(threads)
    d_model = H * D_HEAD
    mech = ef.models.make_mechanism(name, d_model, H, causal=True, cross=False, options={})
    mech.eval()
    rng = np.random.default_rng(0)
    chunk_x = ef.tensor(rng.standard_normal((1, chunk, d_model)).astype(np.float32))
    token_xs = [ef.tensor(rng.standard_normal((1, 1, d_model)).astype(np.float32)) for _ in range(steps)]
    result = {}
    with ef.no_grad():
        state = mech.start(1)
        prefill = 0.0
        last_chunk = None  # (length before the chunk, seconds)
        for context in sorted(contexts):
            stopped = False
            while state.length < context:
                T = min(chunk, context - state.length)
                if name == "flash" and last_chunk is not None:
                    # A chunk costs ~ its keys (the context so far); project what is left to the largest context.
                    L0, t0 = last_chunk
                    L, projected = state.length, 0.0
                    while L < context:
                        projected += t0 * (L + chunk) / (L0 + chunk)
                        L += chunk
                    if prefill + projected > prefill_limit:
                        result[str(context)] = {"skipped": f"prefill to {context} projected at "
                                                           f"{prefill + projected:.0f} s > {prefill_limit:g} s"}
                        stopped = True
                        break
                x = chunk_x if T == chunk else ef.tensor(rng.standard_normal((1, T, d_model)).astype(np.float32))
                t = time.perf_counter()
                mech.step(state, x)
                dt = time.perf_counter() - t
                prefill += dt
                if T == chunk:
                    last_chunk = (state.length - T, dt)
            if stopped:
                break
            assert state.length == context, (state.length, context)
            times = []
            for x in token_xs:
                t = time.perf_counter()
                mech.step(state, x)
                times.append(time.perf_counter() - t)
            result[str(context)] = {"ms": statistics.median(times) * 1e3, "prefill_s": prefill}
    print(json.dumps(result))


def run_generation(args):
    print(f"Per-token latency of the recurrent step, d_model {H * D_HEAD}, {H} heads (head_dim {D_HEAD}), batch 1, "
          f"{args.threads} threads; context fed in chunks of {args.chunk} under no_grad, then the median of "
          f"{args.gen_steps} single-token steps.\n", flush=True)
    res, notes = {}, []
    for name in ["performer", "flash"]:
        cmd = [sys.executable, os.path.abspath(__file__), "--gen-worker", name, "--contexts",
               *map(str, args.contexts), "--chunk", str(args.chunk), "--gen-steps", str(args.gen_steps),
               "--threads", str(args.threads), "--prefill-limit", str(args.prefill_limit)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            notes.append(f"{name}: failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
            res[name] = {}
            continue
        res[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| context | performer ms/token | flash ms/token | flash/performer | performer prefill s | flash prefill s |")
    print("|---|---|---|---|---|---|")
    ctx = sorted(args.contexts)
    for c in ctx:
        p, f = res["performer"].get(str(c), {}), res["flash"].get(str(c), {})
        for name, r in (("performer", p), ("flash", f)):
            if "skipped" in r:
                notes.append(f"{name} at context {c}: not measured, {r['skipped']}")
            elif not r and res[name]:
                notes.append(f"{name} at context {c}: not measured (a smaller context already stopped)")
        pm, fm = p.get("ms"), f.get("ms")
        cells = [str(c), f"{pm:.3f}" if pm else "-", f"{fm:.3f}" if fm else "-", _ratio(fm, pm),
                 f"{p['prefill_s']:.1f}" if "prefill_s" in p else "-",
                 f"{f['prefill_s']:.1f}" if "prefill_s" in f else "-"]
        print("| " + " | ".join(cells) + " |")
    lo, hi = str(ctx[0]), str(ctx[-1])
    print()
    for name in ["performer", "flash"]:
        a, b = res[name].get(lo, {}).get("ms"), res[name].get(hi, {}).get("ms")
        if a and b:
            print(f"- {name}: latency at {hi} / at {lo} = {b / a:.2f}x")
        else:
            print(f"- {name}: latency ratio {hi}/{lo} not available")
    for n in notes:
        print(f"- {n}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384],
                   help="sequence lengths (the full sweep adds 32768 65536)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per contender and N")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--contenders", nargs="+", default=DEFAULT_CONTENDERS, help=", ".join(CONTENDERS))
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per call beyond which N is skipped")
    p.add_argument("--torch-limit-gb", type=float, default=8.0, help="cap on torch's causal cumsum tensor")
    p.add_argument("--generation", action="store_true", help="per-token generation latency instead")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 65536])
    p.add_argument("--chunk", type=int, default=1024, help="tokens per step() call while filling the context")
    p.add_argument("--gen-steps", type=int, default=50, help="single-token steps timed per context")
    p.add_argument("--prefill-limit", type=float, default=600.0, help="seconds of prefill per mechanism")
    p.add_argument("--worker", nargs=2, metavar=("CONTENDER", "N"), help=argparse.SUPPRESS)
    p.add_argument("--omega", help=argparse.SUPPRESS)
    p.add_argument("--gen-worker", metavar="NAME", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads, args.omega)
    elif args.gen_worker:
        gen_worker(args.gen_worker, args.contexts, args.chunk, args.gen_steps, args.threads, args.prefill_limit)
    elif args.generation:
        run_generation(args)
    else:
        run_sweep(args)


if __name__ == "__main__":
    main()
