"""PyTorch's fused scaled_dot_product_attention: the peer of exact attention, and with our exact pattern as
its boolean mask, of every pattern mechanism (what a user without a block-sparse kernel would write)."""
from .base import Peer, pattern


def _exact(entry):
    """A softmax mechanism whose pattern is every key (full, flash), judged on a 4096 x 4096 pattern (at 256,
    longformer's window of 512 and bigbird's 8 blocks of 64 cover every key too)."""
    import eformer as ef
    return entry["reference"] == "softmax-pattern" and entry["pattern"] and \
        bool(ef.attention_pattern(entry["name"], 4096).all())


class _SDPA(Peer):
    quadratic = True

    def imports(self):
        import torch.nn.functional as F
        if not hasattr(F, "scaled_dot_product_attention"):
            import torch
            raise ImportError(f"torch {torch.__version__} has no scaled_dot_product_attention (2.0+)")


class TorchSDPA(_SDPA):
    name = "torch-sdpa"

    def applies(self, entry):
        return _exact(entry)

    def prepare(self, entry, causal, inputs):
        import torch.nn.functional as F
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)


class TorchSDPAMasked(_SDPA):
    name = "torch-sdpa-masked"

    def applies(self, entry):
        return entry["reference"] == "softmax-pattern" and entry["pattern"] and not _exact(entry)

    def prepare(self, entry, causal, inputs):
        import torch.nn.functional as F
        B, H, N, _ = inputs["q"].shape
        mask = pattern(entry, N, H, causal)  # [H, N, N], causality included
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
