"""Hugging Face transformers' `LongformerSelfAttention`, the peer of our `longformer` (bidirectional only: the
module has no causal form, its window is always w/2 keys on each side).

The same math: its `attention_window` w is ours (w/2 keys each side of the query, |i - j| <= w/2, 2 (w/2) + 1
keys, the out-of-range diagonals masked at both ends), and its global positions (attention_mask > 0) are
symmetric as ours: a global query attends every key, every query attends the global keys, which its sliding
pass drops from the window so that no key counts twice. Set up so that it computes ours: its projections are
replaced by feeds of our q, k, v (no GEMM; its query is scaled by 1/sqrt(d) inside, in place, so it is fed a
copy), and its separate global projections (`query_global`, `key_global`, `value_global`, the paper's second
set for global attention) by the same feeds, since ours uses one set for both.

Where it differs: no dilation in its PyTorch code (the paper's dilated windows ran in its TVM kernel only),
so the peer applies only at dilation 1; N must be a multiple of w (its model pads; the module asserts).
"""
import json

from ..inputs import option_default
from .base import Peer, replace_child


def longformer_options(entry):
    """(window, dilation, global positions) at the entry's defaults."""
    window = int(option_default(entry, "window", "512"))
    dilation = json.loads(option_default(entry, "dilation", "1"))
    return window, dilation, json.loads(option_default(entry, "global", "[]"))


class HFLongformer(Peer):
    name = "hf-longformer"
    package = "transformers"
    partial_chunks = False  # it needs N to be a multiple of its window
    test_n = 1024  # two windows of the default w = 512 (tests/python/test_bench_harness.py)

    def applies(self, entry):
        if entry["name"] != "longformer":
            return False
        window, dilation, _ = longformer_options(entry)
        return window > 0 and window % 2 == 0 and dilation in (1, [1])

    def supports(self, entry, causal):
        return not causal

    def imports(self):
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import torch
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        B, H, N, d = inputs["q"].shape
        window, _, globals_ = longformer_options(entry)
        if N % window:
            raise ValueError(f"N = {N} is not a multiple of the window {window}; the module needs whole windows")
        config = LongformerConfig(hidden_size=H * d, num_attention_heads=H, attention_window=[window],
                                  attention_probs_dropout_prob=0.0)
        attn = LongformerSelfAttention(config, layer_id=0).eval()
        fed = {}
        for name in ("query", "query_global"):  # given the rows of q it is to project: a copy, scaled in place
            replace_child(attn, name, lambda hidden: hidden.clone())
        for name, role in (("key", "k"), ("key_global", "k"), ("value", "v"), ("value_global", "v")):
            replace_child(attn, name, lambda hidden, role=role: fed[role])
        # attention_mask: 0 local, > 0 global (its model maps the user's 2 to +10000); no padding (< 0)
        mask = torch.zeros(B, N, dtype=torch.float32)
        mask[:, [g for g in globals_ if g < N]] = 1.0
        is_global = mask > 0
        any_global = bool(is_global.any())

        def seq_first(t):  # [B, H, N, d] -> [N, B, H d], its layout after its own transpose
            return t.permute(2, 0, 1, 3).reshape(N, B, H * d)

        def call(q, k, v):
            fed["k"], fed["v"] = seq_first(k), seq_first(v)
            hidden = q.transpose(1, 2).reshape(B, N, H * d)  # the "hidden states" are our q: query(.) copies it
            out = attn(hidden, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=is_global,
                       is_global_attn=any_global)[0]
            return out.view(B, N, H, d).transpose(1, 2)
        return call
