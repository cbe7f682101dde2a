"""Peers of the kernelized mechanisms (reference "kernelized": performer, linear).

torch-cumsum: the math written the way the reference implementations write it (bench/performer_torch.py:
FAVOR+ positive features or elu + 1, bidirectional by two einsums, causal by cumulative sums over an
[N, m, d] tensor per head), with our omega: exact.
performer-pytorch: lucidrains' FastAttention with its projection matrix replaced by our omega, and the eps
its softmax_kernel adds to every feature set to 0 (the time is the same). With its eps = 1e-4 the output is
not FAVOR+: the keys' features are taken relative to the largest over every key and feature, and at q, k of
unit variance (d = 64) most fall below 1e-4, so eps outweighs them and the attention flattens toward the mean
of v (max |diff| / max |ours| = 0.96 at N = 512; docs/MECHANISMS.md). Its causal form adds 1e-6 to the
denominators, set to 0 too: with the same global key maximum the early prefix sums are tiny, and that eps
alone moved the causal output by 0.88 of its range at N = 512.
"""
import functools
import os
import sys

from .base import Peer, torch_tensor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))  # bench/ for performer_torch


def _feature_map(entry):
    opts = {o["name"]: o["default"] for o in entry["options"]}
    return opts.get("kernel"), opts.get("features"), opts.get("projection")


class TorchCumsum(Peer):
    name = "torch-cumsum"

    def applies(self, entry):
        fm = _feature_map(entry)
        return entry["reference"] == "kernelized" and fm in (("softmax", "positive", "true"),
                                                             ("elu", "positive", "false"))

    def prepare(self, entry, causal, inputs):
        import performer_torch as pt
        if _feature_map(entry)[0] == "elu":
            return lambda q, k, v: pt.elu_linear_attention(q, k, v, causal=causal)
        omega = torch_tensor(inputs["extras"]["omega"])
        return lambda q, k, v: pt.performer_attention(q, k, v, omega, causal=causal)


class PerformerPytorch(Peer):
    name = "performer-pytorch"
    package = "performer-pytorch"
    check = "exact, with our omega and its eps (1e-4 on features, 1e-6 on causal denominators) set to 0"
    tolerance = 1e-3

    def applies(self, entry):
        return entry["name"] == "performer" and _feature_map(entry) == ("softmax", "positive", "true")

    def imports(self):
        import performer_pytorch  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import torch
        from performer_pytorch import FastAttention, performer_pytorch as pp
        if not isinstance(pp.softmax_kernel, functools.partial):
            pp.softmax_kernel = functools.partial(pp.softmax_kernel, eps=0.0)  # FastAttention looks it up here
        omega = torch_tensor(inputs["extras"]["omega"])
        attn = FastAttention(dim_heads=inputs["q"].shape[-1], nb_features=omega.shape[0], causal=causal)
        with torch.no_grad():
            attn.projection_matrix.copy_(omega)
        if causal:  # its denominators' eps (1e-6) likewise
            attn.causal_linear_fn = functools.partial(pp.causal_linear_attention_noncuda, eps=0.0)
        return attn
