"""Measuring this machine's run-to-run floor: the same models timed in separate processes, minutes apart.

The rounds of one run share the machine's state of the moment, so a run's range says nothing about how far
its median moves in the next run. :func:`measure_rerun_floor` starts ``runs`` processes, each one
:func:`rerun_floor_run`, and turns the spread of their medians into results rows; stored under
:data:`~vitsurvey.measure.floor.RERUN_FLOOR_STEM`, they widen every later range on the same device
(:func:`~vitsurvey.measure.floor.rerun_floor`). The models timed are the profile's ``calibration_models``.
"""

from __future__ import annotations

import datetime
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import models, progress
from ..strategies.quant import dynamic_int8
from .benchmarks import input_shape_of
from .timing import relative_throughput

if TYPE_CHECKING:
    from ..profiles import Profile

__all__ = ["companion_of_run", "measure_rerun_floor", "rerun_floor_run"]


def _rerun_floor_models(profile: Profile, device: torch.device) -> dict[str, nn.Module]:
    """The profile's ``calibration_models``, and on a CPU the first one's dynamic int8 copy: int8 kernels
    respond to the machine's state unlike fp32 ones (notebook 08)."""
    timed = {name: models.create(name) for name in profile.calibration_models}
    if device.type == "cpu":
        first = profile.calibration_models[0]
        timed[f"{first}, int8"] = dynamic_int8(timed[first])
    return timed


def companion_of_run(profile: Profile, k: int) -> str | None:
    """The companion model of floor run ``k`` (0-based): none in every ``len + 1``-th run, else the
    profile's ``calibration_companions`` in turn."""
    companions = tuple(profile.calibration_companions)
    slot = k % (len(companions) + 1)
    return companions[slot - 1] if slot else None


def rerun_floor_run(profile: Profile, device: str | torch.device | None = None,
                    companion: str | None = None) -> dict[str, float]:
    """One run of the floor measurement: the profile's ``calibration_models`` (and, on a CPU, the first one's
    dynamic int8 copy) timed like every comparison (:func:`~vitsurvey.measure.timing.relative_throughput`,
    the profile's rounds, no floor), at the largest batch of the profile's ``sweep_batch_sizes`` (as notebooks
    02 and 11), with ``companion`` (a timm model) timed in the same rounds but not reported. Returns the median
    rate of each model and the median ratio of every pair (a later model over an earlier one)."""
    dev = torch.device(device or profile.device)
    torch.manual_seed(profile.seed)
    timed = _rerun_floor_models(profile, dev)
    reported = list(timed)
    if companion:
        timed[f"companion: {companion}"] = models.create(companion)
    shapes = {n: input_shape_of(m) for n, m in timed.items()}
    t = relative_throughput(timed, shapes, max(profile.sweep_batch_sizes), dev, floor=False, **profile.timing())
    out = {f"rate: {n}": t.rate(n).median for n in reported}
    out.update({f"ratio: {b} / {a}": t.ratio(b, a).median
                for i, a in enumerate(reported) for b in reported[i + 1:]})
    return out


def measure_rerun_floor(
    profile: Profile,
    runs: int = 6,
    pause_s: float = 30.0,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Measure how much this machine's timings move between runs: ``runs`` separate processes, ``pause_s``
    seconds apart, each one :func:`rerun_floor_run`. Returns one results row per quantity (its median over
    the runs, lowest and highest run, and ``floor`` = (highest - lowest) / median) and a row per kind
    (``rate``, ``ratio``) with the largest floor of that kind, which
    :func:`~vitsurvey.measure.floor.rerun_floor` reads back.

    Separate processes, because a process carries state between timings (the allocator's, before
    :func:`~vitsurvey.measure.timing.steady_allocator`; caches; the threads' placement) that rounds within
    one run cannot vary; a different companion model per run (:func:`companion_of_run`), because a ratio
    also moves with the other models timed in the same rounds.
    The floor is the full spread of the medians, not a half-width, so that any two of these runs' medians
    lie within each other's widened ranges. Takes about ``runs`` x (2.5 minutes + ``pause_s``) in the cpu profile.
    """
    if runs < 2:
        raise ValueError(f"A run-to-run spread needs at least 2 runs, not {runs}.")
    if pause_s < 0:
        raise ValueError(f"pause_s cannot be negative, got {pause_s}.")
    dev = torch.device(device or profile.device)
    code = ("import json, sys; from vitsurvey import measure, profiles; "
            "p = profiles.get_profile(sys.argv[1], resolve_data=False); "
            "print('CALIBRATION ' + json.dumps(measure.rerun_floor_run(p, sys.argv[2], sys.argv[3] or None)))")
    medians: dict[str, list[float]] = {}
    for k in progress.bar(range(runs), "calibration runs"):
        if k:
            time.sleep(pause_s)
        companion = companion_of_run(profile, k) or ""
        proc = subprocess.run([sys.executable, "-c", code, profile.name, str(dev), companion],
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("CALIBRATION ")), None)
        if proc.returncode or line is None:
            said = proc.stderr.strip().splitlines()
            raise RuntimeError(f"Calibration run {k + 1} of {runs} failed (exit {proc.returncode}): "
                               f"{said[-1] if said else 'no output'}")
        for key, value in json.loads(line.removeprefix("CALIBRATION ")).items():
            medians.setdefault(key, []).append(value)
        if log:
            log(f"calibration run {k + 1}/{runs} (beside {companion or 'nothing else'}): "
                + ", ".join(f"{q} {v[-1]:.3g}" for q, v in medians.items()))
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    rows = []
    for quantity, values in medians.items():
        mid = statistics.median(values)
        rows.append({"method": "run-to-run", "setting": quantity, "kind": quantity.split(":")[0], "runs": runs,
                     "companions": ", ".join(profile.calibration_companions) or "none",
                     "pause_s": pause_s, "median": mid, "low": min(values), "high": max(values),
                     "floor": (max(values) - min(values)) / mid, "calibrated_at": stamp})
    for kind in ("rate", "ratio"):
        floors = [r["floor"] for r in rows if r["kind"] == kind]
        if floors:
            rows.append({"method": "run-to-run", "setting": f"{kind} floor", "kind": f"{kind} floor", "runs": runs,
                         "pause_s": pause_s, "floor": max(floors), "calibrated_at": stamp})
    return rows
