"""Hugging Face transformers' Reformer `LSHSelfAttention`, the peer of our `lsh` (bidirectional only).

The same math where the two agree: shared QK (keys the normalized queries), angular hashing with our rotations
copied in (its `torch.randn` draw is replaced by them for the call), the stable sort by (round, bucket,
position), chunks attending their own chunk and the previous one, the self-mask, and the rounds folded by their
log-sum-exp. Set up here so that it computes ours: its projections are replaced by feeds of our q and v (no
GEMM), and q is passed scaled by 1/sqrt(d), since its scores are q . k_hat with no scale (its key normalization
x / sqrt(mean(x^2) + 1e-6) / sqrt(d) ignores the scale but for its eps).

Where they differ, and so what the check compares: its first chunk of each round looks back, with wrap-around
over the concatenated rounds, at the last chunk of the round before (round 0 at the last round's); ours has no
chunk before the first. The rows of queries that fall in some round's first chunk (at most n_hashes x chunk of
the N) are left out of the comparison; every other row must agree to float rounding. Its causal form chunks
by sorted position and masks by position, which leaks (docs/MECHANISMS.md, `lsh`): no causal peer.
"""
import numpy as np

from .base import Peer


def _option(entry, name, fallback):
    value = next((o["default"] for o in entry["options"] if o["name"] == name), None)
    try:
        return int(value)
    except (TypeError, ValueError):
        return fallback


def bucket_factors(n_buckets):
    """Ours (kernels/lsh.h): one angular hash up to 256 buckets, above it b1 = 2^ceil(log2(b) / 2), b2 = b / b1."""
    if n_buckets <= 256:
        return [n_buckets]
    e = int(n_buckets - 1).bit_length()
    b1 = 1 << ((e + 1) // 2)
    return [b1, n_buckets // b1]


def default_buckets(N, bucket_size):
    """Ours (mechanisms/lsh.cpp lsh_default_buckets): 2^round(log2(N / bucket_size)), at least 2."""
    ratio = N / bucket_size
    if ratio <= 2:
        return 2
    return max(2, 1 << min(int(np.floor(np.log2(ratio) + 0.5)), 20))


def buckets(x, rotation, factors):
    """x [N, d], rotation [d, columns] -> bucket [N]: per factor the argmax over [xR_f; -xR_f]."""
    rotated = x.astype(np.float64) @ rotation.astype(np.float64)
    out, start, product = np.zeros(len(x), np.int64), 0, 1
    for f in factors:
        part = rotated[:, start:start + f // 2]
        out += product * np.argmax(np.concatenate([part, -part], axis=1), axis=1)
        start, product = start + f // 2, product * f
    return out


class HFReformerLSH(Peer):
    name = "hf-reformer-lsh"
    package = "transformers"
    check = ("exact (our rotations copied in), on the rows whose query lies outside every round's first chunk: "
             "there it looks back with wrap-around, ours does not")
    tolerance = 1e-4
    partial_chunks = False  # it needs N to be a multiple of its chunk

    def applies(self, entry):
        return entry["name"] == "lsh"

    def supports(self, entry, causal):
        return not causal

    def imports(self):
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention  # noqa: F401

    def prepare(self, entry, causal, inputs):
        import torch
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention

        B, H, N, d = inputs["q"].shape
        rotations = torch.from_numpy(inputs["extras"]["rotations"])  # ours [n_hashes, H, d, columns]
        n_hashes = rotations.shape[0]
        factors = bucket_factors(int(inputs["extras"]["n_buckets"]))
        config = ReformerConfig(hidden_size=H * d, num_attention_heads=H, attention_head_size=d,
                                num_hashes=n_hashes, num_buckets=factors[0] if len(factors) == 1 else factors,
                                lsh_attn_chunk_length=_option(entry, "chunk", 64), lsh_num_chunks_before=1,
                                lsh_num_chunks_after=0, is_decoder=False, lsh_attention_probs_dropout_prob=0.0,
                                max_position_embeddings=N, attn_layers=["lsh"])
        attn = LSHSelfAttention(config).eval()

        class Feed(torch.nn.Module):  # stands in for a projection: returns the tensor it is given to return
            value = None

            def forward(self, hidden):
                return self.value

        attn.query_key, attn.value = Feed(), Feed()
        theirs = rotations.permute(1, 2, 0, 3).contiguous()  # its layout: [H, d, n_hashes, columns]
        hash_vectors = attn._hash_vectors

        def with_our_rotations(*args, **kwargs):
            draw = torch.randn
            torch.randn = lambda shape, **kw: theirs
            try:
                return hash_vectors(*args, **kwargs)
            finally:
                torch.randn = draw
        attn._hash_vectors = with_our_rotations
        placeholder = torch.empty(B, N, 1)

        def call(q, k, v):
            attn.query_key.value = (q * d ** -0.5).transpose(1, 2).reshape(B, N, H * d)
            attn.value.value = v.transpose(1, 2).reshape(B, N, H * d)
            out = attn(hidden_states=placeholder).hidden_states
            return out.view(B, N, H, d).transpose(1, 2)
        return call

    def rows(self, entry, causal, inputs):
        """Bool [B, H, N]: the rows compared (queries in no round's first chunk)."""
        q, rotations = inputs["q"], inputs["extras"]["rotations"]
        B, H, N, d = q.shape
        chunk = _option(entry, "chunk", 64)
        factors = bucket_factors(int(inputs["extras"]["n_buckets"]))
        keep = np.ones((B, H, N), bool)
        for b in range(B):
            for h in range(H):
                for r in range(rotations.shape[0]):
                    order = np.argsort(buckets(q[b, h], rotations[r, h], factors), kind="stable")
                    keep[b, h, order[:chunk]] = False
        return keep
