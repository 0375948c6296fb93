"""Tests for hyperlatent.controls: the GMM-prior KL against the closed form (numpy, per dim), active units on
synthetic encoders with known per-dim variance, the projected AE's zero noise and radius, and the trainer contract."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from hyperlatent.controls import (CONTROLS, ClassMeanGaussianObjective, NoRegularizer, ProjectedAE, active_units,
                                  control_trainer, unit_activity)
from hyperlatent.data import LabeledDataset
from hyperlatent.vae import mlp_vae


def _kl_normal(mu, s, m):
    "KL(N(mu, s^2) || N(m, 1)) per element, from the textbook formula log(1/s) + (s^2 + (mu - m)^2)/2 - 1/2."
    return np.log(1.0 / s) + (s ** 2 + (mu - m) ** 2) / 2.0 - 0.5


@pytest.mark.parametrize('reduction', ['mean', 'sum'])
@pytest.mark.parametrize('d, C, sep', [(10, 2, 4.0), (16, 5, 1.5), (7, 7, 0.0)])
def test_gmm_kl_closed_form(reduction, d, C, sep):
    rng = np.random.default_rng(d * C)
    mu, logvar = rng.normal(size=(33, d)), rng.normal(size=(33, d))
    y = rng.integers(0, C, size=33)
    m = np.zeros((33, d))
    m[np.arange(33), y * max(1, d // C)] = sep
    kl = _kl_normal(mu, np.exp(0.5 * logvar), m)
    ref = (kl.mean(1) if reduction == 'mean' else kl.sum(1)).mean()
    obj = ClassMeanGaussianObjective(d, C, separation=sep, reduction=reduction)
    out = obj(torch.from_numpy(mu), torch.from_numpy(logvar), labels=torch.from_numpy(y))
    assert abs(float(out['total']) - ref) < 1e-10 and set(out) == {'kl', 'total'}
    assert obj.needs_labels is True
    # the class means: distinct axes, norm sep, pairwise distance sep * sqrt(2)
    M = obj.means().numpy()
    assert np.allclose(np.linalg.norm(M, axis=1), sep)
    if C > 1 and sep > 0:
        assert np.allclose(np.linalg.norm(M[0] - M[1]), sep * math.sqrt(2))


def test_gmm_minimum_at_class_mean():
    "The KL is 0 exactly when mu = m_c and sigma = 1, and positive otherwise."
    obj = ClassMeanGaussianObjective(8, 4, separation=3.0)
    y = torch.tensor([0, 1, 2, 3])
    mu = obj.means()[y]
    assert float(obj(mu, torch.zeros(4, 8), labels=y)['total']) == 0.0
    assert float(obj(mu, torch.zeros(4, 8), labels=y.roll(1))['total']) > 0


def test_gmm_bad_input():
    obj = ClassMeanGaussianObjective(8, 4)
    with pytest.raises(ValueError, match='labels'):
        obj(torch.zeros(3, 8), torch.zeros(3, 8))
    with pytest.raises(ValueError, match='labels must lie'):
        obj(torch.zeros(3, 8), torch.zeros(3, 8), labels=torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match='mu and logvar'):
        obj(torch.zeros(3, 7), torch.zeros(3, 7), labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match='n_classes'):
        ClassMeanGaussianObjective(3, 4)
    with pytest.raises(ValueError, match='separation'):
        ClassMeanGaussianObjective(8, 4, separation=-1.0)


class _Enc(nn.Module):
    "mu_j(x) = a_j x_j + b_j: Var_x(mu_j) = a_j^2 Var(x_j), known in closed form."
    def __init__(self, a, b):
        super().__init__()
        self.register_buffer('a', torch.as_tensor(a, dtype=torch.float64))
        self.register_buffer('b', torch.as_tensor(b, dtype=torch.float64))
        self.w = nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x.double() * self.a + self.b, torch.zeros_like(x)


def test_active_units_known_variances():
    a = np.array([2.0, 1.0, 0.3, 0.11, 0.09, 0.02, 0.0, 0.5])
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(40000, 8)))
    enc = _Enc(a, np.linspace(-3, 3, 8))  # the offsets do not matter
    assert active_units(enc, x) == int((a ** 2 > 0.01).sum()) == 5
    assert active_units(enc, x, threshold=0.0) == 7  # a_j = 0 is never active
    mu, _ = enc.encode(x)
    assert np.allclose(unit_activity(mu).numpy(), np.var(mu.numpy(), axis=0, ddof=1))
    assert active_units(mu.float()) == 5


def test_active_units_collapsed_and_errors():
    mu = torch.full((100, 4), 0.7)  # a collapsed encoder: constant means
    assert active_units(mu) == 0
    with pytest.raises(ValueError, match='data is required'):
        active_units(_Enc([1.0], [0.0]))
    with pytest.raises(ValueError, match='data=None'):
        active_units(mu, torch.zeros(3, 4))
    with pytest.raises(ValueError, match='threshold'):
        active_units(mu, threshold=-1.0)


def test_projected_ae_is_deterministic_on_the_sphere():
    torch.manual_seed(0)
    vae = mlp_vae((1, 8, 8), 12, hidden=(16,))
    ae = ProjectedAE.from_vae(vae)
    x = torch.rand(30, 1, 8, 8)
    mu, logvar = ae.encode(x)
    zs = [ae.reparameterize(mu, logvar + s, torch.Generator().manual_seed(s)) for s in range(3)]
    assert all(torch.equal(zs[0], z) for z in zs[1:])  # no sampling noise, whatever logvar
    assert torch.allclose(zs[0].norm(dim=1), torch.full((30,), math.sqrt(12)), atol=1e-5)
    ref = mu.detach().numpy() / np.linalg.norm(mu.detach().numpy(), axis=1, keepdims=True) * math.sqrt(12)
    assert np.allclose(zs[0].detach().numpy(), ref, atol=1e-5)
    assert ae.encoder is vae.encoder and ae.decoder is vae.decoder
    assert float(NoRegularizer()(mu, logvar)['total'].detach()) == 0.0


def _toy(n=120, C=3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % C
    x = (torch.rand(n, 1, 4, 4, generator=g) * 0.3 + y[:, None, None, None] * 0.3).clamp(0, 1)
    return LabeledDataset(x, y, [str(c) for c in range(C)], 'toy', 'train', 'test')


@pytest.mark.parametrize('kind', CONTROLS)
def test_control_trainer_contract(kind):
    data = _toy()
    fm = control_trainer(kind, latent_dim=6, hidden=(16,), epochs=2, batch_size=30)(data, 0, True)
    assert hasattr(fm, 'model') and hasattr(fm, 'conditional') and len(fm.history) == 2
    assert fm.conditional == (kind == 'gmm')
    if kind == 'ae':
        assert isinstance(fm.model, ProjectedAE) and fm.beta == 0.0 and fm.objective is None
    if kind == 'gmm':
        assert isinstance(fm.objective, ClassMeanGaussianObjective) and fm.objective.n_classes == 3
    # the same seed gives the same model
    fm2 = control_trainer(kind, latent_dim=6, hidden=(16,), epochs=2, batch_size=30)(data, 0, True)
    x = data.x[:5]
    assert torch.equal(fm.model.encode(x)[0], fm2.model.encode(x)[0])
    with pytest.raises(ValueError, match='kind'):
        control_trainer('vae')


def test_gmm_control_uses_labels():
    "With labels the training codes move towards their own class mean; without labels there is one class at 0."
    data = _toy(240)
    fm = control_trainer('gmm', latent_dim=6, hidden=(32,), epochs=30, batch_size=30, beta=10.0, lr=3e-3)(data, 0, True)
    mu = fm.model.encode(data.x)[0].detach()
    assert float((torch.cdist(mu, fm.objective.means()).argmin(1) == data.y).float().mean()) > 0.9
    fu = control_trainer('gmm', latent_dim=6, hidden=(16,), epochs=1, batch_size=30)(data, 0, False)
    assert fu.objective.n_classes == 1 and fu.objective.separation == 0.0 and not fu.conditional
