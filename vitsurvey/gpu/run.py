"""``python -m vitsurvey gpu-run``: every GPU measurement in one process, in at most 8 minutes on one H100 or H200.

The steps, in this order (cheap and needed-by-others first, S3's sweep last, since it fills what time is left):
environment, baseline, tokens, pruning, multiplex, mfu, low_precision, s3 (:mod:`vitsurvey.gpu.steps`,
:mod:`vitsurvey.gpu.throughput`). Each runs in its own time cap and ``try`` (:mod:`vitsurvey.gpu.runner`); rows go
to ``data/results/gpu_run.csv`` under the output root as they are measured, with the device's name and the
profile, and every line of the log (tracebacks included) to ``gpu_run.log`` beside them.

``--rehearse`` runs the same steps on the CPU at the sizes of :data:`vitsurvey.gpu.plan.REHEARSAL`, into a temporary
folder unless ``--out`` says otherwise, so that the rows of a rehearsal never mix with measured ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import profiles, results
from ..paths import ENV_OUTPUT
from . import add_run_arguments
from . import steps as gs
from . import throughput as gt
from .plan import GPU, REHEARSAL, Plan
from .runner import Clock, Context, Log, Step, run_steps

__all__ = ["STEM", "command", "main", "run", "steps_of"]

STEM = "gpu_run"
"""The results file every row of the run goes to: ``data/results/gpu_run.csv``."""


def steps_of(plan: Plan) -> list[Step]:
    """The run's steps with the plan's budgets."""
    table = [
        ("environment", gs.environment, "versions, device, peak, data"),
        ("baseline", gs.baseline, "the profile's baseline ViT to its target accuracy"),
        ("tokens", gs.token_schedules, "ToMe, EViT, Patch Slimming: speed-up against the MAC cut"),
        ("pruning", gs.structured_pruning, "structured pruning: speed-up against the MAC cut"),
        ("multiplex", gs.multiplexing, "the multiplexers' speed per image"),
        ("mfu", gt.utilisation, "ViT-B/16 bf16 throughput and model FLOP utilisation, eager and compiled"),
        ("low_precision", gt.low_precision, "torchao int8 and fp8 against bf16: speed and accuracy"),
        ("s3", gt.s3_benchmark, "S3's timm models: fp32 and bf16 throughput at the best batch"),
    ]
    return [Step(name, fn, *plan.budget(name), description=text) for name, fn, text in table]


def _profile(plan: Plan) -> profiles.Profile:
    if plan.rehearsal:
        return profiles.get_profile(plan.profile)
    if not torch.cuda.is_available():
        raise ValueError("gpu-run measures on a CUDA GPU and torch sees none here; rehearse it on this machine with "
                         "--rehearse")
    return profiles.get_profile(plan.profile)


def run(plan: Plan, out: Path | None = None, log_path: Path | None = None, reported: Path | None = None,
        steps: list[Step] | None = None) -> list[dict[str, Any]]:
    """Run ``steps`` (default: all of :func:`steps_of`) under ``plan``; return the step status rows.

    ``out`` becomes the output root (``$VITSURVEY_OUTPUT``) while the run lasts: results under ``out/data/results``,
    the baseline's checkpoint under ``out/checkpoints``."""
    clock = Clock(plan.total_s)
    before = os.environ.get(ENV_OUTPUT)
    if out is not None:
        os.environ[ENV_OUTPUT] = str(Path(out).expanduser().resolve())
    log = None
    try:
        P = _profile(plan)  # a machine without the GPU the plan needs is refused before anything is written
        device = torch.device(P.device)
        log = Log(Path(log_path) if log_path else results.project_root() / f"{STEM}.log", clock)
        run_id = dt.datetime.now().isoformat(timespec="seconds")
        log(f"gpu-run ({plan.name} plan, {P.name} profile) on {results.device_name(device)}; run {run_id}; "
            f"{plan.total_s:.0f} s in all; results -> {results.results_dir() / (STEM + '.csv')}")

        def record(rows: list[dict[str, Any]]) -> None:
            tagged = [{"run": run_id, "plan": plan.name, "rehearsal": plan.rehearsal, **r} for r in rows]
            results.append(STEM, tagged, P.name, device)

        ctx = Context(plan, P, device, log, clock, record, Path(reported) if reported else None)
        statuses = run_steps(steps if steps is not None else steps_of(plan), ctx)
        done = sum(s["status"] == "ok" for s in statuses)
        log(f"done in {clock.elapsed():.0f} s: {done} of {len(statuses)} steps ok"
            + "".join(f"\n  {s['step']}: {s['status']}" for s in statuses if s["status"] != "ok"))
        return statuses
    finally:
        if log is not None:
            log.close()
        if before is None:
            os.environ.pop(ENV_OUTPUT, None)
        else:
            os.environ[ENV_OUTPUT] = before


def command(args: argparse.Namespace) -> int:
    """``gpu-run`` with parsed arguments: 0 when every step ran (skipped for a missing GPU feature counts as ran),
    1 when a step failed or was skipped for time."""
    plan = REHEARSAL if args.rehearse else GPU
    out = Path(args.out) if args.out else None
    if out is None and plan.rehearsal:
        out = Path(tempfile.mkdtemp(prefix="vitsurvey-gpu-rehearsal-"))
        print(f"rehearsal outputs in {out}")
    statuses = run(plan, out, Path(args.log) if args.log else None, Path(args.reported) if args.reported else None)
    return 0 if all(s["status"] == "ok" for s in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m vitsurvey.gpu.run [--rehearse] [--out DIR] [--log FILE] [--reported DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m vitsurvey gpu-run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
