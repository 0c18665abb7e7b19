"""How fast a model runs: images per second over a batch sweep, per-pass times, latency, and the interleaved
rounds behind every speed-up.

Traps closed here (notebook 02 shows each on real numbers): timing without warm-up measures allocation and
kernel selection; timing a GPU without synchronising measures only the kernel launches (:func:`throughput`
does both right); on a CPU, glibc's allocator makes a timing depend on what the process allocated before
(:func:`steady_allocator`). Two models timed minutes apart see different machines, and other processes slow
whatever runs beside them, so speed-ups are ratios taken within interleaved rounds, one thread per model, by
each thread's CPU time, summarised by a median with a bootstrap interval (:func:`relative_throughput`).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import platform
import statistics
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import progress
from ..checks import whole, whole_numbers
from ..device import MachineState, watch_load
from ..device import threads as threads_limited
from ..metrics import Interval

__all__ = [
    "Autocast", "CLOCKS", "RESOLUTION", "Throughput", "Timings", "autocast_context", "check_materialised",
    "free_cached", "is_oom", "latency_ms", "mode_kept", "pass_times_ms", "relative_throughput", "steady_allocator",
    "synchronize", "throughput",
]


def synchronize(device: torch.device) -> None:
    """Wait until the device has run what was queued: a GPU timing without it measures only the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(exc: BaseException) -> bool:
    """Whether an error says the device ran out of memory: a result to record (the batch did not fit), not a
    failure. On a CPU, torch's allocator says "DefaultCPUAllocator: can't allocate memory" instead."""
    text = str(exc).lower()
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


def check_materialised(model: nn.Module, what: str) -> None:
    """Refuse a model whose weights are on torch's meta device (shapes without data): nothing can run it, and
    fvcore's trace of it fails deep inside torch. Raised before any work, naming ``what`` was asked."""
    meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if meta is not None:
        raise ValueError(f"{what} needs a model with weights, but {meta} (and maybe more) is on the meta device "
                         "(shapes only); materialise it first, e.g. model.to_empty(device='cpu') and load a "
                         "state dict.")


@contextlib.contextmanager
def mode_kept(model: nn.Module) -> Iterator[None]:
    """Leave every submodule of ``model`` in the train or eval mode it had (a measurement switches it): a model in
    training stays in training after being timed."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def free_cached(device: torch.device) -> None:
    """Hand the CUDA allocator's cached blocks back after running out of memory, so what runs next starts
    from an empty cache."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit machines
_steady: bool | None = None


def steady_allocator() -> bool:
    """Fix the C allocator's thresholds in this process, so that CPU timings stop depending on what the
    process allocated before; True where that was done (glibc), False elsewhere. Called by :func:`throughput`.

    Why: glibc's ``malloc`` adapts two thresholds to the allocations it has seen. Blocks above the *mmap
    threshold* get fresh pages from the kernel, and free memory above the *trim threshold* at the top of
    the heap is handed back, so the next pass faults it in again. How often a model's activations take
    that slow path then depends on the history of the process: measured on this project's 2-core CPU,
    ViT-S/16 at batch 8 ran about 15% slower in the first timing of a fresh process than in later ones,
    and int8 and fp32 were affected differently, so speed-ups moved between runs by more than any run's
    spread. Setting both thresholds (mmap at glibc's 64-bit maximum, 32 MiB; trim at 1 GiB) turns the
    adaptation off. The cost is memory: up to 1 GiB freed at the heap's top stays with the process.
    Replacing the allocator (jemalloc or tcmalloc through ``LD_PRELOAD``, as PyTorch's CPU tuning guide
    suggests) would do the same, but it must be set before Python starts and is not pip-installable;
    ``mallopt`` works in a running kernel, so a notebook gets it without a restart.
    """
    global _steady
    if _steady is None:
        _steady = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _steady = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
            except (OSError, AttributeError):
                _steady = False
    return _steady


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on the device's type; no context at all for fp32 (or None), so that one code path
    runs every precision."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Autocast(nn.Module):
    """``model`` run under autocast to ``dtype`` (bf16 by default): a module, so that mixed precision can be
    timed in the same interleaved rounds as fp32 (:func:`relative_throughput`)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_context(x.device, self.dtype):
            return self.model(x)


@dataclass
class Throughput:
    """Result of a batch-size sweep: the best rate and every batch tried."""

    img_per_s: float | None
    """Best images per second over the batches that fitted (None if none fitted)."""
    batch_size: int | None
    """The batch size that gave the best rate."""
    per_batch: dict[int, float] = field(default_factory=dict)
    max_batch_fitted: int | None = None
    oom_at: int | None = None
    """First batch size that ran out of memory, if any."""
    device: str = "cpu"
    dtype: str = "float32"


def _check_timing(warmup: int, iters: int, min_seconds: float) -> None:
    """A timing with no timed pass returns nothing true (a rate of 0, or no median): refuse it."""
    whole("iters", iters, minimum=1, hint="iters counts the timed passes.")
    whole("warmup", warmup, minimum=0, hint="warmup counts the untimed passes before them.")
    if not (math.isfinite(min_seconds) and min_seconds >= 0):
        raise ValueError(f"min_seconds must be a finite number >= 0, not {min_seconds!r}.")


def throughput(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64),
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    warmup: int = 2,
    iters: int = 5,
    min_seconds: float = 0.0,
) -> Throughput:
    """Images per second in inference, best over ``batch_sizes`` (S3's protocol, timm's contract).

    For each batch size, in increasing order: ``warmup`` untimed passes, then at least ``iters`` timed
    passes, continuing until ``min_seconds`` have elapsed (short runs are noisy), between device
    synchronisations, in eval mode under ``torch.inference_mode`` (the model's own mode is restored afterwards).
    The sweep stops at the first batch size that runs out of memory; that size is recorded in ``oom_at``.
    """
    _check_timing(warmup, iters, min_seconds)
    sizes = whole_numbers("batch sizes", batch_sizes, minimum=1)
    if not sizes:
        raise ValueError(f"batch sizes must hold at least one batch size, got {batch_sizes!r}.")
    check_materialised(model, "throughput")
    with mode_kept(model):
        return _throughput(model, input_shape, sizes, torch.device(device), dtype, warmup, iters, min_seconds)


def _throughput(model: nn.Module, input_shape: tuple[int, int, int], sizes: list[int], device: torch.device,
                dtype: torch.dtype | None, warmup: int, iters: int, min_seconds: float) -> Throughput:
    if device.type == "cpu":
        steady_allocator()
    model = model.to(device).eval()
    result = Throughput(None, None, device=str(device), dtype=str(dtype or torch.float32).split(".")[-1])
    for b in sorted(sizes):
        try:
            x = torch.randn(b, *input_shape, device=device)
            with torch.inference_mode(), autocast_context(device, dtype):
                for _ in range(warmup):
                    model(x)
                synchronize(device)
                start, done = time.perf_counter(), 0
                while done < iters or time.perf_counter() - start < min_seconds:
                    model(x)  # the host may run ahead of a GPU here; the sync below catches up
                    done += 1
                synchronize(device)
                elapsed = time.perf_counter() - start
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            result.oom_at = b
            free_cached(device)
            break
        rate = b * done / elapsed
        result.per_batch[b] = rate
        result.max_batch_fitted = b
        if result.img_per_s is None or rate > result.img_per_s:
            result.img_per_s, result.batch_size = rate, b
    return result


def pass_times_ms(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int,
    passes: int,
    device: str | torch.device = "cpu",
    sync: bool = True,
) -> list[float]:
    """Milliseconds of each of ``passes`` consecutive inference passes, from cold (no warm-up).

    For showing the traps that :func:`throughput` avoids: the first passes pay for allocation and
    kernel selection, and without ``sync`` a GPU timing measures only how fast work is queued.
    """
    device = torch.device(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    with mode_kept(model):
        model = model.to(device).eval()  # outside inference mode: a model with tensor-subclass weights (torchao's
        with torch.inference_mode():     # int8) cannot move its parameters inside it
            for _ in range(passes):
                if sync:
                    synchronize(device)
                start = time.perf_counter()
                model(x)
                if sync:
                    synchronize(device)
                times.append(1e3 * (time.perf_counter() - start))
    synchronize(device)
    return times


def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    device: str | torch.device = "cpu",
    warmup: int = 3,
    iters: int = 20,
) -> float:
    """Median milliseconds of one batch-1 inference pass, each pass timed between synchronisations, in eval mode
    (the model's own mode is restored afterwards)."""
    _check_timing(warmup, iters, 0.0)
    check_materialised(model, "latency_ms")
    device = torch.device(device)
    x = torch.randn(1, *input_shape, device=device)
    times = []
    with mode_kept(model):
        model = model.to(device).eval()  # outside inference mode, as in pass_times_ms
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(iters):
                synchronize(device)
                start = time.perf_counter()
                model(x)
                synchronize(device)
                times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


RESOLUTION = 0.03
"""No timing interval is narrower than 3% either side of its median. Two identical copies of one ViT, timed in
separate runs of nine to fifteen rounds on this project's 2-core CPU with another process busy, gave medians from
0.986 to 1.008 while each run's own bootstrap interval was about 1% wide either side: what stays fixed within a run
(where each copy sits in memory, what the other process is doing) moves between runs, not between rounds. So a
difference under 3% is below what this instrument resolves, and ``python -m vitsurvey timing-check`` re-measures
whether that holds on any machine."""

CLOCKS = {
    "cpu-time": "per-core throughput: one thread per model, the thread's CPU time",
    "wall": "whole-machine throughput: all threads, wall-clock time",
    "cuda-events": "GPU throughput: CUDA events around each pass",
}
"""What a :class:`Timings` measured, as figures and tables say it."""


@dataclass
class Timings:
    """Images per second of several models, timed in interleaved rounds: every rate of every round.

    Ratios are taken within a round (model over reference, timed moments apart), so a drift in the machine's
    speed between rounds cancels. :meth:`ratio` and :meth:`rate` give the median over the rounds with a
    bootstrap confidence interval (:class:`~vitsurvey.metrics.Interval`), which decides every verdict;
    :meth:`table` is what a notebook shows and :meth:`describe` the sentence that says how it was measured.
    """

    rates: dict[str, list[float]]
    """Images per second of each model, one entry per round (by :attr:`clock`)."""
    reference: str
    batch_size: dict[str, int]
    clock: str = "wall"
    """A key of :data:`CLOCKS`: what the rates measure."""
    wall_rates: dict[str, list[float]] = field(default_factory=dict)
    """The same rounds by the wall clock (equal to :attr:`rates` where the clock is the wall or CUDA events)."""
    threads: int | None = None
    """Threads each model ran on (None: torch's default, the whole machine)."""
    machine: MachineState | None = None
    level: float = 0.95
    resolution: float = RESOLUTION

    @property
    def rounds(self) -> int:
        return len(next(iter(self.rates.values())))

    @property
    def label(self) -> str:
        """What the rates are, for an axis or a table caption."""
        return CLOCKS[self.clock]

    def rate(self, name: str) -> Interval:
        return Interval.of(self._rates(name), self.level, self.resolution)

    def ratio(self, name: str, reference: str | None = None) -> Interval:
        """Throughput of ``name`` over that of ``reference`` (default: the run's), round by round."""
        ref = self._rates(reference or self.reference)
        return Interval.of([a / b for a, b in zip(self._rates(name), ref)], self.level, self.resolution)

    def _rates(self, name: str) -> list[float]:
        if name not in self.rates:
            raise KeyError(f"No timings for {name!r}; timed: {', '.join(self.rates)}.")
        return self.rates[name]

    def table(self) -> Any:
        """One row per model: median img/s and the speed-up over the reference, each with its confidence
        interval, and the verdict the interval gives."""
        import pandas as pd

        rows = []
        for name in self.rates:
            r, q = self.rate(name), self.ratio(name)
            rows.append({
                "model": name, "batch": self.batch_size[name],
                "img/s": r.median, "img/s low": r.low, "img/s high": r.high,
                f"x {self.reference}": q.median, "x low": q.low, "x high": q.high,
                "verdict": "reference" if name == self.reference else q.verdict(),
            })
        return pd.DataFrame(rows).set_index("model")

    def describe(self) -> str:
        """How these numbers were measured, and how busy the machine was (with a warning where it was busier
        than its cores): one sentence for a notebook to print under its table."""
        text = f"{self.label}; {self.rounds} interleaved rounds, medians with {100 * self.level:.0f}% bootstrap intervals"
        return text + (f"; {self.machine.describe()}." if self.machine else ".")

    def columns(self) -> dict[str, Any]:
        """The columns every results row of this timing carries: rounds, clock, threads and the machine's load."""
        cols: dict[str, Any] = {"timing_rounds": self.rounds, "timing_clock": self.clock, "timing_threads": self.threads}
        return cols | (self.machine.columns() if self.machine else {})


def _pass_seconds(model: nn.Module, x: torch.Tensor, clock: str) -> tuple[float, float]:
    """One inference pass: (seconds by ``clock``, seconds by the wall clock)."""
    if clock == "cuda-events":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        return seconds, seconds
    wall, cpu = time.perf_counter(), time.thread_time()
    model(x)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return (cpu if clock == "cpu-time" else wall), wall


def _best_pass(model: nn.Module, x: torch.Tensor, clock: str, iters: int,
               min_seconds: float) -> tuple[float, float]:
    """The fastest of at least ``iters`` passes (continuing until ``min_seconds`` have passed), by ``clock`` and by
    the wall clock. The fastest, not the mean: a pass can only be slowed by what else runs, never sped up."""
    best, best_wall, done = math.inf, math.inf, 0
    start = time.perf_counter()
    while done < iters or time.perf_counter() - start < min_seconds:
        seconds, wall = _pass_seconds(model, x, clock)
        best, best_wall, done = min(best, seconds), min(best_wall, wall), done + 1
    return best, best_wall


def relative_throughput(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, int, int] | Mapping[str, tuple[int, int, int]],
    batch_size: int | Mapping[str, int],
    device: str | torch.device = "cpu",
    rounds: int = 9,
    max_rounds: int | None = 25,
    tolerance: float = 0.02,
    reference: str | None = None,
    warmup: int = 2,
    iters: int = 3,
    min_seconds: float = 0.0,
    threads: int | None = 1,
    level: float = 0.95,
    resolution: float = RESOLUTION,
) -> Timings:
    """Time several models in interleaved rounds; the one timing routine behind every speed-up.

    The protocol, and why each part of it:

    * **One thread per model on a CPU** (``threads=1``, the default): on a 2-core machine two threads make every
      op wait for the slower one, so a single other process stalls all of them. With one thread the model runs
      on one core and its thread's **CPU time** (``time.thread_time``) counts only the time it actually ran, so
      time spent waiting for a core is left out. The rates are per-core throughput. ``threads=None`` times the
      whole machine (all threads, wall clock): what a user's machine does with one model, labelled so.
    * **A B B A within each round**, the order reversed and rotated every round, so that a drift in the machine's
      speed affects all models alike and none always runs first or last.
    * **The fastest of a few passes** per timing (``iters``, continuing until ``min_seconds``): other processes can
      only slow a pass, never speed it up, so the minimum is the least disturbed reading.
    * **Enough rounds, and an interval**: at least ``rounds`` rounds, then more (up to ``max_rounds``) while any
      ratio's 95% bootstrap interval is wider than ``tolerance`` either side of its median (``max_rounds=None``:
      exactly ``rounds``). Ratios are taken within
      each round and summarised by their median with that interval (:class:`~vitsurvey.metrics.Interval`), never
      narrower than ``resolution`` either side (:data:`RESOLUTION` says why).
    * **On a GPU**: the same rounds, each pass timed with CUDA events.

    The machine's load average before and after (and the CPU time stolen by a hypervisor, where the kernel reports
    it) is kept in :attr:`Timings.machine`. ``input_shape`` and ``batch_size`` may be given per model.
    """
    whole("rounds", rounds, minimum=1)
    _check_timing(warmup, iters, min_seconds)
    if threads is not None:
        whole("threads", threads, minimum=1, hint="Use None to time the whole machine.")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite fraction >= 0, not {tolerance!r}.")
    max_rounds = max(rounds, max_rounds or rounds)
    names = list(models)
    if not names:
        raise ValueError("relative_throughput needs at least one model.")
    reference = reference or names[0]
    if reference not in models:
        raise KeyError(f"The reference {reference!r} is not among the models: {', '.join(names)}.")
    shapes = {n: input_shape[n] if isinstance(input_shape, Mapping) else input_shape for n in names}
    batches = {n: batch_size[n] if isinstance(batch_size, Mapping) else batch_size for n in names}
    whole_numbers("batch sizes", list(batches.values()), minimum=1)
    device = torch.device(device)
    if device.type == "cuda":
        clock, threads = "cuda-events", None
    else:
        clock = "cpu-time" if threads == 1 else "wall"
        steady_allocator()
    timings = Timings({n: [] for n in names}, reference, batches, clock, {n: [] for n in names}, threads,
                      level=level, resolution=resolution)
    inputs = {n: torch.randn(batches[n], *shapes[n], device=device) for n in names}
    for n in names:  # before inference mode: modules whose weights are tensor subclasses (torchao) cannot move inside it
        models[n].to(device).eval()
    with contextlib.ExitStack() as stack:
        if threads is not None:
            stack.enter_context(threads_limited(threads))
        stack.enter_context(torch.inference_mode())
        state = stack.enter_context(watch_load())
        for n in names:
            try:
                for _ in range(warmup):
                    models[n](inputs[n])
                synchronize(device)
            except RuntimeError as exc:
                if is_oom(exc):
                    raise RuntimeError(f"{n} ran out of memory at batch {batches[n]}; choose a smaller batch.") from exc
                raise
        for k in progress.bar(range(max_rounds), "timing rounds"):
            order = names[k % len(names):] + names[: k % len(names)]
            if k % 2:
                order.reverse()
            best: dict[str, tuple[float, float]] = {n: (math.inf, math.inf) for n in names}
            for n in order + order[::-1]:  # A B ... B A
                seconds, wall = _best_pass(models[n], inputs[n], clock, iters, min_seconds)
                best[n] = (min(best[n][0], seconds), min(best[n][1], wall))
            for n in names:
                timings.rates[n].append(batches[n] / best[n][0])
                timings.wall_rates[n].append(batches[n] / best[n][1])
            if k + 1 >= rounds and all(timings.ratio(n).sampling_half_width <= tolerance
                                       for n in names if n != reference):
                break
    timings.machine = state[0]
    return timings
