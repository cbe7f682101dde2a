"""AFT forward + backward vs T: eformer's aft_full, aft_simple, aft_local, aft_conv (the functional forms,
kernels/aft.cpp) against a straightforward PyTorch implementation of the same math written from the paper's
pseudo-code (Zhai et al. 2021): exp(w) @ (exp(K) * V) over exp(w) @ exp(K) for AFT-full and AFT-local (w the
dense bias, zero outside the band for local), cumulative / global sums for AFT-simple, and a depthwise
conv1d of exp(K) * V with exp(u) - 1 plus the sums for AFT-conv; every exponent stabilized by subtracting
the maxima of K (per channel) and of w. float32, B = 8, d = 256, one head (as the paper), causal by
default, both libraries on the same thread count (2), gradients of q, k, v and the bias.

Every (library, variant, T) runs in a fresh subprocess: inputs made, outputs of both libraries checked equal
(max abs difference vs the other library's output on the same inputs, at the smallest T), one untimed
warm-up call that also measures memory (peak RSS above the inputs, VmHWM reset through
/proc/self/clear_refs; for eformer also its allocator's peak above the inputs), then --repeats timed
calls, the median reported.

    PYTHONPATH=build/python /usr/bin/python3 bench/aft_bench.py [--ts 1024 2048 4096 8192 16384]
        [--variants aft_simple aft_local aft_conv aft_full] [--repeats 3] [--bidirectional]
    PYTHONPATH=build/python /usr/bin/python3 bench/aft_bench.py --generation [--contexts 1024 8192 65536]

--generation: per-token latency of the native streaming step of ef.models.make_mechanism(name, 256, 1,
causal=True, max_len = the largest context + the timed steps) for aft_simple, aft_local (window 32) and
aft_conv (kernel 32): the context is fed through start/step in chunks of 1024 tokens under no_grad, then
--gen-steps single-token steps are timed at that context (median). One state per mechanism grows through
the contexts in increasing order.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

B, D = 8, 256
WINDOW, KERNEL = 32, 32


def make_inputs(variant, T, causal, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, 1, T, D)).astype(np.float32) for _ in range(3))
    if variant == "aft_full":
        w = (0.1 * rng.standard_normal((1, T, T))).astype(np.float32)
    elif variant == "aft_local":
        w = (0.1 * rng.standard_normal((1, T, WINDOW if causal else 2 * WINDOW - 1))).astype(np.float32)
    elif variant == "aft_conv":
        w = (0.1 * rng.standard_normal((1, KERNEL))).astype(np.float32)
    else:
        w = None
    return q, k, v, w


def vmhwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ---- the PyTorch peer: the paper's pseudo-code ---------------------------------------------------

def torch_aft(torch, variant, q, k, v, w, causal):
    T = q.shape[2]
    kmax = k.max(dim=2, keepdim=True).values.detach()
    ek = torch.exp(k - kmax)  # [B, 1, T, D]
    ekv = ek * v
    if variant in ("aft_full", "aft_local"):
        if variant == "aft_local":  # the dense bias: the band inside the window, 0 outside
            S = w.shape[-1]
            p = S - 1 if causal else (S - 1) // 2
            rel = torch.arange(T)[None, :] - torch.arange(T)[:, None] + p
            inside = (rel >= 0) & (rel < S)
            wd = torch.gather(w, 2, rel.clamp(0, S - 1)[None]) * inside
        else:
            wd = w
        if causal:
            wd = wd.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1)[None], float("-inf"))
        ew = torch.exp(wd - wd.max(dim=-1, keepdim=True).values.detach())[0]  # [T, T]
        num = torch.matmul(ew, ekv)
        den = torch.matmul(ew, ek)
    else:
        num = torch.cumsum(ekv, 2) if causal else ekv.sum(2, keepdim=True)
        den = torch.cumsum(ek, 2) if causal else ek.sum(2, keepdim=True)
        if variant == "aft_conv":
            s = w.shape[-1]
            p = s - 1 if causal else (s - 1) // 2
            kern = (torch.exp(w) - 1).expand(D, s)[:, None, :]  # one kernel for the head's D channels

            def conv(x):  # x [B, 1, T, D] -> depthwise over T
                xt = torch.nn.functional.pad(x[:, 0].transpose(1, 2), (p, s - 1 - p))
                return torch.nn.functional.conv1d(xt, kern, groups=D).transpose(1, 2)[:, None]
            num = num + conv(ekv)
            den = den + conv(ek)
    return torch.sigmoid(q) * num / den


def worker(lib, variant, T, causal, repeats, threads):
    q, k, v, w = make_inputs(variant, T, causal)
    g = np.random.default_rng(1).standard_normal((B, 1, T, D)).astype(np.float32)
    if lib == "torch":
        import torch
        torch.set_num_threads(threads)
        tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
        tw = torch.tensor(w, requires_grad=True) if w is not None else None
        tg = torch.tensor(g)

        def call():
            for t in (tq, tk, tv, tw):
                if t is not None:
                    t.grad = None
            out = torch_aft(torch, variant, tq, tk, tv, tw, causal)
            out.backward(tg)
            return out
    else:
        import eformer as ef
        ef.set_num_threads(threads)
        eq, ek, ev = (ef.tensor(x, requires_grad=True) for x in (q, k, v))
        ew = ef.tensor(w, requires_grad=True) if w is not None else None
        eg = ef.tensor(g)
        kwargs = {"w": ew} if ew is not None else {}

        def call():
            for t in (eq, ek, ev, ew):
                if t is not None:
                    t.grad = None
            out = ef.attention(eq, ek, ev, kind=variant, causal=causal, **kwargs)
            out.backward(eg)
            return out
    base_rss = vmhwm()
    reset_hwm()
    base_rss = vmhwm()
    alloc_base = None
    if lib == "eformer":
        alloc_base = ef.memory_stats()["live_bytes"]
        ef.reset_peak_memory_stats()
    out = call()
    rss = vmhwm() - base_rss
    alloc = (ef.memory_stats()["peak_bytes"] - alloc_base) if lib == "eformer" else None
    out_np = out.detach().numpy() if lib == "torch" else out.numpy()
    np.save(f"/tmp/aft_bench_{lib}_{variant}_{T}_{int(causal)}.npy", out_np[:, :, :64])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"time": statistics.median(times), "rss": rss, "alloc": alloc}))


def generation(contexts, steps, threads):
    import eformer as ef
    ef.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print(f"per-token step latency (ms, median of {steps}), d_model=256, one head, threads={threads}")
    print("| mechanism | " + " | ".join(f"context {c}" for c in contexts) + " | max / min |")
    print("|---|" + "---|" * (len(contexts) + 1))
    for name in ("aft_simple", "aft_local", "aft_conv"):
        opts = {"window": 32} if name == "aft_local" else {"kernel": 32} if name == "aft_conv" else {}
        mech = ef.models.make_mechanism(name, 256, 1, causal=True, max_len=max(contexts) + 8 * steps, options=opts)
        mech.eval()
        state, at, lat = mech.start(1), 0, []
        with ef.no_grad():
            for c in contexts:
                while at < c:
                    n = min(1024, c - at)
                    mech.step(state, ef.tensor(rng.standard_normal((1, n, 256)).astype(np.float32)))
                    at += n
                times = []
                for _ in range(steps):
                    x = ef.tensor(rng.standard_normal((1, 1, 256)).astype(np.float32))
                    t0 = time.perf_counter()
                    mech.step(state, x)
                    times.append(time.perf_counter() - t0)
                    at += 1
                lat.append(statistics.median(times) * 1e3)
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in lat) + f" | {max(lat) / min(lat):.2f}x |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generation", action="store_true")
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 65536])
    ap.add_argument("--gen-steps", type=int, default=50)
    ap.add_argument("--ts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--variants", nargs="+", default=["aft_simple", "aft_local", "aft_conv", "aft_full"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--time-limit", type=float, default=60.0, help="skip a library past this many s per call")
    ap.add_argument("--worker", nargs=4)
    args = ap.parse_args()
    causal = not args.bidirectional
    if args.generation:
        generation(args.contexts, args.gen_steps, args.threads)
        return
    if args.worker:
        lib, variant, T, c = args.worker
        worker(lib, variant, int(T), c == "1", args.repeats, args.threads)
        return
    print(f"B={B}, d={D}, one head, {'causal' if causal else 'bidirectional'}, threads={args.threads}, "
          f"window={WINDOW}, kernel={KERNEL}, median of {args.repeats}")
    print("| variant | T | eformer ms | torch ms | speedup | eformer alloc peak MiB | eformer RSS MiB "
          "| torch RSS MiB | memory ratio (RSS) | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant in args.variants:
        last = {}
        for T in args.ts:
            r = {}
            for lib in ("eformer", "torch"):
                growth = 2 if variant in ("aft_full",) or (lib == "torch" and variant == "aft_local") else 1
                if lib in last and last[lib][1] * (T / last[lib][0]) ** growth > args.time_limit:
                    r[lib] = None
                    continue
                p = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--threads",
                                    str(args.threads), "--worker", lib, variant, str(T), "1" if causal else "0"],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    r[lib] = None
                    print(f"<!-- {lib} {variant} T={T} failed: {p.stderr.strip().splitlines()[-1:]} -->")
                    continue
                r[lib] = json.loads(p.stdout.strip().splitlines()[-1])
                last[lib] = (T, r[lib]["time"])
            e, t = r.get("eformer"), r.get("torch")
            diff = "-"
            if e and t:
                a = np.load(f"/tmp/aft_bench_eformer_{variant}_{T}_{int(causal)}.npy")
                b = np.load(f"/tmp/aft_bench_torch_{variant}_{T}_{int(causal)}.npy")
                diff = f"{np.abs(a - b).max():.1e}"
            fmt = lambda x, k, s=1e3: f"{x[k] * s:.0f}" if x and x.get(k) is not None else "-"
            speed = f"{t['time'] / e['time']:.2f}x" if e and t else "-"
            mem = f"{t['rss'] / max(e['rss'], 1):.2f}x" if e and t else "-"
            print(f"| {variant} | {T} | {fmt(e, 'time')} | {fmt(t, 'time')} | {speed} | "
                  f"{fmt(e, 'alloc', 2**-20)} | {fmt(e, 'rss', 2**-20)} | {fmt(t, 'rss', 2**-20)} | {mem} | {diff} |",
                  flush=True)


if __name__ == "__main__":
    main()
