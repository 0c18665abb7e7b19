"""The notebook site: a page per stored notebook in reading order, every figure shown, every link resolving, a
sidebar, search and downloads; built without executing anything, and never over a folder of the user's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from vitsurvey import book, notebooks
from vitsurvey.__main__ import main

pytestmark = pytest.mark.slow  # starts Sphinx in a process

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob(notebooks.NOTEBOOK_GLOB))
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


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
    assert (site / book.MARKER).is_file()


def test_no_link_is_broken(site):
    pages = sorted(site.glob("*.html"))
    assert {p.stem for p in NOTEBOOKS} | {"index", "search", "genindex"} <= {p.stem for p in pages}
    for page in pages:
        for link in book.local_links(page.read_text()):
            assert (page.parent / link).exists(), f"{page.name} links to missing {link}"


def test_pages_show_every_figure_navigate_and_offer_the_notebook(site):
    for i, p in enumerate(NOTEBOOKS):
        nb = nbformat.read(p, as_version=4)
        figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        page = (site / f"{p.stem}.html").read_text()
        assert page.count("<img") >= figures, p.name
        for other in (o for o in NOTEBOOKS if o != p):  # the sidebar lists every other notebook on every page
            assert f'href="{other.stem}.html"' in page, f"{p.name} does not link {other.name}"
        if i + 1 < len(NOTEBOOKS):
            assert re.search(rf'class="right-next"\s+href="{NOTEBOOKS[i + 1].stem}.html"', page), p.name
        if i > 0:
            assert re.search(rf'class="left-prev"\s+href="{NOTEBOOKS[i - 1].stem}.html"', page), p.name
        assert f'href="_sources/{p.name}"' in page and (site / "_sources" / p.name).is_file(), "no download link"
        sections = [c.source.split("\n", 1)[0][3:].strip() for c in nb.cells
                    if c.cell_type == "markdown" and c.source.startswith("## ")]
        assert sections and page.count('class="reference internal nav-link" href="#') >= len(sections) - 1, p.name
        if any("$" in c.source for c in nb.cells if c.cell_type == "markdown"):
            assert "mathjax" in page.lower(), f"{p.name} has equations but no typesetter"


def _prose_words(nb) -> set[str]:
    """The words of a notebook's markdown prose (no code spans, no maths), lower case, six letters or more."""
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    text = re.sub(r"`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|\([^)]*\.ipynb\)|https?://\S+", " ", text, flags=re.S)
    return {w.lower() for w in re.findall(r"\b[A-Za-z]{6,}\b", text)}


def test_search_finds_a_word_only_notebook_12_has(site):
    from sphinx.search.en import SearchEnglish

    words = {p.stem: _prose_words(nbformat.read(p, as_version=4)) for p in NOTEBOOKS}
    own = sorted(words["12_leaderboard"] - set().union(*(w for k, w in words.items() if k != "12_leaderboard")))
    assert own, "notebook 12 has no word of its own to search for"
    raw = (site / "searchindex.js").read_text()
    index = json.loads(raw[raw.index("(") + 1:raw.rindex(")")])
    docs, terms = index["docnames"], index["terms"]
    stem = SearchEnglish({}).stem
    found = [w for w in own if stem(w) in terms]
    assert found, f"none of notebook 12's own words is in the search index: {own[:10]}"
    hits = terms[stem(found[0])]
    hits = hits if isinstance(hits, list) else [hits]
    assert [docs[h] for h in hits] == ["12_leaderboard"], (found[0], [docs[h] for h in hits])


def test_the_site_shows_stored_outputs_without_running_anything(tmp_path):
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell('raise SystemExit("this cell must not run")')
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="stored output 4242\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · A stored notebook\n\n## One section\n\nText."), cell]
    nbformat.write(nb, repo / "notebooks" / "00_stored.ipynb")
    pages = book.build(repo, tmp_path / "site")
    page = pages[1].read_text()
    assert "stored output 4242" in page and "SystemExit" in page
    assert "Traceback" not in page  # the cell's stored output is shown, not the result of running it


def test_the_book_never_replaces_a_folder_of_the_users(tmp_path, monkeypatch):
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "thesis.txt").write_text("years of work")
    with pytest.raises(book.BookError, match="holds files that are not an earlier site.*thesis.txt"):
        book.check_output_folder(kept, ROOT)
    assert (kept / "thesis.txt").read_text() == "years of work"
    for bad in (ROOT, ROOT.parent, Path("/")):
        with pytest.raises(book.BookError, match="checkout or a folder above it"):
            book.check_output_folder(bad, ROOT)
    monkeypatch.chdir(ROOT)
    with pytest.raises(book.BookError, match="checkout"):
        book.check_output_folder(Path("."), ROOT)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(book.BookError, match="is a file"):
        book.check_output_folder(tmp_path / "a_file", ROOT)
    assert main(["book", "--out", str(kept)]) != 0 and (kept / "thesis.txt").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert book.check_output_folder(empty, ROOT) == empty.resolve()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / book.MARKER).write_text("")
    (earlier / "old.html").write_text("an earlier site")
    assert book.check_output_folder(earlier, ROOT) == earlier.resolve()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_the_page_of_notebook_06_in_a_browser(site):
    """Headless Chromium opens notebook 06's page from the files: the sidebar, the search box and a figure are
    there; the picture is kept in build/test-artifacts/ (docs/book_token_reduction.png is one such picture)."""
    playwright = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto((site / "06_token_reduction.html").as_uri(), timeout=60_000)
            page.wait_for_selector(".bd-sidebar-primary", timeout=30_000)
            assert page.locator(".bd-sidebar-primary a[href='12_leaderboard.html']").count() >= 1
            assert page.locator("form.bd-search, .search-button, button[aria-label*='Search']").count() >= 1
            figure = page.locator("section img").first
            figure.scroll_into_view_if_needed()
            assert figure.evaluate("img => img.complete && img.naturalWidth > 100"), "the figure did not load"
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(ARTIFACTS / "book_token_reduction.png"))
        finally:
            browser.close()


def test_an_invalid_notebook_is_named(tmp_path):
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "notebooks" / "03_broken.ipynb").write_text("{ not json")
    with pytest.raises(book.BookError, match="03_broken.ipynb is not a valid notebook"):
        book.build(repo, tmp_path / "site")
    assert not (tmp_path / "site").exists()
