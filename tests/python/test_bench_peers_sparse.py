"""The Hugging Face peers of the block-sparse family (bench/harness/peers/longformer.py, bigbird.py), beyond the
harness's own check at the registry defaults (test_bench_harness.py): at other options, with global positions,
forward and q/k/v gradients against ours, the peer run in float64; BigBird's random blocks, recomputed in
Python from our Philox draw, equal the pattern's. Skipped where `transformers` does not import (Debian's
Python: run with the peer environment, .peers/bin/python)."""
import copy
import json
import os
import sys

import numpy as np
import pytest

import eformer as ef
from conftest import check

pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from harness.peers.bigbird import HFBigBird, our_random_blocks  # noqa: E402
from harness.peers.longformer import HFLongformer  # noqa: E402


def entry_with(name, **defaults):
    """The registry entry of `name` with some option defaults replaced (the peers read their options there)."""
    entry = copy.deepcopy(next(e for e in ef.mechanisms() if e["name"] == name))
    for o in entry["options"]:
        if o["name"] in defaults:
            o["default"] = json.dumps(defaults[o["name"]])
    return entry


def qkv(rng, H, N, d=16):
    return [rng.standard_normal((2, H, N, d)) for _ in range(3)]  # float64: the peer runs in float64


def peer_versus_ours(peer, entry, options, H, N):
    rng = np.random.default_rng()
    q, k, v = qkv(rng, H, N)
    fn = peer.prepare(entry, False, {"q": q.astype(np.float32)})
    check(lambda *t: ef.attention(*t, kind=entry["name"], **options), fn, [q, k, v], rng)


@pytest.mark.parametrize("window,globals_", [(256, []), (128, [0, 300, 511]), (64, [5])])
def test_longformer_peer_computes_ours_with_global_positions(window, globals_):
    options = {"window": window, "global": globals_}
    peer_versus_ours(HFLongformer(), entry_with("longformer", **options), options, H=3, N=512)


@pytest.mark.parametrize("block,random_blocks,seed,N", [(64, 3, 0, 1024), (32, 2, 5, 512), (16, 1, 11, 384)])
def test_bigbird_peer_computes_ours_through_its_block_permutation(block, random_blocks, seed, N):
    options = {"block": block, "random_blocks": random_blocks, "seed": seed}
    peer_versus_ours(HFBigBird(), entry_with("bigbird", **options), options, H=3, N=N)


@pytest.mark.parametrize("seed", [0, 3, 2**40 + 7])
def test_bigbird_random_blocks_are_the_patterns(seed):
    H, b, g, r, N = 4, 16, 2, 3, 16 * 19
    n = N // b
    pattern = ef.attention_pattern("bigbird", N, heads=H, seed=seed, block=b, global_blocks=g, random_blocks=r)
    for h in range(H):
        for qb in range(g, n):
            attended = {kb for kb in range(n) if pattern[h, qb * b, kb * b]}
            expected = sorted(kb for kb in attended if kb >= g and abs(kb - qb) > 1)
            assert our_random_blocks(g, r, seed, h, qb, n) == expected, (h, qb)


def test_the_peers_apply_only_where_their_math_is_ours():
    assert HFLongformer().applies(entry_with("longformer"))
    assert not HFLongformer().applies(entry_with("longformer", dilation=2))  # no dilation in its PyTorch code
    assert HFBigBird().applies(entry_with("bigbird"))
    assert not HFBigBird().applies(entry_with("bigbird", global_blocks=1))  # its globals: first and last block
    assert not any(p.supports(entry_with(p.name[3:]), True) for p in (HFLongformer(), HFBigBird()))


def test_the_peers_refuse_lengths_they_cannot_run():
    q = np.zeros((1, 2, 500, 8), np.float32)
    with pytest.raises(ValueError, match="multiple of the window"):
        HFLongformer().prepare(entry_with("longformer", window=256), False, {"q": q})
    with pytest.raises(ValueError, match="whole blocks"):
        HFBigBird().prepare(entry_with("bigbird"), False, {"q": q})
