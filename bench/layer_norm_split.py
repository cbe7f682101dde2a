"""Where layer norm's forward+backward time goes, eformer vs torch, at one shape (default 4096x256):
forward alone, forward+backward, and forward+backward without the input gradient (dx).

    PYTHONPATH=build/python /usr/bin/python3 bench/layer_norm_split.py [rows cols]
"""
import statistics
import sys
import time

import numpy as np
import torch

import eformer as ef


def median_ms(fn, n=41):
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    rows, cols = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (4096, 256)
    torch.set_num_threads(2)
    ef.set_num_threads(2)
    rng = np.random.default_rng(0)
    a, g = rng.standard_normal((2, rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    ex, eg, ew, eb = ef.tensor(a), ef.tensor(g), ef.tensor(w, requires_grad=True), ef.tensor(w, requires_grad=True)
    tx, tg, tw, tb = torch.tensor(a), torch.tensor(g), torch.tensor(w, requires_grad=True), torch.tensor(w, requires_grad=True)

    def run(lib, x, gy, weight, bias, backward):
        def fn():
            y = ef.layer_norm(x, [cols], weight, bias) if lib == "ef" else \
                torch.nn.functional.layer_norm(x, [cols], weight, bias)
            if backward:
                y.backward(gy)
                for t in (x, weight, bias):
                    t.grad = None
        return fn

    print(f"layer_norm {rows}x{cols}, ms (median)")
    with torch.no_grad(), ef.no_grad():
        print(f"forward only          eformer {median_ms(run('ef', ex, eg, ew, eb, False)):.3f}  "
              f"torch {median_ms(run('torch', tx, tg, tw, tb, False)):.3f}")
    print(f"fwd+bwd without dx    eformer {median_ms(run('ef', ex, eg, ew, eb, True)):.3f}  "
          f"torch {median_ms(run('torch', tx, tg, tw, tb, True)):.3f}")
    ex.requires_grad = True
    tx.requires_grad = True
    print(f"fwd+bwd with dx       eformer {median_ms(run('ef', ex, eg, ew, eb, True)):.3f}  "
          f"torch {median_ms(run('torch', tx, tg, tw, tb, True)):.3f}")


if __name__ == "__main__":
    main()
