"""The Synthesizer (Tay et al. 2020) against the float64 formulation in references.py: each component
(dense, random, factorized dense, factorized random, dot product) and mixtures, causal and bidirectional,
padded; gradients of q, k, v and of every weight tensor; the module with each synthesis (parameters or
fixed buffers), its causal leak test and native streaming; bad options. Fresh random inputs each run."""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import check
from module_parity import leak_and_stream, module_parity
from references import Synthesizer, synthesizer_default_factor, synthesizer_weights, torch_synthesizer

models = ef.models
B, H, N, d = 2, 3, 19, 8
SYNTHESES = ["dense", "random", "factorized_dense", "factorized_random", "dot_product", "random+dot_product",
             "dense+factorized_random", "dense+random+factorized_dense+factorized_random+dot_product"]


@pytest.mark.parametrize("synthesis", SYNTHESES)
@pytest.mark.parametrize("causal", [False, True])
def test_functional_matches_the_reference_with_weight_gradients(rng, synthesis, causal):
    parts = synthesis.split("+")
    w = synthesizer_weights(rng, parts, H, d, N, factor=4)
    names = sorted(w)
    km = np.arange(N)[None, :] < np.array([N, N - 6])[:, None]
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    inputs = [q, k, v] + [w[n].astype(np.float64) for n in names]

    def ours(q, k, v, *ws):
        return ef.attention(q, k, v, kind="synthesizer", causal=causal, key_mask=ef.tensor(km),
                            synthesis=synthesis, factor=4, **dict(zip(names, ws)))

    def reference(q, k, v, *ws):
        return torch_synthesizer(q, k, v, parts, dict(zip(names, ws)), 4, causal, km)

    reads_q = any(p in parts for p in ("dense", "factorized_dense", "dot_product"))
    used = [i for i, on in enumerate([reads_q, "dot_product" in parts, True]) if on]  # q, k, v
    check(ours, reference, inputs, rng, grad_inputs=used + list(range(3, len(inputs))))


@pytest.mark.parametrize("synthesis", SYNTHESES)
@pytest.mark.parametrize("causal", [False, True])
def test_module_matches_the_reference(rng, synthesis, causal):
    module_parity(rng, "synthesizer", {"synthesis": synthesis}, causal,
                  lambda mech, p: Synthesizer().module_context(None, mech, p, synthesis,
                                                               synthesizer_default_factor(64)))


def test_fixed_random_matrices_are_buffers(rng):
    mech = module_parity(rng, "synthesizer", {"synthesis": "random+factorized_random", "trainable": False}, True,
                         lambda mech, p: Synthesizer().module_context(None, mech, p, "random+factorized_random"))
    names = {n for n, _ in mech.named_parameters()}
    assert not names & {"random", "random_u", "random_v"} and "mix" in names
    assert {"random", "random_u", "random_v"} <= set(mech.state_dict())


@pytest.mark.parametrize("synthesis", ["dense", "random", "factorized_dense+factorized_random",
                                       "random+dot_product"])
def test_causal_module_does_not_leak_and_streams_natively(rng, synthesis):
    mech = leak_and_stream(rng, "synthesizer", {"synthesis": synthesis, "factor": 8})
    assert mech.streaming_path == "native"


def test_bad_options_are_errors_naming_them():
    def make(**options):
        return models.make_mechanism("synthesizer", 16, 2, max_len=12, options=options)
    with pytest.raises(ValueError, match="unknown component 'convolution'"):
        make(synthesis="dense+convolution")
    with pytest.raises(ValueError, match="names 'random' twice"):
        make(synthesis="random+random")
    with pytest.raises(ValueError, match="option factor = 5"):
        make(synthesis="factorized_dense", factor=5)
    with pytest.raises(ValueError, match="option rank"):
        make(rank=0)
    with pytest.raises(ValueError, match="option trainable"):
        make(trainable="yes")
    q = ef.tensor(np.zeros((1, 2, 6, 4), np.float32))
    with pytest.raises(ValueError, match="needs the tensor argument 'random'"):
        ef.attention(q, q, q, kind="synthesizer", synthesis="random")
    with pytest.raises(ValueError, match="random is"):
        ef.attention(q, q, q, kind="synthesizer", synthesis="random", random=ef.tensor(np.zeros((2, 5, 6), np.float32)))
