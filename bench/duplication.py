"""The Reformer's duplication task (Kitaev et al. 2020, sec. 5, Table 2): train on 0 w 0 w with one attention,
evaluate the trained model with others (full, LSH with 8, 4, 2, 1 hashes), and print the table.

    PYTHONPATH=build/python /usr/bin/python3 bench/duplication.py [--half 128] [--steps 3000]
        [--train full lsh-4] [--threads 2] [--json out.json] [--models DIR]

Model (the paper's): 1 layer, d_model 256, 4 heads, d_ff 512, learned positions, symbols 1..127 (vocab 128),
the loss on the second half only; shared-QK throughout, "full" being exact shared-QK attention (lsh with one
bucket and one chunk covering the sequence), as in the paper's comparisons. Training batches and evaluation batches are pure functions of their seeds
(ef.data.duplication_batch). LSH uses chunks of 64 and buckets of 64 (n_buckets = 2 half / 64), as the paper
uses for its length-1024 runs; a model trained with one attention is evaluated with another by loading its
weights into a model built with that attention (LSH has no parameters of its own: rotations are drawn).
Every trained model gets the same number of steps (and the same batches); with --models DIR, a trained model is
saved there and a later run evaluates it without training again.
"""
import argparse
import json
import os
import time

import numpy as np

import eformer as ef

EVAL = ["full", "lsh-8", "lsh-4", "lsh-2", "lsh-1"]


def attention(name, half):
    if name == "full":  # exact shared-QK attention: one bucket, one chunk covering the sequence
        return {"kind": "lsh", "options": {"n_hashes": 1, "n_buckets": 1, "chunk": 2 * half}}
    n_hashes = int(name.split("-")[1])
    return {"kind": "lsh", "options": {"n_hashes": n_hashes, "chunk": 64, "bucket_size": 64}}


def model_config(name, half):
    return {"vocab_size": 128, "d_model": 256, "n_heads": 4, "n_layers": 1, "d_ff": 512, "max_len": 2 * half,
            "dropout": 0.0, "positions": "learned", "attention": attention(name, half)}


def accuracy(lm, half, batches, batch_size):
    lm.eval()
    correct = total = 0
    with ef.no_grad():
        for i in range(batches):
            x, y = ef.data.duplication_batch(seed=12345, index=i, batch=batch_size, half=half)
            pred = lm.forward(x).numpy().argmax(-1)
            y = y.numpy()
            scored = y != -100
            correct += int((pred[scored] == y[scored]).sum())
            total += int(scored.sum())
    lm.train()
    return correct / total


def train(name, args):
    ef.manual_seed(0)
    lm = ef.models.LanguageModel(model_config(name, args.half))
    opt = ef.optim.AdamW(lm.parameters(), lr=args.lr, weight_decay=0.0)
    start, step, losses = time.perf_counter(), 0, []
    while step < args.steps:
        opt.lr = ef.optim.warmup_cosine(step, min(200, args.steps), args.steps, args.lr, args.lr / 10)
        x, y = ef.data.duplication_batch(seed=0, index=step, batch=args.batch, half=args.half)
        loss = lm.loss(x, y)
        loss.backward()
        ef.optim.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"  {name}: step {step}, loss {np.mean(losses[-50:]):.3f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    return lm, step, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--half", type=int, default=128, help="w has half - 1 symbols; sequences are 2 half long")
    p.add_argument("--steps", type=int, default=3000, help="training steps per trained model")
    p.add_argument("--train", nargs="+", default=["full", "lsh-4"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--models", help="a folder: trained models are saved there, and loaded instead of retrained")
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    ef.set_num_threads(args.threads)
    results = {}
    for name in args.train:
        saved = os.path.join(args.models, f"duplication-{name}-{args.half}-{args.steps}.safetensors") if args.models else None
        if saved and os.path.exists(saved):
            lm = ef.models.LanguageModel(model_config(name, args.half))
            lm.load(saved)
            with open(saved + ".json") as f:
                row = json.load(f)
        else:
            lm, steps, seconds = train(name, args)
            row = {"steps": steps, "seconds": seconds}
            if saved:
                os.makedirs(args.models, exist_ok=True)
                lm.save(saved)
                with open(saved + ".json", "w") as f:
                    json.dump(row, f)
        steps, seconds = row["steps"], row["seconds"]
        state = lm.state_dict()
        for e in EVAL:
            ef.manual_seed(1)
            other = ef.models.LanguageModel(model_config(e, args.half))
            # The rotations buffer is the layer's latest draw (its shape follows n_hashes); the
            # evaluated model keeps its own.
            other.load_state_dict({k: v for k, v in state.items() if not k.endswith(".rotations")}, strict=False)
            row[e] = accuracy(other, args.half, args.eval_batches, args.batch)
        results[name] = row
        print(f"trained {name}: {steps} steps in {seconds / 60:.1f} min; " +
              ", ".join(f"eval {e} {100 * row[e]:.1f}%" for e in EVAL), flush=True)
    print(f"\n| trained \\ evaluated (length {2 * args.half}) | " + " | ".join(EVAL) + " | steps |")
    print("|---|" + "---|" * (len(EVAL) + 1))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{100 * row[e]:.1f}%" for e in EVAL) + f" | {row['steps']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"half": args.half, "steps": args.steps, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
