"""Runs nbs/experiments/phase_diagram.ipynb with papermill on tiny parameters and checks what it writes."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

papermill = pytest.importorskip('papermill')

NB = Path(__file__).resolve().parents[1] / 'nbs' / 'experiments' / 'phase_diagram.ipynb'


def test_phase_diagram_tiny(tmp_path):
    out = tmp_path / 'run'
    params = dict(output_dir=str(out), epochs=2, configs=['zero', 'ec14@1e-4', 'ec0', 'full@1e-8'], thermal_inputs=10,
                  posterior_samples=4, compression_beta=1e-6, seeds=[0])
    papermill.execute_notebook(str(NB), str(tmp_path / 'executed.ipynb'), parameters=params, kernel_name='python3',
                               language='python', cwd=str(NB.parent), progress_bar=False)
    metrics = json.loads((out / 'metrics.json').read_text())
    assert (out / 'phase_diagram.png').stat().st_size > 1000
    df = pd.read_csv(out / 'sweep.csv')
    # sorted by field strength log10(b); the standard VAE sits one decade left of the weakest field
    assert list(df['config']) == ['zero', 'full@1e-8', 'ec0', 'ec14@1e-4']
    assert metrics['n_models'] == 4 and metrics['n_seeds'] == 1
    assert [metrics[f'{c}_strength'] for c in df['config']] == pytest.approx([-9.0, -8.0, -6.0, -4.0])
    # fraction of pinned angles: 0, 1 (full mode), (k+1)/(d-1) at d = 16
    assert [metrics[f'{c}_alpha'] for c in df['config']] == pytest.approx([0.0, 1.0, 1 / 15, 1.0])
    for c in df['config']:
        assert metrics[f'{c}_phase'] in ('disordered', 'edge', 'ordered')
        assert 0.0 <= metrics[f'{c}_auroc'] <= 1.0 and 0.0 <= metrics[f'{c}_fpr95'] <= 1.0
        assert -1.0 <= metrics[f'{c}_mean_R'] <= 1.0 and metrics[f'{c}_chi_ovl'] >= 0
        # chi_sg = chi_ovl + d E[R]^2 (spec §5.2), d = 16
        assert math.isclose(metrics[f'{c}_chi_sg'], metrics[f'{c}_chi_ovl'] + 16 * metrics[f'{c}_mean_R'] ** 2,
                            rel_tol=1e-9, abs_tol=1e-9)
    # the verdict names the best detector, and it is the argmax of the AUROC column
    assert metrics['best_auroc_config'] == df.loc[df['auroc'].idxmax(), 'config']
    assert metrics['best_auroc_config'] in metrics['verdict']
    assert metrics['chi_peak_config'] == df.loc[df['chi_ovl'].idxmax(), 'config']
    assert isinstance(metrics['edge_is_best_detector'], bool)
