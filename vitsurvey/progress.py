"""Progress bars where someone watches a terminal, and nowhere else.

Long work (training epochs, benchmarking sweeps, timing rounds, notebooks executed by ``python -m vitsurvey
run``) shows a tqdm bar when standard error is a terminal. In a notebook, a log file or CI it shows nothing: a
text bar would leave carriage-return debris in the stored outputs, and a widget bar needs ipywidgets and a
live front end. ``$VITSURVEY_PROGRESS`` set to 1 or 0 overrides the guess.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from .paths import env_flag

__all__ = ["ENV_VAR", "bar", "wanted"]

ENV_VAR = "VITSURVEY_PROGRESS"
T = TypeVar("T")


def wanted() -> bool:
    """Whether to draw bars: ``$VITSURVEY_PROGRESS`` if set, else whether standard error is a terminal."""
    setting = env_flag(ENV_VAR)
    if setting is not None:
        return setting
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bar(items: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T] | Iterator[T]:
    """``items`` with a tqdm bar on standard error when :func:`wanted`, else ``items`` themselves, untouched."""
    if not wanted():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, leave=leave, dynamic_ncols=True, file=sys.stderr)
