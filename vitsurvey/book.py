"""A static site of the stored, executed notebooks: ``make book`` (``python -m vitsurvey book``).

Each notebook becomes one HTML page through nbconvert's JupyterLab template (figures embedded, tables as the
notebook shows them, equations typeset by MathJax in the reader's browser), with a bar linking the contents
page and the notebooks before and after it, in reading order. Nothing is executed: the site shows the numbers
the notebooks were stored with. Links that point into the repository (a results file, a figure) are copied
beside the pages, so every link in the site resolves.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

from .notebooks import NOTEBOOK_GLOB

__all__ = ["build", "local_links"]


def _title(nb) -> str:
    """The notebook's first heading, without its markdown marks."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def _nav(pages: list[tuple[str, str]], i: int) -> str:
    """The bar above and below page ``i``: previous, contents, next, and the page's title."""
    def link(j: int, label: str) -> str:
        return f'<a href="{pages[j][0]}">{label}</a>' if 0 <= j < len(pages) else f"<span>{label}</span>"

    return ('<nav class="vitsurvey-nav" style="display:flex;gap:2em;padding:0.6em 1em;border-bottom:1px solid #ccc;'
            'font-family:sans-serif">'
            f'{link(i - 1, "&larr; previous")}<a href="index.html">contents</a>{link(i + 1, "next &rarr;")}'
            f'<span style="color:#666">{html.escape(pages[i][1])}</span></nav>')


_LOCAL_LINK = re.compile(r'(?:href|src)="(?!https?:|data:|#|mailto:|javascript:)([^"#?]+)')


def local_links(page: str) -> list[str]:
    """The relative links and sources of a page (what must exist beside it)."""
    return [m for m in _LOCAL_LINK.findall(page) if m.strip()]


def build(repo: Path, out: Path) -> list[Path]:
    """Write the site of ``repo``'s notebooks into ``out`` (replaced) and return its pages, contents first."""
    import nbformat
    from nbconvert import HTMLExporter

    notebooks = sorted((repo / "notebooks").glob(NOTEBOOK_GLOB))
    if not notebooks:
        raise FileNotFoundError(f"No notebooks ({NOTEBOOK_GLOB}) in {repo / 'notebooks'}.")
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    read = [(p, nbformat.read(p, as_version=4)) for p in notebooks]
    pages = [(f"{p.stem}.html", _title(nb) or p.stem) for p, nb in read]
    exporter = HTMLExporter(template_name="lab")
    written = []
    for i, (path, nb) in enumerate(read):
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": pages[i][1]}})
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _nav(pages, i), body, count=1)
        body = body.replace("</body>", _nav(pages, i) + "</body>", 1)
        for link in local_links(body):  # a file of the repository the notebook links to travels with the page
            source = (path.parent / link).resolve()
            if source.is_file() and repo.resolve() in source.parents:
                target = staging / source.relative_to(repo.resolve())
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                body = body.replace(f'"{link}"', f'"{target.relative_to(staging).as_posix()}"')
        page = staging / pages[i][0]
        page.write_text(body, encoding="utf-8")
        written.append(page)
    rows = "\n".join(f'<li><a href="{href}">{html.escape(title)}</a> <small>({href[:-5]})</small></li>'
                     for href, title in pages)
    (staging / "index.html").write_text(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>vitsurvey</title></head>"
        "<body style=\"font-family:sans-serif;max-width:50em;margin:2em auto\"><h1>vitsurvey</h1>"
        "<p>The executable companion to five papers on efficient Vision Transformers: every notebook as it was "
        "stored, executed in the cpu profile, in reading order.</p>"
        f"<ol start=\"0\">{rows}</ol></body></html>\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return [out / "index.html", *(out / p.name for p in written)]
