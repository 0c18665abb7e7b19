"""Where the project's files live, and the environment variables that move them.

Outputs (results rows, figures, checkpoints) go under :func:`project_root`: ``$VITSURVEY_OUTPUT`` if set, else
the checkout, else the working directory. Data sets are looked for under :func:`data_root` first. On/off
switches (``$VITSURVEY_OFFLINE``, ``$VITSURVEY_PROGRESS``) are read by :func:`env_flag`, so every switch
accepts the same spellings.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ENV_DATA", "ENV_OUTPUT", "OutputDirError", "checkpoints_dir", "data_root", "env_flag", "figures_dir",
    "project_root", "repository_root", "results_dir",
]

ENV_OUTPUT = "VITSURVEY_OUTPUT"
ENV_DATA = "VITSURVEY_DATA"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_flag(name: str) -> bool | None:
    """An on/off environment variable: True for 1/true/yes/on, False for 0/false/no/off (any case), None
    when it is unset or empty. Anything else is an error naming the variable, so a typo never silently
    reads as "off"."""
    setting = os.environ.get(name, "").strip().lower()
    if not setting:
        return None
    if setting in _TRUE:
        return True
    if setting in _FALSE:
        return False
    raise ValueError(f"${name} is {os.environ[name]!r}; set it to 1 (on) or 0 (off), or unset it.")


def repository_root() -> Path | None:
    """The checkout this package runs from: the nearest directory upwards from the working directory
    that holds ``data/results`` and ``vitsurvey/``, else the directory above an editable install."""
    here = Path.cwd().resolve()
    package_parent = Path(__file__).resolve().parent.parent
    for d in (*(here, *here.parents), package_parent):
        if (d / "data" / "results").is_dir() and (d / "vitsurvey").is_dir():
            return d
    return None


class OutputDirError(ValueError):
    """``$VITSURVEY_OUTPUT`` names something that cannot hold the outputs (a file)."""


def project_root() -> Path:
    """Where outputs (results, figures, checkpoints) go: ``$VITSURVEY_OUTPUT`` if set, else the
    repository, else the working directory. A ``$VITSURVEY_OUTPUT`` that is (or lies under) a file is an
    error here, before anything tries to write below it."""
    if os.environ.get(ENV_OUTPUT):
        root = Path(os.environ[ENV_OUTPUT]).expanduser()
        for d in (root, *root.parents):
            if d.exists():
                if not d.is_dir():
                    raise OutputDirError(
                        f"${ENV_OUTPUT} is {root}, but {d} is a file, not a directory; point ${ENV_OUTPUT} at a "
                        "directory (it is created if missing), or unset it to write into the repository.")
                break
        return root
    return repository_root() or Path.cwd()


def results_dir() -> Path:
    """``data/results`` under the output root: one CSV per notebook."""
    return project_root() / "data" / "results"


def figures_dir() -> Path:
    """``figures`` under the output root."""
    return project_root() / "figures"


def checkpoints_dir() -> Path:
    """``checkpoints`` under the output root: trained baselines and teachers, reused across notebooks."""
    return project_root() / "checkpoints"


def data_root() -> Path:
    """Where downloads go when no root is given: ``$VITSURVEY_DATA``, else the user's cache."""
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vitsurvey"
