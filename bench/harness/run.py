"""The side-by-side benchmark: every registered mechanism (eformer.mechanisms(), those with a functional
form) and its PyTorch peers (peers/), over a grid of N, causal and bidirectional (as each entry declares),
forward and forward + backward, B = 1, H = 8, d = 64, float32, the same thread count for every library.

For each (N, direction, mechanism) the contenders run back to back, ours first (the peers check their output
against it), each in a fresh process (worker.py), `--rounds` times interleaved; times are medians of every
timed call. A contender is not run at an N where its time or memory, extrapolated from its previous N (the
measured log-log slope, else an assumed one), would pass --call-limit seconds per call or --mem-limit-gb,
nor once the --budget would be exceeded; the JSON and the table say which and why. From one point the
exponent is 2 for ours and for peers that materialize N x N, 1.2 for the others.

    scripts/bench.sh [--quick] [--budget MIN] [--sizes N ...] [--mechanisms NAME ...] [--out FILE] [--docs]
"""
import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))

from harness import inputs, machine, report  # noqa: E402
from harness.peers import BY_NAME, PEERS, peers_for  # noqa: E402

QUICK = {"sizes": [1024, 4096], "modes": "fwdbwd", "reps": 2, "warmup": 1, "rounds": 1, "call_limit": 8.0,
         "budget": 9.0}
FULL = {"sizes": [512, 1024, 2048, 4096, 8192, 16384], "modes": "fwd,fwdbwd", "reps": 3, "warmup": 1, "rounds": 1,
        "call_limit": 30.0, "budget": 60.0}


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="N in {1024, 4096}, forward + backward only, 2 timed calls, 9 minutes")
    p.add_argument("--budget", type=float, help="minutes for the whole run (quick 9, full 60)")
    p.add_argument("--sizes", type=int, nargs="+")
    p.add_argument("--mechanisms", nargs="+", help="default: every registered mechanism with a functional form")
    p.add_argument("--peers", nargs="+", help="default: every peer that applies and imports")
    p.add_argument("--directions", nargs="+", choices=["causal", "bidirectional"],
                   default=["bidirectional", "causal"])
    p.add_argument("--modes", help="fwd, fwdbwd or both, comma-separated (quick: fwdbwd; full: both)")
    p.add_argument("--reps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--call-limit", type=float, help="seconds per call beyond which an N is not run")
    p.add_argument("--mem-limit-gb", type=float, help="default: 60%% of MemAvailable at the start")
    p.add_argument("--out", default=None, help="JSON file (default bench-out/bench.json)")
    p.add_argument("--plots", default=None, help="folder for PNG plots (default: the JSON's path without .json)")
    p.add_argument("--docs", action="store_true", help="regenerate docs/BENCHMARKS.md's section from the JSON")
    p.add_argument("--section", default="bench",
                   help="the docs section to regenerate: between <!-- SECTION:begin --> and <!-- SECTION:end -->")
    a = p.parse_args()
    preset = QUICK if a.quick else FULL
    for key, value in preset.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.out = a.out or os.path.join(ROOT, "bench-out", "quick.json" if a.quick else "bench.json")
    a.plots = a.plots or os.path.splitext(os.path.abspath(a.out))[0]  # x/quick.json -> x/quick/
    return a


class Predictor:
    """Extrapolates a contender's time per call and peak memory to the next N from its history."""

    def __init__(self):
        self.points = {}  # key -> [(N, seconds per call, peak bytes)]
        self.first_slope = {}  # key -> the exponent assumed from one point

    def add(self, key, N, seconds, peak, first_slope=2.0):
        self.first_slope[key] = first_slope
        pts = self.points.setdefault(key, [])
        if pts and pts[-1][0] == N:  # another round at the same N: keep the larger figures
            seconds, peak = max(seconds, pts[-1][1]), max(peak, pts[-1][2])
            pts.pop()
        pts.append((N, seconds, peak))

    def predict(self, key, N):
        pts = self.points.get(key)
        if not pts:
            return None, None
        (n1, t1, m1) = pts[-1]
        slope_t = slope_m = self.first_slope.get(key, 2.0)
        if len(pts) >= 2:
            n0, t0, m0 = pts[-2]
            slope_t = min(2.5, max(1.0, math.log(t1 / t0) / math.log(n1 / n0))) if t0 > 0 and t1 > 0 else 2.0
            slope_m = min(2.5, max(1.0, math.log(m1 / m0) / math.log(n1 / n0))) if m0 > 0 and m1 > 0 else 2.0
        r = N / n1
        return t1 * r ** slope_t, m1 * r ** slope_m


def remaining(jobs, current, a, predictor, startup):
    """Seconds left: each contender still to run, startup plus its calls at its extrapolated time per call."""
    left, seen = 0.0, False
    for N, causal, e, contenders in jobs:
        for c in contenders:
            seen = seen or (N, causal, e["name"], c) == current
            if seen:
                t, _ = predictor.predict((e["name"], c, causal), N)
                if t is None or t <= a.call_limit:
                    left += startup + (a.warmup + a.reps) * 1.4 * (t if t is not None else 0.2)
    return left * a.rounds


def median(times):
    return statistics.median(times) if times else None


def plan(a, entries, available):
    """The jobs in run order: N, then direction, then mechanism; each job a list of contenders."""
    jobs = []
    for N in a.sizes:
        for direction in a.directions:
            causal = direction == "causal"
            for e in entries:
                if not e["capabilities"][direction]:
                    continue
                peers = [p.name for p in peers_for(e) if p.name in available and p.supports(e, causal)
                         and (a.peers is None or p.name in a.peers)]
                jobs.append((N, causal, e, ["eformer"] + peers))
    return jobs


def run_worker(a, e, contender, N, causal, tmp):
    cmd = [sys.executable, os.path.join(HERE, "worker.py"), e["name"], contender, str(N), str(int(causal)),
           "--out-dir", tmp, "--modes", a.modes, "--reps", str(a.reps), "--warmup", str(a.warmup),
           "--threads", str(a.threads), "--call-budget", str(3 * a.call_limit)]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if out.returncode != 0 or not out.stdout.strip():
        return {"error": (out.stderr.strip() or f"exit code {out.returncode}")[-600:]}, wall
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def merge(into, r):
    if into is None:
        return r
    for mode in ("fwd", "fwdbwd"):
        if mode in r and mode in into:
            into[mode]["times"] += r[mode]["times"]
            for key in ("rss_peak", "alloc_peak"):
                if key in r[mode]:
                    into[mode][key] = max(into[mode][key], r[mode][key])
    return into


def main():
    a = parse()
    import eformer as ef
    start = time.time()
    entries = [e for e in ef.mechanisms() if e["functional"] and (a.mechanisms is None or e["name"] in a.mechanisms)]
    peer_status = {}
    for p in PEERS:
        why = p.available()
        peer_status[p.name] = {"package": p.package, "version": machine.version(p.package), "check": p.check,
                               "available": why is None, "why": why,
                               "serves": [e["name"] for e in entries if p.applies(e)]}
    available = {n for n, s in peer_status.items() if s["available"]}
    print(f"machine: measuring sgemm and reading versions ({a.threads} threads) ...", file=sys.stderr)
    info = machine.describe(a.threads)
    mem_limit = (a.mem_limit_gb * 1e9) if a.mem_limit_gb else 0.6 * info["mem_available_bytes"]
    jobs = plan(a, entries, available)
    total = sum(len(c) for *_, c in jobs) * a.rounds
    predictor, results = Predictor(), []
    skipped = [{"mechanism": e["name"], "contender": "eformer", "N": N, "causal": False,
                "why": "no functional form: eformer.attention cannot call it on q, k, v"}
               for e in ef.mechanisms() if not e["functional"] for N in a.sizes[:1]]
    done, startup = 0, 3.0
    budget_s = a.budget * 60
    tmp = tempfile.mkdtemp(prefix="eformer-bench-")
    for N, causal, e, contenders in jobs:
        merged = {c: None for c in contenders}
        for rnd in range(a.rounds):
            for c in contenders:
                key = (e["name"], c, causal)
                t_pred, m_pred = predictor.predict(key, N)
                reason = None
                if c != "eformer" and merged["eformer"] is None:
                    reason = "ours did not run at this N (nothing to check the peer against)"
                elif t_pred is not None and t_pred > a.call_limit:
                    reason = f"predicted {t_pred:.0f} s per call > --call-limit {a.call_limit:g}"
                elif m_pred is not None and m_pred > mem_limit:
                    reason = f"predicted peak {m_pred / 1e9:.1f} GB > memory limit {mem_limit / 1e9:.1f} GB"
                est = startup + (a.warmup + a.reps) * 1.5 * (t_pred or 0.5)
                if reason is None and time.time() - start + est > budget_s:
                    reason = f"over the budget of {a.budget:g} minutes"
                done += 1
                if reason:
                    if rnd == 0:
                        skipped.append({"mechanism": e["name"], "contender": c, "N": N, "causal": causal,
                                        "why": reason})
                    continue
                elapsed = time.time() - start
                eta = min(budget_s - elapsed, remaining(jobs, (N, causal, e["name"], c), a, predictor, startup))
                print(f"\r[{done}/{total}] N={N} {'causal' if causal else 'bidir '} {e['name']:>14} {c:<18} "
                      f"elapsed {elapsed / 60:4.1f} min, ETA {max(0, eta) / 60:4.1f} min   ",
                      end="", file=sys.stderr, flush=True)
                r, wall = run_worker(a, e, c, N, causal, tmp)
                if "error" in r or r.get("refused"):
                    if rnd == 0:
                        r.update({"mechanism": e["name"], "contender": c, "N": N, "causal": causal})
                        skipped.append({"mechanism": e["name"], "contender": c, "N": N, "causal": causal,
                                        "why": r.get("refused") or "failed: " + r["error"],
                                        "check": r.get("check")})
                    continue
                merged[c] = merge(merged[c], r)
                last = r.get("fwdbwd") or r.get("fwd")
                if last and last["times"]:
                    startup = 0.8 * startup + 0.2 * max(0.5, wall - sum(last["times"]) * 1.5)
                    # from one point: N^2 for ours (its cost is not in the registry) and quadratic peers
                    slope = 2.0 if c == "eformer" or BY_NAME[c].quadratic else 1.2
                    predictor.add(key, N, median(last["times"]), max(1, last["rss_peak"]), slope)
        for c, r in merged.items():
            if r is None:
                continue
            for mode in ("fwd", "fwdbwd"):
                if mode in r:
                    r[mode]["median"] = median(r[mode]["times"])
            results.append(r)
    print(file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    info["load_average_after"] = os.getloadavg()
    data = {"command": "scripts/bench.sh " + " ".join(shlex.quote(x) for x in sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "minutes": (time.time() - start) / 60,
            "shape": dict(inputs.SHAPE), "dtype": "float32", "modes": a.modes.split(","),
            "sizes": a.sizes, "reps": a.reps, "warmup": a.warmup, "rounds": a.rounds,
            "call_limit_s": a.call_limit, "mem_limit_bytes": mem_limit, "budget_minutes": a.budget,
            "machine": info, "peers": peer_status,
            "mechanisms": [{"name": e["name"], "capabilities": e["capabilities"],
                            "options": {o["name"]: o["default"] for o in e["options"]}} for e in entries],
            "results": results, "skipped": skipped}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(data, f, indent=1)
    print(report.table(data))
    for path in report.plots(data, a.plots):
        print(f"plot: {path}", file=sys.stderr)
    if a.docs:
        report.update_docs(data, os.path.join(ROOT, "docs", "BENCHMARKS.md"), a.out, a.plots, a.section)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
