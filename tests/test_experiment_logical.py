"""Runs nbs/experiments/logical_anomalies.ipynb with papermill on tiny parameters and checks its outputs."""
import json
import math
from pathlib import Path

import pytest

papermill = pytest.importorskip('papermill')

NB = Path(__file__).resolve().parents[1] / 'nbs' / 'experiments' / 'logical_anomalies.ipynb'


def _run(tmp_path, **params):
    out = tmp_path / 'out'
    papermill.execute_notebook(str(NB), str(tmp_path / 'executed.ipynb'), kernel_name='python3',
                               cwd=str(NB.parent), progress_bar=False,
                               parameters=dict(output_dir=str(out), seeds=[0], n_jobs=1, threads=1, device='cpu', epochs_per_level=1,
                                               monolithic_epochs=1, leaf_epochs=1, **params))
    return out


def test_toy_tiny(tmp_path):
    out = _run(tmp_path, dataset='toy', n_train=1200, n_normal=150, n_per_rule=40, strong_knob=True)
    m = json.loads((out / 'metrics.json').read_text())
    for meth in ['independent_events', 'same_image', 'chimera', 'chimera_plus_true', 'ad_strict', 'monolithic_chimera']:
        for r in ['R1', 'R2', 'R3', 'R4', 'R5']:
            v = m[f'auroc_{meth}_{r}_mean']
            assert 0.0 <= v <= 1.0
    assert 'std_root_same_image_max' in m and 'attribution_acc_chimera_raw' in m
    assert 'strong_auroc_chimera_R1' in m and m['attribution_chance'] == pytest.approx(0.2)
    assert all(isinstance(v, (int, float, str)) for v in m.values())
    assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
    assert (out / 'results.csv').exists() and (out / 'results.txt').exists() and (out / 'rule_auroc.png').exists()
    assert (out / 'results.txt').read_text().startswith('| rule | ')  # the markdown table


def test_digit_pairs_tiny(tmp_path):
    out = _run(tmp_path, dataset='digit_pairs', n_train=400, n_normal=60, n_per_rule=20, modes=['chimera'],
               monolithic=False, leaf_lr=1e-3, feature_dim=16)
    m = json.loads((out / 'metrics.json').read_text())
    assert m['dataset'] == 'digit_pairs'
    assert 0.0 <= m['auroc_chimera_no_1_7_mean'] <= 1.0
    assert 'leaf_auroc_d0' in m


def test_parameter_vocabulary():
    "The shared experiment vocabulary: data_root, output_dir, threads, device."
    from hyperlatent.sweep import notebook_parameters
    assert {'data_root', 'output_dir', 'threads', 'device'} <= set(notebook_parameters(NB))
