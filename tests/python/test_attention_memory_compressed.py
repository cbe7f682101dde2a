"""Memory-compressed attention (Liu et al. 2018, sec. 4.2) against the float64 formulation in
references.py: strided-conv windows plus the query's own block in one softmax, causal (windows wholly in
the past, the block up to the query) and bidirectional, with lengths that are and are not multiples of the
compression and the block, shorter than one window; gradients of q, k, v and of the conv kernels and
biases; the module (parameter gradients), its causal leak test and streaming; bad options."""
import math

import numpy as np
import pytest

import eformer as ef
from conftest import check
from module_parity import leak_and_stream, module_parity
from references import torch_memory_compressed

models = ef.models
B, H, d = 2, 3, 6


@pytest.mark.parametrize("n,c,block", [(24, 3, 8), (23, 3, 5), (17, 4, 32), (2, 3, 4), (30, 1, 7)])
@pytest.mark.parametrize("causal", [False, True])
def test_functional_matches_the_reference_with_kernel_gradients(rng, n, c, block, causal):
    q, k, v = (rng.standard_normal((B, H, n, d)) for _ in range(3))
    kc, vc = (rng.standard_normal((H, c, d, d)) / math.sqrt(c * d) for _ in range(2))
    kb, vb = (rng.standard_normal((H, d)) for _ in range(2))
    check(lambda q, k, v, kc, vc, kb, vb: ef.attention(q, k, v, kind="memory_compressed", causal=causal,
                                                       block=block, k_conv=kc, v_conv=vc, k_conv_bias=kb,
                                                       v_conv_bias=vb),
          lambda q, k, v, kc, vc, kb, vb: torch_memory_compressed(q, k, v, kc, vc, kb, vb, block, causal),
          [q, k, v, kc, vc, kb, vb], rng, grad_inputs=[0, 1, 2] if n < c else None)  # n < c: no window


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("compression,block", [(3, 8), (2, 5)])
def test_module_matches_the_reference(rng, causal, compression, block):
    module_parity(rng, "memory_compressed", {"compression": compression, "block": block}, causal,
                  lambda mech, p: {**{n: p[n] for n in ("k_conv", "v_conv", "k_conv_bias", "v_conv_bias")},
                                   "block": block})


@pytest.mark.parametrize("compression,block", [(3, 8), (4, 6), (2, 64)])
def test_causal_module_does_not_leak_and_streams(rng, compression, block):
    leak_and_stream(rng, "memory_compressed", {"compression": compression, "block": block})


def test_bad_options_and_tensors_are_errors_naming_them():
    with pytest.raises(ValueError, match="option compression"):
        models.make_mechanism("memory_compressed", 16, 2, options={"compression": 0})
    with pytest.raises(ValueError, match="option block"):
        models.make_mechanism("memory_compressed", 16, 2, options={"block": -2})
    q = ef.tensor(np.zeros((1, 2, 6, 4), np.float32))
    w = ef.tensor(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="needs the tensor argument v_conv"):
        ef.attention(q, q, q, kind="memory_compressed", k_conv=w)
    with pytest.raises(ValueError, match="v_conv is"):
        ef.attention(q, q, q, kind="memory_compressed", k_conv=w, v_conv=ef.tensor(np.zeros((2, 2, 4, 4), np.float32)))
    with pytest.raises(ValueError, match="takes no key_mask"):
        ef.attention(q, q, q, kind="memory_compressed", k_conv=w, v_conv=w,
                     key_mask=ef.tensor(np.ones((1, 6), bool)))
