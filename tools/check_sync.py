"""Fail when `nbdev_export` would change hyperlatent/ or `nbdev_clean` would change nbs/.

Works on a plain copy of the tree (no git needed): it snapshots the files, runs the two nbdev
commands, and compares. On a mismatch the re-exported / re-cleaned files are left in place, so
that the fix is to review them and commit.
"""
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snapshot(folder: Path, pattern: str) -> dict:
    return {p.relative_to(ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(pattern)) if '.ipynb_checkpoints' not in p.parts
            and '__pycache__' not in p.parts}


def changed(before: dict, after: dict) -> list:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def main() -> int:
    failed = False
    for what, cmd, folder, pattern in [
        ('nbdev_export', [str(BIN / 'nbdev_export')], ROOT / 'hyperlatent', '*.py'),
        ('nbdev_clean', [str(BIN / 'nbdev_clean')], ROOT / 'nbs', '*.ipynb'),
    ]:
        before = snapshot(folder, pattern)
        subprocess.run(cmd, cwd=ROOT, check=True)
        diff = changed(before, snapshot(folder, pattern))
        if diff:
            failed = True
            print(f'check-sync: `{what}` changed {len(diff)} file(s); review and commit them:')
            for name in diff:
                print(f'    {name}')
    if not failed:
        print('check-sync: modules match notebooks; notebooks are clean')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
