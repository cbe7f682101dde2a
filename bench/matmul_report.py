"""Runs build/matmul_bench and prints a markdown table: median GFLOP/s of eformer::matmul and of the
raw oneDNN call per shape, their ratio, and the measured FMA peak.

    /usr/bin/python3 bench/matmul_report.py [--reps 7]
"""
import argparse
import json
import subprocess

ap = argparse.ArgumentParser()
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--binary", default="build/matmul_bench")
args = ap.parse_args()
out = subprocess.run([args.binary, f"--benchmark_repetitions={args.reps}", "--benchmark_report_aggregates_only=true",
                      "--benchmark_format=json", "--benchmark_min_time=0.3"], check=True, capture_output=True, text=True)
rows = {}
for b in json.loads(out.stdout)["benchmarks"]:
    if b.get("aggregate_name") != "median":
        continue
    name = b["run_name"].split("/")
    rows.setdefault("/".join(name[1:2]) or name[0], {})[name[0]] = b["GFLOPs"]
peak = rows.pop("fma_peak", {}).get("fma_peak") or next((r["fma_peak"] for r in rows.values() if "fma_peak" in r), None)
rows = {k: v for k, v in rows.items() if "raw" in v}
print(f"measured fp32 FMA peak: {peak:.0f} GFLOP/s\n")
print("| shape MxKxN (T: b transposed) | raw oneDNN GFLOP/s | eformer GFLOP/s | eformer / raw | % of FMA peak |")
print("|---|---|---|---|---|")
for shape, r in rows.items():
    print(f"| {shape} | {r['raw']:.1f} | {r['ours']:.1f} | {r['ours']/r['raw']:.3f} | {100*r['ours']/peak:.0f}% |")
