"""Runs nbs/experiments/generation.ipynb with papermill on tiny parameters and checks its numbers independently.

Oracles: the saved models are reloaded and their reconstruction MSE, active units and Gaussian-sampler self-FID are
recomputed here by hand (torch forward passes, numpy, and a Fréchet distance through scipy's `sqrtm`); the paired
differences and the verdict's "best" entries are recomputed from the per-seed table with pandas.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

papermill = pytest.importorskip('papermill')

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / 'nbs' / 'experiments' / 'generation.ipynb'
TINY = dict(latent_dims=[4], seeds=[0, 1], epochs=2, max_train=20, max_test=8, save_models=True, threads=1)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('generation')
    papermill.execute_notebook(str(NB), str(out / 'executed.ipynb'), parameters={**TINY, 'output_dir': str(out)},
                               kernel_name='python3', language='python', cwd=str(ROOT), progress_bar=False)
    return out


def _data():
    from hyperlatent.data import load_dataset, stratified_subsample
    g = torch.Generator().manual_seed(0)
    tr = stratified_subsample(load_dataset('digits', split='train'), 20, generator=g)
    te = stratified_subsample(load_dataset('digits', split='test'), 8, generator=g)
    return tr, te


def _model(run, name, d, seed):
    from hyperlatent.detect import build_vae
    m = build_vae((1, 8, 8), d, project=name != 'beta', hidden=(128, 64))
    m.load_state_dict(torch.load(run / 'models' / f'{name}_d{d}_s{seed}.pt', weights_only=True))
    return m.eval()


def _fd_scipy(a, b):
    from scipy import linalg
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU features make the covariances singular; sqrtm still converges
        warnings.simplefilter('ignore', linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_outputs_and_shapes(run):
    for f in ('metrics.json', 'results.csv', 'models.csv', 'summary.csv', 'model_summary.csv', 'paired.csv',
              'verdict.txt', 'summary.txt', 'metrics_vs_d.png', 'samples_d4.png'):
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    res = pd.read_csv(run / 'results.csv')
    assert len(res) == 3 * 2 * 4  # objectives x seeds x samplers
    assert set(res['objective']) == {'beta', 'p1-half', 'p1-full'}
    assert (res[['self_fid', 'fid']] >= 0).all().all()
    m = json.loads((run / 'metrics.json').read_text())
    assert m['n_test'] == 80 and m['n_generated'] == 80  # > 64 features: non-singular covariances
    for o in ('beta', 'p1-half', 'p1-full'):
        for s in ('gaussian', 'sphere', 'island', 'aggregate'):
            assert m[f'{o}/d4/{s}/self_fid_mean'] == pytest.approx(res[(res.objective == o) & (res.sampler == s)]['self_fid'].mean())


def test_model_numbers_recomputed(run):
    from hyperlatent.generate import DigitsFeatures
    torch.set_num_threads(1)  # small MLPs: one thread is fastest on a shared machine
    _, te = _data()
    models = pd.read_csv(run / 'models.csv').set_index(['objective', 'seed'])
    res = pd.read_csv(run / 'results.csv').set_index(['objective', 'seed', 'sampler'])
    feats = DigitsFeatures(seed=0)
    for name in ('beta', 'p1-full'):
        for seed in (0, 1):
            m = _model(run, name, 4, seed)
            with torch.no_grad():
                mu, logvar = m.encode(te.x)
                u = mu if name == 'beta' else 2.0 * mu / mu.norm(dim=1, keepdim=True)  # radius sqrt(4) = 2
                rec = m.decode(u)
                mse = float(((rec.double() - te.x.double()) ** 2).mean())
                g = torch.Generator().manual_seed(1000 * seed + 0)  # the notebook's seed of the gaussian sampler
                z = torch.randn(80, 4, generator=g)
                z = z if name == 'beta' else 2.0 * z / z.norm(dim=1, keepdim=True)
                gen = m.decode(z)
            row = models.loc[(name, seed)]
            assert row['rec_mse'] == pytest.approx(mse, rel=1e-5)
            mu64, lv64 = mu.double().numpy(), logvar.double().numpy()
            kl = (0.5 * (mu64 ** 2 + np.exp(lv64) - 1 - lv64)).mean(0)
            assert row['au_kl'] == int((kl > 0.01).sum())
            assert row['au_var'] == int((mu64.var(0, ddof=1) > 0.01).sum())
            sf = _fd_scipy(feats(gen.reshape(80, -1)).numpy(), feats(rec.reshape(80, -1)).numpy())
            assert res.loc[(name, seed, 'gaussian'), 'self_fid'] == pytest.approx(sf, rel=1e-4, abs=1e-6)


def test_paired_differences_and_verdict(run):
    res = pd.read_csv(run / 'results.csv')
    pairs = pd.read_csv(run / 'paired.csv')
    m = json.loads((run / 'metrics.json').read_text())
    for o in ('p1-half', 'p1-full'):
        for s in ('gaussian', 'island'):
            a = res[(res.objective == o) & (res.sampler == s)].set_index('seed')['self_fid']
            b = res[(res.objective == 'beta') & (res.sampler == s)].set_index('seed')['self_fid']
            diff = (a - b).values
            row = pairs[(pairs.objective == o) & (pairs.sampler == s) & (pairs.metric == 'self_fid')].iloc[0]
            assert row['diff_mean'] == pytest.approx(diff.mean())
            assert row['diff_se'] == pytest.approx(diff.std(ddof=1) / np.sqrt(2))
            assert row['n_better'] == int((diff < 0).sum())
        a = res[(res.objective == o) & (res.sampler == 'island')].set_index('seed')['fid']
        b = res[(res.objective == 'beta') & (res.sampler == 'gaussian')].set_index('seed')['fid']
        assert m[f'paired/{o}/island-beta/gaussian/d4/fid/diff_mean'] == pytest.approx((a - b).mean())
    mean = res.groupby(['objective', 'sampler'])['self_fid'].mean()
    best = '/'.join(mean.idxmin())
    assert m['d4/best_self_fid'] == best
    verdict = (run / 'verdict.txt').read_text()
    o, s = best.split('/')
    assert f'lowest self-FID {mean.min():.3f} ({o} / {s})' in verdict
    for metric in ('self_fid', 'fid'):
        head = pairs[(pairs.sampler == 'island-vs-gaussian') & (pairs.metric == metric)]
        wins = int((head['n_better'] == head['n_seeds']).sum())
        assert len(head) == 2 and m[f'island_vs_gaussian/{metric}/n_consistent_wins'] == wins
        assert m[f'island_vs_gaussian/{metric}/n_consistent_losses'] == int((head['n_better'] == 0).sum())
    models = pd.read_csv(run / 'models.csv')
    collapsed = models.groupby('objective')['au_var'].mean() < 1
    assert m['n_collapsed_models'] == int(collapsed.sum())
    for o, c in collapsed.items():
        assert (f'{o} at d = 4' in verdict.split('Posterior collapse')[1].split('\n')[0]) == bool(c)


def test_rejects_missing_reference(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="must include 'beta'"):
        papermill.execute_notebook(str(NB), str(tmp_path / 'x.ipynb'), kernel_name='python3', cwd=str(ROOT),
                                   progress_bar=False, parameters=dict(objectives=['p1-half'], output_dir=str(tmp_path)))


@pytest.mark.parametrize('name', ['generation.ipynb', 'reference_run.ipynb'])
def test_parameter_vocabulary(name):
    from hyperlatent.sweep import notebook_parameters
    assert {'data_root', 'output_dir', 'threads', 'device'} <= set(notebook_parameters(NB.parent / name))
