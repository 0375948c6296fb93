"""The offline docs site (tools/build_docs.py) and the saved-outputs checker (tools/check_outputs.py)."""
import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat')
pytest.importorskip('nbconvert')
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# A valid 1x1 PNG: its exact base64 must appear in an <img> data URI of the page.
PNG = base64.b64encode(bytes.fromhex(
    '89504e470d0a1a0a0000000d4948445200000001000000010806000000'
    '1f15c4890000000d49444154789c6360f8cfc0f01f0005000201ff5cdd0b'
    'ad0000000049454e44ae426082')).decode()


def _run(tool, *args):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / tool), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def _png_cell(src='import matplotlib.pyplot as plt\nplt.plot([1, 2])'):
    c = new_code_cell(src, execution_count=1)
    c.outputs = [new_output('display_data', data={'image/png': PNG, 'text/plain': '<Figure>'})]
    return c


def _write(path, cells):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=cells), path)


@pytest.fixture
def small_nbs(tmp_path):
    nbs = tmp_path / 'nbs'
    _write(nbs / '00_fig.ipynb', [new_code_cell('#| default_exp fig'),
                                  new_markdown_cell('# Figure page\n\n> A page with a saved figure.'),
                                  new_code_cell('#| export\ndef secret_marker_fn(): pass'),
                                  _png_cell()])
    _write(nbs / 'experiments' / 'plain.ipynb', [new_markdown_cell('# Plain experiment\n\n> No outputs here.'),
                                                 new_code_cell('x = 1')])
    return nbs


def test_small_site(small_nbs, tmp_path):
    out = tmp_path / 'site'
    r = _run('build_docs.py', '--nbs', small_nbs, '--out', out)
    assert r.returncode == 0, r.stderr
    index = (out / 'index.html').read_text()
    links = set(re.findall(r'href="([^"]+)"', index))
    assert {'00_fig.html', 'experiments/plain.html', 'api.html'} <= links
    for link in links:  # every linked page exists
        assert (out / link).is_file(), link
    assert 'Figure page' in index and 'A page with a saved figure.' in index
    assert 'Plain experiment' in index and 'No outputs here.' in index
    fig = (out / '00_fig.html').read_text()
    assert re.search(r'<img[^>]+src="data:image/png;base64,' + re.escape(PNG), fig)
    assert '#| export' not in fig and 'default_exp' not in fig  # directives stripped from displayed code
    assert 'secret_marker_fn' in fig
    body = fig[fig.index('<body'):]
    assert '<nav class="hl-nav">' in body[:2000] and 'href="index.html"' in body[:2000]  # nav at the top
    plain = (out / 'experiments' / 'plain.html').read_text()
    assert 'class="hl-nav"' in plain and 'href="../index.html"' in plain
    assert 'class="hl-nav"' in index


def test_api_page_lists_docstrings(small_nbs, tmp_path):
    out = tmp_path / 'site'
    assert _run('build_docs.py', '--nbs', small_nbs, '--out', out).returncode == 0
    api = (out / 'api.html').read_text()
    import html
    import inspect

    from hyperlatent import coords
    assert 'hyperlatent.coords.to_spherical(' in api
    assert html.escape(inspect.getdoc(coords.to_spherical)) in api
    for p in (ROOT / 'hyperlatent').glob('*.py'):
        if p.stem not in ('_modidx', '__init__'):
            assert f'<h2 id="hyperlatent.{p.stem}">' in api, p.stem


def test_broken_notebook_fails(small_nbs, tmp_path):
    (small_nbs / '99_broken.ipynb').write_text('{not json')
    r = _run('build_docs.py', '--nbs', small_nbs, '--out', tmp_path / 'site')
    assert r.returncode == 1 and '99_broken.ipynb' in r.stderr


def test_check_outputs(tmp_path):
    nbs = tmp_path / 'nbs'
    _write(nbs / '00_good.ipynb', [new_code_cell('x = 1'), _png_cell()])
    _write(nbs / 'experiments' / 'clean.ipynb', [new_code_cell('y = 2')])
    r = _run('check_outputs.py', '--nbs', nbs)
    assert r.returncode == 0, r.stdout
    assert 'ok   00_good.ipynb' in r.stdout and 'ok   experiments/clean.ipynb' in r.stdout
    # a module notebook calling plt without any saved image
    _write(nbs / '01_noimg.ipynb', [new_code_cell('import matplotlib.pyplot as plt\nplt.plot([1])')])
    r = _run('check_outputs.py', '--nbs', nbs)
    assert r.returncode == 1 and 'FAIL 01_noimg.ipynb' in r.stdout and 'ok   00_good.ipynb' in r.stdout
    (nbs / '01_noimg.ipynb').unlink()
    # an experiment notebook with a saved output
    c = new_code_cell('print(3)', execution_count=1)
    c.outputs = [new_output('stream', name='stdout', text='3\n')]
    _write(nbs / 'experiments' / 'dirty.ipynb', [c])
    r = _run('check_outputs.py', '--nbs', nbs)
    assert r.returncode == 1 and 'FAIL experiments/dirty.ipynb' in r.stdout
    (nbs / 'experiments' / 'dirty.ipynb').unlink()
    # a module notebook over 1 MB
    _write(nbs / '02_big.ipynb', [new_code_cell('z = 3'), new_markdown_cell('x' * 1_100_000)])
    r = _run('check_outputs.py', '--nbs', nbs)
    assert r.returncode == 1 and 'FAIL 02_big.ipynb' in r.stdout


@pytest.mark.slow
def test_real_site(tmp_path):
    out = tmp_path / 'site'
    r = _run('build_docs.py', '--out', out)
    assert r.returncode == 0, r.stderr
    index = (out / 'index.html').read_text()
    nbs = sorted((ROOT / 'nbs').glob('*.ipynb')) + sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb'))
    for nb in nbs:
        rel = nb.relative_to(ROOT / 'nbs').with_suffix('.html').as_posix()
        rel = 'home.html' if rel == 'index.html' else rel
        assert f'href="{rel}"' in index and (out / rel).is_file(), rel
