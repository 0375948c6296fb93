"""Tests of hyperlatent.sweep: papermill runs and sweeps (local pool and Ray), failures, timeouts, resume.

The test subject is tests/assets/tiny_sweep.ipynb: it computes y = x * scale (and x**2, len(label), x / 2)
into metrics.json, raises for mode='raise', kills its own kernel for mode='crash', sleeps sleep_s seconds
first, and appends "x,scale,label" to `ledger` as its very last action.
"""
import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hyperlatent import sweep as sw
from hyperlatent.cli import main

TINY = Path(__file__).resolve().parent / 'assets' / 'tiny_sweep.ipynb'
EXE = Path(sys.executable).parent / 'hyperlatent'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f'/proc/{pid}/stat').read_text().split(') ')[1][0] != 'Z'
    except OSError:
        return True


# ---------------------------------------------------------------- parameters, grids, validation (no kernel)

def test_parameters_cell_matches_papermill():
    import papermill
    ours = sw.notebook_parameters(TINY)
    theirs = papermill.inspect_notebook(str(TINY))  # papermill's own parser of the parameters cell
    assert list(ours) == list(theirs)
    for name, p in theirs.items():
        assert ours[name].default == ast.literal_eval(p['default']), name


def test_expand_grid_is_a_cartesian_product_with_zip(tmp_path):
    (tmp_path / 'g.yaml').write_text(
        'label: fixed\nx: [1, 2, 3]\nzip:\n  scale: [1e-3, 2.0]\n  mode: [ok, raise]\nsleep_s: [0, 0.5]\n')
    runs = sw.expand_grid(tmp_path / 'g.yaml')
    assert len(runs) == 3 * 2 * 2
    keys = {(r['x'], r['scale'], r['mode'], r['sleep_s']) for r in runs}
    assert len(keys) == 12  # every combination exactly once
    assert all(r['label'] == 'fixed' for r in runs)
    assert {(r['scale'], r['mode']) for r in runs} == {(1e-3, 'ok'), (2.0, 'raise')}  # zipped, not crossed
    assert isinstance(runs[0]['scale'], float)  # '1e-3' is a float, not PyYAML 1.1's string
    for r in runs:
        sw.validate_parameters(TINY, r, what='grid parameter')


@pytest.mark.parametrize('grid, exc, needle', [
    ({'x': [1, 2], 'latent_dim': [2]}, ValueError, "'latent_dim'"),
    ({'x': [1, 'two']}, TypeError, "'x'"),
    ({'scale': [1.0, True]}, TypeError, "'scale'"),
    ({'label': [3]}, TypeError, "'label'"),
    ({'output_dir': ['/tmp']}, ValueError, "'output_dir'"),
    ({'x': []}, ValueError, "'x'"),
    ({'zip': {'x': [1, 2], 'scale': [1.0]}}, ValueError, 'equal lengths'),
])
def test_invalid_grid_fails_before_anything_runs(tmp_path, grid, exc, needle):
    out = tmp_path / 'sweep'
    with pytest.raises(exc, match=needle):
        sw.run_sweep(TINY, grid, out, progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_invalid_grid_cli_exit_code(tmp_path, capsys):
    (tmp_path / 'g.yaml').write_text('x: [1, 2]\nlatnt: [3]\n')
    code = main(['sweep', str(TINY), '--grid', str(tmp_path / 'g.yaml'), '--out', str(tmp_path / 'o'), '--no-progress'])
    assert code == 2
    assert "'latnt'" in capsys.readouterr().err
    assert not (tmp_path / 'o').exists() or not any((tmp_path / 'o').glob('*/params.json'))


def test_run_ids_are_stable_hashes():
    a = sw.run_id({'x': 1, 'scale': 2.0}, ['x'])
    assert a == sw.run_id({'scale': 2.0, 'x': 1}, ['x'])  # key order does not matter
    assert a.startswith('x=1-') and a.endswith(sw.params_hash({'x': 1, 'scale': 2.0}))
    assert sw.params_hash({'x': 1, 'scale': 2.0}) != sw.params_hash({'x': 1, 'scale': 3.0})


def test_gpu_assignment_round_robin(monkeypatch):
    for workers in range(1, 7):
        for gpus in (['0'], ['0', '1'], ['3', '5', '6']):
            slots = sw.assign_gpus(workers, gpus)
            assert len(slots) == workers
            counts = [slots.count(g) for g in gpus]
            assert max(counts) - min(counts) <= 1  # balanced
            assert set(slots) == set(gpus[:workers])  # no GPU idle while two slots share one
    assert sw.assign_gpus(2, []) == [None, None]
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '2, 5')
    assert sw.detect_gpus() == ['2', '5']
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    assert sw.detect_gpus() == []


def test_ray_missing_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'ray', None)  # makes `import ray` raise ImportError
    with pytest.raises(ImportError, match=r'hyperlatent\[ray\]'):
        sw.run_sweep(TINY, {'x': [1]}, tmp_path / 'o', engine='ray', progress=False)
    assert not (tmp_path / 'o').exists()


_HOLD = ('import sys, time; from pathlib import Path; from hyperlatent.sweep import _sweep_lock\n'
         'with _sweep_lock(Path(sys.argv[1])):\n    print("held", flush=True); time.sleep(float(sys.argv[2]))\n')


def test_live_sweep_lock_is_respected(tmp_path):
    # a live process that is not us holds the folder's lock: a second sweep fails at once, naming holder and path,
    # and neither removes the lock nor runs anything
    from filelock import FileLock, Timeout
    out = tmp_path / 'o'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', _HOLD, str(out), '60'], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(RuntimeError, match='another sweep') as e:
            sw.run_sweep(TINY, {'x': [1]}, out, progress=False)
        assert f'pid {holder.pid}' in str(e.value) and str(out / '.sweep.lock') in str(e.value)
        assert (out / '.sweep.lock.owner').is_file()  # the loser did not delete what the holder owns
        with pytest.raises(Timeout):  # an independent check: the OS lock is still held by the other process
            FileLock(out / '.sweep.lock').acquire(timeout=0)
        assert not list(out.glob('*/params.json'))  # nothing ran
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r'waited 1 s'):
            sw.run_sweep(TINY, {'x': [1]}, out, progress=False, lock_timeout=1)
        assert time.monotonic() - t0 >= 1
    finally:
        holder.kill(); holder.wait()
    # the holder was SIGKILLed: the OS released its lock, nothing stale is left to take over by hand
    FileLock(out / '.sweep.lock').acquire(timeout=0)


def test_lock_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match='lock_timeout'):
        sw.run_sweep(TINY, {'x': [1]}, tmp_path / 'o', lock_timeout=-1, progress=False)
    with pytest.raises(TypeError, match='workers'):
        sw.run_sweep(TINY, {'x': [1]}, tmp_path / 'o', workers=True, progress=False)


def test_two_concurrent_sweeps_run_each_point_exactly_once(tmp_path):
    ledger = tmp_path / 'ledger.txt'
    (tmp_path / 'g.yaml').write_text(f'x: [1, 2, 3]\nsleep_s: 0.3\nledger: {ledger}\n')
    out = tmp_path / 'o'
    cmd = [str(EXE), 'sweep', str(TINY), '--grid', str(tmp_path / 'g.yaml'), '--out', str(out), '--workers', '2',
           '--wait', '300', '--no-progress']
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], outs
    xs = sorted(int(l.split(',')[0]) for l in ledger.read_text().splitlines())
    assert xs == [1, 2, 3]  # every point ran exactly once over both sweeps
    assert sorted('3 already complete' in o for o, _ in outs) == [False, True]  # the second found all done
    df = pd.read_csv(out / 'results.csv')
    assert sorted(df['x']) == [1, 2, 3] and set(df['status']) == {'completed'}
    assert not (out / '.sweep.lock.owner').exists()


def test_edited_notebook_reruns_and_keep_stale(tmp_path):
    import nbformat
    nb_path = tmp_path / 'nb.ipynb'
    nb = nbformat.read(TINY, as_version=4)
    nbformat.write(nb, nb_path)
    ledger = tmp_path / 'ledger.txt'
    grid = {'x': [1, 2], 'ledger': str(ledger)}
    out = tmp_path / 'o'
    lines = lambda: len(ledger.read_text().splitlines())
    first = sw.run_sweep(nb_path, grid, out, progress=False)
    assert first.ok and len(first.ran) == 2 and lines() == 2
    # outputs, execution counts and metadata are not code: still complete
    for c in nb.cells:
        c.metadata['note'] = 'x'
        if c.cell_type == 'code': c.execution_count, c.outputs = 3, [nbformat.v4.new_output('stream', text='old')]
    nbformat.write(nb, nb_path)
    same = sw.run_sweep(nb_path, grid, out, progress=False)
    assert same.ran == [] and sorted(same.skipped) == sorted(first.run_ids) and lines() == 2
    # an edited cell source: every run is stale and runs again
    nb.cells[3].source += '\n# edited'
    nbformat.write(nb, nb_path)
    edited = sw.run_sweep(nb_path, grid, out, progress=False)
    assert sorted(edited.ran) == sorted(first.run_ids) == sorted(edited.stale) and edited.skipped == []
    assert edited.ok and lines() == 4
    h = sw.notebook_hash(nb_path)
    assert all(sw.read_status(out / r)['notebook_hash'] == h for r in edited.run_ids)
    # keep_stale: a further edit keeps the completed runs
    nb.cells[3].source += '\n# edited again'
    nbformat.write(nb, nb_path)
    kept = sw.run_sweep(nb_path, grid, out, progress=False, keep_stale=True)
    assert kept.ran == [] and kept.stale == [] and lines() == 4
    # a completed run that recorded no hash (an older sweep) is stale too
    rid = kept.run_ids[0]
    st = sw.read_status(out / rid); st.pop('notebook_hash')
    (out / rid / 'status.json').write_text(json.dumps(st))
    nb.cells[3].source = nb.cells[3].source.removesuffix('\n# edited again')  # back to the version of the runs
    nbformat.write(nb, nb_path)
    assert sw.notebook_hash(nb_path) == h
    legacy = sw.run_sweep(nb_path, grid, out, progress=False)
    assert legacy.ran == [rid] and legacy.stale == [rid] and legacy.skipped == [kept.run_ids[1]] and lines() == 5
    assert sw.read_status(out / rid)['notebook_hash'] == h


def test_atomic_writes_use_hyperlatent_io(tmp_path):
    # hyperlatent.io's writer removes temp files left by dead writers; the old private writer did not
    d = tmp_path / 'r'
    d.mkdir()
    stale = [d / '.status.json.999999999.deadbeef.tmp', d / '.results.csv.999999999.deadbeef.tmp']
    for p in stale: p.write_text('half a file')
    sw.write_json_atomic(d / 'status.json', {'a': [1, 2], 'b': None})
    assert json.loads((d / 'status.json').read_text()) == {'a': [1, 2], 'b': None}
    sw._write_csv_atomic(pd.DataFrame({'x': [1, 2]}), d / 'results.csv')
    assert pd.read_csv(d / 'results.csv')['x'].tolist() == [1, 2]
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in d.iterdir()) == ['results.csv', 'status.json']


def test_malformed_grid_yaml_names_the_file(tmp_path, capsys):
    g = tmp_path / 'bad.yaml'
    g.write_text('x: [1, 2\nscale: 3\n')
    with pytest.raises(ValueError, match='bad.yaml'):
        sw.load_grid(g)
    code = main(['sweep', str(TINY), '--grid', str(g), '--out', str(tmp_path / 'o'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 2 and str(g) in err and 'not valid YAML' in err and 'Traceback' not in err
    assert not (tmp_path / 'o').exists()


# ---------------------------------------------------------------- local engine

GRID = {'x': [2, 3], 'scale': [0.5, 4.0], 'label': 'abc'}


@pytest.fixture(scope='module')
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp('local') / 'sweep'
    # fake GPU ids: the slots must be pinned to them round robin (the notebook records CUDA_VISIBLE_DEVICES)
    res = sw.run_sweep(TINY, GRID, out, workers=2, gpus=['7', '9'], progress=False)
    return out, res


def test_local_sweep_runs_every_parameter_set(local_sweep):
    out, res = local_sweep
    assert res.ok and len(res.ran) == 4 and res.skipped == []
    expected = {(p['x'], p['scale']) for p in sw.expand_grid(GRID)}
    df = pd.read_csv(out / 'results.csv')
    assert len(df) == 4 and set(df['status']) == {'completed'}
    assert {(r.x, r.scale) for r in df.itertuples()} == expected
    # each row's metrics belong to that row's parameters (computed here independently of the notebook)
    np.testing.assert_allclose(df['y'], df['x'] * df['scale'])
    np.testing.assert_array_equal(df['x_squared'], df['x'] ** 2)
    np.testing.assert_array_equal(df['label_len'], [len('abc')] * 4)
    np.testing.assert_allclose(df['nested.half'], df['x'] / 2)
    assert (df['duration_s'] > 0).all()
    for r in df.itertuples():
        d = Path(r.run_dir)
        params = json.loads((d / 'params.json').read_text())
        assert params['output_dir'] == str(d)
        assert d.name.endswith(sw.params_hash({k: v for k, v in params.items() if k != 'output_dir'}))
        metrics = json.loads((d / 'metrics.json').read_text())
        assert metrics['y'] == pytest.approx(r.y)
        for f in ('status.json', 'run.log', 'tiny_sweep.ipynb', 'table.csv'):
            assert (d / f).is_file(), f
        assert 'Executing Cell' in (d / 'run.log').read_text()
        assert json.loads((d / 'tiny_sweep.ipynb').read_text())['cells']  # a real executed notebook


def test_local_sweep_pins_gpus_round_robin(local_sweep):
    out, res = local_sweep
    seen = [json.loads((Path(d) / 'metrics.json').read_text())['cuda_visible_devices'] for d in res.results['run_dir']]
    assert set(seen) == {'7', '9'}  # both slots used (the first two runs start together), nothing else


def test_local_sweep_resume_skips_completed(local_sweep):
    out, res = local_sweep
    before = {d: (Path(d) / 'status.json').read_bytes() for d in res.results['run_dir']}
    again = sw.run_sweep(TINY, GRID, out, workers=2, progress=False)
    assert again.ran == [] and sorted(again.skipped) == sorted(res.run_ids) and again.ok
    assert {d: (Path(d) / 'status.json').read_bytes() for d in before} == before


def test_report_summary_against_pandas(local_sweep):
    out, res = local_sweep
    results, summary = sw.report(out, by=['x'], metrics=['y'])
    scales = np.array(GRID['scale'])
    s = summary.set_index('x')
    for x in GRID['x']:
        assert s.loc[x, 'y_mean'] == pytest.approx(x * scales.mean())
        assert s.loc[x, 'y_std'] == pytest.approx(x * scales.std(ddof=1))
        assert s.loc[x, 'n'] == 2
    assert (out / 'report' / 'y.png').is_file() and (out / 'report' / 'summary.csv').is_file()


def test_failures_and_crashes_are_isolated_and_retried(tmp_path):
    grid = {'mode': ['ok', 'raise', 'crash'], 'x': 5}
    res = sw.run_sweep(TINY, grid, tmp_path / 'o', workers=2, retries=1, progress=False)
    assert not res.ok
    df = res.results.set_index('mode')
    ok, raised, crashed = df.loc['ok'], df.loc['raise'], df.loc['crash']
    assert ok['status'] == 'completed' and ok['attempts'] == 1 and ok['y'] == 5.0
    assert raised['status'] == 'failed' and raised['attempts'] == 2  # retried once
    assert 'RuntimeError: requested failure (x=5)' in raised['error']
    assert crashed['status'] == 'failed' and 'DeadKernelError' in crashed['error'] and crashed['attempts'] == 2
    for row in (raised, crashed):
        d = Path(row['run_dir'])
        assert (d / 'tiny_sweep.ipynb').is_file()  # the executed notebook is kept for inspection
        assert not (d / 'metrics.json').exists()
        assert 'attempt 2' in (d / 'run.log').read_text()
    csv = pd.read_csv(tmp_path / 'o' / 'results.csv')  # the CSV holds the same statuses
    assert sorted(csv['status']) == ['completed', 'failed', 'failed']


def test_timeout_in_sweep_kills_the_kernel(tmp_path):
    grid = {'sleep_s': [0.0, 60.0]}
    t0 = time.monotonic()
    res = sw.run_sweep(TINY, grid, tmp_path / 'o', workers=2, timeout=10, progress=False)
    wall = time.monotonic() - t0
    df = res.results.set_index('sleep_s')
    assert df.loc[0.0, 'status'] == 'completed'
    slow = df.loc[60.0]
    assert slow['status'] == 'timeout' and 'timed out after 10 s' in slow['error']
    assert float(slow['duration_s']) < 10 + 8 and wall < 45  # stopped at its deadline, not after 60 s
    d = Path(slow['run_dir'])
    assert (d / 'tiny_sweep.ipynb').is_file() and not (d / 'metrics.json').exists()
    st = json.loads((d / 'status.json').read_text())
    assert st['kernel_pids'] and not any(_alive(p) for p in st['kernel_pids'])  # no kernel left behind
    assert not res.ok


def test_run_notebook_timeout_kills_kernel(tmp_path):
    rec = sw.run_notebook(TINY, tmp_path, {'sleep_s': 60.0}, timeout=3)
    assert rec['status'] == 'timeout' and rec['duration_s'] < 3 + 10
    assert rec['kernel_pids'] and not any(_alive(p) for p in rec['kernel_pids'])
    assert json.loads((tmp_path / 'status.json').read_text())['status'] == 'timeout'


def _statuses(out: Path) -> dict:
    return {d.name: (sw.read_status(d) or {}).get('status') for d in out.iterdir() if (d / 'params.json').exists()}


def test_interrupt_and_resume(tmp_path):
    ledger = tmp_path / 'ledger.txt'
    (tmp_path / 'g.yaml').write_text(f'x: [1, 2, 3, 4]\nsleep_s: 1.0\nledger: {ledger}\n')
    out = tmp_path / 'o'
    cmd = [str(EXE), 'sweep', str(TINY), '--grid', str(tmp_path / 'g.yaml'), '--out', str(out), '--workers', '1',
           '--no-progress']
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            # results.csv is refreshed as runs finish: wait for a completed row in it, then kill
            csv = out / 'results.csv'
            if csv.exists() and 'completed' in pd.read_csv(csv)['status'].values: break
            time.sleep(0.1)
        assert p.poll() is None, 'the sweep finished before it could be interrupted'
        os.kill(p.pid, signal.SIGKILL)  # the worst case: no chance to clean up
        p.wait()
    finally:
        if p.poll() is None: p.kill()
    # the orphaned worker notices, kills its kernel and marks its run: nothing stays "running"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and 'running' in _statuses(out).values():
        time.sleep(0.2)
    first = _statuses(out)
    assert 'running' not in first.values(), first
    done_before = {k for k, v in first.items() if v == 'completed'}
    assert 1 <= len(done_before) < 4
    for k in first:  # nothing that is not complete looks complete
        assert ((out / k / 'metrics.json').exists() or first[k] != 'completed')
    frozen = {k: (out / k / 'status.json').read_bytes() for k in done_before}
    partial = pd.read_csv(out / 'results.csv')  # written by the killed sweep
    assert set(partial.loc[partial['status'] == 'completed', 'run_id']) <= done_before
    assert (partial['status'] == 'completed').any()

    assert main(cmd[1:]) == 0  # the same command again resumes
    second = _statuses(out)
    assert len(second) == 4 and set(second.values()) == {'completed'}
    assert {k: (out / k / 'status.json').read_bytes() for k in done_before} == frozen  # not re-run
    lines = ledger.read_text().splitlines()
    xs = [int(l.split(',')[0]) for l in lines]
    assert set(xs) == {1, 2, 3, 4}
    for k in done_before:
        x = json.loads((out / k / 'params.json').read_text())['x']
        assert xs.count(x) == 1
    df = pd.read_csv(out / 'results.csv')
    assert sorted(df['x']) == [1, 2, 3, 4] and set(df['status']) == {'completed'}


@pytest.mark.slow
def test_sigterm_marks_runs_interrupted(tmp_path):
    (tmp_path / 'g.yaml').write_text('x: [1, 2]\nsleep_s: 30.0\n')
    out = tmp_path / 'o'
    p = subprocess.Popen([str(EXE), 'sweep', str(TINY), '--grid', str(tmp_path / 'g.yaml'), '--out', str(out),
                          '--workers', '2', '--no-progress'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = _statuses(out) if out.exists() else {}
        if list(st.values()).count('running') == 2: break
        time.sleep(0.2)
    time.sleep(1.5)  # the kernels are up
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and 'resume' in err
    st = _statuses(out)
    assert set(st.values()) == {'interrupted'}, st
    for d in out.iterdir():
        if (d / 'status.json').exists():
            assert not any(_alive(k) for k in json.loads((d / 'status.json').read_text()).get('kernel_pids') or [])


# ---------------------------------------------------------------- ray engine

def test_ray_engine_2x2(tmp_path):
    ray = pytest.importorskip('ray')
    ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = sw.run_sweep(TINY, {'x': [2, 3], 'scale': [0.5, 4.0]}, tmp_path / 'o', engine='ray', progress=False)
        # a run whose parameters ask for CUDA needs a GPU task; this 2-CPU cluster has none: refused, not hung
        with pytest.raises(ValueError, match='no GPU'):
            sw.run_sweep(TINY, {'label': ['cuda']}, tmp_path / 'g', engine='ray', progress=False)
    finally:
        ray.shutdown()
    assert res.ok and len(res.ran) == 4
    df = pd.read_csv(tmp_path / 'o' / 'results.csv')
    assert len(df) == 4 and set(df['status']) == {'completed'}
    np.testing.assert_allclose(df['y'], df['x'] * df['scale'])
    assert {(r.x, r.scale) for r in df.itertuples()} == {(2, 0.5), (2, 4.0), (3, 0.5), (3, 4.0)}


def test_load_results_and_report_on_single_run_dir(tmp_path, capsys):
    rec = sw.run_notebook(TINY, tmp_path / 'r', {'x': 3, 'scale': 2.0})
    assert rec['status'] == sw.COMPLETED
    assert capsys.readouterr().err == ''  # echo is off by default (sweep workers stay quiet)
    res = sw.load_results(tmp_path / 'r')
    assert len(res) == 1 and res['y'].iloc[0] == 6.0 and res['run_dir'].iloc[0] == str((tmp_path / 'r').resolve())
    (tmp_path / 'none').mkdir()
    with pytest.raises(ValueError, match='out_dir'): sw.report(tmp_path / 'none', plots=False)


def test_run_notebook_echo_streams_to_stderr(tmp_path, capsys):
    import nbformat
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("output_dir = '.'"); p.metadata['tags'] = ['parameters']
    nb.cells = [p, nbformat.v4.new_code_cell("print('ECHO_MARK_5521')")]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, str(tmp_path / 'e.ipynb'))
    assert sw.run_notebook(tmp_path / 'e.ipynb', tmp_path / 'a', echo=True)['status'] == sw.COMPLETED
    assert 'ECHO_MARK_5521' in capsys.readouterr().err
    assert sw.run_notebook(tmp_path / 'e.ipynb', tmp_path / 'b')['status'] == sw.COMPLETED
    assert 'ECHO_MARK_5521' not in capsys.readouterr().err
    assert 'ECHO_MARK_5521' in (tmp_path / 'b' / 'run.log').read_text()


def test_orphaned_worker_never_overwrites_a_newer_attempts_status(tmp_path):
    # found while merging: a worker of a SIGKILLed sweep marked "interrupted" the run a resumed sweep had restarted
    not_my_parent = os.getppid() + 1_000_000  # as if our sweep had died (we were re-parented)
    newer = {'status': 'running', 'pid': os.getpid() + 1}
    sw.write_json_atomic(tmp_path / 'status.json', newer)
    sw._write_status(tmp_path, {'status': 'interrupted', 'pid': os.getpid()}, not_my_parent)
    assert sw.read_status(tmp_path) == newer
    mine = {'status': 'running', 'pid': os.getpid()}  # its own record it may still finish
    sw.write_json_atomic(tmp_path / 'status.json', mine)
    sw._write_status(tmp_path, {'status': 'interrupted', 'pid': os.getpid()}, not_my_parent)
    assert sw.read_status(tmp_path)['status'] == 'interrupted'
    sw._write_status(tmp_path, newer, os.getppid())  # a worker whose sweep lives always writes
    assert sw.read_status(tmp_path) == newer
    rec = sw._run_notebook(TINY, tmp_path / 'late', {}, None, 'python3', None, parent=not_my_parent)
    assert rec['status'] == 'interrupted' and not (tmp_path / 'late').exists()  # a late starter touches nothing


# ---------------------------------------------------------------- list-valued parameters in grids

def _list_notebook(path: Path) -> Path:
    "A notebook with list-valued parameters (`hidden = [128, 64]`, `seeds = [0]`) that echoes what it received."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("hidden = [128, 64]  # MLP widths\nseeds = [0]  # one model per seed\n"
                                  "layers = [[1, 2]]  # a list of lists\nheld: list | None = None\nx = 1\n"
                                  "output_dir = '.'", metadata={'tags': ['parameters']}),
        nbformat.v4.new_code_cell("import json, pathlib\npathlib.Path(output_dir, 'metrics.json').write_text(json.dumps(\n"
                                  "    {'hidden': hidden, 'seeds': seeds, 'sum_hidden': sum(hidden), 'x': x}))"),
    ]
    nbformat.write(nb, path)
    return path


def test_list_valued_parameters_take_a_list_as_one_value(tmp_path):
    nb = _list_notebook(tmp_path / 'lists.ipynb')
    spec = sw.notebook_parameters(nb)
    assert [sw.list_depth(spec[k]) for k in ('hidden', 'seeds', 'layers', 'held', 'x')] == [1, 1, 2, 1, 0]
    # expected parameter sets written out by hand (the rule: depth of one value = depth of the default)
    cases = [
        ({'hidden': [32, 16]}, [{'hidden': [32, 16]}]),
        ({'hidden': [[32, 16], [8]]}, [{'hidden': [32, 16]}, {'hidden': [8]}]),
        ({'hidden': [[32, 16]]}, [{'hidden': [32, 16]}]),  # the old spelling
        ({'seeds': [0, 1, 2], 'x': [1, 2]}, [{'seeds': [0, 1, 2], 'x': 1}, {'seeds': [0, 1, 2], 'x': 2}]),
        ({'seeds': {'values': [[0], [1]]}}, [{'seeds': [0]}, {'seeds': [1]}]),
        ({'x': {'values': [3, 4]}}, [{'x': 3}, {'x': 4}]),
        ({'layers': [[4], [2, 2]]}, [{'layers': [[4], [2, 2]]}]),
        ({'layers': [[[4]], [[2, 2]]]}, [{'layers': [[4]]}, {'layers': [[2, 2]]}]),
        ({'held': [3, 5]}, [{'held': [3, 5]}]),  # annotation `list | None`
        ({'hidden': []}, [{'hidden': []}]),
        ({'zip': {'hidden': [[1], [2]], 'x': [5, 6]}}, [{'hidden': [1], 'x': 5}, {'hidden': [2], 'x': 6}]),
    ]
    for grid, expected in cases:
        assert sw.expand_grid(grid, nb) == expected, grid
        assert sw.expand_grid(grid, spec) == expected, grid
        for params in expected: sw.validate_parameters(spec, params, what='grid parameter')
    assert sw.expand_grid({'hidden': [32, 16]}) == [{'hidden': 32}, {'hidden': 16}]  # no notebook: plain axes
    with pytest.raises(ValueError, match=r"'hidden'.*\{values: \[\.\.\.\]\}"):
        sw.expand_grid({'hidden': [[32, 16], 8]}, nb)
    with pytest.raises(ValueError, match="'x'"):
        sw.expand_grid({'x': {'values': []}}, nb)


def test_sweep_with_list_valued_grid_file(tmp_path):
    nb = _list_notebook(tmp_path / 'lists.ipynb')
    (tmp_path / 'g.yaml').write_text('hidden: [32, 16]\nseeds: [[0], [1, 2]]\n')
    out = tmp_path / 'sweep'
    with pytest.raises(ValueError, match='ambiguous'):  # refused before anything runs
        sw.run_sweep(nb, {'hidden': [[32, 16], 8]}, out, progress=False)
    assert not out.exists() or not any(out.iterdir())
    res = sw.run_sweep(nb, tmp_path / 'g.yaml', out, workers=2, progress=False)
    assert res.ok and len(res.run_ids) == 2
    got = sorted((json.loads((Path(d) / 'metrics.json').read_text()) for d in res.results['run_dir']),
                 key=lambda m: m['seeds'])
    assert [m['hidden'] for m in got] == [[32, 16], [32, 16]]  # what the kernel received
    assert [m['seeds'] for m in got] == [[0], [1, 2]]
    assert [m['sum_hidden'] for m in got] == [48, 48]


# ---------------------------------------------------------------- report: metric selection, short table, plots

def _hand_written_sweep(out: Path, dims=(4, 8, 16), models=('m-a', 'm-b'), seeds=(0, 1, 2)) -> Path:
    """A sweep folder written the way run_sweep writes one (params.json, status.json, metrics.json per run),
    with metrics named like the anomaly-detection experiment's plus its metadata (latent_dim, epochs, n_seeds, seconds).
    auroc = 0.6 + 0.01 dim + 0.002 seed (+0.05 for model m-b), fpr95 = 0.5 - 0.01 dim."""
    for model, dim, seed in __import__('itertools').product(models, dims, seeds):
        p = {'model': model, 'latent_dim': dim, 'seed': seed}
        d = out / sw.run_id(p)
        d.mkdir(parents=True)
        sw.write_json_atomic(d / 'params.json', {**p, 'output_dir': str(d)})
        sw.write_json_atomic(d / 'status.json', {'status': 'completed', 'error': None, 'duration_s': 2.0, 'attempts': 1})
        m = {'dataset': 'digits', 'latent_dim': dim, 'epochs': 20, 'n_seeds': 1, 'n_loco_splits': 10,
             'seconds_unconditional': 30.0 + seed, 'best': 'x/knn'}
        for proto in ('uncond', 'cond'):
            for score in ('knn', 'recon', 'elbo', 'radius'):
                m[f'{proto}/{score}/auroc'] = 0.6 + 0.01 * dim + 0.002 * seed + (0.05 if model == 'm-b' else 0)
                m[f'{proto}/{score}/fpr95'] = 0.5 - 0.01 * dim
                m[f'{proto}/{score}/aupr'] = 0.3
        sw.write_json_atomic(d / 'metrics.json', m)
    return out


META = {'metrics.latent_dim', 'epochs', 'n_seeds', 'n_loco_splits', 'seconds_unconditional'}
RESULTS = {f'{p}/{s}/{k}' for p in ('uncond', 'cond') for s in ('knn', 'recon', 'elbo', 'radius')
           for k in ('auroc', 'fpr95', 'aupr')}


def test_select_metrics_by_name_and_wildcard(tmp_path):
    res = sw.load_results(_hand_written_sweep(tmp_path / 's'))
    assert set(res.attrs['metrics']) >= META | RESULTS  # what the folder holds (metadata included)
    assert set(sw.select_metrics(res)) == RESULTS  # default: no metadata, no strings ('dataset', 'best')
    assert set(sw.select_metrics(res, ['auroc*', 'fpr95'])) == {m for m in RESULTS if m.endswith(('auroc', 'fpr95'))}
    assert sw.select_metrics(res, ['cond/*/auroc']) == [f'cond/{s}/auroc' for s in ('knn', 'recon', 'elbo', 'radius')]
    assert sw.select_metrics(res, ['uncond/knn/aupr']) == ['uncond/knn/aupr']
    aupr = [f'{p}/{s}/aupr' for p in ('uncond', 'cond') for s in ('knn', 'recon', 'elbo', 'radius')]
    assert sw.select_metrics(res, ['*', 'aupr']) == sw.select_metrics(res)  # '*' skips metadata
    assert sw.select_metrics(res, ['n_*', 'seconds*', 'aupr']) == ['n_seeds', 'n_loco_splits', 'seconds_unconditional'] + aupr
    assert sw.select_metrics(res, ['epochs']) == ['epochs']  # a plain name selects metadata on request
    for name in META | {'seed', 'n', 'duration_s', 'seconds', 'vae_latent_dim', 'lr'}:
        assert sw.is_metadata(name, ['lr']), name
    for name in RESULTS | {'y', 'x_squared', 'nested.half', 'leakage'}:
        assert not sw.is_metadata(name, ['lr']), name
    with pytest.raises(ValueError, match=r"'auroc_typo\*' matches no numeric metric"):
        sw.select_metrics(res, ['auroc_typo*'])
    with pytest.raises(ValueError, match="'best'"):  # a string column is no metric to average
        sw.select_metrics(res, ['best'])
    with pytest.raises(TypeError, match='metrics'):
        sw.select_metrics(res, [3])


def test_report_is_readable_on_a_hand_written_sweep(tmp_path, monkeypatch):
    out = _hand_written_sweep(tmp_path / 's')
    drawn = []
    real_plot = sw._plot
    monkeypatch.setattr(sw, '_plot', lambda summary, m, x, rest, path: (drawn.append((m, x, list(rest))),
                                                                        real_plot(summary, m, x, rest, path)))
    results, summary = sw.report(out)
    # grouped by the swept parameters except seed; means in closed form
    assert list(summary.columns[:3]) == ['model', 'latent_dim', 'n'] and (summary['n'] == 3).all()
    bonus = np.where(summary['model'] == 'm-b', 0.05, 0.0)
    np.testing.assert_allclose(summary['cond/knn/auroc_mean'], 0.6 + 0.01 * summary['latent_dim'] + 0.002 + bonus)
    np.testing.assert_allclose(summary['cond/knn/auroc_std'], 0.002)
    assert {c[:-5] for c in summary.columns if c.endswith('_mean')} == RESULTS
    # plots: metrics only, x = the swept numeric parameter (not the first, categorical one), at most 12
    assert len(drawn) == 12 and all(m in RESULTS for m, _, _ in drawn)
    assert all(x == 'latent_dim' and rest == ['model'] for _, x, rest in drawn)
    pngs = sorted((out / 'report').glob('*.png'))
    assert len(pngs) == 12 and not any(p.stem.split('_')[0] in ('epochs', 'n', 'seconds', 'metrics.latent') for p in pngs)
    text = (out / 'report' / 'summary.txt').read_text()
    lines = text.splitlines()
    assert max(len(l) for l in lines if not l.startswith(('full table:', 'every run:', 'figures:'))) <= 120
    assert len(lines) <= 60
    full = [l for l in lines if l.startswith('full table:')][0].split(': ', 1)[1]
    assert Path(full).resolve() == (out / 'report' / 'summary.csv').resolve()
    pd.testing.assert_frame_equal(pd.read_csv(full), summary, check_dtype=False)
    assert 'not shown: ' in text  # 24 metrics cannot all be shown in 120 columns x 20 rows
    assert 'metadata, not summarized: ' in text and 'epochs' in text
    # a narrower selection: groups as rows, every metric shown; stale figures of the last report removed
    drawn.clear()
    results, summary = sw.report(out, metrics=['cond/knn/auroc', 'cond/knn/fpr95'])
    assert sorted(p.name for p in (out / 'report').glob('*.png')) == ['cond_knn_auroc.png', 'cond_knn_fpr95.png']
    lines = (out / 'report' / 'summary.txt').read_text().splitlines()
    header = next(l for l in lines if l.startswith('model'))
    assert header.split() == ['model', 'latent_dim', 'n', 'cond/knn/auroc', 'cond/knn/fpr95']
    assert 'not shown' not in '\n'.join(lines) and max(map(len, lines[:-2])) <= 120
    # cells: mean±std, std to 2 significant digits (std of 0.6..0.604 in steps of 0.002 = 0.002)
    row = next(l for l in lines if l.startswith('m-a') and l.split()[1] == '4').split()
    assert row[3] == f'{0.6 + 0.04 + 0.002:.4f}±0.0020' and row[4] == f'{0.5 - 0.04:.4g}'
    with pytest.raises(ValueError, match='max_plots'):
        sw.report(out, max_plots=-1)


def test_report_x_axis_and_log_scale():
    summary = pd.DataFrame({'dataset': ['a', 'a', 'b', 'b'], 'lr': [1e-4, 1e-1] * 2, 'n': 1,
                            'y_mean': [1.0, 2, 3, 4], 'y_std': 0.0})
    assert sw._x_axis(summary, ['dataset', 'lr']) == ('lr', ['dataset'])
    only_cat = summary.assign(lr=1e-3)
    assert sw._x_axis(only_cat, ['dataset', 'lr']) == ('dataset', [])  # lr does not vary
    assert sw._x_axis(summary.iloc[:1], ['dataset', 'lr']) == (None, [])  # nothing varies: no plot
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure
    made = []
    orig = Figure.savefig
    try:
        Figure.savefig = lambda self, *a, **k: made.append(self)
        sw._plot(summary, 'y', 'lr', ['dataset'], Path('unused.png'))
    finally:
        Figure.savefig = orig
    ax = made[0].axes[0]
    assert ax.get_xscale() == 'log' and ax.get_xlabel() == 'lr' and len(ax.get_legend().get_texts()) == 2


def test_report_cli_metric_patterns_and_short_lines(tmp_path, capsys):
    out = _hand_written_sweep(tmp_path / 's')
    assert main(['report', str(out), '--metric', 'auroc*', '--metric', 'fpr95', '--max-plots', '3']) == 0
    printed = capsys.readouterr().out
    s = pd.read_csv(out / 'report' / 'summary.csv')
    assert {c[:-5] for c in s.columns if c.endswith('_mean')} == {m for m in RESULTS if m.endswith(('auroc', 'fpr95'))}
    assert len(list((out / 'report').glob('*.png'))) == 3
    assert max(len(l) for l in printed.splitlines() if not l.startswith(('full table:', 'figures:'))) <= 120
    assert f"full table: {out / 'report' / 'summary.csv'}" in printed
    assert main(['report', str(out), '--metric', 'nope*']) == 2
    assert "'nope*' matches no numeric metric" in capsys.readouterr().err


def test_report_collects_phase_reports_of_each_run(tmp_path):
    # phase reports written by `hyperlatent.phase.PhaseReport.save` (json layout of `to_dict`) in two of the runs
    out = _hand_written_sweep(tmp_path / 's')
    runs = sorted(p for p in out.iterdir() if (p / 'params.json').is_file())
    want = []
    for i, d in enumerate(runs[:2]):
        rec = dict(name=f'model{i}', metrics=dict(phase=['ordered', 'disordered'][i], chi_norm=0.25 + i, mean_R=0.9 - i / 2,
                                                   auroc=0.7 + i / 10, per_block=[1, 2]),
                   overlap={}, flow={}, block_knn={}, covariance={}, warnings=['ill-posed split'] if i else [])
        sub = d / 'phase_reports' / f'model{i}'
        sub.mkdir(parents=True)
        (sub / 'phase_report.json').write_text(json.dumps(rec))
        want.append((d.name, rec))
    sw.report(out)
    table = pd.read_csv(out / 'report' / 'phase_reports.csv')
    assert list(table['run_id']) == [w[0] for w in want] and list(table['report']) == ['model0', 'model1']
    np.testing.assert_allclose(table['chi_norm'], [0.25, 1.25])
    assert 'per_block' not in table  # only scalar metrics are tabulated
    assert table['warnings'].fillna('').tolist() == ['', 'ill-posed split']
    text = (out / 'report' / 'summary.txt').read_text()
    assert 'phase reports: 2 (1 ordered, 1 disordered)' in text
    assert 'phase table: ' in text and all(len(l) <= 120 for l in text.splitlines()[-5:-1])
    # no phase reports: no phase section, no stale table
    for d in runs[:2]:
        import shutil; shutil.rmtree(d / 'phase_reports')
    sw.report(out)
    assert not (out / 'report' / 'phase_reports.csv').exists()
    assert 'phase reports' not in (out / 'report' / 'summary.txt').read_text()


def test_pending_tasks_skip_stale_and_todo(tmp_path):
    "Completed runs of this notebook version are skipped, of another version stale (re-run), the rest are tasks."
    def status(rid, st, h):
        (tmp_path / rid).mkdir()
        (tmp_path / rid / 'status.json').write_text(json.dumps({'status': st, 'notebook_hash': h}))
    status('a-1', sw.COMPLETED, 'h'); status('b-2', sw.COMPLETED, 'old'); status('c-3', sw.FAILED, 'h')
    ids, runs = ['a-1', 'b-2', 'c-3', 'd-4'], [{'x': 1}, {'x': 2}, {'device': 'cuda:1'}, {'x': 4}]
    nb = tmp_path / 'nb.ipynb'
    skipped, stale, tasks = sw._pending_tasks(tmp_path, nb, 'h', ids, runs, False, {'device': 'cpu'}, timeout=3.0)
    assert (skipped, stale, [t['run_id'] for t in tasks]) == (['a-1'], ['b-2'], ['b-2', 'c-3', 'd-4'])
    assert tasks[1] == {'notebook': str(nb), 'run_dir': str(tmp_path / 'c-3'), 'params': {'device': 'cuda:1'},
                        'timeout': 3.0, 'gpu': True, 'run_id': 'c-3'}
    assert [t['gpu'] for t in tasks] == [False, True, False]
    skipped, stale, tasks = sw._pending_tasks(tmp_path, nb, 'h', ids, runs, True, {})  # keep_stale
    assert (skipped, stale, [t['run_id'] for t in tasks]) == (['a-1', 'b-2'], [], ['c-3', 'd-4'])
