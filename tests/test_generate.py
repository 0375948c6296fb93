"""Tests for hyperlatent.generate against independent oracles.

Oracles: the closed form of the Fréchet distance for commuting (diagonal) covariances, the classic
scipy.linalg.sqrtm(S1 @ S2) formula, identities (FD(x, x) = 0, symmetry, rotation invariance), a manual
reconstruction-MSE computation and scikit-learn's KNeighborsClassifier.
"""
import numpy as np
import pytest
import scipy.linalg
import torch

from hyperlatent.data import load_dataset
from hyperlatent.generate import (SAMPLERS, DigitsFeatures, InceptionFeatures, decode_latents, encode_means, fid,
                                  frechet_distance, frechet_distance_gaussians, latent_knn_accuracy, reconstruct,
                                  reconstruction_mse, sample_latents, self_fid)
from hyperlatent.vae import gaussian_kl, island_prior, mlp_vae


def _spd(f, rng):
    a = rng.normal(size=(f, f))
    return a @ a.T + 0.1 * np.eye(f)


def _fd_scipy(m1, S1, m2, S2):
    c = scipy.linalg.sqrtm(S1 @ S2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(S1 + S2 - 2 * c))


# ---------------------------------------------------------------- Fréchet distance
@pytest.mark.parametrize('f', [1, 2, 7])
def test_fd_diagonal_closed_form(f):
    rng = np.random.default_rng(f)
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    s1, s2 = rng.uniform(0.05, 4, f), rng.uniform(0.05, 4, f)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance_gaussians(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_fd_commuting_non_diagonal_closed_form():
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    S1, S2 = Q @ np.diag(s1) @ Q.T, Q @ np.diag(s2) @ Q.T
    S1, S2 = (S1 + S1.T) / 2, (S2 + S2.T) / 2
    want = ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance_gaussians(np.zeros(5), S1, np.zeros(5), S2) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize('f', [1, 3, 10, 32])
def test_fd_matches_scipy_sqrtm(f):
    rng = np.random.default_rng(10 + f)
    S1, S2 = _spd(f, rng), _spd(f, rng)
    m1, m2 = rng.normal(size=f), rng.normal(size=f)
    assert frechet_distance_gaussians(m1, S1, m2, S2) == pytest.approx(_fd_scipy(m1, S1, m2, S2), rel=1e-7, abs=1e-8)


def test_fd_singular_covariance_is_clipped_not_nan():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 2))
    S1 = a @ a.T  # rank 2: eigh gives tiny negative eigenvalues
    S2 = _spd(6, rng)
    got = frechet_distance_gaussians(np.zeros(6), S1, np.zeros(6), S2)
    assert np.isfinite(got) and got == pytest.approx(_fd_scipy(np.zeros(6), S1, np.zeros(6), S2), rel=1e-6)


def test_fd_samples_identities():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(200, 8)) * 1.5 + 0.5
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-12)
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert frechet_distance(x @ Q, y @ Q) == pytest.approx(frechet_distance(x, y), rel=1e-9)
    # matches the Gaussian form on the unbiased sample moments
    want = frechet_distance_gaussians(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))
    assert frechet_distance(x, y) == pytest.approx(want, rel=1e-12)
    # torch input, float64 inside
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(frechet_distance(x, y), rel=1e-12)
    assert isinstance(frechet_distance(x, y), float)


def test_fd_input_validation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match='n >= 2'):
        frechet_distance(x[:1], y)
    with pytest.raises(ValueError, match='same number of features'):
        frechet_distance(x, y[:, :2])
    with pytest.raises(ValueError, match='dimension'):
        frechet_distance(x[0], y)
    bad = y.copy(); bad[0, 0] = np.inf
    with pytest.raises(ValueError, match='non-finite'):
        frechet_distance(x, bad)
    with pytest.raises(TypeError, match='a must be'):
        frechet_distance([[0.0, 1.0], [1.0, 0.0]], y)
    with pytest.raises(ValueError, match='S2'):
        frechet_distance_gaussians(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match='symmetric'):
        frechet_distance_gaussians(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------- features
@pytest.fixture(scope='module')
def feats():
    return DigitsFeatures(seed=0)


@pytest.fixture(scope='module')
def digits():
    return load_dataset('digits', split='train'), load_dataset('digits', split='test')


def test_digits_features_accuracy_and_shape(feats, digits):
    _, te = digits
    acc = (feats.logits(te.x).argmax(1) == te.y).float().mean().item()
    assert acc > 0.9
    f = feats(te.x[:11])
    assert f.shape == (11, 64) and torch.isfinite(f).all()
    assert torch.equal(feats(te.x[:11].reshape(11, 64)), f)
    with pytest.raises(ValueError, match='64'):
        feats(torch.zeros(3, 1, 4, 4))


def test_digits_features_cache_roundtrip(tmp_path, digits, feats, monkeypatch):
    import hyperlatent.generate as G
    _, te = digits
    a = DigitsFeatures(seed=0, cache_dir=tmp_path)  # already in memory: only written to disk
    assert (tmp_path / 'digits_features_seed0.pt').exists()
    monkeypatch.setattr(G, '_DIGITS_NETS', {})
    monkeypatch.setattr(G, '_train_digits_net', lambda *a, **k: pytest.fail('should load from cache'))
    b = DigitsFeatures(seed=0, cache_dir=tmp_path)
    assert torch.equal(a(te.x[:20]), b(te.x[:20]))


def test_digits_features_deterministic(digits, monkeypatch):
    import hyperlatent.generate as G
    _, te = digits
    a = G._train_digits_net(7, steps=20)
    b = G._train_digits_net(7, steps=20)
    x = te.x[:10].reshape(10, -1)
    assert torch.equal(a(x), b(x))


def test_inception_error_is_clear():
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match='pip install torch-fidelity') as e:
            InceptionFeatures()
        assert 'weights' in str(e.value)
    else:
        pytest.skip('torch-fidelity is installed')


# ---------------------------------------------------------------- tiny model
@pytest.fixture(scope='module')
def vae(digits):
    tr, _ = digits
    torch.manual_seed(0)
    m = mlp_vae((1, 8, 8), 4, hidden=(64,))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        for idx in torch.randperm(len(tr), generator=g).split(128):
            out = m(tr.x[idx], generator=g)
            loss = ((out.recon - tr.x[idx]) ** 2).sum((1, 2, 3)).mean() + gaussian_kl(out.mu, out.logvar)
            opt.zero_grad(); loss.backward(); opt.step()
    return m.eval()


@pytest.mark.parametrize('sampler', SAMPLERS)
def test_samplers_shape_and_reproducible(vae, digits, sampler):
    tr, _ = digits
    z1 = sample_latents(vae, 40, sampler, generator=torch.Generator().manual_seed(2), data=tr)
    z2 = sample_latents(vae, 40, sampler, generator=torch.Generator().manual_seed(2), data=tr)
    assert z1.shape == (40, 4) and torch.equal(z1, z2) and torch.isfinite(z1).all()


def test_sampler_distributions(vae, digits):
    tr, _ = digits
    g = torch.Generator().manual_seed(0)
    z = sample_latents(vae, 4000, 'gaussian', generator=g)
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1) < 0.05
    s = sample_latents(vae, 100, 'sphere', generator=g)
    assert torch.allclose(s.norm(dim=1), torch.full((100,), 2.0), atol=1e-5)
    isl = sample_latents(vae, 100, 'island', generator=g, data=tr)
    assert torch.allclose(isl.norm(dim=1), torch.full((100,), 2.0), atol=1e-5)
    # a fitted prior passed as data is used as is
    mu, logvar = encode_means(vae, tr)
    p = island_prior(mu.double())
    a = sample_latents(vae, 30, 'island', generator=torch.Generator().manual_seed(4), data=p)
    b = p.sample(30, generator=torch.Generator().manual_seed(4)).float()
    assert torch.allclose(a, b)
    # aggregate: mean of many draws ~ mean of the encoder means
    agg = sample_latents(vae, 20000, 'aggregate', generator=g, data=tr)
    se = (mu.var(0) + logvar.exp().mean(0)).sqrt() / np.sqrt(20000)
    assert ((agg.mean(0) - mu.mean(0)).abs() < 5 * se).all()


def test_sampler_validation(vae):
    with pytest.raises(ValueError, match='data='):
        sample_latents(vae, 5, 'aggregate')
    with pytest.raises(ValueError, match='sampler'):
        sample_latents(vae, 5, 'uniform')
    with pytest.raises(ValueError, match='n'):
        sample_latents(vae, 0)
    with pytest.raises(TypeError, match='model'):
        sample_latents(torch.nn.Linear(2, 2), 5)


def test_reconstruction_mse_manual(vae, digits):
    _, te = digits
    with torch.no_grad():
        rec = vae.decode(vae.encode(te.x)[0])
    diff = (rec - te.x).double() ** 2
    assert reconstruction_mse(vae, te) == pytest.approx(diff.mean().item(), rel=1e-6)
    assert reconstruction_mse(vae, te, 'sum') == pytest.approx(diff.sum((1, 2, 3)).mean().item(), rel=1e-6)
    assert reconstruction_mse(vae, te.x, batch_size=7) == pytest.approx(diff.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match='reduction'):
        reconstruction_mse(vae, te, 'max')


def test_self_fid_and_fid(vae, digits, feats):
    tr, te = digits
    rec = reconstruct(vae, te)
    assert frechet_distance(feats(rec), feats(rec)) == pytest.approx(0.0, abs=1e-8)
    sf = self_fid(vae, te, feats, generator=torch.Generator().manual_seed(0))
    assert sf >= 0 and np.isfinite(sf)
    # self_fid is exactly FD(features(decoded samples), features(reconstructions))
    z = sample_latents(vae, len(te), 'gaussian', generator=torch.Generator().manual_seed(0))
    want = frechet_distance(feats(decode_latents(vae, z)), feats(rec))
    assert sf == pytest.approx(want, rel=1e-9)
    f = fid(vae, te, feats, n=300, sampler='aggregate', data=tr, generator=torch.Generator().manual_seed(0))
    z = sample_latents(vae, 300, 'aggregate', data=tr, generator=torch.Generator().manual_seed(0))
    assert f == pytest.approx(frechet_distance(feats(decode_latents(vae, z)), feats(te.x)), rel=1e-9)
    assert f > 0
    # a decoded set vs itself
    assert frechet_distance(feats(decode_latents(vae, z)), feats(decode_latents(vae, z))) == pytest.approx(0, abs=1e-8)


def test_latent_knn_matches_sklearn(vae, digits):
    from sklearn.neighbors import KNeighborsClassifier
    tr, te = digits
    mtr, mte = encode_means(vae, tr)[0].numpy(), encode_means(vae, te)[0].numpy()
    for k in (1, 5):
        sk = KNeighborsClassifier(k).fit(mtr, tr.y.numpy()).score(mte, te.y.numpy())
        assert latent_knn_accuracy(vae, tr, te, k=k) == pytest.approx(sk, abs=0.01)
    assert latent_knn_accuracy(vae, (tr.x, tr.y), (te.x, te.y), k=1) == latent_knn_accuracy(vae, tr, te, k=1)
    with pytest.raises(ValueError, match='k'):
        latent_knn_accuracy(vae, tr, te, k=0)
