"""The offline docs site (tools/build_docs.py) and the saved-outputs checker (tools/check_outputs.py)."""
import base64
import importlib.util
import io
import re
import shutil
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
    assert 'site check: ok' in r.stdout  # links resolve, every saved figure shown, every __all__ name on api.html
    assert _build_docs().check_site(ROOT / 'nbs', out) == []
    index = (out / 'index.html').read_text()
    nbs = sorted((ROOT / 'nbs').glob('*.ipynb')) + sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb'))
    for nb in nbs:
        rel = nb.relative_to(ROOT / 'nbs').with_suffix('.html').as_posix()
        rel = 'home.html' if rel == 'index.html' else rel
        assert f'href="{rel}"' in index and (out / rel).is_file(), rel


def _build_docs():
    "tools/build_docs.py as a module (it is a script, not part of the package)."
    spec = importlib.util.spec_from_file_location('build_docs', ROOT / 'tools' / 'build_docs.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_site_check_offline(small_nbs, tmp_path):
    "Without a browser: index links resolve, each saved figure is an <img> with its data, api.html lists __all__."
    out = tmp_path / 'site'
    r = _run('build_docs.py', '--nbs', small_nbs, '--out', out)
    assert r.returncode == 0 and 'site check: ok' in r.stdout, r.stdout + r.stderr
    bd = _build_docs()
    assert bd.check_site(small_nbs, out) == []
    import nbformat as nbf
    assert bd.saved_images(nbf.read(small_nbs / '00_fig.ipynb', as_version=4)) == [('image/png', PNG)]
    # each kind of breakage is reported, naming the page and the missing piece
    fig = out / '00_fig.html'
    good = fig.read_text()
    fig.write_text(good.replace(PNG, PNG[:-8] + 'AAAAAAA='))  # another image than the notebook saved
    assert any('00_fig.html: figure 1 (image/png)' in p for p in bd.check_site(small_nbs, out))
    fig.write_text(good)
    (out / 'experiments' / 'plain.html').unlink()
    probs = bd.check_site(small_nbs, out)
    assert 'experiments/plain.html: missing' in probs and any("broken link 'experiments/plain.html'" in p for p in probs)
    assert _run('build_docs.py', '--nbs', small_nbs, '--out', out).returncode == 0  # a rebuild repairs it
    api = out / 'api.html'
    api.write_text(api.read_text().replace('id="hyperlatent.coords.to_spherical"', 'id="gone"'))
    assert 'api.html: no entry for hyperlatent.coords.to_spherical' in bd.check_site(small_nbs, out)
    from hyperlatent import coords
    assert 'to_spherical' in coords.__all__  # the oracle: the module's own public names


_BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')


def _screenshot_tool():
    "('playwright', None) or ('cli', path of a Chromium binary), else None."
    if importlib.util.find_spec('playwright') is not None:
        return 'playwright', None
    for name in _BROWSERS:
        if shutil.which(name):
            return 'cli', shutil.which(name)
    return None


def _screenshot(tool, url: str, dest: Path) -> None:
    kind, exe = tool
    if kind == 'playwright':
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = p.chromium.launch()
            page = browser.new_page(viewport={'width': 1000, 'height': 800})
            page.goto(url)
            page.screenshot(path=str(dest))
            browser.close()
    else:
        subprocess.run([exe, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
                        '--window-size=1000,800', f'--screenshot={dest}', url],
                       check=True, capture_output=True, timeout=120)


def test_screenshots_of_index_and_figure_page(tmp_path):
    tool = _screenshot_tool()
    if tool is None:
        pytest.skip('no headless browser: none of ' + ', '.join(_BROWSERS) + ' is on PATH and the python '
                    'package playwright is not installed; test_site_check_offline checks the HTML instead')
    from PIL import Image
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    fig = Figure(figsize=(3, 2), dpi=100)
    fig.add_subplot().add_patch(Rectangle((0, 0), 1, 1, color=(1.0, 0.0, 0.0)))
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    red = base64.b64encode(buf.getvalue()).decode()
    nbs = tmp_path / 'nbs'
    c = new_code_cell('plt.plot()', execution_count=1)
    c.outputs = [new_output('display_data', data={'image/png': red, 'text/plain': '<Figure>'})]
    _write(nbs / '00_red.ipynb', [new_markdown_cell('# Red page\n\n> A red square.'), c])
    out = tmp_path / 'site'
    assert _run('build_docs.py', '--nbs', nbs, '--out', out).returncode == 0
    for page, want_red in (('index.html', False), ('00_red.html', True)):
        shot = tmp_path / f'{page}.png'
        _screenshot(tool, (out / page).as_uri(), shot)
        im = Image.open(shot).convert('RGB')
        colors = im.getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 2, page  # not a blank page
        dark = sum(n for n, (r, g, b) in colors if r + g + b < 600)
        assert dark > 200, page  # some text / the nav bar rendered
        reds = sum(n for n, (r, g, b) in colors if r > 200 and g < 60 and b < 60)
        assert (reds > 1000) == want_red, (page, reds)  # the figure itself is drawn on the figure page
