"""Runs nbs/experiments/anomaly_detection.ipynb with papermill on tiny parameters and checks its outputs: every
protocol, the controls, active units and phases for every model, and the paired tests against an exact
sign-flip enumeration of the Wilcoxon signed-rank p-value."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

papermill = pytest.importorskip('papermill')

NB = Path(__file__).resolve().parents[1] / 'nbs' / 'experiments' / 'anomaly_detection.ipynb'
TINY = dict(epochs=1, seeds=[0, 1], held_out=[3], n_partitions=2, baseline_betas=[0.1, 1.0], strengths=[0.001, 1.0],
            compression_models=['p2-class-axes'], latent_dim=8, max_train=400, novelty_kinds=['inverted', 'rotated'])


def test_parameters_cell():
    params = papermill.inspect_notebook(str(NB))
    for name in ('dataset', 'data_root', 'image_size', 'latent_dim', 'epochs', 'seeds', 'baseline_betas',
                 'compression_models', 'strengths', 'strength_knob', 'gmm_betas', 'protocols', 'novelty_kinds',
                 'held_out', 'n_partitions', 'device', 'threads', 'output_dir'):
        assert name in params, name
    assert params['dataset']['default'].strip("'") == 'digits'
    import ast
    assert len(ast.literal_eval(params['seeds']['default'])) >= 3  # the default verdict pairs over seeds
    assert len(ast.literal_eval(params['baseline_betas']['default'])) >= 2  # a tuned baseline, not one beta
    assert len(ast.literal_eval(params['strengths']['default'])) >= 2  # compression strength is swept


def _exact_wilcoxon_p(d):
    "Two-sided exact p of the signed-rank statistic by enumerating all 2^n sign flips (zeros dropped, no ties assumed)."
    d = np.asarray([v for v in d if v != 0])
    ranks = pd.Series(np.abs(d)).rank().values
    w = ranks[d > 0].sum()
    stats = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    mean = ranks.sum() / 2
    return np.mean([abs(s - mean) >= abs(w - mean) - 1e-9 for s in stats])


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ad')
    out = tmp / 'ad'
    papermill.execute_notebook(str(NB), str(tmp / 'executed.ipynb'), parameters={**TINY, 'output_dir': str(out)},
                               kernel_name='python3', progress_bar=False)
    return out


def test_tiny_run_outputs(tiny):
    out = tiny
    for f in ('metrics.json', 'results.csv', 'summary.csv', 'phases.csv', 'tests.csv', 'summary.txt', 'verdict.txt',
              'verdict.md', 'auroc_vs_strength.png', 'phase_vs_strength.png', 'active_units.png', 'novelty_by_kind.png'):
        assert (out / f).stat().st_size > 0, f
    t = pd.read_csv(out / 'results.csv')
    assert set(t.protocol) == {'novelty', 'loco', 'conditional'}
    assert {'novel_inverted', 'novel_rotated', 'loco_3'} <= set(t.split)
    assert sum(s.startswith('cond_') for s in set(t.split)) == 2
    uncond = {'beta@0.1', 'beta@1', 'ae', 'p2-class-axes@0.001', 'p2-class-axes@1', 'pixel'}
    assert set(t[t.protocol == 'loco'].model) == uncond
    assert set(t[t.protocol == 'novelty'].model) == uncond
    assert set(t[t.protocol == 'conditional'].model) == uncond | {'gmm@1', 'gmm@10'}  # the label control only where labels exist
    assert not t.duplicated(['protocol', 'split', 'model', 'score', 'seed']).any()
    # the novelty protocol: ID = the 359 test digits, OOD = one transformed copy of each
    nv = t[(t.split == 'novel_inverted') & (t.model == 'pixel') & (t.score == 'knn')]
    assert (nv.n_id == 359).all() and (nv.n_ood == 359).all()
    # a conditional partition: ID = the test digits of its 5 classes
    from hyperlatent.data import load_dataset
    te = load_dataset('digits', split='test')
    for sp in {s for s in t.split if s.startswith('cond_')}:
        ids = [int(c) for c in sp[5:].split('-')]
        assert len(ids) == 5
        row = t[(t.split == sp) & (t.model == 'pixel') & (t.score == 'knn')].iloc[0]
        assert row.n_id == int(np.isin(te.y.numpy(), ids).sum()) and row.n_ood == len(te) - row.n_id


def test_tiny_run_phases_and_active_units(tiny):
    ph = pd.read_csv(tiny / 'phases.csv')
    t = pd.read_csv(tiny / 'results.csv')
    models = {(p, m) for p, m in t[t.model != 'pixel'][['protocol', 'model']].itertuples(index=False)}
    assert {(p, m) for p, m in ph[['protocol', 'model']].itertuples(index=False)} == models  # every model
    assert ph.active_units.between(0, 8).all()
    assert set(ph.phase) <= {'disordered', 'edge', 'ordered'}
    m = json.loads((tiny / 'metrics.json').read_text())
    for p, mod in models:
        assert 0 <= m[f'{p}/{mod}/active_units'] <= 8
        assert f'{p}/{mod}/phase' in m


def test_tiny_run_paired_tests(tiny):
    t = pd.read_csv(tiny / 'results.csv')
    tests = pd.read_csv(tiny / 'tests.csv')
    m = json.loads((tiny / 'metrics.json').read_text())
    assert all(isinstance(v, (int, float, str)) and (not isinstance(v, float) or math.isfinite(v)) for v in m.values())
    exact = 0
    for proto in ('novelty', 'loco', 'conditional'):
        s = t[(t.protocol == proto) & (t.score == 'knn')]
        means = s.groupby('model').auroc.mean()
        best = max(['beta@0.1', 'beta@1'], key=lambda b: means[b])
        assert m[f'{proto}/best_baseline'] == best  # the tuned baseline is the best beta
        for cm in ('p2-class-axes@0.001', 'p2-class-axes@1'):
            r = tests[(tests.protocol == proto) & (tests.model == cm) & (tests.reference == best)].iloc[0]
            a = s[s.model == cm].set_index(['split', 'seed']).auroc
            b = s[s.model == best].set_index(['split', 'seed']).auroc
            d = (a - b).dropna()
            assert r.n_pairs == len(d) and abs(r.delta - d.mean()) < 1e-12
            assert abs(m[f'{proto}/{cm}/vs_best_baseline/delta'] - d.mean()) < 1e-12
            nz = d[d != 0]
            if len(nz) and len(set(np.abs(nz).round(12))) == len(nz):  # no ties: the exact enumeration applies
                assert abs(r.p - _exact_wilcoxon_p(d.values)) < 1e-9
                exact += 1
            assert r.p_holm >= r.p - 1e-12 and r.p_holm <= 1
    assert exact >= 1  # the oracle was applied at least once
    assert 'Verdict' in (tiny / 'verdict.md').read_text()
    assert 'Wilcoxon' in (tiny / 'summary.txt').read_text()


def _fake_fashion_mnist(root: Path, n_train=300, n_test=100):
    "Tiny Fashion-MNIST IDX files (gzipped), written with the standard layout: class c has mean brightness ~ c."
    import gzip
    import struct

    rng = np.random.default_rng(0)
    d = root / 'fashion_mnist'
    d.mkdir(parents=True)
    for split, n in (('train', n_train), ('t10k', n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60 + y[:, None, None] * 19).astype(np.uint8)
        (d / f'{split}-images-idx3-ubyte.gz').write_bytes(gzip.compress(struct.pack('>IIII', 2051, n, 28, 28) + x.tobytes()))
        (d / f'{split}-labels-idx1-ubyte.gz').write_bytes(gzip.compress(struct.pack('>II', 2049, n) + y.tobytes()))


def _fake_cifar10(root: Path, n=60):
    "Tiny CIFAR-10 python batches (5 train + test + meta)."
    import pickle

    d = root / 'cifar-10-batches-py'
    d.mkdir(parents=True)

    def batch(seed):
        r = np.random.default_rng(seed)
        y = np.arange(n) % 10
        return {b'data': (r.random((n, 3072)) * 80 + y[:, None] * 17).astype(np.uint8), b'labels': y.tolist(),
                b'batch_label': b'fake', b'filenames': [b'f.png'] * n}
    for i in range(1, 6):
        (d / f'data_batch_{i}').write_bytes(pickle.dumps(batch(i)))
    (d / 'test_batch').write_bytes(pickle.dumps(batch(9)))
    (d / 'batches.meta').write_bytes(pickle.dumps({b'label_names': [f'c{i}'.encode() for i in range(10)]}))


@pytest.mark.parametrize('dataset, make', [('fashion_mnist', _fake_fashion_mnist), ('cifar10', _fake_cifar10)])
def test_runs_unchanged_on_other_datasets(tmp_path, dataset, make):
    """The same notebook runs on Fashion-MNIST and CIFAR-10 (residual conv VAE) when their files are in data/."""
    root = tmp_path / 'data'
    make(root)
    out = tmp_path / 'out'
    papermill.execute_notebook(str(NB), str(tmp_path / 'executed.ipynb'),
                               parameters=dict(dataset=dataset, data_root=str(root), output_dir=str(out), epochs=1,
                                               held_out=[0, 1], seeds=[0, 1], baseline_betas=[1.0], strengths=[1.0],
                                               compression_models=['p2-class-axes'], n_partitions=1, latent_dim=8,
                                               novelty_kinds=['inverted']),
                               kernel_name='python3', progress_bar=False)
    m = json.loads((out / 'metrics.json').read_text())
    assert m['dataset'] == dataset and m['n_loco_splits'] == 2
    t = pd.read_csv(out / 'results.csv')
    splits = set(t.split)  # named by class names (Fashion-MNIST) or indices
    assert sum(sp.startswith('loco_') for sp in splits) == 2 and sum(sp.startswith('cond_') for sp in splits) == 1
    assert 'novel_inverted' in splits
    # class c is brighter than class c-1 by construction, so raw-pixel kNN separates held-out classes well
    px = t[(t.model == 'pixel') & (t.score == 'knn') & (t.protocol == 'loco')]
    assert (px.auroc > 0.9).all(), px
