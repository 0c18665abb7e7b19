"""A site of the stored, executed notebooks, built as the field's notebook books are: ``make book``.

Sphinx with myst-nb and sphinx-book-theme (the stack of Jupyter Book 1) renders each stored notebook as one page:
figures, tables and equations as stored, nothing executed, so the site shows the numbers the notebooks were
stored with. Every page has a sidebar with every notebook and, for the page open, its sections; full-text search;
a download link for the notebook itself (``_sources/NAME.ipynb``); previous and next links. The pages link each
other by relative paths, so the site reads offline (MathJax, which typesets the equations, is fetched by the
browser). Why these tools and not a builder of our own: they give search, navigation and downloads that a
reader of d2l.ai or a Jupyter Book site expects, install from the package registry and build offline.

The output folder is only ever written where nothing of the user's can be lost: a folder that does not exist, an
empty one, or one an earlier build made (it holds :data:`MARKER`). The checkout itself, any folder above it and
any folder holding other files are refused before anything is written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .notebooks import NOTEBOOK_GLOB

__all__ = ["MARKER", "BookError", "build", "check_output_folder", "local_links"]

MARKER = ".vitsurvey-book"
"""The file every built site holds: a folder with it was made by this builder and may be replaced by the next build."""

_CONF = '''\
# Sphinx configuration of the notebook site, written by vitsurvey.book (nothing here executes a notebook).
project = "vitsurvey"
author = "vitsurvey"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # the stored outputs, as executed in the cpu profile
myst_enable_extensions = ["dollarmath", "amsmath"]
html_theme = "sphinx_book_theme"
html_title = "vitsurvey"
html_theme_options = {"use_download_button": True, "show_toc_level": 2, "home_page_in_toc": True,
                      "show_navbar_depth": 1}
html_last_updated_fmt = None
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
'''

_INDEX = """\
# vitsurvey

The executable companion to five papers on efficient Vision Transformers. Each notebook derives one efficiency
strategy, implements it in PyTorch, reruns a small comparison under one measurement protocol and sets the measured
numbers beside the papers' reported ones. These pages show every notebook as it was stored, executed in the cpu
profile; the download button of each page gives the notebook itself, to run in JupyterLab.

```{{toctree}}
:maxdepth: 1
:caption: Notebooks

{entries}
```
"""


class BookError(ValueError):
    """The site cannot be built where asked, or the build failed; the message says why and what to do."""


def local_links(page: str) -> list[str]:
    """The relative links and sources of a page (what must exist beside it)."""
    pattern = re.compile(r'(?:href|src)="(?!https?:|data:|#|mailto:|javascript:)([^"#?]+)')
    return [m for m in pattern.findall(page) if m.strip()]


def check_output_folder(out: Path, repo: Path) -> Path:
    """``out`` resolved, if the site may be written there; else :class:`BookError` naming the reason. Building
    replaces the folder's contents, so only a new, an empty or an earlier site's folder is accepted."""
    if str(out).strip() in ("", "."):
        out = Path.cwd()
    target, checkout = Path(out).expanduser().resolve(), Path(repo).resolve()
    if target == checkout or target in checkout.parents:
        raise BookError(f"--out {target} is the checkout or a folder above it; building there would replace it. "
                        "Give a new folder, e.g. build/book.")
    if target.exists():
        if not target.is_dir():
            raise BookError(f"--out {target} is a file, not a folder; give a new or empty folder.")
        others = sorted(p.name for p in target.iterdir())
        if others and not (target / MARKER).is_file():
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise BookError(f"--out {target} holds files that are not an earlier site ({shown}); the build replaces "
                            "its folder's contents, so give a new or empty folder.")
    return target


def build(repo: Path, out: Path) -> list[Path]:
    """Write the site of ``repo``'s stored notebooks into ``out`` and return its pages, the contents page first.
    ``out`` must be new, empty or an earlier site (:func:`check_output_folder`); a failed build leaves it as it was.
    A notebook that cannot be read is named in the error."""
    import nbformat

    target = check_output_folder(out, repo)
    notebooks = sorted((Path(repo) / "notebooks").glob(NOTEBOOK_GLOB))
    if not notebooks:
        raise FileNotFoundError(f"No notebooks ({NOTEBOOK_GLOB}) in {Path(repo) / 'notebooks'}.")
    for nb in notebooks:
        try:
            nbformat.validate(nbformat.read(nb, as_version=4))
        except Exception as exc:  # nbformat raises several kinds for unreadable or invalid files
            raise BookError(f"{nb} is not a valid notebook ({type(exc).__name__}: {str(exc)[:200]}); repair it or "
                            "restore it from the repository (git checkout -- FILE).") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vitsurvey-book-") as tmp:
        source, site = Path(tmp) / "source", Path(tmp) / "site"
        source.mkdir()
        for nb in notebooks:
            shutil.copy2(nb, source / nb.name)
        (source / "conf.py").write_text(_CONF, encoding="utf-8")
        (source / "index.md").write_text(_INDEX.format(entries="\n".join(nb.stem for nb in notebooks)),
                                         encoding="utf-8")
        # a separate process: Sphinx configures logging and imports the theme globally; -W makes every warning
        # (a broken cross-reference, a notebook that does not parse) an error naming the file
        done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
                               "-d", str(Path(tmp) / "doctrees"), str(source), str(site)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            report = (done.stderr or done.stdout).strip().replace(str(source) + "/", "notebooks/")
            raise BookError(f"The site could not be built:\n{report[-3000:]}")
        (site / MARKER).write_text("Built by `python -m vitsurvey book`; the next build replaces this folder.\n")
        # copied beside the target first, then swapped in by renames: a failure leaves the earlier site in place,
        # and the temporary folders have names of their own, so no folder of the user's is ever removed
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building-"))
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        try:
            shutil.copytree(site, staging / "site")
            if target.exists():
                target.rename(old / "site")  # only an empty folder or an earlier site reaches here
            (staging / "site").rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return [target / "index.html", *(target / f"{nb.stem}.html" for nb in notebooks)]
