"""Whether the timing routine can be trusted on this machine: an A/A test and a known speed-up, idle and under load.

Two copies of one model must read "within noise", with an interval inside 0.90-1.10; the same ViT at half its
depth (a true speed-up near 2x) must read "faster" with the whole interval above 1.3. Both are timed with the
routine's defaults (:func:`~vitsurvey.measure.timing.relative_throughput`) on the baseline's shape: a ViT of depth
6 and width 96 on 49 tokens, batch 64. Under load, another process keeps every core busy while the timing runs
(a matrix-multiplying torch process with as many threads as the machine has cores, the worst case for a 2-core
laptop running something else). ``python -m vitsurvey timing-check`` runs it and records the rows.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..checks import finite
from ..device import cores
from ..models import ViTConfig, VisionTransformer
from .timing import relative_throughput

__all__ = ["CHECK_STEM", "busy_process", "check_models", "timing_check"]

CHECK_STEM = "timing_check"
"""The results file the checks are recorded in (``data/results/timing_check.csv``)."""

_HOG = "import torch, sys\ntorch.set_num_threads(int(sys.argv[1]))\nx = torch.randn(1024, 1024)\nwhile True:\n    x @ x\n"


@contextlib.contextmanager
def busy_process(threads: int | None = None) -> Iterator[subprocess.Popen]:
    """Another process keeping ``threads`` cores (default: all of them) busy while the block runs; it is killed
    when the block ends, however it ends."""
    proc = subprocess.Popen([sys.executable, "-c", _HOG, str(threads or cores())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # let it start multiplying before the timing does
        yield proc
    finally:
        proc.kill()
        proc.wait()


def check_models(seed: int = 0) -> tuple[ViTConfig, dict[str, torch.nn.Module]]:
    """The ViT of the check (depth 6, width 96, 3 heads, 28 px in 4 px patches: 49 tokens), an identical copy, and
    the same ViT at depth 3."""
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6, num_heads=3)
    model = VisionTransformer(cfg)
    return cfg, {"depth 6": model, "depth 6, copy": copy.deepcopy(model),
                 "depth 3": VisionTransformer(dataclasses.replace(cfg, depth=3))}


def timing_check(loads: tuple[str, ...] = ("idle", "busy"), pause_s: float = 0.0, batch_size: int = 64,
                 log: Callable[[str], None] | None = print, **timing: Any) -> list[dict[str, Any]]:
    """Run the A/A comparison and the half-depth comparison once per entry of ``loads`` ("idle": nothing else
    started; "busy": under :func:`busy_process`), ``pause_s`` seconds apart; one results row per comparison and
    load, with the ratio's median, interval, verdict, whether it passed and the machine's load. ``timing`` is
    passed on to :func:`relative_throughput` (its defaults otherwise)."""
    bad = [x for x in loads if x not in ("idle", "busy")]
    if bad or not loads:
        raise ValueError(f"loads must be 'idle' and/or 'busy', not {list(loads)!r}.")
    finite("pause_s", pause_s)
    cfg, models = check_models()
    shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
    rows: list[dict[str, Any]] = []
    for i, load in enumerate(loads):
        if i and pause_s > 0:
            time.sleep(pause_s)
        for name, pair, passes in (
            ("A/A", ("depth 6", "depth 6, copy"), lambda q: q.low <= 1.0 <= q.high and 0.90 <= q.low and q.high <= 1.10),
            ("half depth", ("depth 6", "depth 3"), lambda q: q.low > 1.3),
        ):
            start = time.perf_counter()
            with busy_process() if load == "busy" else contextlib.nullcontext():
                t = relative_throughput({n: models[n] for n in pair}, shape, batch_size, "cpu", **timing)
            q = t.ratio(pair[1])
            row = {"method": name, "setting": load, "comparison": f"{pair[1]} over {pair[0]}",
                   "ratio": q.median, "ratio_low": q.low, "ratio_high": q.high, "verdict": q.verdict(),
                   "passed": bool(passes(q)), "seconds": round(time.perf_counter() - start, 1),
                   "batch_size": batch_size, **t.columns()}
            rows.append(row)
            if log:
                log(f"{name}, {load}: {q.format(3, 'x')} -> {q.verdict()} "
                    f"({'passed' if row['passed'] else 'FAILED'}; {row['seconds']:.0f} s; {t.machine.describe() if t.machine else ''})")
    return rows
