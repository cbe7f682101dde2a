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


def torch_lsh(q, k, v, rotations, chunk, causal, key_mask=None, scale=None, n_buckets=None):
    """LSH attention from its definition (docs/MECHANISMS.md, "lsh"), float64, dense over position pairs.
    Keys k^ = k / sqrt(|k|^2 + 1e-12). Per round: buckets, masked keys in a bucket of their own after the
    real ones, a stable sort by (bucket, position) giving each position its sorted index s; query i sees
    key j iff (bidirectional) chunk(s_j) is chunk(s_i) or the one before, or (causal) s_j <= s_i,
    s_i - s_j <= 2c - 1 and bucket_j == bucket_i; masked keys never. The self score is LSH_SELF_SCORE.
    One softmax over the rounds' candidates (a key visible in r rounds counts r times); a row with no
    candidate gives 0. q, k, v [B, H, N, d]; rotations [n_hashes, H, d, columns] (float64); n_buckets
    defaults to 2 x columns (unfactored)."""
    B, H, N, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kn = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-12)
    n_buckets = 2 * rotations.shape[-1] if n_buckets is None else n_buckets
    real = torch.ones(B, N, dtype=torch.bool) if key_mask is None else torch.as_tensor(np.asarray(key_mask))
    positions = torch.arange(N)
    own = torch.eye(N, dtype=torch.bool)
    base = torch.where(own, torch.full((N, N), LSH_SELF_SCORE), scale * (q @ kn.transpose(-1, -2)))
    scores = []
    for buckets in lsh_buckets(kn, rotations, n_buckets):
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
              "isab": Isab()}
