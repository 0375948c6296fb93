"""Every experiment notebook is runnable by plain papermill: kernelspec present, `parameters` cell with output_dir."""
from pathlib import Path

import pytest

papermill = pytest.importorskip('papermill')
NBS = Path(__file__).resolve().parents[1] / 'nbs'
EXPERIMENTS = sorted((NBS / 'experiments').glob('*.ipynb'))


def test_there_are_experiments():
    assert {p.stem for p in EXPERIMENTS} >= {'anomaly_detection', 'phase_diagram', 'class_split_audit', 'logical_anomalies'}


@pytest.mark.parametrize('nb', EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_parameters_are_inspectable(nb):
    params = papermill.inspect_notebook(str(nb))  # fails without a kernelspec/language in the notebook metadata
    assert 'output_dir' in params, f'{nb.name}: the parameters cell must define output_dir'
