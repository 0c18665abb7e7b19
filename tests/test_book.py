"""The static site: one page per stored notebook, in reading order, every figure shown and every link resolving."""

from pathlib import Path

import nbformat
import pytest

from vitsurvey import book, notebooks
from vitsurvey.__main__ import main

pytestmark = pytest.mark.slow  # starts processes

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob(notebooks.NOTEBOOK_GLOB))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "book"
    assert main(["book", "--out", str(out)]) == 0
    return out


def test_every_notebook_has_a_page_listed_in_reading_order(site):
    index = (site / "index.html").read_text()
    positions = [index.index(f'href="{p.stem}.html"') for p in NOTEBOOKS]
    assert positions == sorted(positions) and len(positions) == len(NOTEBOOKS)
    for p in NOTEBOOKS:
        assert (site / f"{p.stem}.html").is_file()


def test_no_link_is_broken(site):
    pages = sorted(site.glob("*.html"))
    assert len(pages) == len(NOTEBOOKS) + 1
    for page in pages:
        for link in book.local_links(page.read_text()):
            assert (page.parent / link).exists(), f"{page.name} links to missing {link}"


def test_pages_show_every_figure_and_navigate(site):
    for i, p in enumerate(NOTEBOOKS):
        nb = nbformat.read(p, as_version=4)
        figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        page = (site / f"{p.stem}.html").read_text()
        assert page.count("<img") >= figures, p.name
        assert 'href="index.html">contents' in page
        if i + 1 < len(NOTEBOOKS):
            assert f'href="{NOTEBOOKS[i + 1].stem}.html">next' in page
        if any("$" in c.source for c in nb.cells if c.cell_type == "markdown"):
            assert "MathJax" in page or "mathjax" in page, f"{p.name} has equations but no typesetter"


def test_the_site_is_built_from_stored_outputs_without_running_anything(site, monkeypatch):
    import nbclient

    def refuse(*args, **kwargs):
        raise AssertionError("the site must not execute notebooks")

    monkeypatch.setattr(nbclient.NotebookClient, "execute", refuse)
    assert book.build(ROOT, site.parent / "again")[0].name == "index.html"
