"""lucidrains' local-attention (LocalAttention): windows of `window_size` queries attending their own window
and `look_backward` windows before it (`look_forward` after it, bidirectional), the peer of our `local` (1-D,
block b, memory b: the previous block; bidirectional, the block on each side). No rotary or relative positions
(the package adds them only when given `dim`). Exact when the windows line up, which the check verifies."""
from .base import Peer


def _option(entry, name):
    return next((o["default"] for o in entry["options"] if o["name"] == name), None)


class LocalAttentionPeer(Peer):
    name = "local-attention"
    package = "local-attention"

    def applies(self, entry):
        block, memory = _option(entry, "block"), _option(entry, "memory")
        return entry["name"] == "local" and block is not None and block == memory

    def imports(self):
        import local_attention  # noqa: F401

    def prepare(self, entry, causal, inputs):
        from local_attention import LocalAttention
        block = int(_option(entry, "block"))
        attn = LocalAttention(window_size=block, causal=causal, look_backward=1, look_forward=0 if causal else 1,
                              autopad=True, exact_windowsize=False)
        return lambda q, k, v: attn(q, k, v)
