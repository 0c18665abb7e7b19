"""Fixtures shared by the unit tests.

``out``: an empty output root for one test (``$VITSURVEY_OUTPUT`` pointed at ``tmp_path``), returned as the
results folder inside it, so a test's rows, figures and checkpoints never meet another test's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vitsurvey import paths


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(paths.ENV_OUTPUT, str(tmp_path))
    return tmp_path / "data" / "results"
