"""routing vs lucidrains' routing-transformer (KmeansAttention), forward + backward, causal, float32.

The two compute different attention: the peer balances clusters by top-N/c tokens per centroid (a token in
several clusters is averaged, in none gets 0), ours routes each token to its nearest centroid and cuts the
cluster-sorted order in chunks (docs/MECHANISMS.md, "routing"). So the outputs are checked to agree only in
the case where both are exact shared-QK attention (one cluster, window N, at N = 256), then both are timed at
c = 2^round(log2(sqrt(N))) clusters and window N / c, B = 1, H heads of d, the peer in training mode with its
k-means update on (its aux loss added to the output's loss). Run with the peers' environment:

    PYTHONPATH=build/python /work/peers/.peers/bin/python bench/routing_peer.py [--sizes 4096 16384] [--reps 3]

With --bidirectional both compute the same math: ours with the option balance "top" (each centroid takes its
window most similar tokens) is the peer's bidirectional KmeansAttention. The outputs and the q and v gradients
are then checked to agree with real routing (16 clusters of 16 at N = 256: tokens in several clusters and in
none; the peer's means set to our centroids), and the peer is timed against both of our balancings.
"""
import argparse
import math
import statistics
import time

import numpy as np
import torch


def peer_attention(N, c, window, H, d, causal=True):
    from routing_transformer.routing_transformer import KmeansAttention
    attn = KmeansAttention(c, window, H, d, causal=causal, shared_qk=True)
    attn.train()
    return attn


def peer_with_centroids(mu, N, window, causal):
    """The peer with its k-means means set to `mu` [H, c, d] (and marked initialised: no k-means on the batch)."""
    H, c, d = mu.shape
    attn = peer_attention(N, c, window, H, d, causal)
    attn.kmeans.means.data.copy_(torch.tensor(mu))
    attn.kmeans.initted.data.copy_(torch.tensor(True))
    return attn.eval()


def check_balanced_agreement(H=2, d=16, N=256, c=16):
    """balance "top" against the peer's bidirectional form: outputs and the gradients of q (= k) and v."""
    import eformer as ef
    rng = np.random.default_rng(0)
    q, v, g = (rng.standard_normal((1, H, N, d)).astype(np.float32) for _ in range(3))
    mu = rng.standard_normal((H, c, d)).astype(np.float32)
    mu /= np.linalg.norm(mu, axis=-1, keepdims=True)
    attn = peer_with_centroids(mu, N, N // c, causal=False)
    tq, tv = torch.tensor(q, requires_grad=True), torch.tensor(v, requires_grad=True)
    theirs, _ = attn(tq, tq, tv)
    (theirs * torch.tensor(g)).sum().backward()
    eq, ev = ef.tensor(q, requires_grad=True), ef.tensor(v, requires_grad=True)
    ours = ef.attention(eq, eq, ev, kind="routing", centroids=ef.tensor(mu), window=N // c, balance="top")
    ours.backward(ef.tensor(g))
    pairs = [(ours.numpy(), theirs.detach().numpy()), (eq.grad.numpy(), tq.grad.numpy()),
             (ev.grad.numpy(), tv.grad.numpy())]
    errs = [np.abs(a - b).max() for a, b in pairs]
    print(f"balance 'top' vs the peer, bidirectional, {c} clusters of {N // c} at N = {N}: max |ours - peer| "
          f"output {errs[0]:.2e}, dq {errs[1]:.2e}, dv {errs[2]:.2e}")
    assert max(errs) < 1e-4, errs


def check_agreement(H=2, d=16, N=256):
    import eformer as ef
    rng = np.random.default_rng(0)
    q, v = (rng.standard_normal((1, H, N, d)).astype(np.float32) for _ in range(2))
    attn = peer_attention(N, 1, N, H, d)
    with torch.no_grad():
        tq = torch.tensor(q)
        theirs, _ = attn(tq, tq, torch.tensor(v))
    mu = ef.tensor(np.ones((H, 1, d), np.float32))
    ours = ef.attention(ef.tensor(q), ef.tensor(q), ef.tensor(v), kind="routing", causal=True, centroids=mu,
                        window=N).numpy()
    err = np.abs(ours - theirs.numpy()).max()
    print(f"agreement at one cluster, window N = {N}: max |ours - peer| = {err:.2e}")
    assert err < 1e-4, err


def inputs(N, H, d):
    """c = 2^round(log2(sqrt(N))) clusters of window N / c; q, v, the upstream gradient g [1, H, N, d] and unit
    centroids mu [H, c, d], all float32 from seed 0."""
    c = 1 << round(math.log2(math.sqrt(N)))
    rng = np.random.default_rng(0)
    q, v, g = (rng.standard_normal((1, H, N, d)).astype(np.float32) for _ in range(3))
    mu = rng.standard_normal((H, c, d)).astype(np.float32)
    return c, N // c, q, v, g, mu / np.linalg.norm(mu, axis=-1, keepdims=True)


def time_one(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--bidirectional", action="store_true", help="balance 'top' and 'nearest' vs the peer's "
                   "bidirectional form (checked to agree with 'top')")
    a = p.parse_args()
    import eformer as ef
    torch.set_num_threads(a.threads)
    ef.set_num_threads(a.threads)
    if a.bidirectional:
        return bidirectional(a)
    check_agreement()
    H, d = a.heads, a.head_dim
    print(f"B=1 H={H} d={d} causal, forward + backward, {a.threads} threads")
    print(f"{'N':>7} {'c':>5} {'window':>6} {'eformer s':>10} {'peer s':>8} {'peer/eformer':>12}")
    for N in a.sizes:
        c, w, q, v, g, mu = inputs(N, H, d)
        centroids, ge = ef.tensor(mu), ef.tensor(g)

        def ours():
            qe, ve = ef.tensor(q, requires_grad=True), ef.tensor(v, requires_grad=True)
            ef.attention(qe, qe, ve, kind="routing", causal=True, centroids=centroids, window=w).backward(ge)

        attn = peer_attention(N, c, w, H, d)
        tg = torch.tensor(g)

        def theirs():
            tq, tv = torch.tensor(q, requires_grad=True), torch.tensor(v, requires_grad=True)
            out, aux = attn(tq, tq, tv)
            ((out * tg).sum() + aux).backward()

        t_ours, t_peer = time_one(ours, a.reps), time_one(theirs, a.reps)
        print(f"{N:>7} {c:>5} {w:>6} {t_ours:>10.3f} {t_peer:>8.3f} {t_peer / t_ours:>12.2f}", flush=True)


def bidirectional(a):
    import eformer as ef
    check_balanced_agreement()
    H, d = a.heads, a.head_dim
    print(f"B=1 H={H} d={d} bidirectional, forward + backward, {a.threads} threads")
    print(f"{'N':>7} {'c':>5} {'window':>6} {'top s':>8} {'nearest s':>10} {'peer s':>8} {'peer/top':>9}")
    for N in a.sizes:
        c, w, q, v, g, mu = inputs(N, H, d)
        centroids, ge = ef.tensor(mu), ef.tensor(g)

        def ours(balance):
            qe, ve = ef.tensor(q, requires_grad=True), ef.tensor(v, requires_grad=True)
            ef.attention(qe, qe, ve, kind="routing", centroids=centroids, window=w, balance=balance).backward(ge)

        attn = peer_with_centroids(mu, N, w, causal=False)
        tg = torch.tensor(g)

        def theirs():
            tq, tv = torch.tensor(q, requires_grad=True), torch.tensor(v, requires_grad=True)
            out, _ = attn(tq, tq, tv)
            (out * tg).sum().backward()

        t_top, t_near = time_one(lambda: ours("top"), a.reps), time_one(lambda: ours("nearest"), a.reps)
        t_peer = time_one(theirs, a.reps)
        print(f"{N:>7} {c:>5} {w:>6} {t_top:>8.3f} {t_near:>10.3f} {t_peer:>8.3f} {t_peer / t_top:>9.2f}",
              flush=True)


if __name__ == "__main__":
    main()
