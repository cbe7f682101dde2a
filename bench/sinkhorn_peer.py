"""sinkhorn vs lucidrains' sinkhorn-transformer (SinkhornAttention, SinkhornCausalAttention), forward + backward.

The two compute different attention (docs/BENCHMARKS.md, "sinkhorn vs the sinkhorn-transformer package"): the peer's
bidirectional sort net has no weights (R = relu of the block-mean query-key scores, then log(R + 1e-6) and
Gumbel noise that it always draws), its sorted *values* are its sorted keys (`b_v_r = b_k_r.reshape(...)` in
0.11.4), and its causal form is no Sinkhorn at all (the top entry of a softmax over earlier blocks, learned null
keys for the first block, half the heads shifted by b - 1 tokens). So the outputs are checked to agree only where
both compute the same function: bidirectional, the peer's sort net replaced by ours (block key sums, the MLP,
Sinkhorn balancing, written here in torch from docs/MECHANISMS.md) and v = k (which its value bug cannot tell
apart); outputs and the gradients of q, k = v and the sort net's weights are compared at N = 256 (4 blocks).
Then both are timed with their own sort nets at block 64, 8 iterations, temperature 0.75 (ours without Gumbel
noise, the peer with its noise: it has no switch; n_top_buckets 1, no SortCut, no local heads, no dropout), B = 1,
H heads of d, each side in its own process (1 warm-up, then --reps timed calls, the median), the pairs back to
back. Run with the peers' environment:

    PYTHONPATH=build/python /work/peers/.peers/bin/python bench/sinkhorn_peer.py [--sizes 4096 16384] [--reps 3]
        [--interleaved] [--directions bidirectional causal]

With --interleaved both sides run in one process and their timed calls alternate (the order swapped every
round), so that a burst of load on the shared machine hits both; peak memory is then not reported.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/, so that `harness` imports
from harness.worker import reset_hwm, rss_bytes  # noqa: E402

BLOCK, ITERATIONS, TEMPERATURE = 64, 8, 0.75


def require_libraries():
    """torch, the peer and eformer, or exit with what is missing and how to get it."""
    missing = []
    try:
        import torch  # noqa: F401
        import sinkhorn_transformer  # noqa: F401
    except ImportError as e:
        missing.append(f"{e}: run with the peers' venv, /work/peers/.peers/bin/python "
                       "(scripts/install-peers.sh installs sinkhorn-transformer there)")
    try:
        import eformer  # noqa: F401
    except ImportError as e:
        missing.append(f"{e}: build with scripts/build.sh and run with PYTHONPATH=build/python")
    if missing:
        sys.exit("bench/sinkhorn_peer.py: " + "; ".join(missing))


def sort_weights(rng, H, d, n):
    """Our sorting network at hidden = d, as bench/content_sparse_bench.py draws it: w1 [H, d, d], b1 [H, d],
    w2 [H, d, n], b2 [H, n], float32."""
    shapes = {"sort_w1": (H, d, d), "sort_b1": (H, d), "sort_w2": (H, d, n), "sort_b2": (H, n)}
    return {name: (rng.standard_normal(s) / d ** 0.5).astype(np.float32) for name, s in shapes.items()}


def our_sort_net(weights, heads):
    """A module with the peer's sort-net interface (q, k [B*H, N, d] -> P [B*H, n, n]) computing ours:
    psi = each block's key sum, R = W2 relu(W1 psi + b1) + b2, then `iterations` of row and column log-softmax
    on R / temperature, P = exp (docs/MECHANISMS.md, "sinkhorn"; no Gumbel noise)."""
    import torch

    class OurSortNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.ParameterDict({n: torch.nn.Parameter(torch.tensor(a)) for n, a in weights.items()})

        def forward(self, q, k, topk=1):
            bh, N, d = k.shape
            n = N // BLOCK
            psi = k.reshape(bh // heads, heads, n, BLOCK, d).sum(3)
            hidden = torch.relu(torch.einsum("bhnd,hde->bhne", psi, self.w["sort_w1"]) + self.w["sort_b1"][:, None])
            x = (torch.einsum("bhne,hem->bhnm", hidden, self.w["sort_w2"]) + self.w["sort_b2"][:, None]) / TEMPERATURE
            for _ in range(ITERATIONS):
                x = torch.log_softmax(torch.log_softmax(x, -1), -2)
            return torch.exp(x).reshape(bh, n, n)

    return OurSortNet()


def peer_attention(N, H, d, causal):
    from sinkhorn_transformer.sinkhorn_transformer import SinkhornAttention, SinkhornCausalAttention
    if causal:
        attn = SinkhornCausalAttention(BLOCK, H * d, d, H, N, n_top_buckets=1, temperature=TEMPERATURE)
    else:
        attn = SinkhornAttention(BLOCK, H * d, d, H, N, temperature=TEMPERATURE, non_permutative=False,
                                 sinkhorn_iter=ITERATIONS, n_sortcut=0, n_top_buckets=1)
    return attn.train()


def check_agreement(H=2, d=16, N=256):
    """The peer's bidirectional attention with our sort net plugged in, on v = k: outputs, dq, d(k = v) and the
    sort net's weight gradients against ours. Also prints how far apart they are with v != k."""
    import torch
    import eformer as ef
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((1, H, N, d)).astype(np.float32) for _ in range(4))
    weights = sort_weights(rng, H, d, N // BLOCK)
    attn = peer_attention(N, H, d, causal=False)
    attn.sort_net = our_sort_net(weights, H)
    tq, tk = torch.tensor(q, requires_grad=True), torch.tensor(k, requires_grad=True)
    theirs = attn(tq, tk, tk)
    (theirs * torch.tensor(g)).sum().backward()
    eq, ek = ef.tensor(q, requires_grad=True), ef.tensor(k, requires_grad=True)
    ew = {n: ef.tensor(a, requires_grad=True) for n, a in weights.items()}
    ours = ef.attention(eq, ek, ek, kind="sinkhorn", block=BLOCK, iterations=ITERATIONS, temperature=TEMPERATURE,
                        **ew)
    ours.backward(ef.tensor(g))
    pairs = {"output": (ours.numpy(), theirs.detach().numpy()), "dq": (eq.grad.numpy(), tq.grad.numpy()),
             "d(k=v)": (ek.grad.numpy(), tk.grad.numpy())}
    pairs.update({"d" + n: (ew[n].grad.numpy(), attn.sort_net.w[n].grad.numpy()) for n in weights})
    errs = {name: np.abs(a - b).max() / max(np.abs(a).max(), 1e-30) for name, (a, b) in pairs.items()}
    print(f"agreement, bidirectional, the peer with our sort net, v = k, {N // BLOCK} blocks of {BLOCK} at N = {N}, "
          "max |ours - peer| / max |ours|: " + ", ".join(f"{n} {e:.1e}" for n, e in errs.items()))
    assert max(errs.values()) < 1e-4, errs
    with torch.no_grad():
        apart = attn(torch.tensor(q), torch.tensor(k), torch.tensor(v)).numpy()
    ours_v = ef.attention(ef.tensor(q), ef.tensor(k), ef.tensor(v), kind="sinkhorn", block=BLOCK,
                          iterations=ITERATIONS, temperature=TEMPERATURE,
                          **{n: ef.tensor(a) for n, a in weights.items()}).numpy()
    print(f"same sort net, v != k: max |ours - peer| = {np.abs(ours_v - apart).max():.2e} (max |ours| "
          f"{np.abs(ours_v).max():.2f}): the peer mixes its sorted keys where the sorted values belong")


def make_call(side, causal, N, H, d):
    """One forward + backward of `side` ("eformer" or "peer") on q, k, v, g from seed 0, as a closure."""
    import torch
    import eformer as ef
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((1, H, N, d)).astype(np.float32) for _ in range(4))
    if side == "eformer":
        weights = sort_weights(rng, H, d, N // BLOCK)
        ge = ef.tensor(g)

        def call():
            qe, ke, ve = (ef.tensor(a, requires_grad=True) for a in (q, k, v))
            ew = {n: ef.tensor(a, requires_grad=True) for n, a in weights.items()}
            ef.attention(qe, ke, ve, kind="sinkhorn", causal=causal, block=BLOCK, iterations=ITERATIONS,
                         temperature=TEMPERATURE, **ew).backward(ge)
        return call
    attn = peer_attention(N, H, d, causal)
    tg = torch.tensor(g)

    def call():
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
        (attn(tq, tk, tv) * tg).sum().backward()
    return call


def set_threads(threads):
    import torch
    import eformer as ef
    torch.set_num_threads(threads)
    ef.set_num_threads(threads)


def worker(side, causal, N, reps, threads, H, d):
    """One side at one shape: 1 warm-up and `reps` timed forward + backward calls; prints one JSON line with the
    times and the peak RSS above the RSS once the inputs are made (VmHWM, reset through /proc/self/clear_refs)."""
    set_threads(threads)
    call = make_call(side, causal, N, H, d)
    base = rss_bytes("VmRSS")
    reset_hwm()
    call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times, "rss_peak": rss_bytes("VmHWM") - base}))


def interleaved(causal, N, reps, H, d):
    """Both sides in this process, each warmed up once, then `reps` rounds of one call each, the order swapped
    every round, so that both see the same load: {side: {"times": [...]}} (no memory: the process is shared)."""
    calls = {side: make_call(side, causal, N, H, d) for side in ("eformer", "peer")}
    for call in calls.values():
        call()
    res = {side: {"times": []} for side in calls}
    for r in range(reps):
        for side in (("eformer", "peer") if r % 2 == 0 else ("peer", "eformer")):
            t0 = time.perf_counter()
            calls[side]()
            res[side]["times"].append(time.perf_counter() - t0)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--directions", nargs="+", default=["bidirectional", "causal"],
                   choices=["bidirectional", "causal"])
    p.add_argument("--interleaved", action="store_true", help="both sides in one process, their calls "
                   "alternating (the same load for both; no memory figures)")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    require_libraries()
    if a.worker:
        side, direction, N = a.worker[0], a.worker[1], int(a.worker[2])
        return worker(side, direction == "causal", N, a.reps, a.threads, a.heads, a.head_dim)
    for N in a.sizes:
        if N % BLOCK:
            sys.exit(f"bench/sinkhorn_peer.py: N = {N} is not a multiple of the block {BLOCK} (the peer needs it)")
    import importlib.metadata
    import torch
    import eformer as ef
    check_agreement()
    print(f"\neformer {ef.__version__}, sinkhorn-transformer {importlib.metadata.version('sinkhorn-transformer')}, "
          f"torch {torch.__version__}; B=1 H={a.heads} d={a.head_dim} float32, forward + backward, {a.threads} "
          f"threads, block {BLOCK}, {ITERATIONS} iterations, temperature {TEMPERATURE}; median of {a.reps} after 1 "
          "warm-up, " + ("the calls of the two sides alternating in one process\n" if a.interleaved else
                         "each side in its own process\n"))
    if a.interleaved:
        set_threads(a.threads)
    print("| N | direction | eformer s | peer s | peer / eformer | eformer peak RSS MiB | peer peak RSS MiB | load |")
    print("|---|---|---|---|---|---|---|---|")
    for N in a.sizes:
        for direction in a.directions:
            load = os.getloadavg()[0]
            res = interleaved(direction == "causal", N, a.reps, a.heads, a.head_dim) if a.interleaved else {}
            for side in () if a.interleaved else ("eformer", "peer"):
                cmd = [sys.executable, __file__, "--worker", side, direction, str(N), "--reps", str(a.reps),
                       "--threads", str(a.threads), "--heads", str(a.heads), "--head-dim", str(a.head_dim)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"bench/sinkhorn_peer.py: the {side} worker at N = {N} {direction} failed:\n"
                             + out.stderr)
                res[side] = json.loads(out.stdout.strip().splitlines()[-1])
            ours, peer = (statistics.median(res[s]["times"]) for s in ("eformer", "peer"))
            rss = [f"{res[s]['rss_peak'] / 2**20:.0f}" if "rss_peak" in res[s] else "-" for s in ("eformer", "peer")]
            print(f"| {N} | {direction} | {ours:.3f} | {peer:.3f} | {peer / ours:.2f}x | {rss[0]} | {rss[1]} | "
                  f"{load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
