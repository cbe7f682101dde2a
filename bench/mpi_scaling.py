"""Data-parallel training on this machine: the `small` preset on R ranks x T threads (`mpirun -np R eformer
train --threads T`), rounds interleaved, and a projection to more machines from what was measured.

    PYTHONPATH=build/python /usr/bin/python3 bench/mpi_scaling.py [--steps 12] [--rounds 3]

Per configuration it reports the median step time (the log's elapsed time between steps, evaluation off), tokens/s
and, with several ranks, the median time a step waits for its gradient sums after its backward (the log's
"allreduce_s": what overlapping them with the backward did not hide) as a share of the step.

The projection (weak scaling: each machine keeps its per-rank batch, so the global batch grows with R) takes the
measured compute time per step t_c of one 2-core machine and a ring allreduce of the P float32 gradients,
t_comm(R) = 2 (R - 1) / R * 4 P / bandwidth + 2 (R - 1) * latency, with none of it hidden (the worst case; the
overlap with the backward hides part of it). Assumed network: --bandwidth-gbit (10) and --latency-us (50).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "build", "eformer")


def run(ranks, threads, steps, out):
    cmd = [shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np", str(ranks), "--bind-to",
           "none", CLI, "train", "--preset", "small", "--threads", str(threads), "--steps", str(steps),
           "--log-every", "1", "--eval-every", "0", "--checkpoint-every", "0", "--quiet", "--out", out]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    train = [j for j in lines if j["event"] == "train"]
    start = next(j for j in lines if j["event"] == "start")
    tokens_per_step = start["train"]["batch_size"] * start["model"]["max_len"]
    steps_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(train[1:], train[2:])]  # after 2 warm-up steps
    waits = [j["allreduce_s"] for j in train[2:] if "allreduce_s" in j]
    return {"step_s": statistics.median(steps_s), "tokens_per_step": tokens_per_step, "wait_s": waits,
            "parameters": start["parameters"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bandwidth-gbit", type=float, default=10.0)
    p.add_argument("--latency-us", type=float, default=50.0)
    a = p.parse_args()
    configs = [(1, 2), (2, 1), (1, 1)]
    results = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for ranks, threads in configs:
                out = os.path.join(tmp, f"r{ranks}t{threads}-{r}")
                results[(ranks, threads)].append(run(ranks, threads, a.steps, out))
    print("| ranks x threads | step s (median) | tokens/s | wait for gradient sums, share of step |")
    print("|---|---|---|---|")
    summary = {}
    for (ranks, threads), rs in results.items():
        step = statistics.median(r["step_s"] for r in rs)
        waits = [w for r in rs for w in r["wait_s"]]
        wait = statistics.median(waits) if waits else 0.0
        summary[(ranks, threads)] = step, wait
        share = f"{wait * 1e3:.0f} ms ({100 * wait / step:.1f}%)" if waits else "-"
        print(f"| {ranks} x {threads} | {step:.3f} | {rs[0]['tokens_per_step'] / step:.0f} | {share} |")
    one, two = summary[(1, 2)][0], summary[(2, 1)][0]
    print(f"\n2 ranks x 1 thread vs 1 rank x 2 threads: {one / two:.2f}x the throughput")
    P = results[(1, 1)][0]["parameters"]
    t_c = one  # one 2-core machine's compute per step at its batch
    bw = a.bandwidth_gbit * 1e9 / 8
    print(f"\nprojection (weak scaling, {P:,} parameters, per machine t_c = {t_c:.3f} s per step, "
          f"{a.bandwidth_gbit:g} Gbit/s, {a.latency_us:g} us, nothing hidden):")
    print("| machines | allreduce s | step s | efficiency |")
    print("|---|---|---|---|")
    for R in (2, 8, 64):
        t_comm = 2 * (R - 1) / R * 4 * P / bw + 2 * (R - 1) * a.latency_us * 1e-6
        print(f"| {R} | {t_comm:.4f} | {t_c + t_comm:.3f} | {t_c / (t_c + t_comm):.1%} |")


if __name__ == "__main__":
    main()
