"""Accuracy tasks in the style of Long Range Arena (Tay et al. 2020): every registered mechanism with a
bidirectional form trains a SequenceClassifier (an encoder, mean-pooled, eformer.models) on each task for a
fixed budget, and is scored on held-out examples; the table sits beside LRA's published accuracies.

    scripts/bench.sh --tasks [--quick] [--steps N | --minutes M] [--tasks-list listops pathfinder image]
        [--mechanisms NAME ...] [--threads T] [--out FILE] [--docs]
    scripts/bench.sh --tasks --report FILE.json [--docs]     (the table of an earlier run)

Tasks (generated natively, eformer.data; pure functions of (seed, index), train seed 0, eval seed 1):
  listops     LRA's ListOps grammar (MAX, MIN, MED, SM, depth <= 10, up to 10 arguments), 10 classes, lengths
              in (500, 2000) (--quick: (20, 100)); padded with 0 and masked where the mechanism takes a mask
  pathfinder  32 x 32 images of dashed paths and two dots, connected or not, 1024 grey-level tokens, 2 classes
              (--quick: 16 x 16, paths of 5..9 steps instead of 10..18)
  image       Fashion-MNIST grey levels as 784-token sequences, 10 classes (skipped, with the reason, when the
              Debian package's files are not prepared)
Model: d_model 64, 4 heads, 2 layers, d_ff 128, learned positions, no dropout; AdamW lr 1e-3 with a linear
warmup over the first 10% of the steps and a cosine decay; batch 32 (--quick: 8). Budget: --steps per
(task, mechanism), else --minutes each (the step count is then what fits). Accuracy over --eval examples.
LRA's numbers (test accuracy, %): ListOps Transformer 36.37, best 37.27 (Reformer); Pathfinder Transformer 71.40.
Chance: ListOps 10% (our labels are balanced), Pathfinder 50%, Image 10%.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import eformer as ef

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from harness import report  # noqa: E402

LRA = {"listops": {"Transformer": 36.37, "best (Reformer)": 37.27}, "pathfinder": {"Transformer": 71.40}}
CHANCE = {"listops": 10.0, "pathfinder": 50.0, "image": 10.0}


class Task:
    """A classification task: batch(seed, indices) -> (ids Tensor [B, N], labels Tensor [B], key_mask or None)."""

    def __init__(self, name, quick):
        self.name = name
        self.quick = quick
        if name == "listops":
            self.lengths = (20, 100) if quick else (500, 2000)
            self.seq_len, self.vocab, self.classes = self.lengths[1] - 1, ef.data.LISTOPS_VOCAB, 10
        elif name == "pathfinder":
            self.size = 16 if quick else 32
            self.seq_len, self.vocab, self.classes = self.size * self.size, 256, 2
        elif name == "image":
            self.pixels, self.labels = {}, {}
            for split in ("train", "test"):
                x, y = ef.data.fashion_mnist(split)  # OSError with the reason when the data is absent
                self.pixels[split], self.labels[split] = np.asarray(x), np.asarray(y)  # numpy uint8 arrays
            self.seq_len, self.vocab, self.classes = 784, 256, 10
            self.order = np.random.default_rng(0).permutation(len(self.labels["train"]))  # training order
        else:
            raise ValueError(f"unknown task '{name}'; tasks: listops, pathfinder, image")

    def describe(self):
        if self.name == "listops":
            return f"ListOps, lengths in ({self.lengths[0]}, {self.lengths[1]}), 10 classes"
        if self.name == "pathfinder":
            return f"Pathfinder {self.size}x{self.size} ({self.seq_len} tokens), 2 classes"
        return "Fashion-MNIST 784 pixels, 10 classes"

    def batch(self, seed, indices):
        if self.name == "listops":
            ids, labels = ef.data.listops(seed, indices, min_length=self.lengths[0], max_length=self.lengths[1],
                                          pad_to=self.seq_len)
            mask = ef.tensor(ids.numpy() != 0)
            return ids, labels, mask
        if self.name == "pathfinder":
            steps = {"min_steps": 5, "max_steps": 9} if self.quick else {}  # paths that fit 16 x 16
            ids, labels, _ = ef.data.pathfinder(seed, indices, size=self.size, **steps)
            return ids, labels, None
        split = "train" if seed == 0 else "test"
        rows = self.order[np.asarray(indices) % len(self.order)] if seed == 0 else np.asarray(indices)
        return (ef.tensor(self.pixels[split][rows].astype(np.int64)), ef.tensor(self.labels[split][rows].astype(np.int64)),
                None)


def model_config(task, mechanism, options=None):
    return {"arch": "encoder", "vocab_size": task.vocab, "num_classes": task.classes, "d_model": 64, "n_heads": 4,
            "n_layers": 2, "d_ff": 128, "max_len": task.seq_len, "dropout": 0.0, "positions": "learned",
            "attention": {"kind": mechanism, "options": (options or {}).get(mechanism, {})}}


def parse_options(items):
    """["aft_conv.image_shape=[28,28]", ...] -> {"aft_conv": {"image_shape": [28, 28]}}; values are JSON
    (a bare word is a string)."""
    options = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        mechanism, dot, key = name.partition(".")
        if not sep or not dot or not mechanism or not key:
            raise SystemExit(f"--option expects MECHANISM.KEY=VALUE, got '{item}'")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(mechanism, {})[key] = parsed
    return options


def accuracy(model, task, n_eval, batch, use_mask):
    model.eval()
    correct = 0
    with ef.no_grad():
        for start in range(0, n_eval, batch):
            ids, labels, mask = task.batch(1, list(range(start, min(n_eval, start + batch))))
            logits = model(ids, mask if use_mask else None).numpy()
            correct += int((logits.argmax(-1) == labels.numpy()).sum())
    model.train()
    return 100.0 * correct / n_eval


def train_one(task, entry, args):
    name = entry["name"]
    use_mask = task.name == "listops" and entry["capabilities"]["padding_mask"]
    ef.manual_seed(0)
    model = ef.models.SequenceClassifier(model_config(task, name, args.options))
    opt = ef.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.steps if args.steps else None
    budget_s = None if steps else args.minutes * 60.0
    start, step, losses = time.perf_counter(), 0, []
    planned = steps or 10 ** 9
    while step < planned:
        if budget_s is not None and step == 3:  # fix the schedule's length from the first steps' time
            per_step = (time.perf_counter() - start) / 3
            planned = max(4, int(budget_s / per_step))
        lr = ef.optim.warmup_cosine(step, max(1, planned // 10), planned, args.lr, args.lr / 10)
        opt.lr = lr
        ids, labels, mask = task.batch(0, list(range(step * args.batch, (step + 1) * args.batch)))
        loss = model.loss(ids, labels, mask if use_mask else None)
        loss.backward()
        ef.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        step += 1
        if args.verbose and step % 25 == 0:
            print(f"    {task.name}/{name}: step {step}/{planned}, loss {np.mean(losses[-25:]):.3f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    acc = accuracy(model, task, args.eval, args.batch, use_mask)
    return {"accuracy": acc, "steps": step, "train_seconds": round(seconds, 1),
            "final_loss": float(np.mean(losses[-10:])), "masked": use_mask}


def markdown(result):
    tasks = result["tasks"]
    lines = [f"Budget: {result['budget']}; model {result['model']}; accuracy over {result['eval']} held-out examples "
             f"per task; {result['threads']} thread{'s' if result['threads'] != 1 else ''}. "
             f"Command: `{result['command']}`", ""]
    if result.get("options"):
        lines[0] += "; options: " + ", ".join(f"{m} {json.dumps(o)}" for m, o in result["options"].items())
    head = "| mechanism | " + " | ".join(f"{t['name']} (%)" for t in tasks.values()) + " |"
    lines += [head, "|---|" + "---|" * len(tasks)]
    for mech in result["mechanisms"]:
        cells = []
        for t in tasks.values():
            r = t["results"].get(mech)
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("failed: " + r["error"].replace("|", "/")[:80])
            else:
                cells.append(f"{r['accuracy']:.1f} ({r['steps']} steps)")
        lines.append(f"| {mech} | " + " | ".join(cells) + " |")
    lines.append("| *chance* | " + " | ".join(f"{CHANCE[n]:.0f}" for n in tasks) + " |")
    for label in ("Transformer", "best (Reformer)"):
        lines.append(f"| *LRA {label}* | " + " | ".join(
            f"{LRA.get(n, {}).get(label, '-')}" for n in tasks) + " |")
    for t in tasks.values():
        lines.append(f"\n{t['name']}: {t['describe']}" + (f"; skipped: {t['skipped']}" if t.get("skipped") else ""))
    return "\n".join(lines)


def write_docs(text, section="tasks"):
    begin, end = report.markers(section)
    report.replace_section(os.path.join(ROOT, "docs", "BENCHMARKS.md"), section, f"{begin}\n{text}\n{end}",
                           "## LRA-style accuracy tasks (`scripts/bench.sh --tasks`)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short ListOps (lengths 20..100) and 16 x 16 Pathfinder, batch 8, 30 steps, 64 eval examples")
    p.add_argument("--steps", type=int, help="optimizer steps per (task, mechanism)")
    p.add_argument("--minutes", type=float, help="minutes per (task, mechanism) when --steps is not given")
    p.add_argument("--tasks-list", nargs="+", default=["listops", "pathfinder", "image"])
    p.add_argument("--mechanisms", nargs="+", help="default: every registered mechanism with a bidirectional form")
    p.add_argument("--option", action="append", metavar="MECHANISM.KEY=VALUE",
                   help="an attention option for one mechanism (repeatable), e.g. aft_conv.image_shape=[28,28]")
    p.add_argument("--batch", type=int)
    p.add_argument("--eval", type=int, help="held-out examples per task")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", help="JSON file (default bench-out/tasks[-quick].json)")
    p.add_argument("--docs", action="store_true", help="write the table into docs/BENCHMARKS.md (section 'tasks')")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--report", metavar="FILE.json", help="no training: print (and with --docs write) a run's table")
    a = p.parse_args(argv)
    a.options = parse_options(a.option)
    if a.report:
        with open(a.report) as f:
            text = markdown(json.load(f))
        print(text)
        if a.docs:
            write_docs(text)
        return None
    if a.steps is None and a.minutes is None:
        a.steps = 30 if a.quick else 1000
    a.batch = a.batch or (8 if a.quick else 32)
    a.eval = a.eval or (64 if a.quick else 1000)
    a.out = a.out or os.path.join(ROOT, "bench-out", "tasks-quick.json" if a.quick else "tasks.json")
    ef.set_num_threads(a.threads)

    registry = [e for e in ef.mechanisms() if e["capabilities"]["bidirectional"]]
    names = [e["name"] for e in registry]
    if a.mechanisms:
        unknown = [m for m in a.mechanisms if m not in names]
        if unknown:
            raise SystemExit(f"bench --tasks: no bidirectional mechanism {unknown}; encoder-capable: {names}")
        registry = [e for e in registry if e["name"] in a.mechanisms]
    budget = f"{a.steps} steps" if a.steps else f"{a.minutes} min"
    result = {"budget": f"{budget} per (task, mechanism), batch {a.batch}",
              "model": "encoder d_model 64, 4 heads, 2 layers, d_ff 128, mean-pooled", "eval": a.eval,
              "threads": a.threads, "command": "scripts/bench.sh --tasks " + " ".join(argv if argv is not None else sys.argv[1:]),
              "mechanisms": [e["name"] for e in registry], "options": a.options, "lra": LRA, "chance": CHANCE, "tasks": {}}
    total = len(a.tasks_list) * len(registry)
    done, t0 = 0, time.perf_counter()
    for name in a.tasks_list:
        entry_out = {"name": name, "results": {}}
        result["tasks"][name] = entry_out
        try:
            task = Task(name, a.quick)
        except OSError as e:
            entry_out["describe"], entry_out["skipped"] = name, str(e)
            print(f"{name}: skipped ({e})", flush=True)
            done += len(registry)
            continue
        entry_out["describe"] = task.describe()
        for entry in registry:
            try:
                r = train_one(task, entry, a)
            except (ValueError, RuntimeError, MemoryError) as e:
                r = {"error": str(e)}
            entry_out["results"][entry["name"]] = r
            done += 1
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (total - done)
            shown = f"{r['accuracy']:.1f}% after {r['steps']} steps" if "accuracy" in r else "failed: " + r["error"]
            print(f"[{done}/{total}] {name} {entry['name']}: {shown}  (elapsed {elapsed:.0f} s, ETA {eta:.0f} s)",
                  flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    print("\n" + text)
    if a.docs:
        write_docs(text)
    return result


if __name__ == "__main__":
    main()
