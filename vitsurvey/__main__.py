"""Command line: ``python -m vitsurvey doctor | profile MODEL | timing-check | run [NOTEBOOK ...] | train | book |
leaderboard | gpu-run | gpu-pack DIR``.

Argument parsing, one function per command that hands the arguments to the package and prints what comes
back, and the mapping of errors to exit statuses (:data:`EXIT_FAILED`, :data:`EXIT_USAGE`): a user's mistake
ends in one line on standard error, never a traceback. What the commands do lives in the package
(:mod:`vitsurvey.notebooks`, :mod:`vitsurvey.train`, :mod:`vitsurvey.measure`, ...); each command imports only
the modules it uses, so no command waits for papermill, fvcore or nbconvert that it does not need.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from . import _compat

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "main"]


def _version(dist: str) -> str:
    """The installed version of distribution ``dist``, or "not installed"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def doctor(_: argparse.Namespace) -> int:
    """What this installation runs with: versions, device, data sets found, profiles, where outputs go."""
    import torch

    from . import data, device, paths, profiles

    print("versions")
    print(f"  python       {platform.python_version()}")
    for dist in ("torch", "torchvision", "timm", "fvcore", "numpy", "pandas", "papermill", "vitsurvey"):
        print(f"  {dist:<12} {_version(dist)}")
    print(f"  torchvision fix: {_compat.STATE}")
    print("device")
    print(f"  cuda available: {torch.cuda.is_available()}")
    print(f"  measuring on:   {device.device_name()}")
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
    try:
        print(f"outputs: {paths.project_root()}")
    except paths.OutputDirError as exc:
        print(f"outputs: error: {exc}")
        return EXIT_FAILED
    return 0


def profile_model(args: argparse.Namespace) -> int:
    """Measure one model (:func:`vitsurvey.measure.benchmark`) and print the record, as a table or JSON."""
    from . import checks, measure, models, profiles

    prof = profiles.get_profile(args.profile)
    for flag, value in (("--img-size", args.img_size), ("--batch-size", args.batch_size)):
        if value is not None:
            checks.whole(flag, value, minimum=1)
    model = models.create(args.model, img_size=args.img_size)
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
        ("throughput, whole machine", f"{record.throughput_img_s:,.1f} img/s at batch {record.batch_size}" if record.throughput_img_s else "out of memory"),
        ("throughput, whole machine, bf16", f"{record.throughput_bf16_img_s:,.1f} img/s" if record.throughput_bf16_img_s else "not measured (CUDA only)"),
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


def timing_check(args: argparse.Namespace) -> int:
    """Check that the timing routine holds on this machine, idle and under load
    (:func:`vitsurvey.measure.timing_check`), and record the rows; exit 1 if any check failed."""
    from . import measure, results

    rows = measure.timing_check(tuple(args.loads), pause_s=args.pause)
    path = results.append(measure.CHECK_STEM, rows, "timing-check", "cpu")
    failed = [f"{r['method']} ({r['setting']})" for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed -> {path.name}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    """Execute notebooks headlessly (:func:`vitsurvey.notebooks.run`); its return value is the exit status."""
    from . import notebooks

    for name in args.notebooks:  # a name is looked up by pattern among the notebooks; a path must be a notebook file
        if not name.endswith(".ipynb") and (Path(name).is_absolute() or len(Path(name).parts) > 1):
            raise ValueError(f"{name!r} is not a notebook: give a notebook's number or name (e.g. 06 or "
                             "06_token_reduction) or the path of an .ipynb file")
    return notebooks.run(args.notebooks, args.profile, args.out)


def train_model(args: argparse.Namespace) -> int:
    """Train one model on one data set, in one process or, under ``torchrun``, in several with DDP
    (:func:`vitsurvey.train.train_by_name`); the main process appends its params, MACs and accuracy to
    ``train.csv``."""
    import torch

    from . import measure, profiles, results, train

    for flag in ("epochs", "batch_size", "train_samples", "test_samples", "img_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, not {value}")
    prof = profiles.get_profile(args.profile, resolve_data=False)
    changes = {k: getattr(args, k) for k in ("epochs", "batch_size", "train_samples", "test_samples", "lr")
               if getattr(args, k) is not None}
    if args.dataset:
        changes["dataset"] = args.dataset
    if args.no_augment:
        changes["augment"] = False
    done = train.train_by_name(args.model, prof.replace(**changes), args.root,
                               init=Path(args.init) if args.init else None,
                               state=Path(args.checkpoint) if args.checkpoint else None, img_size=args.img_size)
    if done is None:  # another process than the main one: it only trained
        return 0
    prof, result, world = done.profile, done.result, done.world
    row = {"method": args.model, "setting": f"{prof.epochs} epochs, {world} process(es)",
           "params": measure.count_params(done.model),
           "macs": measure.count_macs(done.model, torch.zeros(1, *done.image_shape)).total,
           "top1": result.top1, "batch_size": prof.batch_size, "dataset": prof.dataset,
           "epochs": prof.epochs, "world_size": world, "train_seconds": result.train_seconds,
           "train_img_per_s": result.train_img_per_s * world, "img_size": done.image_shape[-1]}
    if done.epochs_run == 0 and _recorded(results.read("train"), row):  # a finished training, run again
        print(f"test top-1 {result.top1:.2f}% after {prof.epochs} epochs: trained before, already in train.csv "
              f"(nothing appended); state in {done.state.name}")
        return 0
    path = results.append("train", [row], prof.name, done.device)
    print(f"test top-1 {result.top1:.2f}% after {prof.epochs} epochs -> {path.name}; state in {done.state.name}")
    return 0


def _recorded(rows, row: dict) -> bool:
    """Whether the train.csv ``rows`` already hold ``row``'s training (same model, setting, data and accuracy)."""
    import pandas as pd

    same = pd.Series(True, index=rows.index)
    for k in ("method", "setting", "dataset", "epochs", "batch_size", "top1"):
        if k not in rows.columns:
            return False
        number = isinstance(row[k], (int, float))
        same &= (pd.to_numeric(rows[k], errors="coerce") == row[k]) if number else (rows[k].astype(str) == row[k])
    return bool(same.any())


def book(args: argparse.Namespace) -> int:
    """Build the static site of the stored notebooks (nothing is executed)."""
    from . import book as book_
    from .paths import repository_root

    repo = repository_root()
    if repo is None:
        raise ValueError("the site is built from a checkout of the repository; run this inside one")
    out = Path(args.out) if args.out else repo / "build" / "book"
    pages = book_.build(repo, out)
    print(f"{len(pages) - 1} notebooks -> {pages[0]}")
    return 0


def gpu_run(args: argparse.Namespace) -> int:
    """Run every GPU measurement in one process (:mod:`vitsurvey.gpu.run`); exit 1 if a step failed or was skipped
    for time."""
    from .gpu import run as gpu_run_

    return gpu_run_.command(args)


def gpu_pack(args: argparse.Namespace) -> int:
    """Fill a folder with what an offline GPU machine needs for gpu-run (:mod:`vitsurvey.gpu.pack`)."""
    from .gpu import pack as gpu_pack_

    return gpu_pack_.command(args)


def leaderboard(args: argparse.Namespace) -> int:
    """Print the newest leaderboard from the results file; nothing is rerun."""
    from .studies import leaderboard as board_

    try:
        board = board_.read(args.profile)
    except board_.NoResults as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    table = board_.format_board(board, args.sort)  # a bad --sort fails before anything is printed
    print(board_.describe_run(board))
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the command, return its exit status."""
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
    c = sub.add_parser("timing-check", help="check that timings hold on this machine, idle and under load")
    c.add_argument("--loads", nargs="+", choices=("idle", "busy"), default=["idle", "busy"],
                   help="run the checks idle, under a busy process, or both in that order (default: both)")
    c.add_argument("--pause", type=float, default=0.0, help="seconds between the runs (default 0)")
    c.set_defaults(func=timing_check)
    r = sub.add_parser("run", help="execute notebooks headlessly with papermill")
    r.add_argument("notebooks", nargs="*", help="names or paths (default: every numbered notebook)")
    r.add_argument("--profile", default=None, help="smoke, cpu, gpu or auto; default: the notebooks' own choice")
    r.add_argument("--out", default=None, help="directory for executed notebooks (default: in place)")
    r.set_defaults(func=run)
    t = sub.add_parser("train", help="train a model on a data set, in one process or under torchrun with DDP")
    t.add_argument("--model", default="baseline",
                   help="baseline (the profile's ViT), teacher (its ResNet), mixer:NAME, or a timm model name")
    t.add_argument("--dataset", default=None, help="fashion_mnist, cifar10, cifar100, imagefolder, ... "
                                                   "(default: the profile's)")
    t.add_argument("--root", default=None, help="where the data set lives (an ImageFolder's root)")
    t.add_argument("--profile", default="auto", help="smoke, cpu, gpu or auto (default): sizes and schedule")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None, help="the global batch, split among the processes")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--img-size", type=int, default=None, help="the side images are resized to, in px (default: the "
                   "data set's; an ImageFolder at the baseline ViT's size, or 224 for a timm model); the profile's "
                   "models adapt to it")
    t.add_argument("--train-samples", type=int, default=None)
    t.add_argument("--test-samples", type=int, default=None)
    t.add_argument("--init", default=None, help="start from the weights of a training state or checkpoint (e.g. "
                   "pre-trained on another data set); layers whose shape differs, like the head, start fresh")
    t.add_argument("--no-augment", action="store_true", help="no random shifts and flips (with them, each process "
                   "draws its own, so a run on several processes matches one process in distribution, not bit for bit)")
    t.add_argument("--checkpoint", default=None, help="training state file, written each epoch by rank 0 and "
                                                      "resumed from (default: checkpoints/train_<model>_...pt)")
    t.set_defaults(func=train_model)
    k = sub.add_parser("book", help="a static HTML site of the stored, executed notebooks, in reading order")
    k.add_argument("--out", default=None, help="where to write it (default: build/book)")
    k.set_defaults(func=book)
    b = sub.add_parser("leaderboard", help="print the newest leaderboard (notebook 12's results) without rerunning")
    b.add_argument("--sort", default=None, help="the column to order by (default: top1); costs ascending")
    b.add_argument("--profile", default=None, help="smoke, cpu or gpu (default: the profile measured last)")
    b.set_defaults(func=leaderboard)
    from .gpu import add_pack_arguments, add_run_arguments

    g = sub.add_parser("gpu-run", help="every GPU measurement in one process, within 8 minutes on one H100/H200 "
                                       "(--rehearse: all of it on this CPU at tiny sizes)")
    add_run_arguments(g)
    g.set_defaults(func=gpu_run)
    w = sub.add_parser("gpu-pack", help="gather the wheels, data and install-and-run script an offline GPU machine "
                                        "needs for gpu-run")
    add_pack_arguments(w)
    w.set_defaults(func=gpu_pack)
    args = parser.parse_args(argv)
    return _guarded(args)


EXIT_FAILED, EXIT_USAGE = 1, 2
"""Exit statuses: 1 the work failed (a notebook, a damaged file, out of memory), 2 the command was used wrongly
(argparse's own status for bad arguments), 128 + signal when stopped (130 Ctrl-C, 143 SIGTERM)."""


_OOM = "error: out of memory; try a smaller --batch-size or --img-size, or another profile"


def _guarded(args: argparse.Namespace) -> int:
    """Run a command; a user's error becomes one line on stderr and an exit status, not a traceback."""
    import torch

    from .checkpoints import CheckpointError
    from .data import DataFileError, DatasetNotFoundError
    from .results import ResultsFileError

    try:
        return int(args.func(args))
    except (ResultsFileError, DataFileError, DatasetNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (MemoryError, torch.OutOfMemoryError):
        print(_OOM, file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as exc:  # torch's CPU allocator says so in a RuntimeError
        from .measure.timing import is_oom

        if not is_oom(exc):
            raise
        print(_OOM, file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a folder that cannot be written, a disk that is full
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:  # bad input that got past argparse
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nstopped (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
