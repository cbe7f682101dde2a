"""The inputs of one benchmark shape, made the same way in every contender's process.

q, k, v and the upstream gradient g are [B, H, N, d] float32 draws of a generator seeded by the shape, so the
mechanism's process and each peer's see identical numbers. A mechanism's extra tensors come from its registry
entry, never from its name: the `reference` it declares says what its functional form needs (a kernelized
mechanism with a projection takes its random matrix omega [m, d]; an AFT mechanism its position bias `w`,
shaped by the options it lists: a band for `window`, a kernel for `kernel`, else a dense [H, N, N]; an LSH
mechanism its rotations and bucket count, with k = q for shared QK; routing its centroids and window; sinkhorn
its sorting network; etc its relative bias table), and the option defaults the registry lists size them. A
mechanism whose reference is new here gets no extras; if its functional form needs some, its run fails and the
report says so.
"""
import math

import numpy as np

SHAPE = {"B": 1, "H": 8, "d": 64}


def option_default(entry, name, fallback=None):
    for o in entry["options"]:
        if o["name"] == name:
            return o["default"]
    return fallback


def performer_features(d):
    """Performer's default m = round(d ln d) (266 for d = 64)."""
    return round(d * math.log(d))


def make(entry, N, causal, seed=0):
    """Returns {q, k, v, g (numpy float32 [B, H, N, d]), extras (name -> numpy array), heads_w}."""
    B, H, d = SHAPE["B"], SHAPE["H"], SHAPE["d"]
    rng = np.random.default_rng([seed, N, int(causal)])
    q, k, v, g = (rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(4))
    extras = {}
    ref = entry["reference"]
    if ref == "kernelized" and option_default(entry, "projection", "false") == "true":
        import eformer as ef
        extras["omega"] = ef.draw_omega(performer_features(d), d, seed=seed).numpy()
    elif ref == "aft":
        extras.update(aft_bias(entry, rng, N, causal, H))
    elif ref == "lsh":
        extras.update(lsh_rotations(entry, rng, N, H, d))
        unambiguous_hashes(q, extras, rng)
        k = q.copy()  # shared QK: the keys are the (normalized) queries, as in every LSH peer
    elif ref in PROJECTION_FAMILY:
        extras.update(PROJECTION_FAMILY[ref](entry, rng, N, H, d))
    elif ref == "routing":  # the paper's c = sqrt(N) unit centroids per head, windows of N / c
        c = 2 ** round(math.log2(math.sqrt(N)))
        mu = rng.standard_normal((H, c, d))
        extras["centroids"] = (mu / np.linalg.norm(mu, axis=-1, keepdims=True)).astype(np.float32)
        extras["window"] = max(1, N // c)
        k = q.copy()  # shared QK, as lsh
    elif ref == "sinkhorn":
        extras.update(sinkhorn_network(entry, rng, N, H, d))
    elif ref == "etc":
        clip = int(option_default(entry, "max_distance"))
        extras["relative_bias"] = (0.1 * rng.standard_normal((H, 2 * clip + 3))).astype(np.float32)
    elif ref == "isab":  # the inducing queries [H, m, d] at the entry's default m
        m = int(option_default(entry, "inducing", "32"))
        extras["inducing"] = rng.standard_normal((H, m, d)).astype(np.float32)
    return {"q": q, "k": k, "v": v, "g": g, "extras": extras}


def lsh_rotations(entry, rng, N, H, d):
    """LSH's rotations [n_hashes, H, d, columns] at the entry's defaults, and its bucket count (an int option of
    the functional form), so that the peers hash with the same rotations."""
    from harness.peers.reformer import bucket_factors, default_buckets
    n_buckets = default_buckets(N, int(option_default(entry, "bucket_size", 64)))
    columns = sum(f // 2 for f in bucket_factors(n_buckets))
    n_hashes = int(option_default(entry, "n_hashes", 4))
    rotations = rng.standard_normal((n_hashes, H, d, columns)).astype(np.float32)
    return {"rotations": rotations, "n_buckets": n_buckets}


def unambiguous_hashes(q, extras, rng, margin=1e-4):
    """Redraws the rows of q [B, H, N, d] whose bucket is a near tie in some round (the two largest of
    [xR; -xR] within `margin` of |xR|'s scale): float32 libraries round such a tie either way, and one token
    hashed differently shifts the sorted chunks of every token after it. The timing does not depend on it."""
    from harness.peers.reformer import bucket_factors
    rotations = extras["rotations"].astype(np.float64)
    factors = bucket_factors(int(extras["n_buckets"]))

    def ties(x, h):  # x [rows, d] of head h -> Bool [rows]
        x = x.astype(np.float64)
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        out = np.zeros(len(x), bool)
        for r in range(rotations.shape[0]):
            rotated, start = x @ rotations[r, h], 0
            for f in factors:
                part = np.abs(rotated[:, start:start + f // 2])  # the top two of [xR; -xR] are among |xR|
                top2 = np.partition(part, part.shape[1] - 2, axis=1)[:, -2:]
                out |= top2[:, 1] - top2[:, 0] < margin * top2[:, 1]
                start += f // 2
        return out

    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            rows = np.flatnonzero(ties(q[b, h], h))
            while len(rows):
                q[b, h, rows] = rng.standard_normal((len(rows), q.shape[-1])).astype(np.float32)
                rows = rows[ties(q[b, h, rows], h)]


def sinkhorn_network(entry, rng, N, H, d):
    """The sorting network of Sparse Sinkhorn attention at the entry's default block, hidden width d."""
    n = -(-N // int(option_default(entry, "block")))
    shapes = {"sort_w1": (H, d, d), "sort_b1": (H, d), "sort_w2": (H, d, n), "sort_b2": (H, n)}
    return {name: (rng.standard_normal(shape) / math.sqrt(d)).astype(np.float32) for name, shape in shapes.items()}


def aft_bias(entry, rng, N, causal, H):
    """AFT's position bias at the entry's default window/kernel, one per head of q (the functional form's
    layout). Where the entry's `heads` default is 1 (the paper's AFT-full and AFT-local: one bias for every
    channel) one bias head w [1, ...], which the functional form shares by every head (as the module does), so
    single-bias peers compute the same thing and neither side exponentiates H copies of it."""
    window, kernel = option_default(entry, "window"), option_default(entry, "kernel")
    if window is not None:
        s = int(window)
        shape = (N, s if causal else 2 * s - 1)
    elif kernel is not None:
        shape = (int(kernel),)
    elif entry["options"]:
        shape = (N, N)
    else:
        return {}
    shared = option_default(entry, "heads") == "1"
    return {"w": (0.1 * rng.standard_normal((1 if shared else H,) + shape)).astype(np.float32)}


def linformer_projections(entry, rng, N, H, d):
    """E, F [1, k, N] at the entry's default k (headwise sharing), N(0, 1/k) as the module's init."""
    k = int(option_default(entry, "k"))
    return {n: (rng.standard_normal((1, k, N)) / math.sqrt(k)).astype(np.float32) for n in ("E", "F")}


def synthesizer_weights(entry, rng, N, H, d):
    """The default synthesis (dense): the MLP's W1 [H, d, d], b1, W2 [H, d, N], b2, scaled as the module's init."""
    w = {"dense_w1": rng.standard_normal((H, d, d)) / math.sqrt(d), "dense_b1": np.zeros((H, d)),
         "dense_w2": rng.standard_normal((H, d, N)) / math.sqrt(d), "dense_b2": np.zeros((H, N))}
    return {n: a.astype(np.float32) for n, a in w.items()}


def memory_compressed_kernels(entry, rng, N, H, d):
    """The strided convolutions [H, c, d, d] at the entry's default compression c, and their biases."""
    c = int(option_default(entry, "compression"))
    w = {n: rng.standard_normal((H, c, d, d)) / math.sqrt(c * d) for n in ("k_conv", "v_conv")}
    w.update({n: np.zeros((H, d)) for n in ("k_conv_bias", "v_conv_bias")})
    return {n: a.astype(np.float32) for n, a in w.items()}


PROJECTION_FAMILY = {"linformer": linformer_projections, "synthesizer": synthesizer_weights,
                     "memory_compressed": memory_compressed_kernels}
