"""Linformer (Wang et al. 2020) against the float64 formulation of eq. 7 in references.py: the functional
form with E, F shared by the heads or per head, F = E, padding, N < max_len (the first N columns), gradients
of q, k, v, E and F; the module in every sharing mode (parameter gradients); bad options and tensors.
Fresh random inputs each run (the seed is printed)."""
import math

import numpy as np
import pytest
import torch

import eformer as ef
from conftest import check
from module_parity import module_parity
from references import torch_linformer

models = ef.models
B, H, N, d = 2, 3, 21, 8


@pytest.mark.parametrize("heads", [1, H])
@pytest.mark.parametrize("separate_f", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_functional_matches_eq7_with_gradients_of_E_and_F(rng, heads, separate_f, padded):
    kk, L = 6, N + 7  # L > N: only the first N columns are used
    E, F = (rng.standard_normal((heads, kk, L)) / math.sqrt(kk) for _ in range(2))
    km = None
    if padded:
        km = np.arange(N)[None, :] < np.array([N, N - 5])[:, None]
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    mask = None if km is None else ef.tensor(km)

    if separate_f:
        check(lambda q, k, v, E, F: ef.attention(q, k, v, kind="linformer", key_mask=mask, E=E, F=F),
              lambda q, k, v, E, F: torch_linformer(q, k, v, E, F, km), [q, k, v, E, F], rng)
    else:
        check(lambda q, k, v, E: ef.attention(q, k, v, kind="linformer", key_mask=mask, E=E),
              lambda q, k, v, E: torch_linformer(q, k, v, E, E, km), [q, k, v, E], rng)


@pytest.mark.parametrize("sharing", ["none", "headwise", "kv", "layerwise"])
def test_module_in_every_sharing_mode(rng, sharing):
    mech = module_parity(rng, "linformer", {"k": 7, "sharing": sharing}, False,
                         lambda mech, p: {"E": p["E"], "F": p.get("F", p["E"])})
    names = {n for n, _ in mech.named_parameters()}
    assert ("F" in names) == (sharing in ("none", "headwise"))
    assert dict(mech.named_parameters())["E"].shape == (4 if sharing == "none" else 1, 7, 64)


def test_shorter_sequences_use_the_first_columns_and_longer_ones_are_refused(rng):
    mech = models.make_mechanism("linformer", 16, 2, max_len=12, options={"k": 4})
    mech(ef.tensor(rng.standard_normal((1, 5, 16)).astype(np.float32)))
    with pytest.raises(ValueError, match="fixed-length with max_len = 12"):
        mech(ef.tensor(rng.standard_normal((1, 13, 16)).astype(np.float32)))


def test_bad_options_and_tensors_are_errors_naming_them():
    with pytest.raises(ValueError, match="no causal form"):
        models.make_mechanism("linformer", 16, 2, causal=True, max_len=8)
    with pytest.raises(ValueError, match="option sharing"):
        models.make_mechanism("linformer", 16, 2, max_len=8, options={"sharing": "rows"})
    with pytest.raises(ValueError, match="option k"):
        models.make_mechanism("linformer", 16, 2, max_len=8, options={"k": 0})
    q = ef.tensor(np.zeros((1, 2, 6, 4), np.float32))
    with pytest.raises(ValueError, match="needs the tensor argument E"):
        ef.attention(q, q, q, kind="linformer")
    with pytest.raises(ValueError, match="E is"):
        ef.attention(q, q, q, kind="linformer", E=ef.tensor(np.zeros((1, 3, 5), np.float32)))
    with pytest.raises(ValueError, match="F is"):
        ef.attention(q, q, q, kind="linformer", E=ef.tensor(np.zeros((1, 3, 6), np.float32)),
                     F=ef.tensor(np.zeros((1, 4, 6), np.float32)))
    with pytest.raises(ValueError, match="no causal form"):
        ef.attention(q, q, q, kind="linformer", causal=True, E=ef.tensor(np.zeros((1, 3, 6), np.float32)))
