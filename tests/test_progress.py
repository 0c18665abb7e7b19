"""Progress bars appear in a terminal and nowhere else: stored notebooks stay free of bar debris."""

import io
import re
from pathlib import Path

import nbformat
import pytest

from vitsurvey import progress

ROOT = Path(__file__).resolve().parent.parent


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_is_drawn_in_a_terminal_only(monkeypatch):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    items = [1, 2, 3]
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file, CI, a notebook's kernel
    assert progress.bar(items, "x") is items
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress.bar(items, "steps")) == items
    assert "steps" in terminal.getvalue() and "/3" in terminal.getvalue()


@pytest.mark.parametrize("value, drawn", [("1", True), ("0", False), ("off", False), ("yes", True)])
def test_the_environment_overrides_the_guess(monkeypatch, value, drawn):
    monkeypatch.setenv(progress.ENV_VAR, value)
    monkeypatch.setattr("sys.stderr", Terminal() if not drawn else io.StringIO())
    assert progress.wanted() is drawn


BAR = re.compile(r"\r|\d+%\|[^|]*\||it/s\]")


def test_stored_notebooks_hold_no_progress_bar_debris():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []):
                text = out.get("text", "") if out.get("output_type") == "stream" else ""
                assert not BAR.search(text), f"{path.name}, cell {i + 1}: {text[:200]!r}"
                assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), path.name
