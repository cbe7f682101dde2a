"""Peers of the kernelized mechanisms (reference "kernelized": performer, linear).

torch-cumsum: the math written the way the reference implementations write it (bench/performer_torch.py:
FAVOR+ positive features or elu + 1, bidirectional by two einsums, causal by cumulative sums over an
[N, m, d] tensor per head), with our omega: exact.
performer-pytorch: lucidrains' FastAttention with its projection matrix replaced by our omega. Its features
add eps = 1e-4 to every positive feature (after the stabilizer) and its causal form adds 1e-6 to the
denominators, so it is not bit-for-bit FAVOR+; checked at max |diff| / max |ours| <= 2e-2.
"""
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
    check = "FAVOR+ with our omega, but eps = 1e-4 added to each feature: max |diff| / max |ours| <= 2e-2"
    tolerance = 2e-2

    def applies(self, entry):
        return entry["name"] == "performer" and _feature_map(entry) == ("softmax", "positive", "true")

    def imports(self):
        import performer_pytorch  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import torch
        from performer_pytorch import FastAttention
        omega = torch_tensor(inputs["extras"]["omega"])
        attn = FastAttention(dim_heads=inputs["q"].shape[-1], nb_features=omega.shape[0], causal=causal)
        with torch.no_grad():
            attn.projection_matrix.copy_(omega)
        return attn
