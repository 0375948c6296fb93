"""Build an offline HTML docs site (no Quarto needed) from the notebooks' *saved* outputs.

Every notebook in nbs/ (module notebooks, index.ipynb, nbs/experiments/*.ipynb) is converted with
nbconvert's HTMLExporter without executing it. In the displayed code, nbdev directive comment lines
(`#| export`, `#| hide`, ...) are stripped (nbs/index.ipynb becomes home.html); cells flagged `#| hide` and cells that are only directives
(e.g. `#| default_exp`) are dropped. Figures saved as image/png outputs are embedded as data URIs.
Each page gets a small navigation bar; `index.html` lists every page (title = first `# Heading`, with its
`> summary` line) and `api.html` lists the exported functions/classes of each hyperlatent module with
signature and docstring. All files are written atomically. After building, the site is checked offline
(`check_site`, skipped with --no-check): every local link and image of every page resolves, every page shows
each figure its notebook saved as an <img> data URI carrying that image, and api.html has an entry for every
name in each module's `__all__`. Exit status 1 on any failure.

Usage: python tools/build_docs.py [--nbs nbs] [--out _site] [--no-check]
"""
from __future__ import annotations

import argparse
import base64
import copy
import html
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402
from nbconvert import HTMLExporter  # noqa: E402

from hyperlatent.io import atomic_write  # noqa: E402

_DIRECTIVE = re.compile(r'^\s*#\|')
NAV_STYLE = ('<style>.hl-nav{position:sticky;top:0;z-index:1000;background:#24292e;padding:6px 14px;'
             'font-family:sans-serif;font-size:14px}.hl-nav a{color:#fff;margin-right:16px;text-decoration:none}'
             '</style>')


def _directives(src: str) -> list[str]:
    "The directive lines (`#| ...`) of a cell's leading comment block, without the `#|`."
    out = []
    for line in src.splitlines():
        s = line.strip()
        if not s:
            continue
        if _DIRECTIVE.match(s):
            out.append(s[2:].strip())
        elif s.startswith('#'):
            continue
        else:
            break
    return out


def strip_directives(nb):
    "A copy of `nb` whose code cells have no `#|` lines; `#| hide` and directive-only cells are dropped."
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'code':
            dirs = _directives(cell.source)
            if any(d.split(':')[0].split()[0] == 'hide' for d in dirs if d):
                continue
            src = '\n'.join(l for l in cell.source.splitlines() if not _DIRECTIVE.match(l)).strip('\n')
            if not src.strip() and not cell.get('outputs'):
                continue
            cell.source = src
        cells.append(cell)
    nb.cells = cells
    return nb


def title_summary(nb, fallback: str) -> tuple[str, str]:
    "The notebook's first `# Heading` and its first `> summary` line (fallback: the file name, '')."
    title, summary = None, ''
    for cell in nb.cells:
        if cell.cell_type != 'markdown':
            continue
        for line in cell.source.splitlines():
            if title is None and line.startswith('# '):
                title = line[2:].strip()
            elif title is not None and not summary and line.startswith('>'):
                summary = line.lstrip('>').strip()
        if title is not None:
            break
    return (title or fallback), summary


def notebooks(nbs: Path) -> list[Path]:
    return sorted(p for p in nbs.glob('*.ipynb')) + sorted((nbs / 'experiments').glob('*.ipynb'))


def nav_bar(prefix: str) -> str:
    return (f'{NAV_STYLE}<nav class="hl-nav"><a href="{prefix}index.html">hyperlatent docs</a>'
            f'<a href="{prefix}api.html">API</a></nav>')


def inject_nav(body: str, prefix: str) -> str:
    m = re.search(r'<body[^>]*>', body)
    if not m:
        raise ValueError('no <body> tag in the exported HTML')
    return body[:m.end()] + '\n' + nav_bar(prefix) + '\n' + body[m.end():]


def page(title: str, content: str, prefix: str = '') -> str:
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<style>body{font-family:sans-serif;margin:0}main{max-width:960px;margin:20px auto;padding:0 14px}'
            'pre{background:#f6f8fa;padding:8px;overflow-x:auto}.doc{white-space:pre-wrap}</style></head>\n'
            f'<body>\n{nav_bar(prefix)}\n<main>\n{content}\n</main>\n</body></html>\n')


def module_names() -> list[str]:
    return sorted(f'hyperlatent.{p.stem}' for p in (ROOT / 'hyperlatent').glob('*.py')
                  if p.stem not in ('_modidx', '__init__'))


def _sig(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return '(...)'


def exported(mod) -> list[tuple[str, object]]:
    "The module's `__all__` objects, else its public functions/classes defined in it."
    names = getattr(mod, '__all__', None)
    if names is None:
        names = [n for n, o in vars(mod).items() if not n.startswith('_') and
                 (inspect.isfunction(o) or inspect.isclass(o)) and getattr(o, '__module__', None) == mod.__name__]
    return [(n, getattr(mod, n)) for n in names if hasattr(mod, n)]


def api_html(names: list[str]) -> str:
    parts = ['<h1>API reference</h1>', '<ul>']
    parts += [f'<li><a href="#{n}">{n}</a></li>' for n in names]
    parts.append('</ul>')
    for modname in names:
        mod = importlib.import_module(modname)
        parts.append(f'<h2 id="{modname}">{modname}</h2>')
        if inspect.getdoc(mod):
            parts.append(f'<p class="doc">{html.escape(inspect.getdoc(mod))}</p>')
        for name, obj in exported(mod):
            full = f'{modname}.{name}'
            if inspect.isclass(obj) or callable(obj):
                kind = 'class' if inspect.isclass(obj) else 'def'
                parts.append(f'<h3 id="{full}"><code>{kind} {html.escape(full)}{html.escape(_sig(obj))}</code></h3>')
            else:
                parts.append(f'<h3 id="{full}"><code>{html.escape(full)} = {html.escape(repr(obj)[:200])}</code></h3>')
                continue
            doc = inspect.getdoc(obj)
            parts.append(f'<p class="doc">{html.escape(doc) if doc else "<em>(no docstring)</em>"}</p>')
            if inspect.isclass(obj):
                for mname, m in vars(obj).items():
                    if mname.startswith('_') or not (inspect.isfunction(m) or isinstance(m, (classmethod, staticmethod, property))):
                        continue
                    f = m.fget if isinstance(m, property) else getattr(m, '__func__', m)
                    sig = '' if isinstance(m, property) else _sig(f)
                    mdoc = inspect.getdoc(f)
                    parts.append(f'<h4><code>{html.escape(name)}.{html.escape(mname)}{html.escape(sig)}</code></h4>')
                    if mdoc:
                        parts.append(f'<p class="doc">{html.escape(mdoc)}</p>')
    return '\n'.join(parts)


def build(nbs: Path, out: Path) -> int:
    exporter = HTMLExporter()
    entries, failures = [], []
    for nb_path in notebooks(nbs):
        rel = nb_path.relative_to(nbs).with_suffix('.html')
        if rel.as_posix() == 'index.html':  # nbs/index.ipynb must not overwrite the site's index
            rel = Path('home.html')
        prefix = '../' * (len(rel.parts) - 1)
        try:
            nb = nbformat.read(nb_path, as_version=4)
            title, summary = title_summary(nb, nb_path.stem)
            body, _ = exporter.from_notebook_node(strip_directives(nb),
                                                  resources={'metadata': {'name': title}})
            atomic_write(out / rel, inject_nav(body, prefix))
        except Exception as e:  # noqa: BLE001 -- report every failing notebook, then fail
            failures.append(f'{nb_path}: {type(e).__name__}: {e}')
            continue
        entries.append((rel.as_posix(), title, summary))
        print(f'ok   {nb_path.relative_to(nbs)} -> {rel.as_posix()}')
    try:
        names = module_names()
        atomic_write(out / 'api.html', page('API reference', api_html(names)))
        print(f'ok   api.html ({len(names)} modules)')
    except Exception as e:  # noqa: BLE001
        failures.append(f'api.html: {type(e).__name__}: {e}')
    items = []
    for section, pred in [('Modules', lambda r: '/' not in r), ('Experiments', lambda r: '/' in r)]:
        sel = [e for e in entries if pred(e[0])]
        if not sel:
            continue
        items.append(f'<h2>{section}</h2>\n<ul>')
        items += [f'<li><a href="{html.escape(r)}">{html.escape(t)}</a>'
                  + (f' &mdash; {html.escape(s)}' if s else '') + '</li>' for r, t, s in sel]
        items.append('</ul>')
    items.append('<h2>Reference</h2>\n<ul><li><a href="api.html">API reference</a> &mdash; '
                 'every exported function and class, with signature and docstring</li></ul>')
    atomic_write(out / 'index.html', page('hyperlatent docs', '<h1>hyperlatent docs</h1>\n' + '\n'.join(items)))
    if failures:
        print('FAILED to build docs for:', *failures, sep='\n  ', file=sys.stderr)
        return 1
    print(f'docs: {len(entries)} notebook pages + api.html -> {out}/index.html')
    return 0


_IMAGE_TYPES = ('image/png', 'image/jpeg')
_LOCAL = re.compile(r'(?:href|src)="(?![a-z][a-z0-9+.-]*:|#)([^"#?]+)[^"]*"', re.I)


def saved_images(nb) -> list[tuple[str, str]]:
    "(mime type, base64 data) of every image output a page of `nb` shows (after `strip_directives`)."
    out = []
    for cell in strip_directives(nb).cells:
        for o in cell.get('outputs', []):
            for mime in _IMAGE_TYPES:
                data = o.get('data', {}).get(mime)
                if data:
                    out.append((mime, ''.join(data).replace('\n', '').strip()))
    return out


def check_site(nbs: Path, out: Path) -> list[str]:
    "Problems of the built site in `out` (empty list: none): broken local links, missing figures, missing API entries."
    problems = []
    pages = sorted(out.rglob('*.html'))
    if not (out / 'index.html').is_file():
        return [f'{out / "index.html"}: missing']
    for page_path in pages:  # every local href/src resolves (links in notebooks, the nav bar, the index)
        text = page_path.read_text(encoding='utf-8')
        for link in sorted(set(_LOCAL.findall(text))):
            if not (page_path.parent / html.unescape(link)).exists():
                problems.append(f'{page_path.relative_to(out)}: broken link {link!r}')
    index = (out / 'index.html').read_text(encoding='utf-8')
    for nb_path in notebooks(nbs):
        rel = nb_path.relative_to(nbs).with_suffix('.html').as_posix()
        rel = 'home.html' if rel == 'index.html' else rel
        if f'href="{rel}"' not in index:
            problems.append(f'index.html: no link to {rel}')
        if not (out / rel).is_file():
            problems.append(f'{rel}: missing')
            continue
        try:
            nb = nbformat.read(nb_path, as_version=4)
        except Exception as e:  # noqa: BLE001 -- build() reports unreadable notebooks already
            problems.append(f'{nb_path.name}: unreadable ({type(e).__name__})')
            continue
        text = (out / rel).read_text(encoding='utf-8')
        shown = re.findall(r'<img[^>]+src="data:(image/[a-z+]+);base64,([^"]+)"', text)
        shown = [(m, d.replace('\n', '').strip()) for m, d in shown]
        for i, (mime, data) in enumerate(saved_images(nb)):
            if (mime, data) not in shown:
                problems.append(f'{rel}: figure {i + 1} ({mime}) of {nb_path.name} is not shown as an <img> data URI')
            else:
                try:
                    base64.b64decode(data, validate=True)
                except ValueError:
                    problems.append(f'{rel}: figure {i + 1} is not valid base64')
    api_path = out / 'api.html'
    if not api_path.is_file():
        problems.append('api.html: missing')
    else:
        api = api_path.read_text(encoding='utf-8')
        for modname in module_names():
            mod = importlib.import_module(modname)
            if f'<h2 id="{modname}">' not in api:
                problems.append(f'api.html: no section for {modname}')
            for name in getattr(mod, '__all__', []):
                if f'id="{modname}.{name}"' not in api:
                    problems.append(f'api.html: no entry for {modname}.{name}')
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--nbs', type=Path, default=ROOT / 'nbs', help='notebook folder (default: nbs/)')
    ap.add_argument('--out', type=Path, default=ROOT / '_site', help='output folder (default: _site/)')
    ap.add_argument('--no-check', action='store_true', help='skip the offline checks of the built site')
    a = ap.parse_args(argv)
    if not a.nbs.is_dir():
        print(f'build_docs: --nbs {a.nbs} is not a folder', file=sys.stderr)
        return 1
    rc = build(a.nbs, a.out)
    if a.no_check:
        return rc
    problems = check_site(a.nbs, a.out)
    if problems:
        print(f'site check: {len(problems)} problem(s):', *problems, sep='\n  ', file=sys.stderr)
        return 1
    print(f'site check: ok (links, figures, API entries) in {a.out}')
    return rc


if __name__ == '__main__':
    sys.exit(main())
