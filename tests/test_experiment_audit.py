"""Runs nbs/experiments/class_split_audit.ipynb with papermill on tiny parameters and checks its outputs.

Independent checks: the pixel-space leakage and per-class kNN AUROCs it reports are recomputed here with
scikit-learn (NearestNeighbors, roc_auc_score) on the same stratified subsample of the digits.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

papermill = pytest.importorskip('papermill')

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / 'nbs' / 'experiments' / 'class_split_audit.ipynb'
TINY = dict(dataset='digits', representations=['pixel', 'vae_latent'], k=5, k_values=[1, 5], detectors=['knn', 'lof'],
            seeds=[0, 1], max_train_per_class=20, max_test_per_class=8, vae_epochs=2, vae_latent_dim=4, vae_hidden=[32],
            threads=1, device='cpu')
RATES = ('leakage', 'leakage_ratio', 'inversion_rate', 'near_chance_rate', 'rho_dir')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp('class_split_audit')
    papermill.execute_notebook(str(NB), str(out / 'executed.ipynb'), parameters={**TINY, 'output_dir': str(out)},
                               kernel_name='python3', language='python', cwd=str(ROOT), progress_bar=False)
    return out


def _subsample():
    "The notebook's data: stratified subsamples drawn from one generator seeded 0, train first."
    from hyperlatent.data import load_dataset, stratified_subsample
    g = torch.Generator().manual_seed(0)
    tr = stratified_subsample(load_dataset('digits', split='train'), 20, generator=g)
    te = stratified_subsample(load_dataset('digits', split='test'), 8, generator=g)
    return (tr.x.reshape(len(tr), -1).double().numpy(), tr.y.numpy(), te.x.reshape(len(te), -1).double().numpy(), te.y.numpy())


def test_outputs_written(run):
    for f in ('metrics.json', 'table.csv', 'summary.csv', 'per_class.csv', 'sign_agreement.csv', 'leakage_vs_k.csv',
              'auroc_vs_leakage.png', 'leakage_vs_k.png', 'verdict.txt'):
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    assert not list(run.glob('.*.tmp'))  # atomic writes left no temp files
    m = json.loads((run / 'metrics.json').read_text())
    for rep in ('pixel', 'vae_latent'):
        for r in RATES:
            v = m[f'digits/{rep}/{r}']
            assert isinstance(v, float) and 0 <= v <= 1, (rep, r, v)
        assert m[f'digits/{rep}/regime'] in ('well-posed', 'caution', 'ill-posed')
        assert m[f'digits/{rep}/ill_posed'] == (m[f'digits/{rep}/regime'] == 'ill-posed')
        assert m[f'digits/{rep}/chance'] == pytest.approx(0.9, abs=1e-12)  # 10 balanced classes
        assert m[f'digits/{rep}/rho_dir'] == pytest.approx(np.mean([m[f'digits/{rep}/{d}/rho_dir'] for d in ('knn', 'lof')]))
    table = pd.read_csv(run / 'table.csv')
    assert len(table) == 4 and set(table['seed']) == {0, 1}
    assert (table.loc[table['representation'] == 'vae_latent', 'vae_kl'] >= 0).all()
    pc = pd.read_csv(run / 'per_class.csv')
    assert len(pc) == 2 * 2 * 10
    verdict = (run / 'verdict.txt').read_text()
    assert 'digits / pixel' in verdict and 'digits / vae_latent' in verdict


def test_pixel_numbers_match_sklearn(run):
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors
    Xtr, ytr, Xte, yte = _subsample()
    assert len(Xte) == 80 and len(Xtr) == 200
    m = json.loads((run / 'metrics.json').read_text())
    idx = NearestNeighbors(n_neighbors=5).fit(Xte).kneighbors(return_distance=False)
    assert m['digits/pixel/leakage'] == pytest.approx((yte[idx] != yte[:, None]).mean(), abs=1e-12)
    curve = pd.read_csv(run / 'leakage_vs_k.csv')
    c1 = curve[(curve['representation'] == 'pixel') & (curve['k'] == 1)]['leakage']
    idx1 = NearestNeighbors(n_neighbors=1).fit(Xte).kneighbors(return_distance=False)
    assert np.allclose(c1, (yte[idx1] != yte[:, None]).mean(), atol=1e-12)
    pc = pd.read_csv(run / 'per_class.csv')
    pc = pc[(pc['representation'] == 'pixel') & (pc['seed'] == 0)].set_index('held_out')
    for c in range(10):
        s = NearestNeighbors(n_neighbors=3).fit(Xtr[ytr != c]).kneighbors(Xte)[0].mean(1)
        assert pc.loc[c, 'auc_knn'] == pytest.approx(roc_auc_score(yte == c, s), abs=1e-9), c


def test_parameter_vocabulary():
    "The shared experiment vocabulary: data_root, output_dir, threads, device (no per-notebook spellings)."
    from hyperlatent.sweep import notebook_parameters
    params = notebook_parameters(NB)
    assert {'data_root', 'output_dir', 'threads', 'device'} <= set(params)
    assert 'vae_threads' not in params
