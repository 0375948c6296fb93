"""Check the notebooks' saved outputs: module notebooks carry their figures, experiment notebooks carry none.

Module notebooks (nbs/*.ipynb, not experiments): every notebook whose non-exported code calls `plt.` / uses
matplotlib (outside comments; `#| export` library code that writes figure files does not count) must have at least one image/png output saved, and each file must be < 1 MB.
Experiment notebooks (nbs/experiments/*.ipynb) must have NO outputs (they are run by papermill into runs/).
Prints one status line per notebook; exit status 1 on any failure.

Usage: python tools/check_outputs.py [--nbs nbs]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000
_PLOTS = re.compile(r'\bplt\.|\bmatplotlib\b')


def _code(cell) -> str:
    src = cell.get('source', '')
    src = ''.join(src) if isinstance(src, list) else src
    return '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith('#'))


def _exported(cell) -> bool:
    src = cell.get('source', '')
    src = ''.join(src) if isinstance(src, list) else src
    return any(re.match(r'#\|\s*export', l.strip()) for l in src.splitlines()[:3])


def uses_matplotlib(nb: dict) -> bool:
    "True when a cell the reader sees run (not library code in `#| export` cells, which may write figure files) plots."
    return any(c.get('cell_type') == 'code' and not _exported(c) and _PLOTS.search(_code(c)) for c in nb.get('cells', []))


def n_png(nb: dict) -> int:
    return sum('image/png' in o.get('data', {}) for c in nb.get('cells', []) if c.get('cell_type') == 'code'
               for o in c.get('outputs', []))


def n_outputs(nb: dict) -> int:
    return sum(len(c.get('outputs', [])) for c in nb.get('cells', []) if c.get('cell_type') == 'code')


def check_module(path: Path) -> list[str]:
    problems = []
    size = path.stat().st_size
    if size >= MAX_BYTES:
        problems.append(f'{size / 1e6:.2f} MB >= 1 MB')
    nb = json.loads(path.read_text(encoding='utf-8'))
    if uses_matplotlib(nb) and n_png(nb) == 0:
        problems.append('uses matplotlib but has no image/png output saved (run tools/execute_nbs.py)')
    return problems


def check_experiment(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding='utf-8'))
    n = n_outputs(nb)
    return [f'has {n} saved output(s); experiment notebooks must have none (nbdev_clean / clear outputs)'] if n else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--nbs', type=Path, default=ROOT / 'nbs', help='notebook folder (default: nbs/)')
    a = ap.parse_args(argv)
    failed = False
    jobs = [(p, check_module) for p in sorted(a.nbs.glob('*.ipynb'))]
    jobs += [(p, check_experiment) for p in sorted((a.nbs / 'experiments').glob('*.ipynb'))]
    if not jobs:
        print(f'check_outputs: no notebooks under {a.nbs}', file=sys.stderr)
        return 1
    for path, check in jobs:
        try:
            problems = check(path)
        except (OSError, ValueError) as e:
            problems = [f'unreadable: {e}']
        rel = path.relative_to(a.nbs).as_posix()
        if problems:
            failed = True
            print(f'FAIL {rel}: ' + '; '.join(problems))
        else:
            print(f'ok   {rel}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
