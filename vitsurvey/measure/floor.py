"""This machine's run-to-run floor as recorded: how far the median of one timing moves between separate runs.

Timings minutes apart see a different machine (a shared CPU can differ by 2x from one hour to the next), so
every range a notebook states is widened to at least this floor (:class:`~vitsurvey.metrics.Spread`). The
floor is measured by :func:`~vitsurvey.measure.reruns.measure_rerun_floor`, stored under
:data:`RERUN_FLOOR_STEM` and read back here, per device, by every timing (:mod:`vitsurvey.measure.timing`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import results
from ..device import device_name

__all__ = ["RERUN_FLOOR_STEM", "RerunFloor", "rerun_floor"]

RERUN_FLOOR_STEM = "rerun_floor"
"""Results file (``data/results/rerun_floor.csv``) of :func:`~vitsurvey.measure.reruns.measure_rerun_floor`."""


@dataclass(frozen=True)
class RerunFloor:
    """How far the median of the same timing moved between runs on one device: fractions of the median.

    The rounds of one run share the machine's state of the moment; separate runs do not, so their medians
    disagree by more than any run's range. Every range a notebook states is widened to at least this much
    either side of its median (:class:`~vitsurvey.metrics.Spread`), so that a rerun's median lands inside it.
    """

    rate: float
    """For images per second (an absolute rate moves most: the machine's speed as a whole)."""
    ratio: float
    """For the ratio of two models' rates, timed in the same rounds."""
    runs: int
    measured: str
    """When: an ISO timestamp."""
    device: str


def rerun_floor(device: str | torch.device | None = None) -> RerunFloor | None:
    """The latest run-to-run floor measured on this device (same CPU model, threads and instruction set,
    or the same GPU), from ``data/results/rerun_floor.csv``; None where it was never measured here."""
    frame = results.read(RERUN_FLOOR_STEM)
    if frame.empty or "calibrated_at" not in frame.columns:
        return None
    name = device_name(device)
    mine = frame[frame["device"] == name]
    if mine.empty:
        return None
    last = mine[mine["calibrated_at"] == mine["calibrated_at"].max()]
    floors = dict(zip(last["kind"], last["floor"]))
    if "rate floor" not in floors or "ratio floor" not in floors:
        return None
    return RerunFloor(float(floors["rate floor"]), float(floors["ratio floor"]), int(last["runs"].iloc[0]),
                      str(last["calibrated_at"].iloc[0]), name)
