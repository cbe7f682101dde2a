"""The block-sparse family (sparse_strided, sparse_fixed, longformer, bigbird, local).

1. Each pattern (eformer.attention_pattern) equals the paper's set definition, written here
   independently in numpy: query row i of N sits at position p = i + M - N; the bidirectional set is
   the paper's without the j <= p cut, the causal set is it intersected with j <= p.
2. Each mechanism's functional form (the block-sparse kernel) equals dense float64 torch softmax
   restricted to that independent set, forward and q/k/v gradients, at sizes that do and do not
   divide the kernel's block (64), with padding.
3. BigBird's random blocks: r whole blocks per query block, outside the window and the global
   blocks (causal: before the window), a pure function of the seed.
4. Bad options are ValueErrors naming the option, its value and what was expected.
5. The layouts compute far fewer block pairs than dense and count every allowed element once.
6. The native streaming step (KV cache) equals the parallel causal pass with sparse options.
"""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check


def positions(N, M):
    """(p [N, 1], j [1, M]): query positions and key indices."""
    return (np.arange(N) + M - N)[:, None], np.arange(M)[None, :]


def causal_cut(allowed, N, M, causal):
    p, j = positions(N, M)
    return allowed & (j <= p) if causal else allowed


# ---- the papers' sets ----

def strided_set(N, M, H, causal, l=128, combine="union"):
    """Child et al. sec. 4: A1 = {j : i - l < j <= i}, A2 = {j : (i - j) mod l = 0}."""
    p, j = positions(N, M)
    a1 = np.abs(p - j) < l
    a2 = (p - j) % l == 0
    heads = [a1 | a2] * H if combine == "union" else [a1 if h % 2 == 0 else a2 for h in range(H)]
    return np.stack([causal_cut(a, N, M, causal) for a in heads])


def fixed_set(N, M, H, causal, l=128, c=16, combine="union"):
    """Child et al. sec. 4: A1 = {j : floor(j/l) = floor(i/l)}, A2 = {j : j mod l in {l-c, ..., l-1}}."""
    p, j = positions(N, M)
    a1 = (j // l) == (p // l)
    a2 = np.broadcast_to((j % l) >= l - c, (N, M))
    heads = [a1 | a2] * H if combine == "union" else [a1 if h % 2 == 0 else a2 for h in range(H)]
    return np.stack([causal_cut(a, N, M, causal) for a in heads])


def longformer_set(N, M, H, causal, window=512, dilation=1, glob=()):
    """Beltagy et al.: keys p + k*dil for |k| <= w/2, plus symmetric global positions."""
    p, j = positions(N, M)
    dil = dilation if isinstance(dilation, list) else [dilation] * H
    out = []
    for h in range(H):
        gap = p - j
        a = (np.abs(gap) <= (window // 2) * dil[h]) & (gap % dil[h] == 0)
        for g in glob:
            a = a | (j == g) | (p == g)
        out.append(causal_cut(a, N, M, causal))
    return np.stack(out)


def local_set(N, M, H, causal, block=64, memory=64, image_shape=None, block_shape=(8, 8), memory_shape=(8, 8)):
    """Parmar et al. local attention. 1-D: the query block [s, s + b) attends [s - memory, s + b) (+ memory
    after, bidirectional). 2-D: pixel (r, c) of a raster image; its query block of qh x qw pixels attends
    rows [R - mh, R + qh) (+ mh below, bidirectional) and columns [C - mw, C + qw + mw)."""
    p, j = positions(N, M)
    if image_shape is None:
        s = (p // block) * block
        a = (j >= s - memory) & (j < s + block + (0 if causal else memory))
    else:
        W = image_shape[1]
        (qh, qw), (mh, mw) = block_shape, memory_shape
        R, C = (p // W) // qh * qh, (p % W) // qw * qw
        rj, cj = j // W, j % W
        a = (rj >= R - mh) & (rj < R + qh + (0 if causal else mh)) & (cj >= C - mw) & (cj < C + qw + mw)
    return np.stack([causal_cut(a, N, M, causal)] * H)


SETS = {"sparse_strided": strided_set, "sparse_fixed": fixed_set, "longformer": longformer_set,
        "local": local_set}
OPTIONS = {  # small options, so the patterns are sparse at test sizes
    "sparse_strided": [{"l": 8}, {"l": 5, "combine": "split"}, {"l": 128}],
    "sparse_fixed": [{"l": 16, "c": 4}, {"l": 10, "c": 3, "combine": "split"}, {"l": 7, "c": 7}],
    "longformer": [{"window": 16}, {"window": 10, "dilation": [1, 2, 3, 1], "global": [0, 41]},
                   {"window": 7, "dilation": 2, "global": [5]}],
    "local": [{"block": 16, "memory": 16}, {"image_shape": [10, 12], "block_shape": [3, 4], "memory_shape": [2, 3]},
              {"block": 64, "memory": 0}, {"image_shape": [9, 9], "block_shape": [2, 5], "memory_shape": [0, 1]}],
}
SIZES = [(100, 100), (64, 64), (77, 77), (130, 130), (45, 100), (100, 45)]


def reference_set(name, N, M, H, causal, opts):
    kw = dict(opts)
    if name == "longformer" and "global" in kw:
        kw["glob"] = kw.pop("global")
    return SETS[name](N, M, H, causal, **kw)


@pytest.mark.parametrize("name", list(SETS))
def test_patterns_are_the_papers_sets(name):
    H = 4
    for opts in OPTIONS[name] + [{}]:
        for N, M in SIZES:
            for causal in (False, True):
                got = ef.attention_pattern(name, N, M, heads=H, causal=causal, **opts)
                want = reference_set(name, N, M, H, causal, opts)
                assert got.shape == want.shape
                bad = np.argwhere(got != want)
                assert bad.size == 0, f"{name} {opts} N={N} M={M} causal={causal}: first differences " \
                                      f"(h, i, j) {bad[:5].tolist()}"


def torch_pattern_attention(q, k, v, allowed, key_mask):
    allowed = torch.as_tensor(allowed)[None]
    if key_mask is not None:
        allowed = allowed & torch.as_tensor(key_mask)[:, None, None, :]
    s = (q @ k.transpose(-1, -2)) / np.sqrt(q.shape[-1])
    s = s.masked_fill(~allowed, float("-inf"))
    has = allowed.any(-1, keepdim=True)
    p = torch.softmax(torch.where(has, s, torch.zeros_like(s)), -1) * allowed
    return p @ v


@pytest.mark.parametrize("name", list(SETS) + ["bigbird"])
def test_mechanisms_equal_dense_softmax_over_their_pattern(rng, name):
    B, H, d = 2, 4, 16
    cases = [(130, 130, True), (100, 100, False), (64, 64, True), (45, 100, False), (100, 45, False)]
    for i, (N, M, causal) in enumerate(cases):
        choices = OPTIONS.get(name) or [{"block": 8, "global_blocks": 1, "random_blocks": 2,
                                         "seed": int(rng.integers(1000))}]
        opts = choices[i % len(choices)]
        if name == "bigbird":  # its random part is checked structurally below
            allowed = ef.attention_pattern(name, N, M, heads=H, causal=causal, **opts)
        else:
            allowed = reference_set(name, N, M, H, causal, opts)
        assert not allowed.all(), "the test pattern should be sparse"
        km = np.arange(M)[None, :] < rng.integers(M // 2, M + 1, size=B)[:, None]
        km[0] = True
        q, k, v = (rng.standard_normal((B, H, n, d)) for n in (N, M, M))
        check(lambda q, k, v: ef.attention(q, k, v, kind=name, causal=causal, key_mask=ef.tensor(km), **opts),
              lambda q, k, v: torch_pattern_attention(q, k, v, allowed, km), [q, k, v], rng)


def block_sets(pattern, b):
    """{(h, query block): set of key blocks touched}."""
    H, N, M = pattern.shape
    out = {}
    for h in range(H):
        for qb in range((N + b - 1) // b):
            rows = pattern[h, qb * b:(qb + 1) * b]
            out[h, qb] = {kb for kb in range((M + b - 1) // b) if rows[:, kb * b:(kb + 1) * b].any()}
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_window_global_and_random_blocks(causal):
    b, g, r, H, N = 8, 2, 3, 3, 120
    nb = N // b
    pattern = ef.attention_pattern("bigbird", N, heads=H, causal=causal, block=b, global_blocks=g,
                                   random_blocks=r, seed=11)
    for (h, qb), blocks in block_sets(pattern, b).items():
        rows = pattern[h, qb * b:(qb + 1) * b]
        if qb < g:  # global query blocks see every key
            assert np.array_equal(rows, causal_cut(np.ones((N, N), bool), N, N, causal)[qb * b:(qb + 1) * b])
            continue
        window = {kb for kb in (qb - 1, qb, qb + 1) if 0 <= kb < nb and (not causal or kb <= qb)}
        assert window | set(range(g)) <= blocks
        extra = blocks - window - set(range(g))
        pool = [kb for kb in range(g, qb - 1 if causal else nb) if abs(kb - qb) > 1]
        assert len(extra) == min(r, len(pool)), (h, qb, sorted(extra))
        assert extra <= set(pool)
        for kb in blocks:  # whole blocks (causal: up to the diagonal)
            full = np.ones((b, b), bool) if kb != qb or not causal else np.tril(np.ones((b, b), bool))
            assert np.array_equal(rows[:, kb * b:(kb + 1) * b], full), (h, qb, kb)
    again = ef.attention_pattern("bigbird", N, heads=H, causal=causal, block=b, global_blocks=g, random_blocks=r,
                                 seed=11)
    other = ef.attention_pattern("bigbird", N, heads=H, causal=causal, block=b, global_blocks=g, random_blocks=r,
                                 seed=12)
    assert np.array_equal(pattern, again) and not np.array_equal(pattern, other)
    assert not np.array_equal(pattern[0], pattern[1]), "heads draw their own random blocks"


def test_module_uses_its_options_and_layer_seed(rng):
    """A module with its own options attends exactly its pattern: its output on x equals dense attention
    over attention_pattern with the same options (the projections read from the module)."""
    D, H, N = 32, 4, 70
    opts = {"block": 8, "global_blocks": 1, "random_blocks": 2, "seed": 5}
    mech = ef.models.make_mechanism("bigbird", D, H, causal=True, max_len=N, options=opts)
    mech.eval()
    params = {n: torch.tensor(t.numpy().astype(np.float64)) for n, t in mech.named_parameters()}
    x = rng.standard_normal((1, N, D))
    with ef.no_grad():
        out = mech(ef.tensor(x.astype(np.float32))).numpy()
    t = torch.tensor(x)

    def heads(prefix):
        return (t @ params[prefix + ".weight"].T + params[prefix + ".bias"]).view(1, N, H, -1).transpose(1, 2)
    allowed = ef.attention_pattern("bigbird", N, heads=H, causal=True, **opts)
    o = torch_pattern_attention(heads("q_proj"), heads("k_proj"), heads("v_proj"), allowed, None)
    o = o.transpose(1, 2).reshape(1, N, D) @ params["out_proj.weight"].T + params["out_proj.bias"]
    assert_close(out, o.numpy(), 1e-4, 1e-5, "bigbird module")


@pytest.mark.parametrize("name,options,words", [
    ("sparse_strided", {"l": 0}, ["option l = 0", "integer >= 1"]),
    ("sparse_strided", {"combine": "both"}, ["option combine = \"both\"", "union | split"]),
    ("sparse_strided", {"c": 2}, ["unknown option 'c'", "valid options: l, combine"]),
    ("sparse_fixed", {"l": 8, "c": 9}, ["option c = 9", "c <= l = 8"]),
    ("longformer", {"window": -1}, ["option window = -1", ">= 0"]),
    ("longformer", {"global": 3}, ["option global = 3", "list of positions"]),
    ("longformer", {"dilation": [1, 2, 3]}, ["dilation has 3 values for 4 heads", "one per head"]),
    ("bigbird", {"block": 0}, ["option block = 0", ">= 1"]),
    ("bigbird", {"random_blocks": 1.5}, ["option random_blocks = 1.5", "integer"]),
    ("local", {"memory": "a"}, ["option memory = \"a\"", "integer >= 0"]),
    ("local", {"image_shape": [28]}, ["option image_shape = [28]", "list of two integers"]),
    ("local", {"block_shape": [0, 4]}, ["option block_shape = 0", "integer >= 1"]),
])
def test_bad_options_name_the_option_value_and_expectation(name, options, words):
    q = ef.tensor(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(ValueError) as err:
        ef.attention(q, q, q, kind=name, **options)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_layouts_compute_only_touched_blocks():
    """The kernel's layouts: strided and fixed in two parts that fill whole blocks, far fewer block pairs
    than dense at N = 2048; every allowed element counted once across the parts."""
    N, H = 2048, 2
    nb = N // 64
    dense = H * nb * (nb + 1) // 2
    for kind, opts, most in [("sparse_strided", {"l": 64}, 0.2), ("sparse_fixed", {"l": 128, "c": 16}, 0.25),
                             ("longformer", {"window": 256}, 0.2), ("bigbird", {}, 0.42), ("local", {}, 0.13)]:
        parts = ef.attention_layout(kind, N, heads=H, causal=True, **opts)
        pairs = sum(p["pairs"] for p in parts)
        assert pairs < most * dense, (kind, pairs, dense)
        allowed = ef.attention_pattern(kind, N, heads=H, causal=True, **opts).sum()
        per_layout_head = sum(p["allowed_elements"] * H // p["layout_heads"] for p in parts)
        assert per_layout_head == allowed, kind
    assert [p["keys"] for p in ef.attention_layout("sparse_fixed", 256, l=64, c=8)] == [256, 32]
    with pytest.raises(ValueError, match="'flash' is not a block-sparse mechanism"):
        ef.attention_layout("flash", 64)


@pytest.mark.parametrize("name", list(SETS) + ["bigbird"])
def test_native_streaming_step_equals_the_parallel_pass(rng, name):
    """The KV-cache step attends the new tokens to their pattern's keys only: pieces of any size give
    the causal parallel pass (with small options, so the pattern is sparse at this length)."""
    D, N = 32, 150
    for opts in OPTIONS.get(name, [{"block": 8, "global_blocks": 1, "random_blocks": 2, "seed": 3}])[:2]:
        mech = ef.models.make_mechanism(name, D, 4, causal=True, max_len=N, options=opts, positions="rotary")
        mech.eval()
        assert mech.streaming_path == "native"
        x = rng.standard_normal((2, N, D)).astype(np.float32)
        with ef.no_grad():
            base = mech(ef.tensor(x)).numpy()
            state = mech.start(2)
            cuts = [0, 1, 2, 9, 64, 65, 100, 150]
            pieces = [mech.step(state, ef.tensor(np.ascontiguousarray(x[:, a:b]))).numpy()
                      for a, b in zip(cuts, cuts[1:])]
        assert_close(np.concatenate(pieces, 1), base, 1e-5, 1e-5, f"{name} {opts}: step vs forward")
