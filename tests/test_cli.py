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
