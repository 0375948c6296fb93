"""Tests for hyperlatent.train: recipes against hand-written oracles, autotune, annealing, failure modes, resume."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hyperlatent.train import NonFiniteLossError, annealing_factor, encode_dataset, fit, select_device


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread (and much faster on a busy 2-core machine); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- stand-ins (independent of hyperlatent.vae)
class MLPVAE(nn.Module):
    """Small MLP VAE with the library's VAE interface; `noise=False` makes z = mu (deterministic)."""

    def __init__(self, shape=(1, 8, 8), d=8, hidden=64, dropout=0.0, noise=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        n = int(np.prod(shape))
        self.shape, self.latent_dim, self.noise, self.project = shape, d, noise, False
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 2 * d))
        self.decoder = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n), nn.Sigmoid())

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def reparameterize(self, mu, logvar, generator=None):
        if not self.noise:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z):
        return self.decoder(z).view(-1, *self.shape)


def kl_mean(mu, logvar):
    """Gaussian KL to N(0, I), averaged over latent dims and batch (the authors' 'mean' convention)."""
    return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).mean(1).mean()


class KLObjective:
    conditional = False

    def __call__(self, mu, logvar, *, labels=None, epoch=0, training=True):
        kl = kl_mean(mu, logvar)
        return {'kl_mu': (0.5 * mu ** 2).mean(1).mean(), 'total': kl}


@pytest.fixture(scope='module')
def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    return x[:1000], y[:1000]


def _no_time(df):
    return df.drop(columns=['seconds'])


# ----------------------------------------------------------------------------- annealing
def test_annealing_matches_spec_oracle():
    # spec hcvae.md §13.4: R2 legacy_annealing_factor at these epochs
    es = [0, 1, 4, 100, 101, 300, 301, 302, 500, 501, 701, 702]
    want = [1, 2, 3, 11, 1, 1, 1, 2, 15.106736, 1, 1, 2]
    np.testing.assert_allclose([annealing_factor(e) for e in es], want, rtol=0, atol=1e-6)


def test_annealing_piecewise_formula_everywhere():
    def formula(e):  # spec §4.3 written out independently
        if e <= 100: return math.sqrt(e) + 1
        if e <= 300: return 1.0
        if e <= 500: return math.sqrt(e - 301) + 1
        if e <= 700: return 1.0
        if e <= 900: return math.sqrt(e - 701) + 1
        return 1.0
    for e in range(0, 1200):
        assert annealing_factor(e) == pytest.approx(formula(e), abs=1e-12), e
    # R1 as coded: 'half' keeps growing (the dead-code bug), 'full' stops at 100
    assert annealing_factor(300, 'r1-half') == pytest.approx(math.sqrt(300) + 1)
    assert annealing_factor(350, 'r1-full') == 1.0 and annealing_factor(100, 'r1-full') == 11.0
    with pytest.raises(ValueError, match='epoch'):
        annealing_factor(-1)
    with pytest.raises(ValueError, match='anneal'):
        annealing_factor(1, 'linear')


def test_anneal_is_applied_in_loss(digits):
    x, _ = digits
    res = fit(MLPVAE(noise=False), x, KLObjective(), epochs=3, batch_size=1000, lr=0.0, anneal='intended',
              progress=False, device='cpu')
    h = res.history
    np.testing.assert_allclose(h.anneal, [1, 2, 1 + math.sqrt(2)])
    np.testing.assert_allclose(h.loss, h.rec + h.beta * h.anneal * h.kl, rtol=1e-6)


# ----------------------------------------------------------------------------- learning
def test_joint_recipe_learns_digits(digits):
    x, _ = digits
    baseline = ((x - x.mean(0)) ** 2).flatten(1).sum(1).mean().item()  # best constant predictor
    res = fit(MLPVAE(d=8, hidden=128), x, KLObjective(), epochs=15, batch_size=50, beta=0.05, progress=False,
              device='cpu', seed=0)
    h = res.history
    assert h.loss.iloc[-1] < 0.5 * h.loss.iloc[0]
    mu, _ = encode_dataset(res.model, x)
    recon = res.model.decode(mu).detach()
    assert ((recon - x) ** 2).flatten(1).sum(1).mean().item() < 0.6 * baseline  # beats the mean image clearly


def test_reference_recipe_learns_digits(digits):
    x, _ = digits
    res = fit(MLPVAE(d=8, hidden=128), x, KLObjective(), epochs=10, batch_size=50, recipe='reference', lr=2e-3,
              beta_target=0.05, progress=False, device='cpu')
    assert res.history.rec.iloc[-1] < 0.6 * res.history.rec.iloc[0]
    assert {'lr_encoder', 'lr_decoder'} <= set(res.history.columns)


# ----------------------------------------------------------------------------- beta autotune
def test_beta_autotune_equals_target_times_rec_over_kl(digits):
    x, _ = digits
    model = MLPVAE(noise=False)
    with torch.no_grad():  # measured independently: lr=0 keeps the model fixed, batches have equal size
        mu, logvar = model.encode(x)
        rec = ((model.decode(mu) - x) ** 2).flatten(1).sum(1).mean().item()
        kl = kl_mean(mu, logvar).item()
    expected = 7.0 * rec / (kl + 1e-3)
    res = fit(model, x, KLObjective(), epochs=3, batch_size=100, lr=0.0, beta=0.5, beta_target=7.0,
              progress=False, device='cpu')
    h = res.history
    assert h.beta.iloc[0] == 0.5  # epoch 0 uses the initial beta
    np.testing.assert_allclose(h.beta.iloc[1:], [expected, expected], rtol=1e-5)
    assert res.beta == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- reference recipe vs a hand-written oracle
def _reference_oracle(model, x, epochs, lr, beta_target, milestones, gamma):
    """specs/hcvae.md §3h/§4.3 written out: full-batch, encoder step (decoder frozen), decoder step on z.detach()."""
    enc, dec = list(model.encoder.parameters()), list(model.decoder.parameters())
    oe, od = torch.optim.Adam(enc, lr=lr), torch.optim.Adam(dec, lr=lr)
    se = torch.optim.lr_scheduler.MultiStepLR(oe, milestones, gamma)
    sd = torch.optim.lr_scheduler.MultiStepLR(od, milestones, gamma)
    beta = 1.0
    for e in range(epochs):
        a = math.sqrt(e) + 1 if e <= 100 else 1.0
        for p in dec: p.requires_grad_(False)
        mu, logvar = model.encode(x)
        z = model.reparameterize(mu, logvar)
        rec = ((model.decode(z) - x) ** 2).flatten(1).sum(1).mean()
        kl = kl_mean(mu, logvar)
        oe.zero_grad(); (0.001 * (rec + beta * kl * a)).backward(); oe.step()
        for p in dec: p.requires_grad_(True)
        for p in enc: p.requires_grad_(False)
        rec_d = ((model.decode(z.detach()) - x) ** 2).flatten(1).sum(1).mean()
        od.zero_grad(); (0.001 * rec_d).backward(); od.step()
        for p in enc: p.requires_grad_(True)
        se.step(); sd.step()
        if e == 0:
            beta = beta_target * rec.item() / (kl.item() + 1e-3)
    return model


def test_reference_recipe_matches_spec_oracle(digits):
    x, _ = digits
    x = x[:200]
    ours = fit(MLPVAE(noise=False, seed=3), x, KLObjective(), epochs=4, batch_size=200, recipe='reference',
               lr=1e-2, beta_target=3.0, milestones=(2,), gamma=0.5, progress=False, device='cpu').model
    oracle = _reference_oracle(MLPVAE(noise=False, seed=3), x, 4, 1e-2, 3.0, [2], 0.5)
    for (n, p), q in zip(ours.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)
    # and it is not trivially equal to the starting point
    assert not torch.allclose(ours.encoder[1].weight, MLPVAE(noise=False, seed=3).encoder[1].weight)


def test_reference_needs_encoder_and_decoder(digits):
    x, _ = digits

    class NoSplit(MLPVAE):
        def __init__(self):
            super().__init__()
            self.net = nn.ModuleDict({'e': self.encoder, 'd': self.decoder})
            del self.encoder, self.decoder

        def encode(self, x): return self.net['e'](x).chunk(2, -1)
        def decode(self, z): return self.net['d'](z).view(-1, 1, 8, 8)

    with pytest.raises(ValueError, match='encoder'):
        fit(NoSplit(), x, KLObjective(), epochs=1, recipe='reference', progress=False, device='cpu')


# ----------------------------------------------------------------------------- non-finite detection
class NaNAt:
    """Objective whose term 'angular_mu' becomes NaN from a given epoch on."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, mu, logvar, *, labels=None, epoch=0, training=True):
        bad = mu.sum() * (float('nan') if epoch >= self.epoch else 0.0)
        return {'angular_mu': bad, 'total': kl_mean(mu, logvar)}


def test_nonfinite_raises_with_term_and_epoch(digits, tmp_path):
    x, _ = digits
    with pytest.raises(NonFiniteLossError, match=r"'angular_mu'.*epoch 2") as ei:
        fit(MLPVAE(), x, NaNAt(2), epochs=5, batch_size=100, progress=False, device='cpu', output_dir=tmp_path)
    assert ei.value.term == 'angular_mu' and ei.value.epoch == 2 and ei.value.batch == 0
    ck = torch.load(tmp_path / 'checkpoint.pt', weights_only=True)
    assert ck['epoch'] == 2  # the last good checkpoint survives
    xbad = x.clone(); xbad[5, 0, 3, 3] = float('inf')
    with pytest.raises(NonFiniteLossError, match="'rec'"):
        fit(MLPVAE(), xbad, KLObjective(), epochs=1, batch_size=1000, progress=False, device='cpu')


# ----------------------------------------------------------------------------- checkpoints
def test_atomic_checkpoint_survives_crash_during_save(digits, tmp_path, monkeypatch):
    x, _ = digits
    real_save = torch.save
    calls = {'n': 0}

    def crashing_save(obj, f, *a, **k):
        calls['n'] += 1
        if calls['n'] == 2:  # second checkpoint: write half a file then die
            f.write(b'\x80\x02partial')
            raise KeyboardInterrupt('power cut')
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, 'save', crashing_save)
    with pytest.raises(KeyboardInterrupt):
        fit(MLPVAE(), x, KLObjective(), epochs=3, batch_size=100, progress=False, device='cpu', output_dir=tmp_path)
    monkeypatch.setattr(torch, 'save', real_save)
    assert sorted(os.listdir(tmp_path)) == ['checkpoint.pt', 'history.csv', 'history.json']  # no temp file left
    ck = torch.load(tmp_path / 'checkpoint.pt', weights_only=True)
    assert ck['epoch'] == 1 and len(ck['history']) == 1


def test_history_files_match_returned_history(digits, tmp_path):
    x, _ = digits
    res = fit(MLPVAE(), x, KLObjective(), epochs=2, batch_size=100, progress=False, device='cpu', output_dir=tmp_path)
    csv = pd.read_csv(res.paths['history_csv'])
    pd.testing.assert_frame_equal(csv, res.history, check_dtype=False)
    js = json.loads(res.paths['history_json'].read_text())
    pd.testing.assert_frame_equal(pd.DataFrame(js), res.history, check_dtype=False)
    assert res.paths['checkpoint'].exists()


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize('recipe', ['joint', 'reference'])
def test_resume_is_bit_for_bit(digits, tmp_path, recipe):
    x, _ = digits
    kw = dict(objective=KLObjective(), batch_size=100, recipe=recipe, lr=3e-3, beta_target=2.0, progress=False,
              device='cpu', seed=5, milestones=(3,))
    straight = fit(MLPVAE(dropout=0.2), x, epochs=4, output_dir=tmp_path / 'a', **kw)
    fit(MLPVAE(dropout=0.2), x, epochs=2, output_dir=tmp_path / 'b', **kw)
    resumed = fit(MLPVAE(dropout=0.2, seed=99), x, epochs=4, output_dir=tmp_path / 'b', resume=True, **kw)
    _assert_same_model(straight.model, resumed.model)
    pd.testing.assert_frame_equal(_no_time(straight.history), _no_time(resumed.history), check_exact=True)


class CrashAt(KLObjective):
    """Same objective, but raises at (epoch, call) once: a simulated interruption mid-epoch."""

    def __init__(self, epoch, call):
        self.at, self.call, self.n = epoch, call, 0

    def __call__(self, mu, logvar, *, labels=None, epoch=0, training=True):
        if epoch == self.at:
            self.n += 1
            if self.n == self.call:
                raise RuntimeError('interrupted')
        return super().__call__(mu, logvar, labels=labels, epoch=epoch, training=training)


def test_resume_after_exception_mid_epoch(digits, tmp_path, monkeypatch):
    x, _ = digits
    kw = dict(batch_size=100, lr=3e-3, progress=False, device='cpu', seed=1)
    straight = fit(MLPVAE(dropout=0.1), x, KLObjective(), epochs=4, output_dir=tmp_path / 'a', **kw)
    crash, plain = CrashAt(2, 4), KLObjective.__call__  # the interruption is patched into KLObjective itself:
    def crashing(self, mu, logvar, *, labels=None, epoch=0, training=True):  # resume refuses another objective class
        if epoch == crash.at:
            crash.n += 1
            if crash.n == crash.call:
                raise RuntimeError('interrupted')
        return plain(self, mu, logvar, labels=labels, epoch=epoch, training=training)
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match='interrupted'):
        m.setattr(KLObjective, '__call__', crashing)
        fit(MLPVAE(dropout=0.1), x, KLObjective(), epochs=4, output_dir=tmp_path / 'b', **kw)
    resumed = fit(MLPVAE(dropout=0.1), x, KLObjective(), epochs=4, output_dir=tmp_path / 'b', resume=True, **kw)
    _assert_same_model(straight.model, resumed.model)
    pd.testing.assert_frame_equal(_no_time(straight.history), _no_time(resumed.history), check_exact=True)


def test_resume_rejects_changed_settings(digits, tmp_path):
    x, _ = digits
    fit(MLPVAE(), x, KLObjective(), epochs=1, batch_size=100, progress=False, device='cpu', output_dir=tmp_path)
    with pytest.raises(ValueError, match='batch_size'):
        fit(MLPVAE(), x, KLObjective(), epochs=2, batch_size=50, progress=False, device='cpu', output_dir=tmp_path,
            resume=True)


# ----------------------------------------------------------------------------- reproducibility, data forms, API
def test_seeded_runs_are_reproducible_and_leave_global_rng_alone(digits):
    x, _ = digits
    state = torch.get_rng_state()
    a = fit(MLPVAE(dropout=0.1), x, KLObjective(), epochs=2, batch_size=100, progress=False, device='cpu', seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = fit(MLPVAE(dropout=0.1), x, KLObjective(), epochs=2, batch_size=100, progress=False, device='cpu', seed=7)
    c = fit(MLPVAE(dropout=0.1), x, KLObjective(), epochs=2, batch_size=100, progress=False, device='cpu', seed=8)
    _assert_same_model(a.model, b.model)
    assert not torch.equal(a.model.decoder[0].weight, c.model.decoder[0].weight)


def test_data_forms_agree(digits):
    x, y = digits

    class DS:  # LabeledDataset-like
        def __init__(self): self.x, self.y = x, y

    runs = [fit(MLPVAE(), d, KLObjective(), epochs=1, batch_size=100, progress=False, device='cpu')
            for d in (x, (x, y), DS(), torch.utils.data.TensorDataset(x, y))]
    for r in runs[1:]:
        _assert_same_model(runs[0].model, r.model)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100, shuffle=True)
    r = fit(MLPVAE(), dl, KLObjective(), epochs=2, progress=False, device='cpu')
    assert len(r.history) == 2 and np.isfinite(r.history.loss).all()


def test_conditional_batches_hold_every_class(digits):
    pytest.importorskip('hyperlatent.data')
    x, y = digits
    seen = []

    class Cond(KLObjective):
        conditional = True

        def __call__(self, mu, logvar, *, labels=None, epoch=0, training=True):
            seen.append(labels.clone())
            return super().__call__(mu, logvar)

    fit(MLPVAE(), (x, y), Cond(), epochs=1, batch_size=100, progress=False, device='cpu')
    fit(MLPVAE(), torch.utils.data.TensorDataset(x, y), Cond(), epochs=1, batch_size=100, progress=False, device='cpu')
    assert len(seen) == 20 and all(set(l.tolist()) == set(range(10)) for l in seen)
    assert all(len(l) == 100 for l in seen)
    with pytest.raises(ValueError, match='labels'):
        fit(MLPVAE(), x, Cond(), epochs=1, batch_size=100, progress=False, device='cpu')


def test_validation_columns(digits):
    x, _ = digits
    r = fit(MLPVAE(), x[:800], KLObjective(), val_data=x[800:], epochs=2, batch_size=100, progress=False, device='cpu')
    assert {'val_rec', 'val_kl', 'val_kl_mu'} <= set(r.history.columns)
    assert np.isfinite(r.history.val_rec).all()


def test_encode_dataset_matches_encode_in_eval_mode(digits):
    x, _ = digits
    m = MLPVAE(dropout=0.5)
    mu, lv = encode_dataset(m, x, batch_size=64)
    assert m.training  # mode restored
    m.eval()
    with torch.no_grad():
        mu2, lv2 = m.encode(x)
    torch.testing.assert_close(mu, mu2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lv, lv2, rtol=1e-6, atol=1e-6)


def test_boundary_validation(digits, tmp_path):
    x, _ = digits
    m = MLPVAE()
    with pytest.raises(ValueError, match='recipe'):
        fit(m, x, KLObjective(), recipe='fast', progress=False)
    with pytest.raises(ValueError, match='epochs'):
        fit(m, x, KLObjective(), epochs=0, progress=False)
    with pytest.raises(ValueError, match='batch_size'):
        fit(m, x, KLObjective(), batch_size=1, progress=False)
    with pytest.raises(ValueError, match='resume'):
        fit(m, x, KLObjective(), resume=True, progress=False)
    with pytest.raises(TypeError, match='model'):
        fit(nn.Linear(2, 2), x, KLObjective(), progress=False)
    with pytest.raises(TypeError, match='data'):
        fit(m, [1, 2, 3], KLObjective(), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='amp'):
            fit(m, x, KLObjective(), amp=True, device='cpu', progress=False)
    assert select_device('cpu') == torch.device('cpu')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='mixed precision needs CUDA')
def test_amp_on_cuda(digits):
    x, _ = digits
    r = fit(MLPVAE(), x, KLObjective(), epochs=3, batch_size=100, progress=False, device='cuda', amp=True)
    assert np.isfinite(r.history.loss).all() and r.history.loss.iloc[-1] < r.history.loss.iloc[0]


# ----------------------------------------------------------------------------- with the library's own VAE and objectives
def test_compression_vae_on_digits_moves_codes_off_the_equator():
    from hyperlatent.coords import spherical_cosines
    from hyperlatent.data import load_dataset
    from hyperlatent.vae import mlp_vae, objective_preset
    ds = load_dataset('digits')
    torch.manual_seed(0)
    model = mlp_vae((1, 8, 8), 32, project=True)
    before = spherical_cosines(encode_dataset(model, ds)[0], eps=1e-3)[:, 0].mean().item()
    res = fit(model, ds, objective_preset('p1_mnist', mode='full'), epochs=8, batch_size=128, recipe='reference',
              lr=1e-3, progress=False, device='cpu', num_threads=1)
    after = spherical_cosines(encode_dataset(res.model, ds)[0], eps=1e-3)[:, 0].mean().item()
    assert {'angular_mu', 'radial_mu', 'angular_sigma', 'radial_sigma'} <= set(res.history.columns)
    assert res.history.kl.iloc[-1] < 0.5 * res.history.kl.iloc[0]
    assert abs(before) < 0.2 and after > before + 0.2  # the 'full' target pulls cos(phi_1) toward 1


def test_conditional_compression_objective_gets_balanced_labelled_batches():
    from hyperlatent.data import load_dataset
    from hyperlatent.vae import CompressionObjective, mlp_vae
    ds = load_dataset('digits')
    obj = CompressionObjective('anomaly', conditional=True, n_classes=10, class_axis_stride=3)
    torch.manual_seed(0)
    res = fit(mlp_vae((1, 8, 8), 32, project=True), ds, obj, epochs=2, batch_size=100, recipe='reference',
              progress=False, device='cpu', num_threads=1)
    assert np.isfinite(res.history.kl).all()
    with pytest.raises(ValueError, match='labels'):  # the conditional objective cannot train on unlabeled data
        fit(mlp_vae((1, 8, 8), 32), ds.x, obj, epochs=1, progress=False, device='cpu')


def test_num_threads_is_restored(digits):
    x, _ = digits
    n = torch.get_num_threads()
    fit(MLPVAE(), x, KLObjective(), epochs=1, batch_size=500, progress=False, device='cpu', num_threads=2)
    assert torch.get_num_threads() == n
    with pytest.raises(ValueError, match='num_threads'):
        fit(MLPVAE(), x, KLObjective(), epochs=1, progress=False, num_threads=0)


def test_gradient_clipping_is_applied_per_optimiser(digits, monkeypatch):
    x, _ = digits
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        total = real(params, max_norm, *a, **k)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        seen.append((max_norm, float(total), float(after)))
        return total

    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', spy)
    fit(MLPVAE(), x, KLObjective(), epochs=2, batch_size=100, recipe='reference', clip_grad_norm=1e-3,
        progress=False, device='cpu')
    assert len(seen) == 2 * 10 * 2  # epochs x batches x (encoder, decoder)
    assert all(m == 1e-3 and after <= 1e-3 * (1 + 1e-4) for m, _, after in seen)
    assert max(total for _, total, _ in seen) > 1e-2  # clipping actually had something to clip


def test_hflip_augmentation_is_used_and_reproducible(digits, tmp_path):
    x, _ = digits
    inputs = []

    class Spy(MLPVAE):
        def encode(self, xb):
            inputs.append(xb.detach().clone())
            return super().encode(xb)

    fit(Spy(), x, KLObjective(), epochs=1, batch_size=100, augment='hflip', lr=0.0, progress=False, device='cpu')
    rows = {tuple(r.flatten().tolist()) for r in x}
    flipped = {tuple(r.flip(-1).flatten().tolist()) for r in x}
    seen = torch.cat(inputs)
    n_orig = sum(tuple(r.flatten().tolist()) in rows for r in seen)
    n_flip = sum(tuple(r.flatten().tolist()) in flipped and tuple(r.flatten().tolist()) not in rows for r in seen)
    assert n_orig + n_flip == len(seen) and 350 < n_flip < 650  # about half of 1000 mirrored
    kw = dict(epochs=4, batch_size=100, augment='hflip', progress=False, device='cpu')
    a = fit(MLPVAE(), x, KLObjective(), output_dir=tmp_path / 'a', **kw)
    fit(MLPVAE(), x, KLObjective(), output_dir=tmp_path / 'b', **(kw | {'epochs': 2}))
    b = fit(MLPVAE(), x, KLObjective(), output_dir=tmp_path / 'b', resume=True, **kw)
    _assert_same_model(a.model, b.model)


def test_load_checkpoint_roundtrip(digits, tmp_path):
    from hyperlatent.train import load_checkpoint
    x, _ = digits
    r = fit(MLPVAE(), x, KLObjective(), epochs=2, batch_size=100, progress=False, device='cpu', output_dir=tmp_path)
    m = MLPVAE(seed=42)
    info = load_checkpoint(tmp_path, m)
    _assert_same_model(r.model, m)
    assert info['epoch'] == 2 and len(info['history']) == 2
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / 'junk.pt', m)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'nothing', m)


def test_progress_bars_and_quiet_mode(digits, capsys):
    x, _ = digits
    fit(MLPVAE(), x, KLObjective(), epochs=2, batch_size=100, progress=False, device='cpu')
    assert capsys.readouterr().err == ''
    fit(MLPVAE(), x, KLObjective(), epochs=2, batch_size=100, progress=True, device='cpu')
    err = capsys.readouterr().err
    assert 'epochs' in err and '2/2' in err and 'loss=' in err


# ----------------------------------------------------------------------------- validation batches, resume fingerprint, corrupt checkpoints, dtype
class CondRecorder:
    """A conditional objective that insists on every class in every batch (like the compression objectives) and
    records the validation batches it sees."""
    conditional = True

    def __init__(self, n_classes=10):
        self.n_classes, self.val_batches = n_classes, []

    def __call__(self, mu, logvar, *, labels=None, epoch=0, training=True):
        assert labels is not None
        if len(torch.unique(labels)) != self.n_classes:
            raise ValueError('every class must be present in every batch')
        if len(mu) < 2:
            raise ValueError('needs >= 2 rows')
        if not training:
            self.val_batches.append(labels.clone())
        return {'total': kl_mean(mu, logvar)}


def _direct_val(model, x):
    """Oracle: rec (per-image SSE, batch mean) and KL mean of the whole set in one eval-mode call, decoding mu."""
    was = model.training
    model.eval()
    with torch.no_grad():
        mu, lv = model.encode(x)
        rec = ((model.decode(mu) - x) ** 2).flatten(1).sum(1).mean()
        kl = kl_mean(mu, lv)
    model.train(was)
    return float(rec), float(kl)


@pytest.mark.parametrize('n_val', [101, 201, 250])
def test_validation_class_sorted_and_any_size_with_conditional_objective(digits, n_val):
    x, y = digits
    xv, yv = x[700:700 + n_val], y[700:700 + n_val]
    order = torch.argsort(yv, stable=True)  # class-sorted: sequential batches would each hold one or two classes
    xv, yv = xv[order], yv[order]
    obj = CondRecorder()
    r = fit(MLPVAE(noise=False), (x[:700], y[:700]), obj, val_data=(xv, yv), epochs=2, batch_size=100,
            progress=False, device='cpu')
    seen = obj.val_batches[-len(obj.val_batches) // 2:]  # the last epoch's validation batches
    assert sum(len(b) for b in seen) == n_val  # every sample exactly once (no short batch, none dropped)
    assert len(seen) == max(1, n_val // 100) and all(len(b) >= 90 for b in seen)  # stratified: ~n_val / n_batches each
    rec, kl = _direct_val(r.model, xv)  # per-sample terms: the sample-weighted batch mean equals the whole-set value
    assert r.history.val_rec.iloc[-1] == pytest.approx(rec, rel=1e-5)
    assert r.history.val_kl.iloc[-1] == pytest.approx(kl, rel=1e-5)


def test_validation_size_one_remainder_unconditional(digits):
    x, _ = digits
    r = fit(MLPVAE(noise=False), x[:700], KLObjective(), val_data=x[700:901], epochs=1, batch_size=100,
            progress=False, device='cpu')  # 201 = 2*100 + 1: the lone row joins the previous batch
    rec, kl = _direct_val(r.model, x[700:901])
    assert r.history.val_rec.iloc[-1] == pytest.approx(rec, rel=1e-5)
    assert r.history.val_kl.iloc[-1] == pytest.approx(kl, rel=1e-5)
    with pytest.raises(ValueError, match='val_data'):
        fit(MLPVAE(), x[:700], KLObjective(), val_data=x[700:701], epochs=1, batch_size=100, progress=False, device='cpu')


def _first_run(x, tmp_path, **kw):
    args = dict(epochs=2, batch_size=100, progress=False, device='cpu', output_dir=tmp_path)
    args.update(kw)
    return fit(MLPVAE(), x, KLObjective(), **args)


def test_resume_rejects_other_objective(digits, tmp_path):
    x, _ = digits
    _first_run(x, tmp_path)
    from hyperlatent.vae import BetaObjective
    with pytest.raises(ValueError, match='objective'):
        fit(MLPVAE(), x, BetaObjective(), epochs=3, batch_size=100, progress=False, device='cpu', output_dir=tmp_path,
            resume=True)


def test_resume_rejects_other_objective_config(digits, tmp_path):
    from hyperlatent.vae import BetaObjective
    x, _ = digits
    fit(MLPVAE(), x, BetaObjective('sum'), epochs=1, batch_size=100, progress=False, device='cpu', output_dir=tmp_path)
    with pytest.raises(ValueError, match='objective'):
        fit(MLPVAE(), x, BetaObjective('mean'), epochs=2, batch_size=100, progress=False, device='cpu',
            output_dir=tmp_path, resume=True)


def test_resume_rejects_other_data(digits, tmp_path):
    x, _ = digits
    _first_run(x, tmp_path)
    with pytest.raises(ValueError, match='data'):  # 100 rows instead of 1000
        fit(MLPVAE(), x[:100], KLObjective(), epochs=3, batch_size=50 * 2, progress=False, device='cpu',
            output_dir=tmp_path, resume=True)
    x2 = x.clone()
    x2[::7] = 1 - x2[::7]  # same shape, different values
    with pytest.raises(ValueError, match='data'):
        fit(MLPVAE(), x2, KLObjective(), epochs=3, batch_size=100, progress=False, device='cpu', output_dir=tmp_path,
            resume=True)


def test_resume_rejects_other_model(digits, tmp_path):
    x, _ = digits
    _first_run(x, tmp_path)
    with pytest.raises(ValueError, match='model'):
        fit(MLPVAE(hidden=32), x, KLObjective(), epochs=3, batch_size=100, progress=False, device='cpu',
            output_dir=tmp_path, resume=True)


def test_resume_rejects_other_seed(digits, tmp_path):
    x, _ = digits
    _first_run(x, tmp_path)
    with pytest.raises(ValueError, match='seed'):
        fit(MLPVAE(), x, KLObjective(), epochs=3, batch_size=100, progress=False, device='cpu', output_dir=tmp_path,
            resume=True, seed=1)


def test_resume_rejects_fewer_epochs_than_done(digits, tmp_path):
    x, _ = digits
    _first_run(x, tmp_path, epochs=3)
    with pytest.raises(ValueError, match='epochs'):
        fit(MLPVAE(), x, KLObjective(), epochs=2, batch_size=100, progress=False, device='cpu', output_dir=tmp_path,
            resume=True)
    r = fit(MLPVAE(), x, KLObjective(), epochs=4, batch_size=100, progress=False, device='cpu', output_dir=tmp_path,
            resume=True)  # the matching run still resumes
    assert list(r.history.epoch) == [0, 1, 2, 3]


def test_truncated_checkpoint_is_a_clear_error(digits, tmp_path):
    from hyperlatent.train import load_checkpoint
    x, _ = digits
    r = _first_run(x, tmp_path, epochs=1)
    ck = r.paths['checkpoint']
    raw = ck.read_bytes()
    ck.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match='truncated or corrupt checkpoint') as e:
        load_checkpoint(ck, MLPVAE())
    assert str(ck) in str(e.value)
    with pytest.raises(ValueError, match='truncated or corrupt checkpoint'):
        fit(MLPVAE(), x, KLObjective(), epochs=2, batch_size=100, progress=False, device='cpu', output_dir=tmp_path,
            resume=True)
    ck.write_bytes(b'')
    with pytest.raises(ValueError, match='truncated or corrupt checkpoint'):
        load_checkpoint(tmp_path, MLPVAE())


def test_float64_data_into_float32_model_is_a_type_error(digits):
    x, y = digits
    with pytest.raises(TypeError, match=r'data.*float64.*float32'):
        fit(MLPVAE(), x.double(), KLObjective(), epochs=1, batch_size=100, progress=False, device='cpu')
    with pytest.raises(TypeError, match=r'val_data.*float64.*float32'):
        fit(MLPVAE(), x, KLObjective(), val_data=x[:200].double(), epochs=1, batch_size=100, progress=False,
            device='cpu')
    ds = torch.utils.data.TensorDataset(x.double(), y)
    with pytest.raises(TypeError, match=r'float64.*float32'):
        fit(MLPVAE(), ds, KLObjective(), epochs=1, batch_size=100, progress=False, device='cpu')
    r = fit(MLPVAE().double(), x.double(), KLObjective(), epochs=1, batch_size=100, progress=False, device='cpu')
    assert np.isfinite(r.history.loss).all()  # a float64 model trains on float64 data


def test_select_device_is_the_shared_one():
    from hyperlatent import _checks, train
    assert train.select_device is _checks.select_device
    with pytest.raises(TypeError, match='epochs'):
        fit(MLPVAE(), torch.rand(10, 1, 8, 8), KLObjective(), epochs=True, progress=False, device='cpu')


@pytest.mark.parametrize('cuda, mps, want', [(True, True, 'cuda'), (True, False, 'cuda'), (False, True, 'mps'),
                                             (False, False, 'cpu')])
def test_select_device_follows_what_torch_reports(monkeypatch, cuda, mps, want):
    # the oracle is torch's own availability report, patched both ways (CUDA > MPS > CPU)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: mps)
    assert select_device() == torch.device(want)
    if not cuda:
        with pytest.raises(ValueError, match='CUDA is not available'):
            select_device('cuda')



def test_validation_with_conditional_compression_objective_class_sorted():
    from hyperlatent.data import load_dataset
    from hyperlatent.vae import CompressionObjective, mlp_vae
    ds = load_dataset('digits')
    order = torch.argsort(ds.y[1000:1301], stable=True)  # 301 rows, class-sorted: 301 % 100 == 1
    xv, yv = ds.x[1000:1301][order], ds.y[1000:1301][order]
    obj = CompressionObjective('anomaly', conditional=True, n_classes=10, class_axis_stride=3)
    torch.manual_seed(0)
    res = fit(mlp_vae((1, 8, 8), 32, project=True), (ds.x[:1000], ds.y[:1000]), obj, val_data=(xv, yv), epochs=1,
              batch_size=100, recipe='reference', progress=False, device='cpu', num_threads=1)
    assert np.isfinite(res.history.val_kl).all() and np.isfinite(res.history.val_rec).all()


# ----------------------------------------------------------------------------- structure: recipe objects, REFERENCE_RUN lookups
def test_reference_recipe_reads_its_constants_from_REFERENCE_RUN(digits, monkeypatch):
    from hyperlatent import vae
    from hyperlatent.train import FitConfig, ReferenceRecipe
    x = digits[0][:200]
    real_update = ReferenceRecipe.update

    def run():
        seen = []

        def spy(self, i, loss, inputs=None):  # records the loss each optimiser step is taken on
            seen.append((i, float(loss.detach())))
            return real_update(self, i, loss, inputs)
        with monkeypatch.context() as m:
            m.setattr(ReferenceRecipe, 'update', spy)
            r = fit(MLPVAE(noise=False), x, KLObjective(), epochs=3, batch_size=200, recipe='reference', progress=False,
                    device='cpu')
        return r.history, seen

    h0, s0 = run()
    archived = dict(vae.REFERENCE_RUN)
    assert h0.lr_encoder.tolist() == h0.lr_decoder.tolist() == [archived['lr']] * 3
    assert s0[0] == (0, pytest.approx(archived['loss_scale'] * h0.loss[0], rel=1e-6))
    patched = dict(lr=1e-2, beta_target=7.0, milestones=(2,), lr_gamma=0.1, loss_scale=0.5)
    for k, v in patched.items():  # nothing but REFERENCE_RUN's values change
        monkeypatch.setitem(vae.REFERENCE_RUN, k, v)
    h, s = run()
    np.testing.assert_allclose(h.lr_encoder, [1e-2, 1e-2, 1e-3], rtol=1e-12)  # lr, then gamma at the milestone
    np.testing.assert_allclose(h.lr_decoder, [1e-2, 1e-2, 1e-3], rtol=1e-12)
    assert h.beta[1] == pytest.approx(7.0 * h.rec[0] / (h.kl[0] + 1e-3), rel=1e-9)  # the autotune target
    assert [i for i, _ in s[:2]] == [0, 1] and s[0][1] == pytest.approx(0.5 * h.loss[0], rel=1e-6)  # the loss scale
    cfg = FitConfig.build(KLObjective(), recipe='reference', device='cpu')
    assert (cfg.lr, cfg.beta_target, cfg.milestones, cfg.gamma, cfg.loss_scale) == (1e-2, 7.0, (2,), 0.1, 0.5)
    assert FitConfig.build(KLObjective(), recipe='joint', device='cpu').lr != 1e-2  # the joint recipe is unaffected


def test_recipes_are_objects_with_a_step_and_no_recipe_branch_in_the_loop():
    import inspect as _inspect
    from hyperlatent import train
    assert set(train.RECIPES) == {'joint', 'reference'}
    assert all(callable(getattr(r, 'step', None)) for r in train.RECIPES.values())
    for fn in (train._train_epoch, train._train, train._fit, train._finish_epoch):
        assert 'recipe ==' not in _inspect.getsource(fn)


def test_validation_uses_the_training_forward(digits, monkeypatch):
    from hyperlatent import train
    x = digits[0]
    calls = []
    real = train.batch_terms

    def spy(*a, training, **k):
        calls.append(training)
        return real(*a, training=training, **k)
    monkeypatch.setattr(train, 'batch_terms', spy)
    fit(MLPVAE(), x[:800], KLObjective(), val_data=x[800:], epochs=1, batch_size=100, progress=False, device='cpu')
    assert calls.count(True) == 8 and calls.count(False) == 2  # 8 training batches, 2 validation batches
