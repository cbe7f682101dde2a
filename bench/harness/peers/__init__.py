"""The peer adapters. A mechanism's peers are those whose `applies(entry)` accepts its registry entry, so a
new mechanism with a known reference gets its peers with no line written here (a peer of one paper applies by
the mechanism's name)."""
from .aft import AftPytorch, TorchPaper
from .bigbird import HFBigBird
from .kernelized import PerformerPytorch, TorchCumsum
from .linformer import LinformerPeer
from .local_attention import LocalAttentionPeer
from .longformer import HFLongformer
from .reformer import HFReformerLSH
from .sdpa import TorchSDPA, TorchSDPAMasked
from .sets import AxialAttentionPeer, IsabPytorch

PEERS = [TorchSDPA(), TorchSDPAMasked(), TorchCumsum(), PerformerPytorch(), TorchPaper(), AftPytorch(),
         LocalAttentionPeer(), HFReformerLSH(), LinformerPeer(), AxialAttentionPeer(), IsabPytorch(),
         HFLongformer(), HFBigBird()]
BY_NAME = {p.name: p for p in PEERS}


def peers_for(entry):
    return [p for p in PEERS if p.applies(entry)]
