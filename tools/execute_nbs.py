"""Execute module notebooks in place, saving their outputs (figures at 72 dpi), then `nbdev_clean` them.

Kernel python3, cwd nbs/, 600 s per cell. Cells that nbdev_test skips by default -- those flagged
`#| slow` or `#| eval: false` in their directive header -- are temporarily replaced by a no-op before
execution and their source restored afterwards (they keep no outputs). Matplotlib reads a temporary
`matplotlibrc` (MPLCONFIGDIR) with `figure.dpi: 72` and `savefig.dpi: 72`. MPLBACKEND is deliberately
NOT set to Agg: ipykernel only installs its inline backend when MPLBACKEND is unset, and with Agg no
figure would be saved as an output.

Usage: python tools/execute_nbs.py [nbs/XX.ipynb ...]   (default: every nbs/*.ipynb, not experiments)
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NO_OP = 'pass  # skipped by tools/execute_nbs.py'
_DIRECTIVE = re.compile(r'^\s*#\|\s*(.*)$')


def skipped(src: str) -> bool:
    "True when the cell's leading directive lines flag it `slow` or `eval: false`."
    for line in src.splitlines():
        if not line.strip():
            continue
        m = _DIRECTIVE.match(line)
        if not m:
            return False
        d = m.group(1).strip().replace(' ', '')
        if d == 'slow' or d.lower() == 'eval:false':
            return True
    return False


def execute(path: Path, env_dir: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    saved = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == 'code' and skipped(cell.source):
            saved[i] = cell.source
            cell.source = NO_OP
    client = NotebookClient(nb, kernel_name='python3', timeout=600,
                            resources={'metadata': {'path': str(path.parent)}})
    old = {k: os.environ.get(k) for k in ('MPLCONFIGDIR', 'MPLBACKEND')}
    os.environ['MPLCONFIGDIR'] = str(env_dir)
    os.environ.pop('MPLBACKEND', None)
    try:
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for i, src in saved.items():
            nb.cells[i].source = src
            nb.cells[i].outputs = []
            nb.cells[i].execution_count = None
    nbformat.write(nb, path)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in args] or sorted((ROOT / 'nbs').glob('*.ipynb'))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print('execute_nbs: no such notebook: ' + ', '.join(map(str, missing)), file=sys.stderr)
        return 1
    failed = []
    with tempfile.TemporaryDirectory(prefix='hl_mpl_') as d:
        (Path(d) / 'matplotlibrc').write_text('figure.dpi: 72\nsavefig.dpi: 72\n')
        for p in paths:
            try:
                execute(p.resolve(), Path(d))
            except Exception as e:  # noqa: BLE001 -- report, keep going, fail at the end
                failed.append(p)
                print(f'FAIL {p}: {type(e).__name__}: {str(e)[-2000:]}', file=sys.stderr)
                continue
            subprocess.run([str(BIN / 'nbdev_clean'), '--fname', str(p)], check=True, cwd=ROOT)
            print(f'ok   {p} ({p.stat().st_size / 1e3:.0f} kB)')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
