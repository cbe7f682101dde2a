"""Memory of one training step (forward, backward, AdamW step) against depth, plain vs reversible blocks.

    PYTHONPATH=build/python /usr/bin/python3 bench/reformer_memory.py [--n 16384] [--depths 2 6 12]
        [--attention lsh] [--threads 2]

The model is the `reformer` preset's (presets/reformer.json) with the given depth, context n and batch 1;
`--attention` swaps the mechanism (its options from the preset only when it is the preset's). Each
(policy, depth) runs in a fresh process; it reports the allocator's peak (every tensor byte, including
parameters, gradients and AdamW's two moments) and the process's peak RSS, and the step's time.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def one(args):
    import numpy as np
    import eformer as ef

    ef.set_num_threads(args.threads)
    with open(os.path.join(ROOT, "presets", "reformer.json")) as f:
        model = json.load(f)["model"]
    model.update(n_layers=args.depth, block=args.policy, max_len=args.n, axial_shape=[], dropout=0.0)
    if args.attention != model["attention"]["kind"]:
        model["attention"] = args.attention
    ef.manual_seed(0)
    lm = ef.models.LanguageModel(model)
    lm.train()
    opt = ef.optim.AdamW(lm.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    ids = ef.tensor(rng.integers(0, 256, (1, args.n)).astype(np.int64))
    targets = ef.tensor(rng.integers(0, 256, (1, args.n)).astype(np.int64))
    params = sum(int(np.prod(p.shape)) for p in lm.parameters())
    ef.reset_peak_memory_stats()
    start = time.perf_counter()
    loss = lm.loss(ids, targets)
    loss.backward()
    opt.step()
    opt.zero_grad()
    seconds = time.perf_counter() - start
    print(json.dumps({"policy": args.policy, "depth": args.depth, "n": args.n, "attention": args.attention,
                      "params": params, "peak_bytes": ef.memory_stats()["peak_bytes"],
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "seconds": seconds, "loss": loss.item()}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 6, 12])
    p.add_argument("--policies", nargs="+", default=["plain", "reversible"])
    p.add_argument("--attention", default="lsh")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    p.add_argument("--policy", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.depth is not None:
        return one(args)
    rows = []
    for policy in args.policies:
        for depth in args.depths:
            cmd = [sys.executable, __file__, "--n", str(args.n), "--attention", args.attention, "--threads",
                   str(args.threads), "--depth", str(depth), "--policy", policy]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{policy:>10} depth {depth:>2}: allocator peak {r['peak_bytes'] / 2**20:8.0f} MiB, "
                  f"peak RSS {r['peak_rss_bytes'] / 2**20:8.0f} MiB, step {r['seconds']:6.1f} s", flush=True)
    for policy in args.policies:
        mine = [r for r in rows if r["policy"] == policy]
        print(f"{policy}: peak at depth {mine[-1]['depth']} / depth {mine[0]['depth']} = "
              f"{mine[-1]['peak_bytes'] / mine[0]['peak_bytes']:.2f}x")


if __name__ == "__main__":
    main()
