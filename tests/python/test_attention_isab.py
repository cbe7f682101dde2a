"""The Set Transformer (Lee et al. 2019) pieces beyond the contract suite: ISAB's functional form with the
gradient of its inducing queries, and PMA pooling (forward and every parameter gradient) against the float64
formulations of references.py; permutation equivariance of ISAB and invariance of PMA, exact to rounding;
the classifier's pooling option (config, save and load). Fresh random inputs each run (the seed is printed).
"""
import numpy as np
import pytest
import torch

import eformer as ef
from conftest import assert_close, check
from references import Isab, torch_pma

models = ef.models
B, N, D, H = 2, 19, 32, 4


def padding(rng):
    mask = np.arange(N)[None, :] < rng.integers(2, N + 1, size=B)[:, None]
    mask[0] = True
    return mask


def test_functional_form_and_its_inducing_gradient(rng):
    d, m = 8, int(rng.integers(1, 7))
    km = padding(rng)
    ref = Isab()
    q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))
    inducing = rng.standard_normal((H, m, d))
    check(lambda q, k, v, i: ef.attention(q, k, v, kind="isab", key_mask=ef.tensor(km), inducing=i),
          lambda q, k, v, i: ref.heads(None, q, k, v, False, km, {"inducing": i}), [q, k, v, inducing], rng)


def test_isab_is_permutation_equivariant(rng):
    mech = models.make_mechanism("isab", D, H, options={"inducing": 6})
    mech.eval()
    x = rng.standard_normal((B, N, D)).astype(np.float32)
    km = padding(rng)
    perm = rng.permutation(N)
    with ef.no_grad():
        y = mech(ef.tensor(x), None, ef.tensor(km)).numpy()
        y_perm = mech(ef.tensor(np.ascontiguousarray(x[:, perm])), None,
                      ef.tensor(np.ascontiguousarray(km[:, perm]))).numpy()
    assert_close(y_perm, y[:, perm], 1e-5, 1e-5, "ISAB(P x) vs P ISAB(x)")
    assert np.abs(y[:, 0] - y[:, 1]).max() > 1e-3  # not trivially: tokens get different outputs


def test_pma_matches_the_float64_reference_and_is_permutation_invariant(rng):
    pma = models.PmaPooling(D, H)
    params = dict(pma.named_parameters())
    p = {n: torch.tensor(t.numpy().astype(np.float64), requires_grad=True) for n, t in params.items()}
    z = rng.standard_normal((B, N, D))
    km = padding(rng)
    e_z = ef.tensor(z.astype(np.float32), requires_grad=True)
    t_z = torch.tensor(z, requires_grad=True)
    out, t_out = pma(e_z, ef.tensor(km)), torch_pma(p, "", t_z, km, H)
    assert_close(out.numpy(), t_out.detach().numpy(), 1e-4, 1e-5, "forward")
    up = rng.standard_normal((B, D))
    out.backward(ef.tensor(up.astype(np.float32)))
    (t_out * torch.tensor(up)).sum().backward()
    assert_close(e_z.grad.numpy(), t_z.grad.numpy(), 1e-3, 1e-4, "grad z")
    for n, t in params.items():
        assert_close(t.grad.numpy(), p[n].grad.numpy(), 1e-3, 1e-4, f"grad {n}")
    perm = rng.permutation(N)
    with ef.no_grad():
        permuted = pma(ef.tensor(np.ascontiguousarray(z[:, perm]).astype(np.float32)),
                       ef.tensor(np.ascontiguousarray(km[:, perm]))).numpy()
    assert_close(permuted, out.numpy(), 1e-5, 1e-5, "PMA(P z) vs PMA(z)")


def test_classifier_pooling_option(tmp_path, rng):
    config = dict(arch="encoder", vocab_size=64, d_model=D, n_heads=H, n_layers=1, d_ff=64, max_len=N,
                  num_classes=3, dropout=0.0, attention="isab")
    model = models.SequenceClassifier(models.ModelConfig(config, pooling="pma"))
    assert any(n.startswith("pool.") for n, _ in model.named_parameters())
    assert "pma" in model.config.to_json()
    ids = ef.tensor(rng.integers(0, 64, size=(B, N)))
    path = tmp_path / "model.safetensors"
    model.save(str(path))
    twin = models.SequenceClassifier(models.ModelConfig(model.config.to_json()))
    assert not np.allclose(twin(ids).numpy(), model(ids).numpy())
    twin.load(str(path))
    assert np.array_equal(twin(ids).numpy(), model(ids).numpy())
    mean = models.SequenceClassifier(models.ModelConfig(config))
    assert not any(n.startswith("pool.") for n, _ in mean.named_parameters())
    with pytest.raises(ValueError, match="pooling"):
        models.ModelConfig(config, pooling="max")
    with pytest.raises(ValueError, match="pooling"):
        models.ModelConfig(dict(arch="decoder"), pooling="pma")


def test_isab_has_no_causal_form():
    with pytest.raises(ValueError, match="causal"):
        models.make_mechanism("isab", D, H, causal=True)
    with pytest.raises(ValueError, match="inducing"):
        models.make_mechanism("isab", D, H, options={"inducing": 0})
