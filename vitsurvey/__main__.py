"""Command line: ``python -m vitsurvey doctor | profile MODEL | calibrate | run [NOTEBOOK ...] | train | book | leaderboard``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
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
    try:
        print(f"outputs: {results.project_root()}")
    except results.OutputDirError as exc:
        print(f"outputs: error: {exc}")
        return EXIT_FAILED
    return 0


def profile_model(args: argparse.Namespace) -> int:
    from . import measure, models, profiles

    prof = profiles.get_profile(args.profile)
    if args.img_size is not None and args.img_size <= 0:
        raise ValueError(f"--img-size must be a positive number of pixels, not {args.img_size}")
    if args.batch_size is not None and args.batch_size <= 0:
        raise ValueError(f"--batch-size must be a positive number of images, not {args.batch_size}")
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


class _Stopped(Exception):
    """SIGTERM arrived: unwind like Ctrl-C does, so the kernel is shut down and temporary files removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _find_notebooks(names: list[str], nb_dir: Path) -> list[Path]:
    """Notebook paths for names (``12``, ``12_leaderboard``, or a path); a name that matches none, or several,
    raises ValueError listing what there is."""
    if not names:
        paths = [p for p in sorted(nb_dir.glob("[0-9][0-9]_*.ipynb")) if not p.stem.endswith(".failed")]
        if not paths:
            raise ValueError(f"no notebooks found in {nb_dir}")
        return paths
    paths = []
    for n in names:
        p = Path(n) if Path(n).suffix == ".ipynb" else nb_dir / f"{n}.ipynb"
        if not p.is_file():
            candidates = [c for c in sorted(nb_dir.glob(f"{n}*.ipynb")) if not c.stem.endswith(".failed")]
            if not candidates:
                raise ValueError(f"no notebook {n!r} (looked for {p} and {nb_dir}/{n}*.ipynb)")
            if len(candidates) > 1:
                raise ValueError(f"{n!r} matches {len(candidates)} notebooks: "
                                 f"{', '.join(c.stem for c in candidates)}; name one of them")
            p = candidates[0]
        paths.append(p)
    return paths


def _cell_as_read(executed: str, index: int | None) -> str:
    """The cell at ``index`` of papermill's output, as a reader of the notebook finds it: its position among
    the notebook's cells (papermill's injected-parameters cell not counted) and its first line."""
    import nbformat

    if index is None or index < 0:
        return "a cell that could not be identified"
    nb = nbformat.read(executed, as_version=4)
    # papermill's indices are those of the notebook it ran, before it added its error banners
    cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", [])]
    if index in injected:
        return "the cell that sets the parameters"
    position = index - sum(1 for i in injected if i < index)
    first = next((line.strip() for line in cells[index].source.splitlines() if line.strip()), "")
    first = first if len(first) <= 60 else first[:57] + "..."
    return f"cell {position + 1} of {len(cells) - len(injected)} (it begins `{first}`)"


def _last_started(executed: str) -> int | None:
    """The index of the last code cell papermill started in its output notebook: where a dead kernel died
    (papermill marks every started cell completed once it gives up, but never starts the ones after)."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # the output was never written: the kernel died before the first cell
        return None
    started = [i for i, c in enumerate(nb.cells)
               if c.cell_type == "code" and c.metadata.get("papermill", {}).get("start_time")]
    return started[-1] if started else None


def _run_one(path: Path, dest: Path, params: dict, tmp: str) -> str | None:
    """Execute one notebook into ``tmp`` and, if it succeeds, put it at ``dest``; return None, or what failed."""
    import papermill
    from nbclient.exceptions import DeadKernelError

    from . import progress
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            str(path), tmp, parameters=params, kernel_name="python3", cwd=str(path.parent),
            progress_bar=progress.wanted(), log_output=False,  # a bar over the cells, in a terminal only
            # the kernel's own log (transport warnings at start-up, a handler's traceback when it is shut down
            # mid-cell after Ctrl-C) is not the notebook's output; the cells' errors still reach the notebook
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except PapermillExecutionError as exc:
        if exc.ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel first
            raise KeyboardInterrupt from None
        return f"{path.name} failed in {_cell_as_read(tmp, exc.cell_index)}: {exc.ename}: {exc.evalue}"
    except DeadKernelError:
        return (f"{path.name}: the kernel died (out of memory, or a crash in native code) in "
                f"{_cell_as_read(tmp, _last_started(tmp))}")
    staged = dest.with_name(f".{dest.name}.tmp")
    try:
        _finish(tmp, staged, dest.name, drop_injected=dest.resolve() == path.resolve())
        os.replace(staged, dest)
    finally:
        staged.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def _temporaries_in(folder: str) -> Iterator[None]:
    """Make ``folder`` the default place for temporary files, so the kernel's connection file (which
    jupyter_client leaves behind when the kernel is stopped by a signal) goes where the run cleans up."""
    before = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = before


def run(args: argparse.Namespace) -> int:
    """Execute notebooks with papermill, each into a temporary directory and moved into place only when it
    finished: a failed or interrupted run leaves the stored notebook as it was and no temporary copy behind.
    Exit status: 0 done, 1 a notebook failed (the executed copy is kept as ``<name>.failed.ipynb``), 2 bad
    arguments, 130 / 143 stopped by Ctrl-C / SIGTERM."""
    from . import profiles, progress

    if args.profile is not None and args.profile not in profiles.VALID_NAMES:
        raise ValueError(f"unknown profile {args.profile!r}; valid: {', '.join(profiles.VALID_NAMES)}")
    paths = _find_notebooks(args.notebooks, _notebooks_dir())
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory for the executed notebooks")
    params = {"profile": args.profile} if args.profile else {}
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    current = paths[0]
    scratch = tempfile.mkdtemp(prefix="vitsurvey-run-")
    try:
        with _temporaries_in(scratch):
            for i, path in enumerate(paths, 1):
                current = path
                dest = (out_dir or path.parent) / path.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                print(f"[{i}/{len(paths)}] {path.stem} ...", end="\n" if progress.wanted() else " ", flush=True)
                start = time.perf_counter()
                tmp = str(Path(scratch) / path.name)
                failure = _run_one(path, dest, params, tmp)
                if failure is not None:
                    print("FAILED")
                    kept = dest.with_name(f"{dest.stem}.failed.ipynb")
                    if Path(tmp).is_file():
                        _finish(tmp, kept, kept.name, drop_injected=False)
                        failure += f"\nthe executed notebook, with the error, is at {kept}"
                    print(f"error: {failure}", file=sys.stderr)
                    return 1
                dest.with_name(f"{dest.stem}.failed.ipynb").unlink(missing_ok=True)
                print(f"done in {time.perf_counter() - start:.0f} s -> {dest}")
    except (KeyboardInterrupt, _Stopped) as exc:
        _stop_children()
        signum = exc.signum if isinstance(exc, _Stopped) else signal.SIGINT
        print(f"\nstopped ({signal.Signals(signum).name}) while running {current.name}; the stored notebook is "
              "unchanged", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _stop_children() -> None:
    """Kill whatever this process started and wait for it: a kernel still starting when the signal came is not
    yet papermill's to shut down, and would otherwise outlive the run (and write its connection file after the
    clean-up)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=10)


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


def _training_model(name: str, profile, channels: int, classes: int, img_size: int):
    """``baseline`` (the profile's ViT), ``teacher`` (its small ResNet), a token mixer's ViT (``mixer:NAME``), or
    any timm model by name, sized for the data set."""
    from . import mixers, models, train as train_

    cfg = train_.baseline_config(profile)
    if name == "baseline":
        return models.VisionTransformer(cfg)
    if name == "teacher":
        return models.small_resnet(channels, classes, profile.teacher_channels)
    if name.startswith("mixer:"):
        mixer = name.split(":", 1)[1]
        if mixer not in mixers.MIXERS:
            raise ValueError(f"unknown token mixer {mixer!r}; valid: {', '.join(mixers.MIXERS)}")
        return models.VisionTransformer(cfg.with_mixer(mixer))
    return models.create(name, img_size=img_size, in_chans=channels, num_classes=classes)


def _initialise(model, path: Path) -> tuple[int, int]:
    """Load the weights of a training state or checkpoint into ``model`` where names and shapes agree (fine-tuning
    after pre-training on another label set keeps everything but the head); tensors-only loading."""
    import torch

    from .train import CheckpointError

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        weights = saved.get("model") or saved["state_dict"]
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"--init {path} holds no weights this command can read ({type(exc).__name__}).") from None
    own = model.state_dict()
    kept = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not kept:
        raise ValueError(f"--init {path} shares no weights with this model; was it trained for another architecture?")
    model.load_state_dict(kept, strict=False)
    return len(kept), len(own)


def train_model(args: argparse.Namespace) -> int:
    """Train one model on one data set, in one process or, under ``torchrun``, in several with DDP."""
    import torch

    from . import data, distributed, measure, profiles, results, train as train_

    for flag in ("epochs", "batch_size", "train_samples", "test_samples"):
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
    prof = prof.replace(**changes)
    if args.root is None:
        prof = data.resolve(prof)
    ctx = distributed.init(prof.device)
    try:
        info = data.DATASETS[prof.dataset]
        train_loader, test_loader = data.loaders(prof, args.root)
        x0 = test_loader.dataset[0][0]
        channels, size = int(x0.shape[0]), int(x0.shape[-1])
        found = getattr(getattr(train_loader.dataset, "dataset", train_loader.dataset), "classes", None)  # ImageFolder
        classes = len(found) if found else info.num_classes or train_.baseline_config(prof).num_classes
        train_.seed_everything(prof.seed)
        model = _training_model(args.model, prof, channels, classes, size)
        if args.init:
            kept, total = _initialise(model, Path(args.init))
            if ctx.main:
                print(f"initialised {kept} of {total} tensors from {args.init} (the others, e.g. a head for another "
                      "set of classes, start fresh)")
        state = Path(args.checkpoint) if args.checkpoint else (
            results.project_root() / "checkpoints" / f"train_{args.model.replace(':', '-')}_{prof.name}_{prof.dataset}.pt")
        log = print if ctx.main else None
        if log:
            log(f"training {args.model} on {data.describe(prof.dataset)} ({len(train_loader.dataset)} images), "
                f"{ctx.world} process(es) on {ctx.device}, global batch {prof.batch_size}; state: {state}")
        result = train_.fit(model, train_loader, test_loader, prof.replace(device=str(ctx.device)), log=log,
                            prepare=distributed.prepare(ctx, prof.seed), resume=state)
        if ctx.main:
            model = model.cpu().eval()
            row = {"method": args.model, "setting": f"{prof.epochs} epochs, {ctx.world} process(es)",
                   "params": measure.count_params(model),
                   "macs": measure.count_macs(model, torch.zeros(1, channels, size, size)).total,
                   "top1": result.top1, "batch_size": prof.batch_size, "dataset": prof.dataset,
                   "epochs": prof.epochs, "world_size": ctx.world, "train_seconds": result.train_seconds,
                   "train_img_per_s": result.train_img_per_s * ctx.world}
            path = results.append("train", [row], prof.name, ctx.device)
            print(f"test top-1 {result.top1:.2f}% after {prof.epochs} epochs -> {path.name}; state in {state.name}")
    finally:
        distributed.shutdown()
    return 0


def book(args: argparse.Namespace) -> int:
    """Build the static site of the stored notebooks (nothing is executed)."""
    from . import book as book_
    from .results import repository_root

    repo = repository_root()
    if repo is None:
        raise ValueError("the site is built from a checkout of the repository; run this inside one")
    out = Path(args.out) if args.out else repo / "build" / "book"
    pages = book_.build(repo, out)
    print(f"{len(pages) - 1} notebooks -> {pages[0]}")
    return 0


def leaderboard(args: argparse.Namespace) -> int:
    """Print the newest leaderboard from the results file; nothing is rerun."""
    from . import leaderboard as board_

    try:
        board = board_.read(args.profile)
    except board_.NoResults as exc:
        print(exc, file=sys.stderr)
        return 1
    table = board_.format_board(board, args.sort)  # a bad --sort fails before anything is printed
    print(board_.describe_run(board))
    print(table)
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
    args = parser.parse_args(argv)
    return _guarded(args)


EXIT_FAILED, EXIT_USAGE = 1, 2
"""Exit statuses: 1 the work failed (a notebook, a damaged file, out of memory), 2 the command was used wrongly
(argparse's own status for bad arguments), 128 + signal when stopped (130 Ctrl-C, 143 SIGTERM)."""


def _guarded(args: argparse.Namespace) -> int:
    """Run a command; a user's error becomes one line on stderr and an exit status, not a traceback."""
    import torch

    from .data import DataFileError, DatasetNotFoundError
    from .results import ResultsFileError
    from .train import CheckpointError

    try:
        return int(args.func(args))
    except (ResultsFileError, DataFileError, DatasetNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (MemoryError, torch.OutOfMemoryError):
        print("error: out of memory; try a smaller --batch-size or --img-size, or another profile", file=sys.stderr)
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
