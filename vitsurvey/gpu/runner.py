"""Running measurement steps within a fixed time, so that one failing or slow step costs one row, not the run.

Why a runner: a GPU lent for a few minutes gives one try. Each step gets its own ``try``: a step that raises is
logged with its traceback and recorded as a failed row, and the next step runs. Each step has an expected time
and a cap: a step whose expected time no longer fits in what is left of the run is skipped, saying so, and a step
that runs past its cap is stopped (a timer interrupts it: :class:`StepTimeout`, which no ``except Exception`` in a
step can swallow). Rows are appended to the results file as a step produces them (:meth:`Context.emit`), so a
step stopped half-way keeps what it measured, and so does a run killed from outside.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

__all__ = ["Clock", "Context", "Log", "RESERVE_S", "Step", "StepTimeout", "run_steps", "time_limit"]

RESERVE_S = 5.0
"""Seconds kept back at the end of the run for writing the last rows and the summary."""


class StepTimeout(BaseException):
    """A step ran past its time cap. A ``BaseException``, so that a step's own ``except Exception`` (one bad model
    in a list, say) cannot catch it and carry on past the cap; only the runner catches it."""


def _alarm_usable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`StepTimeout` in this thread once ``seconds`` have passed (a POSIX interval timer). Where no such
    timer can be set (not the main thread, or not POSIX) the block runs without a cap; the runner's between-step
    checks still keep the run's total."""
    if seconds <= 0:
        raise StepTimeout(f"{what}: no time left")
    if not _alarm_usable():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"{what}: stopped at its time cap of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Clock:
    """Seconds since the run began, against its total; and the current step's cap."""

    def __init__(self, total_s: float) -> None:
        self.total_s, self.start = total_s, time.monotonic()
        self.step_end: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds left of the run, less :data:`RESERVE_S`."""
        return self.total_s - RESERVE_S - self.elapsed()

    def step_left(self) -> float:
        """Seconds left of the current step's cap (of the run, outside a step)."""
        run_left = self.left()
        return run_left if self.step_end is None else min(run_left, self.step_end - time.monotonic())


class Log:
    """Lines to standard output and to a log file, each stamped with the run's elapsed seconds."""

    def __init__(self, path: Path | None, clock: Clock, stream: TextIO | None = None) -> None:
        self.path, self.clock, self.stream = path, clock, stream or sys.stdout
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())

    def __call__(self, message: str) -> None:
        stamp = f"[{self.clock.elapsed():7.1f} s] "
        text = "\n".join(stamp + line for line in str(message).splitlines() or [""])
        print(text, file=self.stream, flush=True)
        if self._file is not None:
            self._file.write(text + "\n")
            self._file.flush()

    def traceback(self, what: str) -> None:
        """The traceback of the exception being handled, under a heading."""
        self(f"{what}:\n{traceback.format_exc().rstrip()}")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Context:
    """What every step gets: the run's settings, where to log and record, and what earlier steps left for later ones
    (``shared``: the trained baseline, a compiled model)."""

    plan: Any
    """The run's sizes and budgets (:class:`vitsurvey.gpu.steps.Plan`)."""
    profile: Any
    """The project profile the run measures with (``gpu``; ``smoke`` when rehearsing)."""
    device: torch.device
    log: Log
    clock: Clock
    record: Callable[[list[dict[str, Any]]], None]
    """Appends rows to the results file (with the run's common columns)."""
    reported: Path | None = None
    """Folder holding S3's ``s3_runs.csv`` (None: the repository's ``data/reported``)."""
    shared: dict[str, Any] = field(default_factory=dict)
    step: str = ""
    emitted: int = 0

    def emit(self, rows: list[dict[str, Any]]) -> None:
        """Record measured rows now, tagged with the current step."""
        if rows:
            self.record([{"step": self.step, "status": "ok", **r} for r in rows])
            self.emitted += len(rows)

    def step_left(self) -> float:
        return self.clock.step_left()


@dataclass(frozen=True)
class Step:
    """One measurement: ``run(ctx)`` emits its rows through :meth:`Context.emit`. ``expected_s``: about how long it
    takes (it is skipped when less is left); ``cap_s``: the most it may take."""

    name: str
    run: Callable[[Context], None]
    expected_s: float
    cap_s: float
    description: str = ""


def _free(device: torch.device) -> None:
    """Drop what the step left behind: its models and the CUDA allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_steps(steps: list[Step], ctx: Context) -> list[dict[str, Any]]:
    """Run ``steps`` in order within the clock's total; return one status row per step (also recorded).

    A status is ``ok``, ``failed: <error>`` (the traceback is in the log) or ``skipped: <why>``."""
    statuses = []
    for step in steps:
        ctx.step, ctx.emitted = step.name, 0
        left = ctx.clock.left()
        started = time.monotonic()
        if left < step.expected_s:
            status = (f"skipped: {max(left, 0):.0f} s of the run's {ctx.clock.total_s:.0f} s were left and it needs "
                      f"about {step.expected_s:.0f} s")
            ctx.log(f"== {step.name}: {status}")
        else:
            cap = min(step.cap_s, left)
            ctx.log(f"== {step.name} (expected {step.expected_s:.0f} s, cap {cap:.0f} s, {left:.0f} s left in the run)"
                    + (f": {step.description}" if step.description else ""))
            ctx.clock.step_end = started + cap
            try:
                with time_limit(cap, step.name):
                    step.run(ctx)
                status = "ok"
            except StepTimeout as exc:
                status = f"failed: {exc} (rows measured before it are kept)"
                ctx.log.traceback(f"{step.name} stopped")
            except Exception as exc:  # one bug costs one row: the run goes on to the next step
                status = f"failed: {type(exc).__name__}: {exc}".replace("\n", " ")[:500]
                ctx.log.traceback(f"{step.name} failed")
            finally:
                ctx.clock.step_end = None
                _free(ctx.device)
        seconds = time.monotonic() - started
        row = {"method": "gpu-run step", "setting": step.name, "step": step.name, "status": status,
               "seconds": round(seconds, 1), "rows": ctx.emitted}
        ctx.record([row])
        ctx.log(f"   {step.name}: {status} ({seconds:.1f} s, {ctx.emitted} rows)")
        statuses.append(row)
    return statuses
