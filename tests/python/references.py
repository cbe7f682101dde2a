"""Float64 PyTorch formulations of the attention mechanisms: the references of the contract suite
(test_contract.py), keyed by the `reference` a registry entry declares (eformer.mechanisms()).

A reference is a class with
  functional_kwargs(entry, d, rng) -> (kwargs for eformer.attention, context)   for the functional form
  module_context(entry, mech)      -> context                                    for a mechanism module
  heads(entry, q, k, v, causal, key_mask, context) -> out [B, H, N, d_v]         (torch float64)
q, k, v are [B, H, N or M, d] torch tensors; key_mask is a numpy bool [B, M] or None. A mechanism
whose reference is not in REFERENCES fails the suite.
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

    def functional_kwargs(self, entry, d, rng):
        return {}, {}

    def module_context(self, entry, mech):
        return {}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        B, H, N, _ = q.shape
        M = k.shape[2]
        pattern = torch.as_tensor(ef.attention_pattern(entry["name"], N, M, heads=H, causal=causal))
        allowed = pattern[None]
        if key_mask is not None:
            allowed = allowed & torch.as_tensor(np.asarray(key_mask))[:, None, None, :]
        return masked_softmax_attention(q, k, v, allowed)


class Kernelized:
    """Normalized feature-map attention with the mechanism's default feature map and its omega."""

    def feature_map(self, entry):
        return (option_default(entry, "kernel"), option_default(entry, "features"),
                option_default(entry, "projection") == "true")

    def functional_kwargs(self, entry, d, rng):
        kernel, features, projection = self.feature_map(entry)
        if not projection:
            return {}, {"omega": None}
        omega = ef.draw_omega(round(d * math.log(d)), d, seed=int(rng.integers(1 << 30)))
        return {"omega": omega}, {"omega": torch.tensor(omega.numpy().astype(np.float64))}

    def module_context(self, entry, mech):
        state = mech.state_dict()
        omega = state.get("omega")
        return {"omega": None if omega is None else torch.tensor(omega.numpy().astype(np.float64))}

    def heads(self, entry, q, k, v, causal, key_mask, context):
        kernel, features, projection = self.feature_map(entry)
        return torch_kernelized(q, k, v, context["omega"], kernel, features, projection, causal, key_mask)


REFERENCES = {"softmax-pattern": SoftmaxPattern(), "kernelized": Kernelized()}
