import subprocess
import sys

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
