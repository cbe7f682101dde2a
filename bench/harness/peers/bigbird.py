"""Hugging Face transformers' `BigBirdBlockSparseAttention` (attention_type="block_sparse", ITC), the peer of
our `bigbird` (bidirectional only: its block-sparse path has no causal mask; as a decoder with cross-attention its
model switches to full attention).

Its pattern, blocks of b: query blocks 0 and n - 1 attend every key and are attended by every query (the 2
global blocks: the first and the *last*), query blocks 1 .. n - 2 attend their window (blocks q - 1, q, q + 1)
and r random blocks outside it. Ours makes the first g blocks global, so the peer applies at g = 2 and is fed
the sequence with its blocks reordered: ours 0 at its 0, ours 1 at its n - 1 (its last global block), ours
k >= 2 at its k - 1. Ours' window of block k (k - 1, k, k + 1, with 1 global) maps onto its window of block
k - 1 plus its globals, block for block, so the two patterns are the same sets (attention is equivariant under a
permutation of the positions that maps one pattern onto the other); the output is permuted back.

Its random blocks: in eval mode (`not self.training`) it draws none: `rand_attn` is all zeros, so every
non-global query block attends key block 0 r more times, i.e. block 0 weighs (1 + r) times in its softmax
(training draws them from numpy's global RNG, `np.random.seed(layer)`). Neither draw is ours, so the two helpers
that make `rand_attn` are replaced by ours: our Philox draw (mechanisms/sparse_patterns.cpp, `random_blocks`)
recomputed here and mapped through the permutation. Then it computes our math on every row: exact.

Where it costs: it assembles the whole [B, H, N, N] attention-probability matrix on every call (zeros, then
scatters of the block weights), whether or not the caller asks for it, so its time and memory grow as N^2.
"""
import itertools

import numpy as np

from ..inputs import option_default
from .base import Peer

STREAM = 0xB16B12D  # kStream of mechanisms/sparse_patterns.cpp's random_blocks
M32 = 0xFFFFFFFF


def philox_word0(seed, stream, counter):
    """Word 0 of Philox4x32-10 as core/rng.cpp's philox(seed, stream, counter) (Salmon et al. 2011)."""
    c0, c1, c2, c3 = counter & M32, counter >> 32 & M32, stream & M32, stream >> 32 & M32
    k0, k1 = seed & M32, seed >> 32 & M32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0


def our_random_blocks(g, r, seed, h, qb, key_blocks):
    """Ours (bidirectional): r distinct key blocks outside the window and the g global blocks, by a partial
    Fisher-Yates over the pool with draw t of query block qb at counter (qb + 2^30) 2^24 + t, sorted."""
    pool = [kb for kb in range(g, key_blocks) if kb < qb - 1 or kb > qb + 1]
    take = min(r, len(pool))
    for t in range(take):
        u = philox_word0(seed, STREAM + h, ((qb + (1 << 30)) << 24) + t)
        j = t + u % (len(pool) - t)
        pool[t], pool[j] = pool[j], pool[t]
    return sorted(pool[:take])


def bigbird_options(entry):
    return {n: int(option_default(entry, n, f)) for n, f in
            (("block", "64"), ("global_blocks", "2"), ("random_blocks", "3"), ("seed", "0"))}


def block_order(n):
    """Ours' block at each of its n block positions: [0, 2, 3, ..., n - 1, 1]."""
    return np.array([0] + list(range(2, n)) + [1])


def their_random_blocks(o, H, n):
    """rand_attn as its helpers return it: per head [n - 2, r], row m - 1 the random blocks of its query block m,
    in its block numbering."""
    order = block_order(n)
    theirs = np.argsort(order)  # ours' block -> its position
    out = []
    for h in range(H):
        rows = []
        for m in range(1, n - 1):
            ours = our_random_blocks(o["global_blocks"], o["random_blocks"], o["seed"], h, int(order[m]), n)
            if len(ours) < o["random_blocks"]:
                raise ValueError(f"{n} blocks leave fewer than r = {o['random_blocks']} random blocks to draw")
            rows.append(theirs[ours])
        out.append(np.array(rows, dtype=np.int32).reshape(n - 2, o["random_blocks"]))
    return out


class HFBigBird(Peer):
    name = "hf-bigbird"
    package = "transformers"
    quadratic = True  # its [B, H, N, N] attention-probability matrix, built on every call
    partial_chunks = False  # it needs N to be a multiple of its block
    test_n = 1024  # 16 blocks of the default b = 64 (tests/python/test_bench_harness.py)

    def applies(self, entry):
        return entry["name"] == "bigbird" and bigbird_options(entry)["global_blocks"] == 2

    def supports(self, entry, causal):
        return not causal

    def imports(self):
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import torch
        from transformers import BigBirdConfig
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel

        B, H, N, d = inputs["q"].shape
        o = bigbird_options(entry)
        b, r = o["block"], o["random_blocks"]
        if N % b or N // b <= 2 * r + 5:
            raise ValueError(f"N = {N}: it needs whole blocks of {b}, more than 2 r + 5 = {2 * r + 5} (below, its model "
                             "switches to full attention)")
        n = N // b
        config = BigBirdConfig(hidden_size=H * d, num_attention_heads=H, attention_type="block_sparse",
                               block_size=b, num_random_blocks=r, max_position_embeddings=N)
        attn = BigBirdBlockSparseAttention(config, seed=0).eval()
        rand = their_random_blocks(o, H, n)
        per_head = itertools.cycle(rand)
        # N in {1024, 3072, 4096}: one call per head, in head order, sliced to n - 2 rows; else one for all heads
        attn._bigbird_block_rand_mask = lambda *a, **k: next(per_head)
        attn._bigbird_block_rand_mask_with_head = lambda *a, **k: list(rand)
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(
            torch.ones(B, N, dtype=torch.float32), b)
        index = torch.from_numpy((block_order(n)[:, None] * b + np.arange(b)).reshape(-1))
        back = torch.argsort(index)

        def call(q, k, v):
            q, k, v = (t.index_select(2, index) for t in (q, k, v))
            band_, from_, to_, blocked_ = (m.to(q.dtype) for m in (band, from_mask, to_mask, blocked))  # float64 tests
            out, _ = attn.bigbird_block_sparse_attention(q, k, v, band_, from_, to_, blocked_, blocked_, H, r, d, b, b,
                                                         B, N, N, seed=0, plan_from_length=None,
                                                         plan_num_rand_blocks=None)
            return out.transpose(1, 2).index_select(2, back)  # its [B, N, H, d] in ours' order
        return call
