"""One contender at one shape, in a fresh process (its peak memory is its own): prints one JSON line.

    python bench/harness/worker.py MECHANISM CONTENDER N CAUSAL --out-dir DIR [--reps R] [--warmup W] ...

CONTENDER is "eformer" (our functional form, eformer.attention) or a peer's name (peers/). Ours writes its
forward output to DIR; a peer first computes its forward on the same inputs and compares: over its tolerance
(or with no output of ours to compare with) it refuses to be timed, and says so in its JSON.

Per mode (fwd: the forward under no_grad; fwdbwd: forward with q, k, v requiring gradients, then backward of a
fixed random upstream gradient; w, omega are constants), `warmup` untimed calls then up to `reps` timed ones
(fewer when a call takes more than a third of --call-budget seconds). Memory per mode: peak RSS above the RSS
with the inputs made and the peer set up, before any call (VmHWM reset through /proc/self/clear_refs before the
mode's first call), and for eformer also its allocator's peak above the live bytes (eformer.memory_stats()).
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # bench/, so that `harness` imports


def rss_bytes(field="VmRSS"):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1)) * 1024


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def eformer_extras(extras):
    """The extras as eformer.attention's keyword arguments: arrays as tensors, numbers as options."""
    import eformer as ef
    return {n: ef.tensor(a) if isinstance(a, np.ndarray) else a for n, a in extras.items()}


def eformer_calls(entry, causal, inp):
    import eformer as ef
    extras = eformer_extras(inp["extras"])
    g = ef.tensor(inp["g"])

    def fwd():
        with ef.no_grad():
            return ef.attention(*(ef.tensor(inp[n]) for n in "qkv"), kind=entry["name"], causal=causal, **extras)

    def fwdbwd():
        q, k, v = (ef.tensor(inp[n], requires_grad=True) for n in "qkv")
        ef.attention(q, k, v, kind=entry["name"], causal=causal, **extras).backward(g)
    return fwd, fwdbwd, lambda out: out.numpy()


def torch_calls(peer, entry, causal, inp, threads):
    import torch
    torch.set_num_threads(threads)
    fn = peer.prepare(entry, causal, inp)
    g = torch.from_numpy(inp["g"])

    def fwd():
        with torch.no_grad():
            return fn(*(torch.from_numpy(inp[n]) for n in "qkv"))

    def fwdbwd():
        q, k, v = (torch.tensor(inp[n], requires_grad=True) for n in "qkv")
        fn(q, k, v).backward(g)
    return fwd, fwdbwd, lambda out: out.detach().numpy()


def check(out, ours_path, tolerance, rows=None):
    """rows: Bool [B, H, N], the rows the peer computes as we do (None: all)."""
    if not os.path.exists(ours_path):
        return {"ok": False, "why": "no output of ours at this shape to compare with"}
    ours = np.load(ours_path)
    if out.shape != ours.shape:
        return {"ok": False, "why": f"shape {list(out.shape)} vs ours {list(ours.shape)}"}
    if rows is not None:
        out, ours = out[rows], ours[rows]
    diff = float(np.nanmax(np.abs(out - ours))) if np.isfinite(out).all() else float("inf")
    rel = diff / max(float(np.abs(ours).max()), 1e-30)
    return {"ok": rel <= tolerance, "max_abs_diff": diff, "rel_diff": rel, "tolerance": tolerance}


def time_mode(call, warmup, reps, call_budget, ef=None):
    reset_hwm()
    if ef is not None:
        ef.reset_peak_memory_stats()
        live = ef.memory_stats()["live_bytes"]
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        if dt > call_budget / 3 and times:
            break
    out = {"times": times, "rss_peak": rss_bytes("VmHWM")}
    if ef is not None:
        out["alloc_peak"] = ef.memory_stats()["peak_bytes"] - live
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mechanism")
    p.add_argument("contender")
    p.add_argument("N", type=int)
    p.add_argument("causal", type=int)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--call-budget", type=float, default=30.0, help="seconds of timed calls per mode")
    a = p.parse_args()
    causal = bool(a.causal)
    import eformer as ef
    from harness import inputs
    entry = next(e for e in ef.mechanisms() if e["name"] == a.mechanism)
    inp = inputs.make(entry, a.N, causal)
    ours_path = os.path.join(a.out_dir, f"{a.mechanism}-{a.N}-{int(causal)}.npy")
    result = {"mechanism": a.mechanism, "contender": a.contender, "N": a.N, "causal": causal,
              "threads": a.threads}
    if a.contender == "eformer":
        ef.set_num_threads(a.threads)
        fwd, fwdbwd, to_numpy = eformer_calls(entry, causal, inp)
        base = rss_bytes()  # before any call: memory a call leaves cached (ours) or in the heap (glibc) counts
        np.save(ours_path, to_numpy(fwd()))
        meter = ef
    else:
        from harness.peers import BY_NAME
        ef.set_num_threads(1)  # eformer only builds inputs and patterns here
        peer = BY_NAME[a.contender]
        fwd, fwdbwd, to_numpy = torch_calls(peer, entry, causal, inp, a.threads)
        base = rss_bytes()
        rows = peer.rows(entry, causal, inp)
        result["check"] = check(to_numpy(fwd()), ours_path, peer.tolerance, rows)
        if rows is not None:
            result["check"]["rows_compared"] = int(rows.sum())
        result["check"]["how"] = peer.check
        meter = None
        if not result["check"]["ok"]:
            result["refused"] = "output differs from ours: not timed"
            print(json.dumps(result))
            return
    result["rss_inputs"] = base
    for mode in a.modes.split(","):
        m = time_mode(fwd if mode == "fwd" else fwdbwd, a.warmup, a.reps, a.call_budget, meter)
        m["rss_peak"] -= base
        result[mode] = m
    print(json.dumps(result))


if __name__ == "__main__":
    main()
