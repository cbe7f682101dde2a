"""The inputs of one benchmark shape, made the same way in every contender's process.

q, k, v and the upstream gradient g are [B, H, N, d] float32 draws of a generator seeded by the shape, so the
mechanism's process and each peer's see identical numbers. A mechanism's extra tensors come from its registry
entry, never from its name: the `reference` it declares says what its functional form needs (a kernelized
mechanism with a projection takes its random matrix omega [m, d]; an AFT mechanism its position bias `w`,
shaped by the options it lists: a band for `window`, a kernel for `kernel`, else a dense [H, N, N]), and
the option defaults the registry lists size them. A mechanism whose reference is new here gets no extras;
if its functional form needs some, its run fails and the report says so.
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
    elif ref == "isab":  # the inducing queries [H, m, d] at the entry's default m
        m = int(option_default(entry, "inducing", "32"))
        extras["inducing"] = rng.standard_normal((H, m, d)).astype(np.float32)
    return {"q": q, "k": k, "v": v, "g": g, "extras": extras}


def aft_bias(entry, rng, N, causal, H):
    """AFT's position bias at the entry's default window/kernel, one per head of q (the functional form's
    layout). Where the entry's `heads` default is 1 (the paper's AFT-full and AFT-local: one bias for every
    channel) the heads get the same bias, so single-bias peers compute the same thing."""
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
    w = 0.1 * rng.standard_normal((1 if shared else H,) + shape)
    return {"w": np.ascontiguousarray(np.broadcast_to(w, (H,) + shape)).astype(np.float32)}
