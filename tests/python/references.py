"""Float64 PyTorch formulations of the attention mechanisms: the references of the contract suite
(test_contract.py), keyed by the `reference` a registry entry declares (eformer.mechanisms()).

A reference is a class with
  functional_kwargs(entry, d, rng, dims) -> (kwargs for eformer.attention, context)  for the functional form
  module_context(entry, mech, params)    -> context                                  for a mechanism module
  heads(entry, q, k, v, causal, key_mask, context) -> out [B, H, N, d_v]         (torch float64)
q, k, v are [B, H, N or M, d] torch tensors; key_mask is a numpy bool [B, M] or None; dims is
{B, H, N, M, causal} of the call; params are the module's parameters as float64 torch leaves (a
reference that uses a learned parameter, such as AFT's position bias, builds it from them so its
gradient is checked too). A mechanism whose reference is not in REFERENCES fails the suite.
"""
import math

import numpy as np
import torch

import eformer as ef

SHIFT_INVARIANT = ("softmax", "gaussian")


def torch_features(x, omega, kernel, features, projection):
    """phi(x) for x [..., n, d] (already scaled), omega [m, d] float64 (None without projection)."""
    a = x @ omega.T if projection else x
    sq = (x * x).sum(-1, keepdim=True)
    if kernel == "softmax" and features == "positive":
        return torch.exp(a - sq / 2)
    if kernel == "softmax":
        return torch.exp(sq / 2) * torch.cat([torch.sin(a), torch.cos(a)], -1)
    if kernel == "gaussian" and features == "positive":
        return torch.exp(a - sq)
    if kernel == "gaussian":
        return torch.cat([torch.sin(a), torch.cos(a)], -1)
    return {"relu": torch.relu, "elu": lambda t: torch.nn.functional.elu(t) + 1, "exp": torch.exp,
            "identity": lambda t: t}[kernel](a)


def allowed_mask(B, N, M, causal, key_mask):
    """Bool [B, 1, N, M]: may query i attend key j."""
    allowed = torch.ones(B, 1, N, M, dtype=torch.bool)
    if causal:
        allowed = allowed & (torch.arange(M)[None, :] <= torch.arange(N)[:, None])
    if key_mask is not None:
        allowed = allowed & torch.as_tensor(np.asarray(key_mask))[:, None, None, :]
    return allowed


def normalized(w, v, allowed):
    """out_i = sum_j w_ij v_j / sum_j w_ij over allowed keys; 0 where the denominator is 0."""
    w = w * allowed
    den = w.sum(-1, keepdim=True)
    ok = den.abs() > 1e-300
    return torch.where(ok, (w @ v) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def torch_kernelized(q, k, v, omega, kernel="softmax", features="positive", projection=True, causal=False,
                     key_mask=None, scale=None):
    B, _, N, d = q.shape
    if kernel in SHIFT_INVARIANT:
        root = math.sqrt(1.0 / math.sqrt(d) if scale is None else scale)
        q, k = q * root, k * root
    phi_q = torch_features(q, omega, kernel, features, projection)
    phi_k = torch_features(k, omega, kernel, features, projection)
    return normalized(phi_q @ phi_k.transpose(-1, -2), v, allowed_mask(B, N, k.shape[2], causal, key_mask))



def masked_softmax_attention(q, k, v, allowed, scale=None):
    """softmax(scale q k^T) v over `allowed` [B or 1, H or 1, N, M]; a row with none gives 0."""
    d = q.shape[-1]
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d) if scale is None else scale)
    s = s.masked_fill(~allowed, -math.inf)
    any_key = allowed.any(-1, keepdim=True)
    p = torch.softmax(torch.where(any_key, s, torch.zeros_like(s)), -1) * any_key
    return p @ v


def option_default(entry, name):
    """The default of option `name` as the registry lists it (a string)."""
    return next(o["default"] for o in entry["options"] if o["name"] == name)


class SoftmaxPattern:
    """Exact softmax attention restricted to the mechanism's exact pattern (eformer.attention_pattern)."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        return {}, {}

    def module_context(self, entry, mech, params=None):
        # A module whose layout is not the pattern's default (axial's image from max_len) says which it is.
        return {"pattern_options": dict(getattr(mech, "pattern_options", {}))}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        B, H, N, _ = q.shape
        M = k.shape[2]
        pattern = torch.as_tensor(ef.attention_pattern(entry["name"], N, M, heads=H, causal=causal,
                                                       **context.get("pattern_options", {})))
        allowed = pattern[None]
        if key_mask is not None:
            allowed = allowed & torch.as_tensor(np.asarray(key_mask))[:, None, None, :]
        return masked_softmax_attention(q, k, v, allowed)


class Kernelized:
    """Normalized feature-map attention with the mechanism's default feature map and its omega."""

    def feature_map(self, entry):
        return (option_default(entry, "kernel"), option_default(entry, "features"),
                option_default(entry, "projection") == "true")

    def functional_kwargs(self, entry, d, rng, dims=None):
        kernel, features, projection = self.feature_map(entry)
        if not projection:
            return {}, {"omega": None}
        omega = ef.draw_omega(round(d * math.log(d)), d, seed=int(rng.integers(1 << 30)))
        return {"omega": omega}, {"omega": torch.tensor(omega.numpy().astype(np.float64))}

    def module_context(self, entry, mech, params=None):
        state = mech.state_dict()
        omega = state.get("omega")
        return {"omega": None if omega is None else torch.tensor(omega.numpy().astype(np.float64))}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        kernel, features, projection = self.feature_map(entry)
        return torch_kernelized(q, k, v, context["omega"], kernel, features, projection, causal, key_mask)


def aft_window_start(name, S, causal):
    """p of the AFT band: the window of query t starts at key t - p (aft_local: S = s or 2 s - 1)."""
    return S - 1 if causal else (S - 1) // 2


def aft_dense_bias(name, bias, N, M, causal):
    """The dense position bias w [H, N, M] of an AFT mechanism from its tensor form (torch float64):
    aft_full w [H, >= N, >= M]; aft_local the band [H, >= N, S] (w_t,t' = band[t, t' - t + p], 0 outside);
    aft_conv the kernel [H, s] (the same band at every t); aft_simple None (w = 0)."""
    if bias is None:
        return None
    if name == "aft_full":
        return bias[:, :N, :M]
    S = bias.shape[-1]
    p = aft_window_start(name, S, causal)
    rel = torch.arange(M)[None, :] - torch.arange(N)[:, None] + p  # [N, M]: index into the band
    inside = (rel >= 0) & (rel < S)
    idx = rel.clamp(0, S - 1)
    if name == "aft_conv":
        w = bias[:, idx]  # [H, N, M]
    else:
        w = torch.gather(bias[:, :N, :], 2, idx[None].expand(bias.shape[0], N, M))
    return torch.where(inside[None], w, torch.zeros_like(w))


def torch_aft(q, k, v, w, causal, key_mask=None):
    """AFT eq. 2 from the definition, float64: Y_t = sigmoid(Q_t) * sum_t' exp(K_t' + w_t,t') V_t' /
    sum_t' exp(K_t' + w_t,t') per channel (t' <= t when causal). q, k, v [B, H, N or M, d]; w [Hw, N, M]
    or None (0), shared by the channels of each of its Hw heads (channels regrouped into Hw heads)."""
    B, H, N, d = q.shape
    M = k.shape[2]
    Hw = 1 if w is None else w.shape[0]

    def regroup(x):
        return x.transpose(1, 2).reshape(B, x.shape[2], Hw, -1).transpose(1, 2)

    q2, k2, v2 = regroup(q), regroup(k), regroup(v)
    logits = k2[:, :, None, :, :].expand(B, Hw, N, M, k2.shape[-1])
    if w is not None:
        logits = logits + w[None, :, :, :, None]
    allowed = allowed_mask(B, N, M, causal, key_mask)[..., None]  # [B, 1, N, M, 1]
    any_key = allowed.any(3, keepdim=True)
    logits = torch.where(allowed, logits, torch.full_like(logits, -math.inf))
    p = torch.softmax(torch.where(any_key, logits, torch.zeros_like(logits)), dim=3) * allowed
    a = (p * v2[:, :, None]).sum(3)
    y = torch.sigmoid(q2) * a
    return y.transpose(1, 2).reshape(B, N, H, d).transpose(1, 2)


def aft_reparam(kernel, gamma, beta):
    """AFT eq. 8: u = gamma (raw - mean raw) / std raw + beta per head (torch's unbiased std)."""
    mean = kernel.mean(1, keepdim=True)
    return gamma[:, None] * (kernel - mean) / kernel.std(1, keepdim=True) + beta[:, None]


class Aft:
    """The Attention Free Transformer (AFT eq. 2) with the mechanism's position bias."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        name, H, N, M, causal = entry["name"], dims["H"], dims["N"], dims["M"], dims["causal"]
        if name == "aft_simple":
            return {}, {"bias": None}
        if name == "aft_full":
            w = rng.standard_normal((H, N, M))
        elif name == "aft_local":
            s = 3
            w = rng.standard_normal((H, N, s if causal else 2 * s - 1))
        else:
            w = rng.standard_normal((H, 4))
        w32 = w.astype(np.float32)
        return {"w": ef.tensor(w32)}, {"bias": torch.tensor(w32.astype(np.float64))}

    def module_context(self, entry, mech, params=None):
        p, name = params, entry["name"]
        if name == "aft_full":
            return {"bias": p["w_u"] @ p["w_v"].transpose(1, 2) if "w_u" in p else p["w"]}
        if name == "aft_local" and "w_u" in p:  # factorized: U V^T inside the window |t - t'| < s
            s = int(option_default(entry, "window"))
            dense = p["w_u"] @ p["w_v"].transpose(1, 2)
            L = dense.shape[1]
            near = (torch.arange(L)[None, :] - torch.arange(L)[:, None]).abs() < s
            return {"bias": dense * near, "dense": True}
        if name == "aft_local":
            return {"bias": p["w"]}
        if name == "aft_conv":
            return {"bias": aft_reparam(p["kernel"], p["gamma"], p["beta"]) if "gamma" in p else p["kernel"]}
        return {"bias": None}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        N, M = q.shape[2], k.shape[2]
        w = context["bias"][:, :N, :M] if context.get("dense") else \
            aft_dense_bias(entry["name"], context["bias"], N, M, causal)
        return torch_aft(q, k, v, w, causal, key_mask)


LSH_SELF_SCORE = -1e5  # a token's score for its own key (kernels/lsh.h, HF's self_mask_value)


def lsh_bucket_factors(n_buckets):
    """Buckets above 256 are factorized (kernels/lsh.h): b = b1 b2, b1 = 2^ceil(log2(b) / 2)."""
    if n_buckets <= 256:
        return [n_buckets]
    b1 = 1 << ((int(math.log2(n_buckets)) + 1) // 2)
    return [b1, n_buckets // b1]


def lsh_buckets(kn, rotations, n_buckets):
    """Angular LSH (Reformer sec. 2): argmax([x R; -x R]) per round, the first maximum, per factor of
    n_buckets over its own rotation columns, combined as i1 + b1 i2. kn [B, H, N, d], rotations
    [n_hashes, H, d, columns] -> Int [n_hashes, B, H, N]."""
    proj = torch.einsum("bhnd,rhdk->rbhnk", kn.detach(), rotations)
    bucket, scale, at = 0, 1, 0
    for b in lsh_bucket_factors(n_buckets):
        p = proj[..., at:at + b // 2]
        bucket = bucket + scale * torch.argmax(torch.cat([p, -p], -1), -1)
        scale, at = scale * b, at + b // 2
    return bucket


def normalized_keys(k):
    """k^ = k / sqrt(|k|^2 + 1e-12), the keys of lsh and routing (kernels/lsh.h)."""
    return k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-12)


def torch_sorted_chunks(q, k, v, rounds, n_buckets, chunk, causal, key_mask=None, scale=None):
    """Attention over sorted buckets (docs/MECHANISMS.md, "lsh"), float64, dense over position pairs.
    Keys k^ = normalized_keys(k); `rounds` is a list of Int buckets [B, H, N] in [0, n_buckets). Per
    round: masked keys in a bucket of their own after the real ones, a stable sort by (bucket, position)
    giving each position its sorted index s; query i sees key j iff (bidirectional) chunk(s_j) is
    chunk(s_i) or the one before, or (causal) s_j <= s_i, s_i - s_j <= 2c - 1 and bucket_j == bucket_i;
    masked keys never. The self score is LSH_SELF_SCORE. One softmax over the rounds' candidates (a key
    visible in r rounds counts r times); a row with no candidate gives 0. q, k, v [B, H, N, d]."""
    B, H, N, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kn = normalized_keys(k)
    real = torch.ones(B, N, dtype=torch.bool) if key_mask is None else torch.as_tensor(np.asarray(key_mask))
    positions = torch.arange(N)
    own = torch.eye(N, dtype=torch.bool)
    base = torch.where(own, torch.full((N, N), LSH_SELF_SCORE), scale * (q @ kn.transpose(-1, -2)))
    scores = []
    for buckets in rounds:
        buckets = torch.where(real[:, None, :], buckets, torch.full_like(buckets, n_buckets))
        order = torch.argsort(buckets * N + positions, -1)  # distinct keys: a stable sort
        rank = torch.argsort(order, -1)                      # the sorted index of each position
        si, sj = rank[..., :, None], rank[..., None, :]
        if causal:
            allowed = (sj <= si) & (si - sj <= 2 * chunk - 1) & (buckets[..., :, None] == buckets[..., None, :])
        else:
            allowed = (sj // chunk == si // chunk) | (sj // chunk == si // chunk - 1)
        allowed = allowed & real[:, None, None, :]
        scores.append(base.masked_fill(~allowed, -math.inf))
    s = torch.cat(scores, -1)
    any_key = (s > -math.inf).any(-1, keepdim=True)
    p = torch.softmax(torch.where(any_key, s, torch.zeros_like(s)), -1) * any_key
    return p @ torch.cat([v] * len(scores), -2)


def torch_lsh(q, k, v, rotations, chunk, causal, key_mask=None, scale=None, n_buckets=None):
    """LSH attention: torch_sorted_chunks over the angular hashes of k^ (rotations [n_hashes, H, d,
    columns], float64; n_buckets defaults to 2 x columns, unfactored)."""
    n_buckets = 2 * rotations.shape[-1] if n_buckets is None else n_buckets
    rounds = list(lsh_buckets(normalized_keys(k), rotations, n_buckets))
    return torch_sorted_chunks(q, k, v, rounds, n_buckets, chunk, causal, key_mask, scale)


def routing_clusters(kn, centroids, local_heads=0):
    """Roy et al. 2021, sec. 4.1: the nearest centroid, argmax_j k^_i . mu_j (the first maximum), per
    routing head; the last local_heads heads put every token in cluster 0. kn [B, H, N, d], centroids
    [H, c, d] -> Int [B, H, N]."""
    cluster = torch.argmax(torch.einsum("bhnd,hcd->bhnc", kn.detach(), centroids), -1)
    H = kn.shape[1]
    cluster[:, H - local_heads:] = 0
    return cluster


def torch_routing(q, k, v, centroids, window, causal, key_mask=None, local_heads=0):
    """Routing attention (kernels/routing.h): torch_sorted_chunks with one round, the clusters of
    routing_clusters as buckets and chunks of `window`."""
    clusters = routing_clusters(normalized_keys(k), centroids, local_heads)
    return torch_sorted_chunks(q, k, v, [clusters], centroids.shape[1], window, causal, key_mask)


def routing_top_members(kn, centroids, window, key_mask=None):
    """Roy et al. 2021, sec. 4.1, balanced clusters: per head, centroid j takes the min(window, N, real
    tokens) real tokens of highest k^_i . mu_j. kn [B, H, N, d], centroids [H, c, d] -> Bool [B, H, c, N]."""
    B, H, N, d = kn.shape
    real = torch.ones(B, N, dtype=torch.bool) if key_mask is None else torch.as_tensor(np.asarray(key_mask))
    sim = torch.einsum("bhnd,hcd->bhcn", kn.detach(), centroids).masked_fill(~real[:, None, None, :], -math.inf)
    member = torch.zeros(sim.shape, dtype=torch.bool)
    for b in range(B):
        w = min(window, N, int(real[b].sum()))
        member[b].scatter_(-1, torch.topk(sim[b], w, -1).indices, True)
    return member


def torch_routing_top(q, k, v, centroids, window, key_mask=None, local_heads=0):
    """Routing attention with balanced clusters (routing option balance "top", kernels/routing_top.h),
    float64, dense: within each cluster of routing_top_members its queries attend its keys, the own key
    left out (a member alone takes its own value); a token's output is the mean over its clusters, 0 in
    none. The last local_heads heads are torch_routing's local heads (bidirectional)."""
    B, H, N, d = q.shape
    kn = normalized_keys(k)
    member = routing_top_members(kn, centroids, window, key_mask)         # [B, H, c, N]
    pair = member[..., :, None] & member[..., None, :] & ~torch.eye(N, dtype=torch.bool)  # [B, H, c, N, N]
    s = ((q @ kn.transpose(-1, -2)) / math.sqrt(d))[:, :, None].masked_fill(~pair, -math.inf)
    seen = pair.any(-1, keepdim=True)
    o = (torch.softmax(torch.where(seen, s, torch.zeros_like(s)), -1) * seen) @ v[:, :, None]
    o = torch.where(seen, o, v[:, :, None].expand_as(o)) * member[..., None]  # alone: its own value
    count = member.sum(2)[..., None]
    out = o.sum(2) / count.clamp(min=1)
    if local_heads:
        local = torch_routing(q, k, v, centroids, window, False, key_mask, local_heads)
        out = torch.cat([out[:, :H - local_heads], local[:, H - local_heads:]], 1)
    return out


def torch_routing_ema(centroids, kn, clusters, decay, key_mask=None, local_heads=0):
    """The centroids after one moving-average step (kernels/routing.h): per routing head and cluster
    with real members, mu <- normalize(decay mu + (1 - decay) normalize(sum of its k^))."""
    B, H, N, d = kn.shape
    real = torch.ones(B, N, dtype=torch.bool) if key_mask is None else torch.as_tensor(np.asarray(key_mask))
    out = centroids.clone()
    for h in range(H - local_heads):
        for j in range(centroids.shape[1]):
            members = (clusters[:, h] == j) & real
            if members.any():
                mean = kn[:, h][members].sum(0)
                mean = mean / torch.sqrt((mean * mean).sum() + 1e-12)
                mu = decay * centroids[h, j] + (1 - decay) * mean
                out[h, j] = mu / torch.sqrt((mu * mu).sum() + 1e-12)
    return out


class Lsh:
    """LSH attention with explicit rotations (functional form: drawn here; module: its buffer
    `rotations`, which holds the rotations of its latest forward, read after the call)."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        n_hashes, n_buckets, chunk = int(rng.integers(1, 4)), 4, 8
        r = rng.standard_normal((n_hashes, dims["H"], d, n_buckets // 2)).astype(np.float32)
        return {"rotations": ef.tensor(r), "chunk": chunk}, {"rotations": torch.tensor(r.astype(np.float64)),
                                                             "chunk": chunk}

    def module_context(self, entry, mech, params=None):
        return {"mech": mech, "chunk": int(option_default(entry, "chunk"))}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        rotations = context.get("rotations")
        if rotations is None:
            rotations = torch.tensor(context["mech"].state_dict()["rotations"].numpy().astype(np.float64))
        return torch_lsh(q, k, v, rotations, context["chunk"], causal, key_mask)


class Routing:
    """Routing attention with explicit centroids (functional form: drawn here, several clusters and
    local heads; module: its buffer `centroids` read before the call, the ones that call routes with)."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        c, window, local_heads = int(rng.integers(1, 5)), 8, int(rng.integers(0, 2))
        mu = rng.standard_normal((dims["H"], c, d)).astype(np.float32)
        kwargs = {"centroids": ef.tensor(mu), "window": window, "local_heads": local_heads}
        return kwargs, {"centroids": torch.tensor(mu.astype(np.float64)), "window": window,
                        "local_heads": local_heads}

    def module_context(self, entry, mech, params=None):
        mu = torch.tensor(mech.state_dict()["centroids"].numpy().astype(np.float64))
        return {"centroids": mu, "window": int(option_default(entry, "window")), "local_heads": 0}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        return torch_routing(q, k, v, context["centroids"], context["window"], causal, key_mask,
                             context["local_heads"])


def torch_linformer(q, k, v, E, F, key_mask=None, scale=None):
    """Linformer eq. 7, float64: softmax(q (E k)^T / sqrt(d)) (F v), E, F [H or 1, k', >= M] over their
    first M columns; padded keys and values are zeroed before the projection."""
    M, d = k.shape[2], q.shape[-1]
    if key_mask is not None:
        real = torch.as_tensor(np.asarray(key_mask))[:, None, :, None].to(k.dtype)
        k, v = k * real, v * real
    kp, vp = E[:, :, :M] @ k, F[:, :, :M] @ v
    s = (q @ kp.transpose(-1, -2)) * (1.0 / math.sqrt(d) if scale is None else scale)
    return torch.softmax(s, -1) @ vp


class Linformer:
    """Linformer with explicit E, F (functional: drawn here, shared or per head; module: its parameters)."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        heads = dims["H"] if rng.integers(2) else 1
        kk, L = int(rng.integers(3, 12)), dims["M"] + int(rng.integers(0, 5))
        E, F = (rng.standard_normal((heads, kk, L)).astype(np.float32) / math.sqrt(kk) for _ in range(2))
        return {"E": ef.tensor(E), "F": ef.tensor(F)}, {"E": torch.tensor(E.astype(np.float64)),
                                                        "F": torch.tensor(F.astype(np.float64))}

    def module_context(self, entry, mech, params=None):
        return {"E": params["E"], "F": params.get("F", params["E"])}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        assert not causal
        return torch_linformer(q, k, v, context["E"], context["F"], key_mask)


def synthesizer_default_factor(L):
    """The module's default a of a b = L: the largest divisor of L not above sqrt(L)."""
    return max(f for f in range(1, int(math.isqrt(L)) + 1) if L % f == 0)


def torch_synthesizer(q, k, v, parts, w, factor, causal, key_mask=None, scale=None):
    """Synthesizer (Tay et al. 2020, sec. 3), float64: Y = softmax(sum_c alpha_c S_c) V over the allowed keys,
    alpha = softmax(w["mix"]) per head (equal weights without it). S_c per component (see synthesizer.h):
    dense relu(q W1 + b1) W2 + b2, factorized_dense the flattened outer product of the MLP's a and b parts,
    random R, factorized_random R1 R2^T, dot_product q k^T / sqrt(d). q, k, v [B, H, N, d]."""
    B, H, N, d = v.shape
    M = N

    def mlp(p, width):
        h = torch.relu(q @ w[p + "_w1"] + w[p + "_b1"][:, None, :])
        return h @ w[p + "_w2"][:, :, :width] + w[p + "_b2"][:, None, :width]

    def component(name):
        if name == "dense":
            return mlp("dense", M)
        if name == "factorized_dense":
            ab = mlp("fdense", w["fdense_w2"].shape[2])
            a = factor
            outer = ab[..., :a, None] * ab[..., None, a:]
            return outer.reshape(B, H, N, -1)[..., :M]
        if name == "random":
            return w["random"][None, :, :N, :M]
        if name == "factorized_random":
            return (w["random_u"][:, :N] @ w["random_v"][:, :M].transpose(1, 2))[None]
        return (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d) if scale is None else scale)

    alpha = torch.softmax(w["mix"], 1) if w.get("mix") is not None else torch.full((H, len(parts)), 1.0 / len(parts))
    logits = sum(alpha[:, c][None, :, None, None] * component(name) for c, name in enumerate(parts))
    allowed = allowed_mask(B, N, M, causal, key_mask)
    logits = logits.expand(B, H, N, M).masked_fill(~allowed, -math.inf)
    any_key = allowed.any(-1, keepdim=True)
    p = torch.softmax(torch.where(any_key, logits, torch.zeros_like(logits)), -1) * any_key
    return p @ v


SYNTHESIZER_TENSORS = ("dense_w1", "dense_b1", "dense_w2", "dense_b2", "fdense_w1", "fdense_b1", "fdense_w2",
                       "fdense_b2", "random", "random_u", "random_v", "mix")


def synthesizer_weights(rng, parts, H, d, N, factor=5, hidden=6, rank=3):
    """Random float32 weights for `parts` (numpy), sized for N positions (a little more where per position)."""
    w = {}
    for p, on, width in (("dense", "dense", N + 2), ("fdense", "factorized_dense", factor + -(-N // factor))):
        if on in parts:
            w[p + "_w1"] = rng.standard_normal((H, d, hidden)) / math.sqrt(d)
            w[p + "_b1"] = rng.standard_normal((H, hidden))
            w[p + "_w2"] = rng.standard_normal((H, hidden, width)) / math.sqrt(hidden)
            w[p + "_b2"] = rng.standard_normal((H, width))
    if "random" in parts:
        w["random"] = rng.standard_normal((H, N + 1, N + 3))
    if "factorized_random" in parts:
        w["random_u"], w["random_v"] = rng.standard_normal((H, N + 2, rank)), rng.standard_normal((H, N, rank))
    if len(parts) > 1:
        w["mix"] = rng.standard_normal((H, len(parts)))
    return {n: t.astype(np.float32) for n, t in w.items()}


class Synthesizer:
    """The Synthesizer; the functional form mixes every component (random weights drawn here), the module
    uses its default synthesis and its own parameters (or fixed buffers)."""

    PARTS = ["dense", "random", "factorized_dense", "factorized_random", "dot_product"]

    def functional_kwargs(self, entry, d, rng, dims=None):
        w = synthesizer_weights(rng, self.PARTS, dims["H"], d, dims["N"])
        kwargs = {n: ef.tensor(t) for n, t in w.items()}
        kwargs.update(synthesis="+".join(self.PARTS), factor=5)
        return kwargs, {"parts": self.PARTS, "factor": 5,
                        "w": {n: torch.tensor(t.astype(np.float64)) for n, t in w.items()}}

    def module_context(self, entry, mech, params=None, synthesis=None, factor=None):
        w = dict(params)
        for name, t in mech.state_dict().items():  # fixed random matrices are buffers
            if name in SYNTHESIZER_TENSORS and name not in w:
                w[name] = torch.tensor(t.numpy().astype(np.float64))
        parts = (synthesis or option_default(entry, "synthesis")).split("+")
        return {"parts": parts, "factor": factor, "w": w}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        return torch_synthesizer(q, k, v, context["parts"], context["w"], context["factor"], causal, key_mask)


def torch_memory_compressed(q, k, v, k_conv, v_conv, k_bias, v_bias, block, causal, scale=None):
    """Memory-compressed attention (Liu et al. 2018, sec. 4.2), float64, dense over positions: windows
    k~_w = sum_t k_{w c + t} W_t + b (W [H, c, d, d]), one softmax over the windows (causal: those wholly before
    the query's block, (w + 1) c <= start of the block) and the keys of the query's block of min(block, N)
    positions (causal: j <= i)."""
    B, H, N, d = q.shape
    c = k_conv.shape[1]
    W, S = N // c, min(block, N)
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    def compress(x, conv, bias):
        y = x[:, :, :W * c].reshape(B, H, W, c * d) @ conv.reshape(H, c * d, d)
        return y if bias is None else y + bias[:, None, :]

    kc, vc = compress(k, k_conv, k_bias), compress(v, v_conv, v_bias)
    i, j, w = torch.arange(N)[:, None], torch.arange(N)[None, :], torch.arange(W)[None, :]
    local = (i // S == j // S) & (~torch.tensor(causal) | (j <= i))
    windows = ~torch.tensor(causal) | ((w + 1) * c <= i // S * S)
    s = torch.cat([(q @ kc.transpose(-1, -2) * scale).masked_fill(~windows, -math.inf),
                   (q @ k.transpose(-1, -2) * scale).masked_fill(~local, -math.inf)], -1)
    p = torch.softmax(s, -1)
    return p[..., :W] @ vc + p[..., W:] @ v


class MemoryCompressed:
    """Memory-compressed attention with explicit conv kernels (functional: drawn here; module: its own)."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        H, c, block = dims["H"], int(rng.integers(2, 5)), int(rng.choice([4, 8, 16]))
        t = {"k_conv": rng.standard_normal((H, c, d, d)) / math.sqrt(c * d),
             "v_conv": rng.standard_normal((H, c, d, d)) / math.sqrt(c * d),
             "k_conv_bias": rng.standard_normal((H, d)), "v_conv_bias": rng.standard_normal((H, d))}
        t = {n: a.astype(np.float32) for n, a in t.items()}
        kwargs = {n: ef.tensor(a) for n, a in t.items()}
        kwargs["block"] = block
        ctx = {n: torch.tensor(a.astype(np.float64)) for n, a in t.items()}
        ctx["block"] = block
        return kwargs, ctx

    def module_context(self, entry, mech, params=None, block=None):
        ctx = {n: params[n] for n in ("k_conv", "v_conv", "k_conv_bias", "v_conv_bias")}
        ctx["block"] = block or int(option_default(entry, "block"))
        return ctx

    def heads(self, entry, q, k, v, causal, key_mask, context):
        assert key_mask is None
        return torch_memory_compressed(q, k, v, context["k_conv"], context["v_conv"], context["k_conv_bias"],
                                       context["v_conv_bias"], context["block"], causal)


SINKHORN_MASKED = -1e30  # a masked logit (mechanisms/sinkhorn.cpp)


def sinkhorn_balance(x, iterations, causal):
    """Sinkhorn balancing in log space (Tay et al. 2020): iterations of F_c(F_r(X)); causal:
    masked to j < i, the column normalization of row i over rows k <= i, then the rows. -> P = exp(X)."""
    n = x.shape[-1]
    if not causal:
        for _ in range(iterations):
            x = torch.log_softmax(torch.log_softmax(x, -1), -2)
        return torch.exp(x)
    future = torch.ones(n, n, dtype=torch.bool).triu()
    x = x.masked_fill(future, SINKHORN_MASKED)
    for _ in range(iterations):
        x = x - torch.logcumsumexp(x, -2)
        x = torch.log_softmax(x.masked_fill(future, SINKHORN_MASKED), -1).masked_fill(future, SINKHORN_MASKED)
    return torch.exp(x).masked_fill(future, 0.0)


def torch_sinkhorn(q, k, v, net, block, iterations, temperature, sortcut, causal, key_mask=None, gumbel=None,
                   return_permutation=False):
    """Sparse Sinkhorn attention from its definition (docs/MECHANISMS.md, "sinkhorn"), float64. net: the
    sorting network (w1 [H, d, e], b1 [H, e], w2 [H, e, n_max], b2 [H, n_max]); gumbel [B, H, n, n] or None."""
    B, H, N, d = q.shape
    b = block
    n = -(-N // b)
    S = n * b
    real = torch.ones(B, N, dtype=torch.bool) if key_mask is None else torch.as_tensor(np.asarray(key_mask))
    realf = real[:, None, :, None].to(q.dtype)
    pad = torch.zeros(B, H, S - N, d)
    kb = torch.cat([k * realf, pad], 2).reshape(B, H, n, b * d)
    vb = torch.cat([v * realf, pad], 2).reshape(B, H, n, b * d)
    s = kb.reshape(B, H, n, b, d).sum(3)  # psi: each block's key sum
    if causal:
        s = torch.cat([torch.zeros(B, H, 1, d), s[:, :, :n - 1]], 2)
    hidden = torch.relu(torch.einsum("bhnd,hde->bhne", s, net["w1"]) + net["b1"][None, :, None])
    R = torch.einsum("bhne,hem->bhnm", hidden, net["w2"])[..., :n] + net["b2"][None, :, None, :n]
    if gumbel is not None:
        R = R + gumbel
    P = sinkhorn_balance(R / temperature, iterations, causal)
    rows = min(sortcut, n) if sortcut else n
    ks = torch.einsum("bhij,bhjx->bhix", P[:, :, :rows], kb).reshape(B, H, rows * b, d)
    vs = torch.einsum("bhij,bhjx->bhix", P[:, :, :rows], vb).reshape(B, H, rows * b, d)
    i, slot, j = torch.arange(N), torch.arange(rows * b), torch.arange(N)
    # A sorted slot is attended iff a block it may mix is real at its offset.
    real_blocks = torch.cat([real, torch.zeros(B, S - N, dtype=torch.bool)], 1).reshape(B, n, b)
    if causal:
        seen = torch.cumsum(real_blocks.long(), 1) - real_blocks.long() > 0  # some block j < r
    else:
        seen = real_blocks.any(1, keepdim=True).expand(B, n, b)
    slot_real = seen[:, :rows].reshape(B, rows * b)
    same_block = torch.ones(N, rows * b, dtype=torch.bool) if sortcut else slot[None, :] // b == i[:, None] // b
    local = (j[None, :] // b == i[:, None] // b) & ((j[None, :] <= i[:, None]) | (not causal))
    allowed = torch.cat([same_block[None] & slot_real[:, None, :], local[None] & real[:, None, :]], -1)
    out = masked_softmax_attention(q, torch.cat([ks, k], 2), torch.cat([vs, v], 2), allowed[:, None])
    return (out, P) if return_permutation else out


class Sinkhorn:
    """Sparse Sinkhorn attention with its sorting network: drawn here for the functional form (with
    Gumbel noise given); the module's parameters sort_* and, in training mode, its Gumbel noise (the
    uniform draws replayed from the generator state recorded before the call)."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        B, H, N = dims["B"], dims["H"], dims["N"]
        block, hidden = 4, 5
        n = -(-N // block)
        arrays = {"sort_w1": rng.standard_normal((H, d, hidden)) / math.sqrt(d),
                  "sort_b1": rng.standard_normal((H, hidden)) * 0.1,
                  "sort_w2": rng.standard_normal((H, hidden, n + 2)) / math.sqrt(hidden),
                  "sort_b2": rng.standard_normal((H, n + 2)) * 0.1,
                  "gumbel": -np.log(-np.log(rng.uniform(size=(B, H, n, n))))}
        arrays = {key: a.astype(np.float32) for key, a in arrays.items()}
        kwargs = {key: ef.tensor(a) for key, a in arrays.items()}
        kwargs.update(block=block, iterations=5, temperature=0.75)
        t = {key: torch.tensor(a.astype(np.float64)) for key, a in arrays.items()}
        net = {"w1": t["sort_w1"], "b1": t["sort_b1"], "w2": t["sort_w2"], "b2": t["sort_b2"]}
        return kwargs, {"net": net, "gumbel": t["gumbel"], "block": block, "iterations": 5, "temperature": 0.75,
                        "sortcut": 0}

    def module_context(self, entry, mech, params=None):
        p = params
        net = {"w1": p["sort_w1"], "b1": p["sort_b1"], "w2": p["sort_w2"], "b2": p["sort_b2"]}
        return {"net": net, "mech": mech, "rng_state": ef.get_rng_state(),
                "block": int(option_default(entry, "block")), "iterations": int(option_default(entry, "iterations")),
                "temperature": float(option_default(entry, "temperature")), "sortcut": 0}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        gumbel = context.get("gumbel")
        mech = context.get("mech")
        if mech is not None and mech.training:  # replay the module's uniform draws (mechanisms/sinkhorn.h)
            B, H, N = q.shape[0], q.shape[1], q.shape[2]
            n = -(-N // context["block"])
            now = ef.get_rng_state()
            ef.set_rng_state(context["rng_state"])
            u = torch.tensor(ef.rand(B, H, n, n).numpy().astype(np.float64))
            ef.set_rng_state(now)
            gumbel = -torch.log(-torch.log(u + 1e-20) + 1e-20)
        return torch_sinkhorn(q, k, v, context["net"], context["block"], context["iterations"],
                              context["temperature"], context["sortcut"], causal, key_mask, gumbel)


def etc_labels(N, globals_, max_distance):
    """The relative position labels [N, N] (kernels/block_sparse.h, RelativeLabels): clip(j - i, -k, k) + k
    within the globals and within the long input, 2k + 1 global-to-long, 2k + 2 long-to-global."""
    i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    k = max_distance
    label = (j - i).clamp(-k, k) + k
    gi, gj = i < globals_, j < globals_
    label = torch.where(gi & ~gj, torch.full_like(label, 2 * k + 1), label)
    return torch.where(~gi & gj, torch.full_like(label, 2 * k + 2), label)


def torch_etc(q, k, v, bias, globals_, radius, max_distance, key_mask=None):
    """ETC global-local attention (Ainslie et al. 2020) from its definition, float64: query i sees
    key j iff i < n_g or j < n_g or |i - j| <= r; score q k^T / sqrt(d) + bias[h, label(i, j)]."""
    B, H, N, d = q.shape
    i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    allowed = (i < globals_) | (j < globals_) | ((i - j).abs() <= radius)
    allowed = allowed[None, None].expand(B, 1, N, N)
    if key_mask is not None:
        allowed = allowed & torch.as_tensor(np.asarray(key_mask))[:, None, None, :]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    if bias is not None:
        s = s + bias[:, etc_labels(N, globals_, max_distance)][None]
    s = s.masked_fill(~allowed, -math.inf)
    any_key = allowed.any(-1, keepdim=True)
    p = torch.softmax(torch.where(any_key, s, torch.zeros_like(s)), -1) * any_key
    return p @ v


class Etc:
    """ETC with its relative bias table (functional form: drawn here; module: its parameter relative_bias)
    and the pattern options at their defaults (module) or small ones (functional form)."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        g, r, k = 3, 4, 2
        table = (0.5 * rng.standard_normal((dims["H"], 2 * k + 3))).astype(np.float32)
        return ({"relative_bias": ef.tensor(table), "globals": g, "radius": r, "max_distance": k},
                {"bias": torch.tensor(table.astype(np.float64)), "globals": g, "radius": r, "max_distance": k})

    def module_context(self, entry, mech, params=None):
        return {"bias": params["relative_bias"], "globals": int(option_default(entry, "globals")),
                "radius": int(option_default(entry, "radius")),
                "max_distance": int(option_default(entry, "max_distance"))}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        assert not causal
        return torch_etc(q, k, v, context["bias"], context["globals"], context["radius"], context["max_distance"],
                         key_mask)


def split_heads(x, H):
    B, n, D = x.shape
    return x.view(B, n, H, D // H).transpose(1, 2)


def merge_heads(x):
    B, H, n, d = x.shape
    return x.transpose(1, 2).reshape(B, n, H * d)


def torch_linear(p, prefix, x):
    return x @ p[prefix + ".weight"].T + p[prefix + ".bias"]


def torch_layer_norm(p, prefix, x):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], p[prefix + ".weight"], p[prefix + ".bias"], 1e-5)


def torch_mab(p, prefix, x, k, v, key_mask, H):
    """The Set Transformer's MAB (Lee et al. 2019, eq. 6-7) with keys and values as heads k, v [B, H, N, d]:
    LN(Hh + relu(Hh W + b)), Hh = LN(X + Multihead(X, Y, Y)); X [B or 1, m, D] (parameters under `prefix`)."""
    B, N = k.shape[0], k.shape[2]
    x = x.expand(B, -1, -1)
    q = split_heads(torch_linear(p, prefix + "q_proj", x), H)
    att = masked_softmax_attention(q, k, v, allowed_mask(B, x.shape[1], N, False, key_mask))
    h = torch_layer_norm(p, prefix + "norm1", x + torch_linear(p, prefix + "out_proj", merge_heads(att)))
    return torch_layer_norm(p, prefix + "norm2", h + torch.relu(torch_linear(p, prefix + "ff", h)))


def torch_pma(p, prefix, z, key_mask, H):
    """PMA_1(Z) = MAB(S, rFF(Z)) (Lee et al. 2019, eq. 11) -> [B, D]."""
    y = torch.relu(torch_linear(p, prefix + "rff", z))
    k = split_heads(torch_linear(p, prefix + "block.k_proj", y), H)
    v = split_heads(torch_linear(p, prefix + "block.v_proj", y), H)
    return torch_mab(p, prefix + "block.", p[prefix + "seed"][None], k, v, key_mask, H)[:, 0]


class Isab:
    """The Set Transformer's ISAB (Lee et al. 2019, eq. 9). Functional form: the two attentions per head
    through the inducing queries I [H, m, d] (H = softmax(I k^T) v, out = softmax(q H^T) H); module: the
    inner MAB(I, X) whole on the k, v heads of X, then q attends the h_k_proj / h_v_proj heads of H."""

    def functional_kwargs(self, entry, d, rng, dims=None):
        inducing = rng.standard_normal((dims["H"], int(rng.integers(1, 9)), d)).astype(np.float32)
        return {"inducing": ef.tensor(inducing)}, {"inducing": torch.tensor(inducing.astype(np.float64))}

    def module_context(self, entry, mech, params=None):
        return {"params": params}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        B, H, N, _ = q.shape
        if "inducing" in context:
            inducing = context["inducing"][None].expand(B, -1, -1, -1)
            h = masked_softmax_attention(inducing, k, v, allowed_mask(B, inducing.shape[2], k.shape[2], False,
                                                                      key_mask))
            return masked_softmax_attention(q, h, h, allowed_mask(B, N, h.shape[2], False, None))
        p = context["params"]
        h = torch_mab(p, "inducing_block.", p["inducing"][None], k, v, key_mask, H)
        hk, hv = split_heads(torch_linear(p, "h_k_proj", h), H), split_heads(torch_linear(p, "h_v_proj", h), H)
        return masked_softmax_attention(q, hk, hv, allowed_mask(B, N, h.shape[1], False, None))


REFERENCES = {"softmax-pattern": SoftmaxPattern(), "kernelized": Kernelized(), "aft": Aft(), "lsh": Lsh(),
              "routing": Routing(), "linformer": Linformer(), "synthesizer": Synthesizer(),
              "memory_compressed": MemoryCompressed(), "sinkhorn": Sinkhorn(), "etc": Etc(), "isab": Isab()}
