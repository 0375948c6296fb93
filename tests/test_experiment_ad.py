"""Runs nbs/experiments/anomaly_detection.ipynb with papermill on tiny parameters and checks its outputs."""
import json
from pathlib import Path

import pandas as pd
import pytest

papermill = pytest.importorskip('papermill')

NB = Path(__file__).resolve().parents[1] / 'nbs' / 'experiments' / 'anomaly_detection.ipynb'
TINY = dict(epochs=1, held_out=[0, 7], models=['beta', 'p2-class-axes'], latent_dim=8, max_train=600, seeds=[0])


def test_parameters_cell():
    params = papermill.inspect_notebook(str(NB))
    for name in ('dataset', 'image_size', 'latent_dim', 'models', 'epochs', 'seeds', 'device', 'output_dir'):
        assert name in params, name
    assert params['dataset']['default'].strip("'") == 'digits'


def test_tiny_run(tmp_path):
    out = tmp_path / 'ad'
    papermill.execute_notebook(str(NB), str(tmp_path / 'executed.ipynb'), parameters={**TINY, 'output_dir': str(out)},
                               kernel_name='python3', progress_bar=False)
    for f in ('metrics.json', 'results.csv', 'summary.csv', 'summary.txt', 'verdict.md', 'roc_curves.png',
              'score_histograms.png', 'auroc_per_class.png', 'latent_projections.png'):
        assert (out / f).stat().st_size > 0, f
    m = json.loads((out / 'metrics.json').read_text())
    assert m['dataset'] == 'digits' and m['n_loco_splits'] == 2 and m['conditional_split'] == 'cond_01234'
    scalars = {k: v for k, v in m.items() if k.endswith('/auroc')}
    assert scalars and all(0 <= v <= 1 for v in scalars.values())
    t = pd.read_csv(out / 'results.csv')
    assert set(t.protocol) == {'unconditional', 'conditional'}
    assert set(t.split) == {'loco_0', 'loco_7', 'cond_01234'}
    assert set(t.model) == {'beta', 'p2-class-axes', 'pixel'}
    assert not t.duplicated(['split', 'model', 'score', 'seed']).any()
    # one row per split x model x score: 3 pixel baselines + (5 model scores + latent IF) per model
    assert len(t) == 3 * (3 + 2 * 6)
    # the conditional split: ID = test digits 0-4, OOD = test digits 5-9
    from hyperlatent.data import load_dataset
    te = load_dataset('digits', split='test')
    row = t[(t.split == 'cond_01234') & (t.model == 'pixel') & (t.score == 'knn')].iloc[0]
    y_ood = (te.y >= 5).numpy()
    assert row.n_ood == y_ood.sum() and row.n_id == (~y_ood).sum()
    assert 0.5 < row.auroc <= 1.0
    assert 'Verdict' in (out / 'verdict.md').read_text()


def _fake_fashion_mnist(root: Path, n_train=300, n_test=100):
    "Tiny Fashion-MNIST IDX files (gzipped), written with the standard layout: class c has mean brightness ~ c."
    import gzip
    import struct

    import numpy as np
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

    import numpy as np
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


@pytest.mark.parametrize('dataset, make, shape', [('fashion_mnist', _fake_fashion_mnist, '1x28x28'),
                                                  ('cifar10', _fake_cifar10, '3x32x32')])
def test_runs_unchanged_on_other_datasets(tmp_path, dataset, make, shape):
    """The issue: the same notebook runs on Fashion-MNIST and CIFAR-10 (residual conv VAE) when their files are in data/."""
    root = tmp_path / 'data'
    make(root)
    out = tmp_path / 'out'
    papermill.execute_notebook(str(NB), str(tmp_path / 'executed.ipynb'),
                               parameters=dict(dataset=dataset, data_root=str(root), output_dir=str(out), epochs=1,
                                               held_out=[0, 1], models=['beta', 'p2-class-axes'], latent_dim=8),
                               kernel_name='python3', progress_bar=False)
    m = json.loads((out / 'metrics.json').read_text())
    assert m['dataset'] == dataset and m['n_loco_splits'] == 2
    t = pd.read_csv(out / 'results.csv')
    splits = set(t.split)  # named by class names (Fashion-MNIST) or indices
    assert len(splits) == 3 and sum(sp.startswith('loco_') for sp in splits) == 2
    assert sum(sp.startswith('cond_') for sp in splits) == 1
    # class c is brighter than class c-1 by construction, so raw-pixel kNN separates held-out classes well
    px = t[(t.model == 'pixel') & (t.score == 'knn') & (t.protocol == 'unconditional')]
    assert (px.auroc > 0.9).all(), px
