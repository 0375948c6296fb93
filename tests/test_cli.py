import subprocess
import sys

import pytest

import hyperlatent
from hyperlatent.cli import main


def test_version_flag(capsys):
    try:
        main(['--version'])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f'hyperlatent {hyperlatent.__version__}'


def test_console_script_installed():
    # the console script declared in settings.ini must be on PATH next to the interpreter
    exe = __import__('pathlib').Path(sys.executable).parent / 'hyperlatent'
    out = subprocess.run([str(exe), '--version'], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f'hyperlatent {hyperlatent.__version__}'


# ---------------------------------------------------------------- experiment subcommands (hyperlatent.sweep)
import json
from pathlib import Path

TINY = Path(__file__).resolve().parent / 'assets' / 'tiny_sweep.ipynb'


def test_help_lists_subcommands(capsys):
    try:
        main(['-h'])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for cmd in ('run', 'sweep', 'report'):
        assert cmd in out


def test_run_console_script_with_params_file_and_overrides(tmp_path):
    (tmp_path / 'p.yaml').write_text('x: 1\nscale: 2.5\nlabel: hello\n')
    exe = Path(sys.executable).parent / 'hyperlatent'
    out = subprocess.run([str(exe), 'run', str(TINY), '-f', str(tmp_path / 'p.yaml'), '-p', 'x', '3',
                          '--out', str(tmp_path / 'r')], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'completed' in out.stdout
    m = json.loads((tmp_path / 'r' / 'metrics.json').read_text())
    assert m['y'] == 3 * 2.5 and m['label_len'] == len('hello')  # -p overrides -f
    assert (tmp_path / 'r' / 'tiny_sweep.ipynb').is_file()
    assert json.loads((tmp_path / 'r' / 'status.json').read_text())['status'] == 'completed'


def test_run_failure_and_invalid_parameter_exit_codes(tmp_path, capsys):
    assert main(['run', str(TINY), '-p', 'mode', 'raise', '--out', str(tmp_path / 'a')]) == 1
    assert 'requested failure' in capsys.readouterr().err
    assert json.loads((tmp_path / 'a' / 'status.json').read_text())['status'] == 'failed'
    assert main(['run', str(TINY), '-p', 'scale', 'big', '--out', str(tmp_path / 'b')]) == 2
    assert "'scale'" in capsys.readouterr().err
    assert not (tmp_path / 'b' / 'tiny_sweep.ipynb').exists()  # nothing ran


def test_sweep_exit_code_and_report(tmp_path, capsys):
    (tmp_path / 'g.yaml').write_text('x: [1, 2]\nmode: [ok, raise]\n')
    out = tmp_path / 'sw'
    code = main(['sweep', str(TINY), '--grid', str(tmp_path / 'g.yaml'), '--out', str(out), '--workers', '2',
                 '--no-progress'])
    assert code == 1  # some runs failed
    assert '2 completed' in capsys.readouterr().out
    assert main(['report', str(out)]) == 0
    text = capsys.readouterr().out
    assert '4 runs' in text and 'requested failure' in text
    assert (out / 'report' / 'summary.csv').is_file()


def _fake_notebook(path: Path) -> Path:
    "A notebook whose parameters cell has a None-admitting comment; it writes its parameters (and their types)."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("a = 1  # an int\nlr = 0.1  # a float\ndevice = 'cpu'  # 'cpu', 'cuda' or None\n"
                                  "name = 'n'  # a name\noutput_dir = '.'", metadata={'tags': ['parameters']}),
        nbformat.v4.new_code_cell("import json, pathlib\nv = {'a': a, 'lr': lr, 'device': device, 'name': name}\n"
                                  "pathlib.Path(output_dir, 'metrics.json').write_text(json.dumps(\n"
                                  "    {'values': v, 'types': {k: type(x).__name__ for k, x in v.items()}}))"),
    ]
    nbformat.write(nb, path)
    return path


def test_cli_values_are_yaml_1_2_and_null_is_none(tmp_path, capsys):
    nb = _fake_notebook(tmp_path / 'fake.ipynb')
    code = main(['run', str(nb), '-p', 'a', '010', '-p', 'lr', '1e-3', '-p', 'device', 'null', '--out', str(tmp_path / 'r')])
    assert code == 0, capsys.readouterr().err
    m = json.loads((tmp_path / 'r' / 'metrics.json').read_text())  # what the kernel received
    assert m['values'] == {'a': int('010', 10), 'lr': float('1e-3'), 'device': None, 'name': 'n'}
    assert m['types'] == {'a': 'int', 'lr': 'float', 'device': 'NoneType', 'name': 'str'}
    # a parameter whose comment does not admit None refuses it, before anything runs
    assert main(['run', str(nb), '-p', 'name', 'null', '--out', str(tmp_path / 's')]) == 2
    assert "'name'" in capsys.readouterr().err and not (tmp_path / 's').exists()
    from hyperlatent.sweep import parse_value
    for text in ('010', '0', '-7', '+12', '007'):
        assert parse_value(text) == int(text, 10) and type(parse_value(text)) is int
    for text in ('1e-3', '2.5E+2', '.5', '-0.25'):
        assert parse_value(text) == float(text) and type(parse_value(text)) is float
    assert parse_value('0o10') == 0o10 and parse_value('yes') == 'yes' and parse_value('~') is None


def test_malformed_params_file_names_the_file(tmp_path, capsys):
    f = tmp_path / 'p.yaml'
    f.write_text('x: {1\n')
    assert main(['run', str(TINY), '-f', str(f), '--out', str(tmp_path / 'r')]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and 'not valid YAML' in err and 'Traceback' not in err


def test_run_twice_into_one_out_never_mixes_runs(tmp_path, capsys):
    r = tmp_path / 'r'
    assert main(['run', str(TINY), '-p', 'x', '3', '--out', str(r)]) == 0
    first = {n: (r / n).read_bytes() for n in ('params.json', 'metrics.json', 'status.json')}
    # a second run into the same folder is refused before anything is written
    assert main(['run', str(TINY), '-p', 'mode', 'raise', '--out', str(r)]) == 2
    assert 'already holds a run' in capsys.readouterr().err
    assert {n: (r / n).read_bytes() for n in first} == first
    # --overwrite: the old run moves aside whole; the failing new run leaves no metrics.json of the old one
    assert main(['run', str(TINY), '-p', 'mode', 'raise', '--overwrite', '--out', str(r)]) == 1
    assert json.loads((r / 'params.json').read_text())['mode'] == 'raise'
    assert json.loads((r / 'status.json').read_text())['status'] == 'failed'
    assert not (r / 'metrics.json').exists()
    (prev,) = tmp_path.glob('r.previous-*')
    assert {n: (prev / n).read_bytes() for n in first} == first
    assert json.loads((prev / 'metrics.json').read_text())['y'] == 3 * 1.0  # x * scale of the first run


# ---------------------------------------------------------------- run --list-params, live output, report on one run
import nbformat


def _write_nb(path, params_src, body_src):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params_src); p.metadata['tags'] = ['parameters']
    nb.cells = [p, nbformat.v4.new_code_cell(body_src)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, str(path))
    return path


def test_run_list_params_prints_table_without_running(tmp_path, capsys):
    nb = _write_nb(tmp_path / 'p.ipynb',
                   "lr = 1e-3  # learning rate\nhidden: list = [64, 32]  # layer widths\nname = 'abc'\n"
                   "flag = True\noutput_dir = '.'",
                   "open('ran.txt', 'w').write('x')")
    assert main(['run', str(nb), '--list-params']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ['name', 'type', 'default', 'comment']
    rows = {l.split()[0]: l for l in lines[1:]}
    assert list(rows) == ['lr', 'hidden', 'name', 'flag', 'output_dir']
    assert rows['lr'].split() == ['lr', 'float', '0.001', 'learning', 'rate']
    assert rows['hidden'].split() == ['hidden', 'list', '[64,', '32]', 'layer', 'widths']
    assert rows['name'].split() == ['name', 'str', "'abc'"]
    assert rows['flag'].split() == ['flag', 'bool', 'True']
    assert not (tmp_path / 'ran.txt').exists() and not Path('ran.txt').exists()
    # --out is still required for a real run
    assert main(['run', str(nb)]) == 2
    assert '--out' in capsys.readouterr().err


def test_run_streams_notebook_output_unless_quiet(tmp_path):
    nb = _write_nb(tmp_path / 'loud.ipynb', "output_dir = '.'",
                   "import sys\nprint('MARKER_OUT_7341')\nprint('MARKER_ERR_1943', file=sys.stderr)")
    exe = Path(sys.executable).parent / 'hyperlatent'
    loud = subprocess.run([str(exe), 'run', str(nb), '--out', str(tmp_path / 'a')], capture_output=True, text=True)
    assert loud.returncode == 0, loud.stderr
    assert 'MARKER_OUT_7341' in loud.stderr and 'MARKER_ERR_1943' in loud.stderr
    quiet = subprocess.run([str(exe), 'run', str(nb), '--quiet', '--out', str(tmp_path / 'b')],
                           capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert 'MARKER' not in quiet.stderr and 'MARKER' not in quiet.stdout
    for d in ('a', 'b'):  # run.log has the notebook's output either way
        log = (tmp_path / d / 'run.log').read_text()
        assert 'MARKER_OUT_7341' in log and 'MARKER_ERR_1943' in log


def test_report_on_single_run_directory(tmp_path, capsys):
    assert main(['run', str(TINY), '-q', '-p', 'x', '4', '-p', 'scale', '2.5', '--out', str(tmp_path / 'r')]) == 0
    capsys.readouterr()
    assert main(['report', str(tmp_path / 'r'), '--no-plots']) == 0
    out = capsys.readouterr().out
    assert out.startswith('1 runs: 1 completed'), out
    import pandas as pd
    s = pd.read_csv(tmp_path / 'r' / 'report' / 'summary.csv')
    y = s[s['metric'] == 'y']  # nothing varies: one row per metric
    assert len(y) == 1 and y['n'].iloc[0] == 1 and y['mean'].iloc[0] == 4 * 2.5
    (tmp_path / 'empty').mkdir()
    assert main(['report', str(tmp_path / 'empty')]) == 2
    assert 'holds no runs' in capsys.readouterr().err


def test_sweep_grid_with_list_valued_parameter(tmp_path, capsys):
    "A list-valued parameter (`hidden = [128, 64]`) takes `hidden: [8, 4]` in a grid file as one value."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("hidden = [128, 64]  # widths\nx = 1\noutput_dir = '.'",
                                          metadata={'tags': ['parameters']}),
                nbformat.v4.new_code_cell("import json, pathlib\npathlib.Path(output_dir, 'metrics.json').write_text("
                                          "json.dumps({'width_sum': sum(hidden), 'depth': len(hidden)}))")]
    nbformat.write(nb, tmp_path / 'lists.ipynb')
    (tmp_path / 'g.yaml').write_text('hidden: [8, 4]\nx: [1, 2]\n')
    out = tmp_path / 'sw'
    assert main(['sweep', str(tmp_path / 'lists.ipynb'), '--grid', str(tmp_path / 'g.yaml'), '--out', str(out),
                 '--workers', '2', '--no-progress']) == 0, capsys.readouterr().err
    assert '2 runs' in capsys.readouterr().out  # x is the only axis
    import pandas as pd
    df = pd.read_csv(out / 'results.csv')
    assert sorted(df['x']) == [1, 2] and set(df['hidden']) == {'[8, 4]'}
    assert list(df['width_sum']) == [12, 12] and list(df['depth']) == [2, 2]
    (tmp_path / 'bad.yaml').write_text('hidden: [[8, 4], 2]\n')
    assert main(['sweep', str(tmp_path / 'lists.ipynb'), '--grid', str(tmp_path / 'bad.yaml'),
                 '--out', str(tmp_path / 'bad'), '--no-progress']) == 2
    assert '{values: [...]}' in capsys.readouterr().err


def test_report_help_documents_patterns(capsys):
    with pytest.raises(SystemExit):
        main(['report', '-h'])
    text = capsys.readouterr().out
    assert "--metric 'auroc*' --metric fpr95" in ' '.join(text.split()) and '--max-plots' in text


def test_readme_grid_example_expands_as_documented():
    "The README's grid block, expanded for the flagship notebook: 3 x 3 x 2 runs, `hidden` one fixed list."
    import re
    from pathlib import Path
    from hyperlatent import sweep
    root = Path(__file__).resolve().parents[1]
    block = re.search(r'```yaml\n(.*?)```', (root / 'README.md').read_text(), flags=re.S).group(1)
    nb = root / 'nbs' / 'experiments' / 'anomaly_detection.ipynb'
    runs = sweep.expand_grid(sweep.yaml.load(block, Loader=sweep._Loader), nb)
    assert len(runs) == 3 * 3 * 2
    assert {r['latent_dim'] for r in runs} == {8, 16, 32} and all(r['hidden'] == [128, 64] for r in runs)
    assert sorted({tuple(r['seeds']) for r in runs}) == [(0,), (1,), (2,)]
    assert sorted({tuple(r['compression_models']) for r in runs}) == [('p2-class-axes',), ('p2-vmf',)]
    for r in runs:
        sweep.validate_parameters(nb, r, what='grid parameter')
