"""The GPU run's rows as a notebook shows them beside its CPU numbers.

A notebook whose strategy the GPU run measures (:mod:`vitsurvey.gpu.run`) asks :func:`measured` for that step's rows
and prints the caption with them: where and when they were measured ("on one NVIDIA H200, measured on ...") or, while
no GPU run has landed rows in ``data/results/gpu_run.csv``, "not yet measured on a GPU". Only the latest run that was
not a rehearsal counts (a rehearsal runs on a CPU at toy sizes; an older run was measured with older code), and only
rows whose step finished ("ok"); the others are the run's log, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from .. import results
from .run import STEM

__all__ = ["NOT_MEASURED", "GpuRows", "measured"]

NOT_MEASURED = "not yet measured on a GPU"
"""The caption where the results hold no GPU rows for a step."""


@dataclass(frozen=True)
class GpuRows:
    """The rows one notebook shows, and the caption that says where and when they were measured."""

    table: pd.DataFrame
    caption: str

    @property
    def empty(self) -> bool:
        return self.table.empty


def _truthy(column: pd.Series) -> pd.Series:
    return column.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def measured(steps: Iterable[str], columns: Iterable[str] | None = None, frame: pd.DataFrame | None = None) -> GpuRows:
    """The rows of ``steps`` from the latest GPU run (not a rehearsal) that measured any of them, with ``columns``
    (those present; None: all), and their caption. ``frame``: the results to read (None: ``gpu_run.csv``)."""
    wanted = tuple(steps)
    if not wanted:
        raise ValueError("measured() needs the names of the GPU run's steps to show, e.g. ('tokens',)")
    rows = results.read(STEM) if frame is None else results.current(frame)
    needed = {"step", "status", "run", "profile", "device"}
    if rows.empty or not needed <= set(rows.columns):
        return GpuRows(pd.DataFrame(), NOT_MEASURED)
    keep = (rows["step"].isin(wanted) & (rows["status"].astype(str) == "ok") & (rows["profile"] == "gpu")
            & ~_truthy(rows.get("rehearsal", pd.Series(False, index=rows.index))))
    rows = rows[keep]
    if rows.empty:
        return GpuRows(pd.DataFrame(), NOT_MEASURED)
    rows = rows[rows["run"] == rows["run"].max()]  # ISO timestamps sort as times
    devices = ", ".join(sorted(set(rows["device"].astype(str))))
    dates = ", ".join(sorted(set(rows["date"].astype(str)))) if "date" in rows else str(rows["run"].iloc[0])[:10]
    table = rows if columns is None else rows[[c for c in columns if c in rows.columns]]
    return GpuRows(table.reset_index(drop=True), f"on one {devices}, measured on {dates}")
