"""lucidrains' axial-attention (AxialAttention, sum of the per-axis outputs) and isab-pytorch (ISAB's two
Attention blocks), the peers of our `axial` (bidirectional) and `isab` (its functional form). Both packages
project their inputs inside; to compute our math on our q, k, v their projections are replaced by slices and
copies (no arithmetic), so what is timed is their attention itself, checked exact against ours first.

axial: x = [q | k | v] laid out as the [B, h, w, 3 D] image of the functional form's default layout (w =
ceil(sqrt N), N = h w); the row-axis attention reads our row heads' q, k, v (heads 0 .. H/2 - 1), the column
one our column heads', and each writes its heads into its half of the output, so the package's sum of the two
axes is our concatenation. isab: attn1(I, [k | v]) then attn2(q, H) with to_q, to_kv, to_out as identities
(to_kv of attn2 duplicates H into keys and values); its ISAB.forward takes a single x for both roles, so the
adapter calls the two blocks as forward does."""
import math

from .base import Peer, replace_child


class _Slice:
    """A module stand-in: the features [a, b) of the last dim (and [c, e) after them, concatenated)."""

    def __init__(self, *ranges):
        self.ranges = ranges

    def __call__(self, x):
        import torch
        parts = [x[..., a:b] for a, b in self.ranges]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


class _PadTo:
    """[..., n] -> [..., D] with the n features at offset `at` (zeros elsewhere)."""

    def __init__(self, at, D):
        self.at, self.D = at, D

    def __call__(self, x):
        import torch.nn.functional as F
        return F.pad(x, (self.at, self.D - self.at - x.shape[-1]))


class AxialAttentionPeer(Peer):
    name = "axial-attention"
    package = "axial-attention"
    test_n = 144  # the package takes whole images only: 12 x 12 (tests/python/test_bench_harness.py)

    def applies(self, entry):
        return entry["name"] == "axial"

    def supports(self, entry, causal):
        return not causal  # the package has no causal form

    def imports(self):
        import axial_attention  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import torch
        from axial_attention import AxialAttention
        B, H, N, d = inputs["q"].shape
        w = math.isqrt(N - 1) + 1
        h = N // w
        if h * w != N:
            raise ValueError(f"N = {N} is not a full {h} x {w} image; the peer needs whole rows")
        D, Hr = H * d, (H + 1) // 2
        attn = AxialAttention(dim=3 * D, num_dimensions=2, heads=Hr, dim_heads=d, dim_index=-1, sum_axial_out=True)
        for wrapped in attn.axial_attentions:
            rows = wrapped.permutation[-2] == 2  # the attended axis sits before the features: 2 = along a row
            h0, h1 = (0, Hr) if rows else (Hr, H)
            sa = wrapped.fn
            replace_child(sa, "to_q", _Slice((h0 * d, h1 * d)))
            replace_child(sa, "to_kv", _Slice((D + h0 * d, D + h1 * d), (2 * D + h0 * d, 2 * D + h1 * d)))
            replace_child(sa, "to_out", _PadTo(h0 * d, 3 * D))

        def run(q, k, v):
            x = torch.cat([t.transpose(1, 2).reshape(B, h, w, D) for t in (q, k, v)], -1)
            return attn(x)[..., :D].reshape(B, N, H, d).transpose(1, 2)
        return run


class IsabPytorch(Peer):
    name = "isab-pytorch"
    package = "isab-pytorch"

    def applies(self, entry):
        return entry["name"] == "isab"

    def imports(self):
        import isab_pytorch  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import torch
        from isab_pytorch import ISAB
        B, H, N, d = inputs["q"].shape
        inducing = torch.from_numpy(inputs["extras"]["inducing"])  # [H, m, d]
        m, D = inducing.shape[1], H * d
        isab = ISAB(dim=D, heads=H, num_latents=m)
        if isab.attn1.scale != d ** -0.5:
            raise ValueError(f"isab-pytorch's heads are {round(isab.attn1.scale ** -2)} wide, not {d}")
        latents = inducing.transpose(0, 1).reshape(1, m, D).expand(B, m, D)
        for a in (isab.attn1, isab.attn2):
            replace_child(a, "to_q", _Slice((0, D)))
            replace_child(a, "to_out", _Slice((0, D)))
        replace_child(isab.attn1, "to_kv", _Slice((0, 2 * D)))
        replace_child(isab.attn2, "to_kv", _Slice((0, D), (0, D)))

        def merged(t):
            return t.transpose(1, 2).reshape(B, -1, D)

        def run(q, k, v):
            induced = isab.attn1(latents, torch.cat([merged(k), merged(v)], -1))
            return isab.attn2(merged(q), induced).reshape(B, N, H, d).transpose(1, 2)
        return run
