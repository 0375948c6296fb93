"""The README's Python tour must run as written (it is the first code a user copies)."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / 'README.md'


def test_readme_tour_runs(capsys):
    blocks = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)
    assert blocks, 'README.md has no python block'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: one thread is fastest and keeps the run short on 2 cores
    try:
        for code in blocks:
            exec(compile(code, 'README.md', 'exec'), {})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "'auroc'" in out and "'fpr95'" in out
