"""bench/gpu_check.py: without CUDA it refuses with status 2; --allow-cpu --quick runs every check on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'bench' / 'gpu_check.py'


def _run(*args, hide_cuda=True):
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    if hide_cuda:
        env['CUDA_VISIBLE_DEVICES'] = ''  # no device visible, whatever the machine has
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(ROOT))


def test_no_cuda_exits_2_with_message():
    r = _run()
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'no CUDA device' in r.stderr and '--allow-cpu' in r.stderr


def test_allow_cpu_quick_runs_every_check(tmp_path):
    out = tmp_path / 'rows.json'
    r = _run('--allow-cpu', '--quick', '--dims', '8', '16', '--json', str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'all checks passed' in r.stdout
    res = json.loads(out.read_text())
    assert res['device'] == 'cpu' and res['ok'] is True
    checks = [row['check'] for row in res['rows']]
    assert any(c.startswith('fit 1 epoch') for c in checks) and 'fit AMP' in checks
    assert any(c.startswith('knn_search') for c in checks) and 'sweep assign_gpus' in checks
    obj = [row for row in res['rows'] if row['check'].startswith('objective')]
    assert [row['setting'] for row in obj] == ['d=8, cpu', 'd=16, cpu']
    assert all(row['value'] > 0 for row in obj)
    knn = next(row for row in res['rows'] if row['check'].startswith('knn_search'))
    assert knn['value'] < 1e-9 and 'indices identical: True' in knn['note']
    sweep = next(row for row in res['rows'] if row['check'] == 'sweep assign_gpus')
    assert sweep['note'] == 'slots -> [None, None]'  # CUDA_VISIBLE_DEVICES='' -> no GPUs, no pinning
