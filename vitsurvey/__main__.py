"""Command line: ``python -m vitsurvey doctor | profile MODEL | calibrate | run [NOTEBOOK ...] | leaderboard``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from . import _compat

_compat.ensure_torchvision_importable()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def doctor(_: argparse.Namespace) -> int:
    import torch

    from . import data, profiles, results

    print("versions")
    print(f"  python       {platform.python_version()}")
    for dist in ("torch", "torchvision", "timm", "fvcore", "numpy", "pandas", "papermill", "vitsurvey"):
        print(f"  {dist:<12} {_version(dist)}")
    print(f"  torchvision fix: {_compat.STATE}")
    print("device")
    print(f"  cuda available: {torch.cuda.is_available()}")
    print(f"  measuring on:   {results.device_name()}")
    print("data sets")
    for name, where in data.find_all().items():
        print(f"  {name:<20} {where}")
    print(f"  downloads:            {'off ($VITSURVEY_OFFLINE)' if data.offline() else 'allowed'}, into {data.default_root()}")
    env = os.environ.get(profiles.ENV_VAR)
    try:
        picked = profiles.get_profile("auto", resolve_data=False).name
    except ValueError as exc:
        picked = f"error: {exc}"
    print("profile")
    print(f"  ${profiles.ENV_VAR}: {env or 'unset'}; 'auto' picks: {picked}")
    print("data each profile will use")
    for name, prof in profiles.PROFILES.items():
        wanted = data.describe(prof.dataset)
        if data.available(prof.dataset, download=False):
            note = f"{wanted} (found)"
        elif not data.offline() and data.downloadable(prof.dataset):
            fallback = data.describe(data.FALLBACKS.get(prof.dataset, prof.dataset))
            note = f"{wanted}, downloaded on first use; if that fails: {fallback}"
        else:
            note = f"{data.describe(data.resolve(prof, download=False).dataset)} ({wanted} not found, downloads off)"
        print(f"  {name:<6} {note}")
    print(f"outputs: {results.project_root()}")
    return 0


def profile_model(args: argparse.Namespace) -> int:
    from . import measure, models, profiles

    prof = profiles.get_profile(args.profile)
    if args.img_size is not None and args.img_size <= 0:
        print(f"error: --img-size must be a positive number of pixels, not {args.img_size}", file=sys.stderr)
        return 2
    if args.batch_size is not None and args.batch_size <= 0:
        print(f"error: --batch-size must be a positive number of images, not {args.batch_size}", file=sys.stderr)
        return 2
    try:
        model = models.create(args.model, img_size=args.img_size)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shape = measure.input_shape_of(model, args.img_size)
    batches = (args.batch_size,) if args.batch_size is not None else None
    record = measure.benchmark(model, shape, prof, name=args.model, batch_sizes=batches, mem_batch=args.batch_size)
    row = {**asdict(record), "profile": prof.name}
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    mib = 2**20
    lines = [
        ("model", f"{args.model} at {shape[-1]} px ({prof.name} profile, {prof.device})"),
        ("params", f"{record.params:,}"),
        ("MACs (fvcore, attention counted)", f"{record.macs:,}"),
        ("MACs (analytic ViT formula)", f"{record.analytic_macs:,}" if record.analytic_macs else "n/a (not a plain ViT)"),
        ("throughput", f"{record.throughput_img_s:,.1f} img/s at batch {record.batch_size}" if record.throughput_img_s else "out of memory"),
        ("throughput, bf16 autocast", f"{record.throughput_bf16_img_s:,.1f} img/s" if record.throughput_bf16_img_s else "not measured (CUDA only)"),
        ("latency (batch 1)", f"{record.latency_ms:.2f} ms"),
        (f"inference memory (batch {record.mem_batch_size})", f"{record.infer_mem_bytes / mib:,.1f} MiB" if record.infer_mem_bytes else "out of memory"),
        (f"training memory (batch {record.mem_batch_size})", f"{record.train_mem_bytes / mib:,.1f} MiB" if record.train_mem_bytes else "out of memory"),
        ("weights in memory", f"{record.weights_bytes / mib:,.1f} MiB"),
        ("model size at 32 bit", f"{record.size_bytes_fp32:,} bytes"),
        ("memory measured by", record.memory_method),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    return 0


def _notebooks_dir() -> Path:
    from .results import repository_root

    return (repository_root() or Path.cwd()) / "notebooks"


def _finish(src: str, dest: Path, name: str, drop_injected: bool) -> None:
    """Write an executed notebook to ``dest`` with papermill's paths reduced to ``name`` (they name
    this machine's directories and a temporary file), and, when the notebook is rewritten in place,
    without papermill's ``injected-parameters`` cell.

    A notebook rewritten in place keeps its own ``parameters`` cell (``profile = "auto"``): an injected
    ``profile = "cpu"`` left behind would override ``$VITSURVEY_PROFILE`` in every later run, nbval's
    included. The profile actually used stays visible in the notebook's printed output.
    """
    import nbformat

    nb = nbformat.read(src, as_version=4)
    if drop_injected:
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    pm = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if pm.get(key):
            pm[key] = name
    nbformat.write(nb, str(dest))


def run(args: argparse.Namespace) -> int:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from . import profiles

    if args.profile is not None and args.profile not in profiles.VALID_NAMES:
        print(f"error: unknown profile {args.profile!r}; valid: {', '.join(profiles.VALID_NAMES)}", file=sys.stderr)
        return 2
    nb_dir = _notebooks_dir()
    if args.notebooks:
        paths = []
        for n in args.notebooks:
            p = Path(n) if Path(n).suffix == ".ipynb" else nb_dir / f"{n}.ipynb"
            if not p.is_file():
                candidates = sorted(nb_dir.glob(f"{n}*.ipynb"))
                if len(candidates) != 1:
                    print(f"error: no notebook {n!r} (looked for {p} and {nb_dir}/{n}*.ipynb)", file=sys.stderr)
                    return 2
                p = candidates[0]
            paths.append(p)
    else:
        paths = sorted(nb_dir.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print(f"error: no notebooks found in {nb_dir}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else None
    params = {"profile": args.profile} if args.profile else {}
    for i, path in enumerate(paths, 1):
        dest = (out_dir or path.parent) / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{i}/{len(paths)}] {path.stem} ...", end=" ", flush=True)
        start = time.perf_counter()
        fd, tmp = tempfile.mkstemp(prefix=f"{path.stem}.", suffix=".ipynb")
        os.close(fd)
        try:
            papermill.execute_notebook(
                str(path), tmp, parameters=params, kernel_name="python3", cwd=str(path.parent),
                progress_bar=False, log_output=False,
                # the kernel's own start-up notices (transport warnings) are not the notebook's output
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
        except PapermillExecutionError as exc:
            print("FAILED")
            print(
                f"error: {path.name} failed in cell {exc.exec_count} (index {exc.cell_index}): "
                f"{exc.ename}: {exc.evalue}\nthe executed notebook is kept at {tmp}",
                file=sys.stderr,
            )
            return 1
        staged = dest.with_name(f".{dest.name}.tmp")
        _finish(tmp, staged, dest.name, drop_injected=dest.resolve() == path.resolve())
        os.replace(staged, dest)
        os.unlink(tmp)
        print(f"done in {time.perf_counter() - start:.0f} s -> {dest}")
    return 0


def calibrate(args: argparse.Namespace) -> int:
    from . import measure, profiles, results

    prof = profiles.get_profile(args.profile, resolve_data=False)
    rows = measure.calibrate_reruns(prof, runs=args.runs, pause_s=args.pause)
    path = results.append(measure.CALIBRATION, rows, prof.name, prof.device)
    floor = measure.rerun_floor(prof.device)
    if floor is None:  # the rows just written name this device, so this is a bug, not bad input
        raise RuntimeError(f"{path} holds no floor for {results.device_name(prof.device)} after calibrating.")
    print(f"run-to-run floor on {floor.device}: rates ±{100 * floor.rate:.1f}%, ratios ±{100 * floor.ratio:.1f}% "
          f"({floor.runs} runs) -> {path.name}; every timing on this device now states ranges at least this wide")
    return 0


def leaderboard(args: argparse.Namespace) -> int:
    """Print the newest leaderboard from the results file; nothing is rerun."""
    from . import leaderboard as board_

    try:
        board = board_.read(args.profile)
    except board_.NoResults as exc:
        print(exc, file=sys.stderr)
        return 1
    print(board_.describe_run(board))
    print(board_.format_board(board, args.sort))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitsurvey", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="versions, device, data sets found, the profile 'auto' picks").set_defaults(func=doctor)
    p = sub.add_parser("profile", help="params, MACs, throughput, latency, memory and size of a timm model")
    p.add_argument("model", help="a timm model name, e.g. vit_tiny_patch16_224")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="one batch size instead of the profile's sweep")
    p.add_argument("--profile", default="auto", help="smoke, cpu, gpu or auto (default)")
    p.add_argument("--json", action="store_true", help="print one JSON record")
    p.set_defaults(func=profile_model)
    c = sub.add_parser("calibrate", help="measure how much timings move between runs on this machine")
    c.add_argument("--profile", default="auto", help="smoke, cpu, gpu or auto (default): the models, batch and rounds")
    c.add_argument("--runs", type=int, default=6, help="separate processes to time (default 6)")
    c.add_argument("--pause", type=float, default=30.0, help="seconds between runs (default 30)")
    c.set_defaults(func=calibrate)
    r = sub.add_parser("run", help="execute notebooks headlessly with papermill")
    r.add_argument("notebooks", nargs="*", help="names or paths (default: every numbered notebook)")
    r.add_argument("--profile", default=None, help="smoke, cpu, gpu or auto; default: the notebooks' own choice")
    r.add_argument("--out", default=None, help="directory for executed notebooks (default: in place)")
    r.set_defaults(func=run)
    b = sub.add_parser("leaderboard", help="print the newest leaderboard (notebook 12's results) without rerunning")
    b.add_argument("--sort", default=None, help="the column to order by (default: top1); costs ascending")
    b.add_argument("--profile", default=None, help="smoke, cpu or gpu (default: the profile measured last)")
    b.set_defaults(func=leaderboard)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # bad input that got past argparse: a clear message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
