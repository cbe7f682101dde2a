"""Peers of the Attention Free Transformer (reference "aft": aft_full, aft_simple, aft_local, aft_conv).

torch-paper: AFT eq. 2 as the paper's pseudo-code computes it (Zhai et al. 2021, sec. 3.2), with our bias:
`exp(w) @ (exp(K) * V) / exp(w) @ exp(K)` for AFT-full and AFT-local (the local band made dense, 0 outside
the window), cumulative or global sums for AFT-simple, and for AFT-conv the sums plus a depthwise conv1d of
`exp(K) * V` and `exp(K)` with `exp(u) - 1` (eq. 6); exponents shifted by the maxima of K per channel and of
w per row. Exact (the same math; only the float32 rounding differs).
aft-pytorch (Rishit Dagli's package): AFTFull, AFTSimple, AFTLocal modules with their projections replaced by
ours (identity: q, k, v fed as given; the output projection the identity), one bias shared by all channels
(the paper's AFT-full/local, heads = 1). Bidirectional only (the package has no causal form).
"""
from .base import Peer, torch_tensor


def _regroup(x, heads):
    """[B, H, N, d] -> [B, heads, N, H d / heads]: AFT's heads are groups of channels sharing one bias."""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, heads, -1).transpose(1, 2)


def _ungroup(y, H):
    B, heads, N, c = y.shape
    return y.transpose(1, 2).reshape(B, N, H, -1).transpose(1, 2)


def dense_bias(name, w, N, causal):
    """The dense bias [heads, N, N] of aft_full (w itself) or aft_local (the band, 0 outside the window)."""
    import torch
    if w.dim() == 3 and w.shape[-1] == w.shape[-2] == N and name != "aft_local":
        return w
    S = w.shape[-1]
    p = S - 1 if causal else (S - 1) // 2
    rel = torch.arange(N)[None, :] - torch.arange(N)[:, None] + p
    inside = (rel >= 0) & (rel < S)
    return torch.gather(w, 2, rel.clamp(0, S - 1)[None].expand(w.shape[0], N, N)) * inside


def paper_aft(name, q, k, v, w, causal):
    import torch
    import torch.nn.functional as F
    B, H, N, d = q.shape
    heads = 1 if w is None else w.shape[0]
    q2, k2, v2 = (_regroup(x, heads) for x in (q, k, v))
    ek = torch.exp(k2 - k2.amax(dim=2, keepdim=True).detach())
    ekv = ek * v2
    if w is not None and w.dim() == 3:  # aft_full, aft_local: dense [heads, N, N]
        wd = dense_bias(name, w, N, causal)
        if causal:
            wd = wd.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
        ew = torch.exp(wd - wd.amax(dim=-1, keepdim=True).detach())
        num, den = ew @ ekv, ew @ ek
    else:
        num = torch.cumsum(ekv, 2) if causal else ekv.sum(2, keepdim=True)
        den = torch.cumsum(ek, 2) if causal else ek.sum(2, keepdim=True)
        if w is not None:  # aft_conv: w [heads, s]
            s, C = w.shape[-1], q2.shape[-1]
            p = s - 1 if causal else (s - 1) // 2
            kern = (torch.exp(w) - 1).repeat_interleave(C, dim=0)[:, None, :]  # [heads C, 1, s]

            def conv(x):  # [B, heads, N, C] -> depthwise over N, channel (h, c) with head h's kernel
                xt = F.pad(x.permute(0, 1, 3, 2).reshape(B, heads * C, N), (p, s - 1 - p))
                return F.conv1d(xt, kern, groups=heads * C).reshape(B, heads, C, N).permute(0, 1, 3, 2)
            num, den = num + conv(ekv), den + conv(ek)
    return _ungroup(torch.sigmoid(q2) * num / den, H)


class TorchPaper(Peer):
    name = "torch-paper"
    quadratic = True  # AFT-full and AFT-local through the dense N x N bias (AFT-simple, AFT-conv are linear)

    def applies(self, entry):
        return entry["reference"] == "aft"

    def prepare(self, entry, causal, inputs):
        w = inputs["extras"].get("w")
        w = None if w is None else torch_tensor(w)
        return lambda q, k, v: paper_aft(entry["name"], q, k, v, w, causal)


class _Const:
    """Stands in for one of the package's projections: returns the given tensor whatever its input."""

    def __init__(self):
        self.value = None

    def __call__(self, x):
        return self.value


class AftPytorch(Peer):
    name = "aft-pytorch"
    package = "aft-pytorch"
    quadratic = True
    CLASSES = {"aft_full": "AFTFull", "aft_simple": "AFTSimple", "aft_local": "AFTLocal"}

    def applies(self, entry):
        return entry["name"] in self.CLASSES

    def supports(self, entry, causal):
        return not causal and entry["capabilities"]["bidirectional"]

    def imports(self):
        import aft_pytorch  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import aft_pytorch
        import torch
        B, H, N, d = inputs["q"].shape
        D = H * d
        name = entry["name"]
        cls = getattr(aft_pytorch, self.CLASSES[name])
        w = inputs["extras"].get("w")
        if name == "aft_simple":
            layer = cls(max_seqlen=N, dim=D, hidden_dim=D)
        elif name == "aft_full":
            layer = cls(max_seqlen=N, dim=D, hidden_dim=D)
            with torch.no_grad():
                layer.wbias.copy_(torch_tensor(w)[0])
        else:
            s = (w.shape[-1] + 1) // 2  # bidirectional band 2 s - 1
            layer = cls(max_seqlen=N, dim=D, hidden_dim=D, s=s)
            with torch.no_grad():
                layer.wbias.copy_(dense_bias(name, torch_tensor(w), N, False)[0])
        projections = {n: _Const() for n in ("to_q", "to_k", "to_v")}
        for n, c in projections.items():
            delattr(layer, n)  # a plain callable cannot replace a registered submodule in place
            setattr(layer, n, c)
        layer.project = torch.nn.Identity()

        def run(q, k, v):
            for n, x in zip(("to_q", "to_k", "to_v"), (q, k, v)):
                projections[n].value = x.transpose(1, 2).reshape(B, N, D)
            y = layer(torch.empty(B, N, D))
            return y.reshape(B, N, H, d).transpose(1, 2)
        return run
