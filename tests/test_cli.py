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
