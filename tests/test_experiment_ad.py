"""Runs nbs/experiments/anomaly_detection.ipynb with papermill on tiny parameters and checks its outputs."""
import json
from pathlib import Path

import pandas as pd
import pytest

papermill = pytest.importorskip('papermill')

NB = Path(__file__).resolve().parents[1] / 'nbs' / 'experiments' / 'anomaly_detection.ipynb'
TINY = dict(epochs=1, held_out=[0, 7], models=['beta', 'full'], latent_dim=8, max_train=600, seeds=[0])


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
    assert set(t.model) == {'beta', 'full', 'pixel'}
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
