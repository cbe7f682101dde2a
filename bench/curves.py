"""Learning curves of several `eformer train` runs side by side, and their comparison at the same minutes.

    /usr/bin/python3 bench/curves.py RUN_DIR... [--rate] [--threads 2] [--minutes 2 4 8] [--json F] [--png F]

Each RUN_DIR holds a run's log.jsonl. The runs are meant to be trained with a constant learning rate after the
warmup (train.min_lr = train.lr), so that a run's curve at step s is the curve of any longer run of the same
configuration: the comparison "after the same minutes" is then read off each curve at the step it reaches in
those minutes at its own speed (linear interpolation between validation estimates), and the curves can be
trained while the machine is busy. --rate measures each run's speed on this machine (best run idle): its exact
configuration (from the log's start event) trains again for a few steps with --threads, and the median step time
after the first two steps gives its tokens/s. Without --rate, the speeds recorded by an earlier --json are used
when given, else the comparison at the same minutes is left out. Prints markdown; --png draws the curves
(needs matplotlib, e.g. the peers' environment, .peers/bin/python).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def describe_model(model):
    """The attention kind, and the memory where the model has one (Transformer-XL, Compressive)."""
    memory = model.get("memory", {}).get("kind", "none")
    return model["attention"]["kind"] + ("" if memory == "none" else f" + {memory} memory")


def read_run(path):
    log = os.path.join(path, "log.jsonl")
    if not os.path.isfile(log):
        raise SystemExit(f"{path}: no log.jsonl (a folder written by `eformer train --out`)")
    events = [json.loads(line) for line in open(log)]
    start = next((e for e in events if e.get("event") == "start"), None)
    if start is None:
        raise SystemExit(f"{log}: no start event (not an `eformer train` log?)")
    valid = [(e["step"], e["bits_per_char"]) for e in events if e.get("event") == "valid"]
    train = start["train"]
    tokens_per_step = train["batch_size"] * start["model"]["max_len"]
    if train.get("min_lr") != train.get("lr"):
        print(f"warning: {path} decays its learning rate (min_lr {train.get('min_lr')} != lr {train.get('lr')}): "
              "its curve depends on the run's length", file=sys.stderr)
    return {"label": os.path.basename(os.path.normpath(path)), "path": path, "start": start, "valid": valid,
            "tokens_per_step": tokens_per_step, "kind": describe_model(start["model"])}


def data_argument(logged):
    """The --data argument that selects what a log's start event names (the image corpus is logged
    with its folder: 'fashion-mnist (PATH)')."""
    return "fashion-mnist" if logged.startswith("fashion-mnist") else logged


def measure_rate(run, threads, steps):
    """tokens/s of the run's configuration here: median step time after the first two steps."""
    config = {"model": run["start"]["model"], "train": dict(run["start"]["train"])}
    for key in ("checkpoint_path", "log_path", "steps", "time_budget_s"):
        config["train"].pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "run.json")
        with open(cfg, "w") as f:
            json.dump(config, f)
        cmd = [os.path.join(ROOT, "build", "eformer"), "train", "--config", cfg, "--steps", str(steps), "--threads",
               str(threads), "--quiet", "--out", os.path.join(tmp, "out"), "--log-every", "1", "--eval-every",
               "100000", "--checkpoint-every", "100000", "--data", data_argument(run["start"]["data"])]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{run['label']}: measuring its speed failed: {p.stderr.strip()}")
        events = [json.loads(line) for line in open(os.path.join(tmp, "out", "log.jsonl"))]
    times = [e["elapsed_s"] for e in events if e.get("event") == "train"]
    step_s = statistics.median(b - a for a, b in zip(times[2:], times[3:]))
    return run["tokens_per_step"] / step_s


def bits_at(valid, step):
    """The validation curve at `step`, interpolated linearly; None past its end."""
    for (s0, b0), (s1, b1) in zip(valid, valid[1:]):
        if s0 <= step <= s1:
            return b0 + (b1 - b0) * (step - s0) / (s1 - s0)
    return valid[-1][1] if valid and step == valid[-1][0] else None


def markdown(runs, minutes, reference):
    steps = sorted({s for r in runs for s, _ in r["valid"]})
    marks = [s for s in steps if s in (25, 50, 100, 200, 300, 400, 600, 800)] or steps[-4:]
    lines = ["| run | mechanism | " + " | ".join(f"step {s}" for s in marks) + " | tokens/s | vs "
             f"{reference} | " + " | ".join(f"after {m:g} min" for m in minutes) + " |",
             "|---|---|" + "---|" * (len(marks) + 2 + len(minutes))]
    ref = next((r for r in runs if r["label"] == reference), None)
    for r in runs:
        at = dict(r["valid"])
        cells = [f"{at[s]:.3f}" if s in at else "-" for s in marks]
        rate = r.get("tokens_per_s")
        cells.append(f"{rate:,.0f}" if rate else "-")
        cells.append(f"{rate / ref['tokens_per_s']:.2f}x" if rate and ref and ref.get("tokens_per_s") else "-")
        for m in minutes:
            b = bits_at(r["valid"], m * 60 * rate / r["tokens_per_step"]) if rate else None
            cells.append(f"{b:.3f} ({m * 60 * rate / r['tokens_per_step']:.0f} steps)" if b is not None else "-")
        lines.append(f"| {r['label']} | {r['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs, path, unit):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    timed = [r for r in runs if r.get("tokens_per_s")]
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4), squeeze=False)
    for r in runs:
        s, b = zip(*r["valid"])
        axes[0][0].plot(s, b, label=r["label"])
    axes[0][0].set(xlabel="step", ylabel=f"valid bits/{unit}", title="per step")
    for r in timed:
        s, b = zip(*r["valid"])
        axes[0][1].plot([x * r["tokens_per_step"] / r["tokens_per_s"] / 60 for x in s], b, label=r["label"])
    if timed:
        axes[0][1].set(xlabel="minutes at the measured speed", ylabel=f"valid bits/{unit}", title="per minute")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each with a log.jsonl)")
    p.add_argument("--rate", action="store_true", help="measure each configuration's tokens/s here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rate-steps", type=int, default=8, help="steps per speed measurement (the first two unused)")
    p.add_argument("--minutes", type=float, nargs="*", default=[], help="read the curves at these minutes")
    p.add_argument("--reference", default=None, help="the run the speeds are compared with (default: the first)")
    p.add_argument("--json", help="write (or, without --rate, read the speeds from) this JSON file")
    p.add_argument("--png", help="draw the curves into this PNG file")
    p.add_argument("--unit", default="char", help="char or dim (axis label)")
    a = p.parse_args(argv)
    runs = [read_run(r) for r in a.runs]
    if a.rate:
        for r in runs:
            r["tokens_per_s"] = measure_rate(r, a.threads, a.rate_steps)
            print(f"{r['label']}: {r['tokens_per_s']:,.0f} tokens/s", file=sys.stderr, flush=True)
    elif a.json and os.path.exists(a.json):
        rates = {x["label"]: x.get("tokens_per_s") for x in json.load(open(a.json))["runs"]}
        for r in runs:
            r["tokens_per_s"] = rates.get(r["label"])
    text = markdown(runs, a.minutes, a.reference or runs[0]["label"])
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "runs": [{k: r.get(k) for k in ("label", "path", "kind", "valid",
                       "tokens_per_step", "tokens_per_s")} for r in runs], "table": text}, f, indent=1)
    if a.png:
        plot(runs, a.png, a.unit)


if __name__ == "__main__":
    main()
