"""Tests for hyperlatent.vae against independent oracles.

Oracles: closed forms (torch.distributions KL, loss minima computed by hand from the spec's formulas),
a slow loop/numpy re-implementation of the compression terms written here from specs/hcvae.md §3, §4, §12,
the spec's published numbers (§13.1 checkpoint, §13.4 priors), invariances and float64 gradcheck.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperlatent.vae import (AggregatePrior, DEFAULT_GAINS, GAINS, PRESETS, REFERENCE_RUN, VAE, BetaObjective, CompressionObjective,
                             IslandPrior, VAEOutput, angular_mu_loss, angular_sigma_loss, compression_loss, gaussian_kl,
                             image_grid, island_prior, load_reference_checkpoint, mlp_vae, objective_preset,
                             radial_mu_loss, radial_sigma_loss, reconstruction_loss, residual_vae, sample_prior)

SHARED = Path(__file__).resolve().parents[2] / 'shared'
CKPT = SHARED / 'reference' / 'cifar10_full_compression_z128_ec126.pt'


# ----------------------------------------------------------------------------------------------------------
# Slow, independent re-implementation of the spec's formulas (numpy float64, explicit loops)
# ----------------------------------------------------------------------------------------------------------
EPS, FLOOR = 1e-3, 1e-4


def ref_cos(x):
    "cos phi_k = x_k / sqrt(sum_{j>=k} x_j^2 + 1e-3), k = 0..d-2, one loop over k (spec §2)."
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[1]
    return np.stack([x[:, k] / np.sqrt((x[:, k:] ** 2).sum(1) + EPS) for k in range(d - 1)], axis=1)


def g(u):
    return u * u - math.log(u * u) - 1.0


def std(col):
    return math.sqrt(np.var(col, ddof=1) + FLOOR)


def p_(d, k):
    return 1.0 / math.sqrt(d - k + EPS)


def b_(d, k):
    return 50.0 * math.sqrt(d) / math.sqrt(k + 1)


def ref_angular_generation(mu, mode):
    C = ref_cos(mu)
    d = C.shape[1] + 1
    total = 0.0
    for k in range(d - 1):
        t = p_(d, k) if mode == 'half' else 1.0
        total += b_(d, k) * g(std(C[:, k]) + 1 - p_(d, k)) + 0.05 * b_(d, k) * (t - C[:, k].mean()) ** 2
    return total


def ref_angular_anomaly(mu, labels, end_compress, n_classes, stride, epoch, training):
    mu = np.asarray(mu, dtype=np.float64)
    d = mu.shape[1]
    late = training and epoch > 100
    total = 0.0
    groups = [(0, mu)] if labels is None else [(c, mu[np.asarray(labels) == c]) for c in range(n_classes)]
    for c, rows in groups:
        C = ref_cos(np.roll(rows, -c * stride, axis=1))
        for k in range(d - 1):
            total += b_(d, k) * g(std(C[:, k]) + 1 - p_(d, k))
            if k <= d - 3:
                w = (150.0 if late else 100.0) if k == 0 else (math.sqrt(epoch - 101) + 1 if late else 1.0)
                t = 1.0 if k <= end_compress else 0.0
                total += 0.05 * w * b_(d, k) * (t - C[:, k].mean()) ** 2
    return total


def ref_radial_mu(mu):
    rho = np.linalg.norm(np.asarray(mu, dtype=np.float64), axis=1)
    return 50 * g(std(rho) + 1) + 50 * (rho.mean() - math.sqrt(mu.shape[1] - 0.5)) ** 2


def ref_angular_sigma(logvar):
    C = ref_cos(np.exp(0.5 * np.asarray(logvar, dtype=np.float64)))
    d = C.shape[1] + 1
    return sum(b_(d, k) * g(std(C[:, k]) + 1) + 0.05 * b_(d, k) * (p_(d, k) - C[:, k].mean()) ** 2 for k in range(d - 1))


def ref_radial_sigma(logvar, c):
    rho = np.linalg.norm(np.exp(0.5 * np.asarray(logvar, dtype=np.float64)), axis=1)
    return 50 * g(std(rho) / math.sqrt(0.5)) + 50 * (rho.mean() - c * math.sqrt(logvar.shape[1] - 0.5)) ** 2


def batch(n, d, seed=0, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=gen, dtype=torch.float64) * scale + shift
    logvar = torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.3 - 3.0
    return mu, logvar


# ----------------------------------------------------------------------------------------------------------
# Gaussian KL
# ----------------------------------------------------------------------------------------------------------
def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = batch(9, 7, seed=1)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl = torch.distributions.kl_divergence(q, p)
    torch.testing.assert_close(gaussian_kl(mu, logvar, 'sum'), kl.sum(1).mean())
    torch.testing.assert_close(gaussian_kl(mu, logvar, 'mean'), kl.mean(1).mean())
    torch.testing.assert_close(gaussian_kl(mu, logvar, 'sum'), 7 * gaussian_kl(mu, logvar, 'mean'))


def test_gaussian_kl_errors():
    with pytest.raises(ValueError, match='reduction'):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3), 'max')
    with pytest.raises(ValueError, match='same shape'):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))


# ----------------------------------------------------------------------------------------------------------
# Compression terms vs the slow re-implementation
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['half', 'full'])
@pytest.mark.parametrize('d', [3, 17, 64])
def test_angular_mu_generation_vs_reference(mode, d):
    mu, _ = batch(33, d, seed=d, shift=0.3)
    got = angular_mu_loss(mu, variant='generation', mode=mode).item()
    assert got == pytest.approx(ref_angular_generation(mu.numpy(), mode), rel=1e-10)


@pytest.mark.parametrize('epoch,training', [(0, True), (100, True), (101, True), (250, True), (250, False)])
@pytest.mark.parametrize('end_compress', [0, 20, 38])
def test_angular_mu_anomaly_conditional_vs_reference(epoch, training, end_compress):
    d, n_classes, stride = 40, 4, 10
    mu, _ = batch(48, d, seed=epoch + end_compress, shift=0.2)
    labels = torch.arange(48) % n_classes
    labels = labels[torch.randperm(48, generator=torch.Generator().manual_seed(3))]
    got = angular_mu_loss(mu, variant='anomaly', labels=labels, n_classes=n_classes, class_axis_stride=stride,
                          end_compress=end_compress, epoch=epoch, training=training).item()
    want = ref_angular_anomaly(mu.numpy(), labels.numpy(), end_compress, n_classes, stride, epoch, training)
    assert got == pytest.approx(want, rel=1e-10)


def test_angular_mu_anomaly_unconditional_default_end_compress():
    mu, _ = batch(30, 12, seed=5, shift=0.5)
    got = angular_mu_loss(mu, variant='anomaly', epoch=300).item()
    assert got == pytest.approx(ref_angular_anomaly(mu.numpy(), None, 10, 1, 10, 300, True), rel=1e-10)


@pytest.mark.parametrize('d', [3, 20, 128])
def test_radial_and_sigma_terms_vs_reference(d):
    mu, logvar = batch(25, d, seed=d, scale=2.0)
    assert radial_mu_loss(mu).item() == pytest.approx(ref_radial_mu(mu.numpy()), rel=1e-10)
    assert angular_sigma_loss(logvar).item() == pytest.approx(ref_angular_sigma(logvar.numpy()), rel=1e-10)
    for c in (1.0, 0.001):
        assert radial_sigma_loss(logvar, target_scale=c).item() == pytest.approx(
            ref_radial_sigma(logvar.numpy(), c), rel=1e-10)


@pytest.mark.parametrize('variant', ['generation', 'anomaly'])
def test_compression_loss_is_the_gain_weighted_sum(variant):
    mu, logvar = batch(40, 50, seed=2)
    kw = dict(mode='half') if variant == 'generation' else dict(labels=torch.arange(40) % 5, end_compress=7)
    c = 1.0 if variant == 'generation' else 0.001
    ang = (ref_angular_generation(mu.numpy(), 'half') if variant == 'generation'
           else ref_angular_anomaly(mu.numpy(), (torch.arange(40) % 5).numpy(), 7, 5, 10, 0, True))
    want = (1000 * ang + 300 * ref_radial_mu(mu.numpy()) + 500000 * ref_angular_sigma(logvar.numpy())
            + 500 * ref_radial_sigma(logvar.numpy(), c))
    assert compression_loss(mu, logvar, variant=variant, **kw).item() == pytest.approx(want, rel=1e-10)
    gains = (1.0, 2.0, 3.0, 4.0)
    want2 = ang + 2 * ref_radial_mu(mu.numpy()) + 3 * ref_angular_sigma(logvar.numpy()) + 4 * ref_radial_sigma(logvar.numpy(), 0.5)
    assert compression_loss(mu, logvar, variant=variant, gains=gains, sigma_target_scale=0.5, **kw).item() == \
        pytest.approx(want2, rel=1e-10)


# ----------------------------------------------------------------------------------------------------------
# Closed-form values at constructed minima (computed by hand from the formulas)
# ----------------------------------------------------------------------------------------------------------
def test_closed_form_values():
    d, n = 10, 6
    g101 = 1.01 ** 2 - math.log(1.01 ** 2) - 1  # std of a constant column = sqrt(0 + 1e-4) = 0.01
    # every row = the all-ones vector: cosines = p_k exactly, zero spread
    ones = torch.ones(n, d, dtype=torch.float64)
    want = sum(b_(d, k) * g(0.01 + 1 - p_(d, k)) for k in range(d - 1))
    assert angular_mu_loss(ones, variant='generation', mode='half').item() == pytest.approx(want, rel=1e-12)
    # rows of norm sqrt(d - 1/2) in different directions: radial mean term 0, variance term 50 g(1.01)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(n, d, generator=gen, dtype=torch.float64)
    mu = u / u.norm(dim=1, keepdim=True) * math.sqrt(d - 0.5)
    assert radial_mu_loss(mu).item() == pytest.approx(50 * g101, rel=1e-9)
    # constant logvar: sigma isotropic and identical across the batch
    lv = torch.zeros(n, d, dtype=torch.float64)  # sigma = 1: its cosines are exactly p_k (eps included)
    assert angular_sigma_loss(lv).item() == pytest.approx(sum(b_(d, k) for k in range(d - 1)) * g101, rel=1e-12)
    rv = 50 * g(0.01 / math.sqrt(0.5)) + 50 * (math.sqrt(d) - 0.3 * math.sqrt(d - 0.5)) ** 2
    assert radial_sigma_loss(lv, target_scale=0.3).item() == pytest.approx(rv, rel=1e-12)


def test_isotropic_gaussian_variance_terms_near_zero():
    "Spec §13.4 sanity check: on N(0, I) means the std targets p_k are met, so the variance part is ~0."
    d = 64
    mu, _ = batch(20000, d, seed=11)
    C = torch.from_numpy(ref_cos(mu.numpy()))
    mean_part = 0.05 * sum(b_(d, k) * (p_(d, k) - C[:, k].mean().item()) ** 2 for k in range(d - 1))
    var_part = angular_mu_loss(mu, variant='generation', mode='half').item() - mean_part
    assert 0 <= var_part < 1e-3 * sum(b_(d, k) for k in range(d - 1))


# ----------------------------------------------------------------------------------------------------------
# Invariances
# ----------------------------------------------------------------------------------------------------------
def test_batch_permutation_invariance():
    mu, logvar = batch(40, 30, seed=4)
    labels = torch.arange(40) % 3
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    for kw in (dict(variant='generation', mode='full'), dict(variant='anomaly', labels=labels, class_axis_stride=5)):
        a = compression_loss(mu, logvar, **kw)
        kw2 = {**kw, 'labels': labels[perm]} if 'labels' in kw else kw
        torch.testing.assert_close(a, compression_loss(mu[perm], logvar[perm], **kw2), rtol=1e-12, atol=0)


def test_class_axes_rotation_decomposes_into_per_class_losses():
    "Rolling class c's rows by +c*stride and asking for per-class axes = the sum of unconditional per-class losses."
    d, stride, n_classes = 32, 7, 4
    base = [batch(8, d, seed=20 + c, shift=0.1)[0] for c in range(n_classes)]
    mu = torch.cat([torch.roll(b, c * stride, dims=1) for c, b in enumerate(base)])
    labels = torch.arange(n_classes).repeat_interleave(8)
    cond = angular_mu_loss(mu, variant='anomaly', labels=labels, class_axis_stride=stride, end_compress=12)
    per = sum(angular_mu_loss(b, variant='anomaly', end_compress=12) for b in base)
    torch.testing.assert_close(cond, per, rtol=1e-12, atol=0)


def test_radial_mu_rotation_invariance():
    mu, _ = batch(20, 16, seed=8)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    torch.testing.assert_close(radial_mu_loss(mu), radial_mu_loss(mu @ q), rtol=1e-10, atol=0)


def test_class_axis_cosine_value():
    "Spec §13.4: after the roll, sqrt(d) e_{10c} has cos phi_0 = 1/sqrt(1 + 1e-3/128)."
    d = 128
    mu = torch.zeros(20, d, dtype=torch.float64)
    labels = torch.arange(20) % 10
    mu[torch.arange(20), 10 * labels] = math.sqrt(d)
    mu = mu + 1e-3 * batch(20, d, seed=3)[0]  # distinct rows
    # the mean term of the first angle alone: with end_compress=0 and cos_0 ~ 0.999996, the per-class t_0 error is tiny
    C0 = 1 / math.sqrt(1 + 1e-3 / 128)
    assert C0 == pytest.approx(0.999996, abs=1e-6)
    loss_on_axis = angular_mu_loss(mu, variant='anomaly', labels=labels, end_compress=0)
    loss_off_axis = angular_mu_loss(torch.roll(mu, 5, dims=1), variant='anomaly', labels=labels, end_compress=0)
    assert loss_on_axis < loss_off_axis


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
def test_errors():
    mu, logvar = batch(20, 30, seed=0)
    labels = torch.arange(20) % 4
    cases = [
        (lambda: angular_mu_loss(mu[:, :2], variant='generation'), 'd >= 3'),
        (lambda: compression_loss(mu[:, :2], logvar[:, :2], variant='anomaly'), 'd >= 3'),
        (lambda: angular_mu_loss(mu, variant='anomaly', end_compress=29), 'end_compress'),
        (lambda: angular_mu_loss(mu, variant='anomaly', end_compress=-1), 'end_compress'),
        (lambda: angular_mu_loss(mu, variant='anomaly', labels=labels, n_classes=5, class_axis_stride=5), 'missing'),
        (lambda: angular_mu_loss(mu, variant='anomaly', labels=labels, class_axis_stride=10), 'class axes'),
        (lambda: angular_mu_loss(mu, variant='anomaly', labels=labels[:-1], class_axis_stride=5), 'shape'),
        (lambda: angular_mu_loss(mu, variant='anomaly', labels=labels.reshape(4, 5), class_axis_stride=5), 'shape'),
        (lambda: angular_mu_loss(mu, variant='anomaly', labels=labels.float(), class_axis_stride=5), 'integer'),
        (lambda: angular_mu_loss(mu, variant='anomaly', labels=labels - 1, class_axis_stride=5), 'labels must lie'),
        (lambda: angular_mu_loss(mu[:5], variant='anomaly', labels=labels[:5], class_axis_stride=5), 'at least 2'),
        (lambda: angular_mu_loss(mu, variant='anomaly', mode='half'), 'end_compress'),
        (lambda: angular_mu_loss(mu, variant='generation', labels=labels), 'unconditional'),
        (lambda: angular_mu_loss(mu, variant='generation', mode='quarter'), 'mode'),
        (lambda: angular_mu_loss(mu[:1], variant='generation'), 'at least 2'),
        (lambda: angular_mu_loss(mu, variant='vmf'), 'variant'),
        (lambda: compression_loss(mu, logvar, variant='generation', gains=(1, 2, 3)), 'gains'),
        (lambda: compression_loss(mu, logvar[:, :5], variant='generation'), 'same shape'),
        (lambda: radial_sigma_loss(logvar, target_scale=-1.0), 'target_scale'),
        (lambda: CompressionObjective('anomaly', conditional=True)(mu, logvar), 'labels are required'),
        (lambda: CompressionObjective('generation', conditional=True), 'generation'),
        (lambda: objective_preset('nope'), 'unknown preset'),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fn()
    with pytest.raises(TypeError, match='end_compress'):
        angular_mu_loss(mu, variant='anomaly', end_compress=3.0)


# ----------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------
def test_gradcheck_float64():
    mu, logvar = batch(12, 6, seed=9, shift=0.3)
    mu.requires_grad_(True); logvar.requires_grad_(True)
    labels = torch.arange(12) % 3
    assert torch.autograd.gradcheck(lambda m, l: compression_loss(m, l, variant='generation', mode='half',
                                                                  gains=(1, 1, 1, 1)), (mu, logvar))
    assert torch.autograd.gradcheck(lambda m, l: compression_loss(m, l, variant='anomaly', labels=labels,
                                                                  class_axis_stride=2, gains=(1, 1, 1, 1),
                                                                  epoch=150), (mu, logvar))
    assert torch.autograd.gradcheck(lambda m, l: gaussian_kl(m, l), (mu, logvar))


def test_gradient_flow_through_model():
    torch.manual_seed(0)
    model = mlp_vae((1, 8, 8), 16, hidden=(32,), project=True)
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = model(x, generator=torch.Generator().manual_seed(1))
    loss = reconstruction_loss(out.recon, x) + 1e-4 * CompressionObjective('generation')(out.mu, out.logvar)['total']
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------
def test_vae_contract_and_projection_radius():
    model = mlp_vae(64, 25, project=True)
    x = torch.rand(11, 64)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, VAEOutput) and out.recon.shape == x.shape
    torch.testing.assert_close(out.z.norm(dim=1), torch.full((11,), 5.0))  # sqrt(25)
    torch.testing.assert_close(model.reparameterize(out.mu, out.logvar).norm(dim=1), torch.full((11,), 5.0))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    torch.testing.assert_close(model(x, generator=g1).z, model(x, generator=g2).z)  # explicit randomness only
    model.eval()
    with torch.no_grad():
        o = model(x)
    torch.testing.assert_close(o.z, o.mu / o.mu.norm(dim=1, keepdim=True) * 5.0)
    assert mlp_vae(64, 25).latent_dim == 25


def test_reparameterize_statistics():
    "Without projection, z ~ N(mu, sigma^2): check the first two moments on many draws."
    model = mlp_vae(4, 3)
    mu = torch.tensor([[1.0, -2.0, 0.5]]).repeat(20000, 1)
    logvar = torch.log(torch.tensor([[0.25, 1.0, 4.0]])).repeat(20000, 1)
    z = model.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([0.5, 1.0, 2.0]), atol=0.05, rtol=0)


def test_reconstruction_loss_closed_form():
    x = torch.rand(5, 3, 4, 4)
    r = torch.rand(5, 3, 4, 4)
    torch.testing.assert_close(reconstruction_loss(r, x), ((r - x) ** 2).sum() / 5)
    torch.testing.assert_close(reconstruction_loss(r, x, kind='l1', reduction='sum'), (r - x).abs().sum())
    bce = torch.nn.functional.binary_cross_entropy(r, x, reduction='sum') / 5
    torch.testing.assert_close(reconstruction_loss(r, x, kind='bce'), bce)


def test_residual_family_shapes_and_param_count():
    assert sum(p.numel() for p in residual_vae(128).parameters()) == REFERENCE_RUN['parameters'] == 660995
    m = residual_vae(48, image_size=64, channels=(8, 16, 16, 32), project=True)
    with torch.no_grad():
        out = m(torch.rand(3, 3, 64, 64))
    assert out.recon.shape == (3, 3, 64, 64) and out.mu.shape == (3, 48)
    torch.testing.assert_close(out.z.norm(dim=1), torch.full((3,), math.sqrt(48)))


def test_reference_checkpoint_smoke_values():
    if not CKPT.is_file():
        pytest.skip(f'reference checkpoint not found at {CKPT} (only the development checkout has ../shared)')
    model = load_reference_checkpoint(CKPT)
    assert sum(p.numel() for p in model.parameters()) == 660995
    assert model.latent_dim == 128 and model.project and not model.training
    assert model.encoder.feature_shape == (64, 4, 4)
    with torch.no_grad():
        mu, logvar = model.encode(torch.full((1, 3, 32, 32), 0.5))
    assert mu.norm().item() == pytest.approx(10.92, abs=0.01)  # spec §13.1
    assert torch.exp(0.5 * logvar).mean().item() == pytest.approx(0.040, abs=0.0005)


# ----------------------------------------------------------------------------------------------------------
# Objective objects and presets
# ----------------------------------------------------------------------------------------------------------
def test_objective_objects_api():
    mu, logvar = batch(30, 40, seed=6)
    labels = torch.arange(30) % 3
    beta = BetaObjective('mean')
    out = beta(mu, logvar, labels=labels, epoch=3, training=False)
    assert set(out) == {'kl', 'total'} and not beta.needs_labels
    torch.testing.assert_close(out['total'], gaussian_kl(mu, logvar, 'mean'))
    obj = CompressionObjective('anomaly', conditional=True, class_axis_stride=10, end_compress=5)
    out = obj(mu, logvar, labels=labels, epoch=150, training=True)
    assert obj.needs_labels and set(out) == {*CompressionObjective.term_names, 'total'}
    torch.testing.assert_close(out['total'], compression_loss(mu, logvar, variant='anomaly', labels=labels,
                                                              class_axis_stride=10, end_compress=5, epoch=150))
    # unconditional objects ignore labels passed by the trainer
    gen = CompressionObjective('generation', mode='half')
    torch.testing.assert_close(gen(mu, logvar, labels=labels)['total'], gen(mu, logvar)['total'])


def test_presets_table():
    assert GAINS['mnist'] == (1000, 300, 50000, 500) and GAINS['fmnist'][2] == 225000
    assert GAINS['celeba64'] == GAINS['cifar10'] == DEFAULT_GAINS == (1000, 300, 500000, 500)
    obj = objective_preset('p2_cifar10_conditional')
    assert (obj.variant, obj.conditional, obj.class_axis_stride, obj.sigma_target_scale) == ('anomaly', True, 10, 0.001)
    assert objective_preset('p2_cifar10_vmf').end_compress == 0
    assert objective_preset('p1_mnist').sigma_target_scale == 1.0
    assert objective_preset('p1_mnist', mode='half').mode == 'half'
    for name in PRESETS:
        objective_preset(name)


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------
def exact_cos(x):
    "cos phi_k with eps = 0, numpy loop (independent of hyperlatent.coords)."
    x = np.asarray(x, dtype=np.float64)
    return np.stack([x[:, k] / np.sqrt((x[:, k:] ** 2).sum(1)) for k in range(x.shape[1] - 1)], axis=1)


def test_island_prior_moments_and_radius():
    d = 8
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(3000, d, generator=gen, dtype=torch.float64) * 0.05 + torch.tensor([2.0] + [0.5] * (d - 1), dtype=torch.float64)
    prior = island_prior(mu)
    C = exact_cos(mu.numpy())
    np.testing.assert_allclose(prior.cos_mean_[0].numpy(), C.mean(0), rtol=1e-10)
    np.testing.assert_allclose(prior.cos_std_[0].numpy(), C.std(0, ddof=1), rtol=1e-10)
    assert prior.last_positive_[0].item() == pytest.approx((mu[:, -1] >= 0).double().mean().item())
    z = prior.sample(20000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z.norm(dim=1), torch.full((20000,), math.sqrt(d), dtype=torch.float64))
    Cz = exact_cos(z.numpy())
    # sampled cosines reproduce the fitted moments (clipping is negligible here: means are > 6 std from +-1 except
    # the last angle, whose cosine distribution is the unsigned one; compare the first d-2)
    np.testing.assert_allclose(Cz.mean(0)[:-1], C.mean(0)[:-1], atol=0.01)
    np.testing.assert_allclose(Cz.std(0)[:-1], C.std(0)[:-1], rtol=0.05)
    assert ((z[:, -1] >= 0).double().mean() - prior.last_positive_[0]).abs() < 0.02


def test_island_prior_isotropic_oracle():
    "Fitted on isotropic Gaussian means, the moments are the uniform-sphere values: mean 0, Var = 1/(d-k) (spec §13.4)."
    d = 16
    mu = torch.randn(40000, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    prior = island_prior(mu)
    k = torch.arange(d - 1, dtype=torch.float64)
    torch.testing.assert_close(prior.cos_std_[0] ** 2 * (d - k), torch.ones(d - 1, dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(prior.cos_mean_[0], torch.zeros(d - 1, dtype=torch.float64), atol=0.02, rtol=0)


def test_island_prior_conditional_class_axes():
    d, stride, n_classes = 30, 10, 3
    gen = torch.Generator().manual_seed(3)
    labels = torch.arange(300) % n_classes
    mu = torch.randn(300, d, generator=gen, dtype=torch.float64) * 0.2
    mu[torch.arange(300), stride * labels] += 5.0  # class c sits around the axis e_{10c}
    prior = IslandPrior(class_axis_stride=stride).fit(mu, labels)
    want = torch.arange(n_classes).repeat(50)
    z = prior.sample(150, labels=want, generator=gen)
    assert (z.abs().argmax(1) == stride * want).all()
    assert (z[torch.arange(150), stride * want] > 0).all()


def test_sample_prior_gaussian_and_island():
    torch.manual_seed(0)
    model = mlp_vae((1, 8, 8), 10, hidden=(16,), project=True)
    model.train()
    x = sample_prior(model, 7, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, 1, 8, 8) and model.training  # mode restored
    z1 = sample_prior(model, 7, generator=torch.Generator().manual_seed(5), decode=False)
    z2 = sample_prior(model, 7, generator=torch.Generator().manual_seed(5), decode=False)
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(z1.norm(dim=1), torch.full((7,), math.sqrt(10)))
    # without projection, the latents are plain N(0, I) draws
    z = sample_prior(mlp_vae(4, 3), 20000, generator=torch.Generator().manual_seed(0), decode=False)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=0.03, rtol=0)
    prior = island_prior(torch.randn(100, 10, generator=torch.Generator().manual_seed(1)) + 1.0)
    assert sample_prior(model, 5, prior=prior, generator=torch.Generator().manual_seed(0)).shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match='fitted in d = 10'):
        sample_prior(mlp_vae(4, 6), 3, prior=prior)
    with pytest.raises(ValueError, match='not fitted'):
        IslandPrior().sample(3)


def test_image_grid_layout():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 2, 2) / 10
    grid = image_grid(x, nrow=4, padding=1, pad_value=1.0)
    assert grid.shape == (3, 2 * 3 + 1, 4 * 3 + 1)
    assert grid[0, 1, 1].item() == 0.0 and grid[0, 4, 1 + 3].item() == pytest.approx(0.5)  # image 5: row 1, col 1
    assert grid[0, 0, 0].item() == 1.0 and grid[0, 4, 1 + 3 * 2].item() == 1.0  # padding, empty slot


def test_aggregate_prior_matches_training_directions():
    d = 6
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64) * 0.3
    mu = torch.randn(20000, d, generator=gen, dtype=torch.float64) @ a.T + torch.linspace(1, 2, d, dtype=torch.float64)
    u = mu / mu.norm(dim=1, keepdim=True) * math.sqrt(d)
    prior = AggregatePrior().fit(mu)
    z = prior.sample(20000, generator=gen)
    torch.testing.assert_close(z.norm(dim=1), torch.full((20000,), math.sqrt(d), dtype=torch.float64))
    torch.testing.assert_close(z.mean(0), u.mean(0), atol=0.02, rtol=0)
    # the fitted Gaussian is the sample mean / covariance of the directions (plus the tiny documented ridge)
    torch.testing.assert_close(prior.mean_[0], u.mean(0))
    torch.testing.assert_close(prior.chol_[0] @ prior.chol_[0].T, torch.cov(u.T), atol=1e-5, rtol=0)


def test_sample_prior_uses_eval_mode_for_batchnorm():
    "A residual VAE (BatchNorm1d after the first decoder layer) can decode a single sample only in eval mode."
    model = residual_vae(16, channels=(4, 8, 8), project=True).train()
    x = sample_prior(model, 1, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1, 3, 32, 32) and model.training
