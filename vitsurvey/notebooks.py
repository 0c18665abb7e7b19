"""Running the notebooks headlessly (``python -m vitsurvey run``): papermill, made safe to interrupt.

Each notebook runs into a temporary directory and is moved into place only when it finished, so a failed or
interrupted run leaves the stored notebook as it was. A failure names the notebook and the cell as a reader
finds it (its position and first line), also when the kernel died and papermill cannot say where. Ctrl-C and
SIGTERM stop the kernel and remove every temporary file, the kernel's connection file included. A notebook
rewritten in place keeps its own parameters cell; papermill's records of this machine's paths are reduced to
file names, so stored notebooks do not change with the machine that ran them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import profiles, progress
from .paths import repository_root

__all__ = ["NOTEBOOK_GLOB", "TIME_STAMP", "expected_seconds", "find_notebooks", "notebooks_dir", "record_run", "run",
           "time_phrase"]

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
"""The notebooks of the course: numbered, ``00_tour.ipynb`` to ``12_leaderboard.ipynb``, in reading order."""


def notebooks_dir() -> Path:
    """``notebooks/`` of the checkout (of the working directory outside one)."""
    return (repository_root() or Path.cwd()) / "notebooks"


TIME_STAMP = re.compile(r"(?P<profile>smoke|cpu|gpu):\s+[\d.]+\s+minutes?\s+on\s+\d+\s+cores?\s+\(measured\s+by\s+"
                        r"papermill\s+on\s+\d{4}-\d{2}-\d{2}\)")
"""The phrase in a notebook's header (its first cell) that :func:`record_run` keeps equal to the notebook's last
measured run in that profile: e.g. ``cpu: 12.3 minutes on 2 cores (measured by papermill on 2026-12-05)``."""


def time_phrase(profile: str, seconds: float, cores: int, date: str) -> str:
    """The header's measured time, as :data:`TIME_STAMP` matches it."""
    minutes = seconds / 60
    return (f"{profile}: {minutes:.1f} minute{'' if f'{minutes:.1f}' == '1.0' else 's'} on {cores} "
            f"core{'' if cores == 1 else 's'} (measured by papermill on {date})")


def record_run(nb: object, profile: str, cores: int | None = None) -> None:
    """Record in an executed notebook (an ``nbformat`` node) the profile it ran in, beside papermill's duration
    (``metadata.vitsurvey``: what :func:`expected_seconds` reads), and rewrite its header's measured time for that
    profile (:data:`TIME_STAMP`, which may be wrapped over lines), so the time a reader is told is the one papermill
    last measured, never typed."""
    pm = nb.metadata.get("papermill", {})  # type: ignore[attr-defined]
    seconds = pm.get("duration")
    if not isinstance(seconds, (int, float)):
        return
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
    date = str(pm.get("start_time") or dt.date.today().isoformat())[:10]
    record = {"profile": profile, "seconds": round(float(seconds), 1), "cores": cores, "date": date}
    nb.metadata["vitsurvey"] = record  # type: ignore[attr-defined]
    cells = nb.cells  # type: ignore[attr-defined]
    if cells and cells[0].cell_type == "markdown":
        phrase = time_phrase(profile, float(seconds), cores, date)
        cells[0].source = TIME_STAMP.sub(lambda m: phrase if m["profile"] == profile else m[0], cells[0].source)


def _finish(src: str, dest: Path, name: str, drop_injected: bool, profile: str | None = None) -> None:
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
    if profile is not None:
        record_run(nb, profile)
    nbformat.write(nb, str(dest))


class _Stopped(Exception):
    """SIGTERM arrived: unwind like Ctrl-C does, so the kernel is shut down and temporary files removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def find_notebooks(names: list[str], nb_dir: Path) -> list[Path]:
    """Notebook paths for names (``12``, ``12_leaderboard``, or a path); a name that matches none, or several,
    raises ValueError listing what there is."""
    if not names:
        paths = [p for p in sorted(nb_dir.glob(NOTEBOOK_GLOB)) if not p.stem.endswith(".failed")]
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


def _run_one(path: Path, dest: Path, params: dict, tmp: str, profile: str | None = None) -> str | None:
    """Execute one notebook into ``tmp`` and, if it succeeds, put it at ``dest``; return None, or what failed."""
    import papermill
    from nbclient.exceptions import DeadKernelError
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
        _finish(tmp, staged, dest.name, drop_injected=dest.resolve() == path.resolve(), profile=profile)
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


def expected_seconds(paths: list[Path], profile: str) -> tuple[float, list[str]]:
    """How long running ``paths`` in ``profile`` should take, from the duration papermill recorded in each stored
    notebook when it was last executed in that profile (the profile :func:`record_run` noted, else the one papermill
    passed as a parameter); also the notebooks with no such run to go by."""
    total, unknown = 0.0, []
    for path in paths:
        try:
            metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
        except (OSError, ValueError):
            metadata = {}
        meta = metadata.get("papermill", {})
        ran_in = (metadata.get("vitsurvey") or {}).get("profile") or (meta.get("parameters") or {}).get("profile")
        duration = meta.get("duration")
        if isinstance(duration, (int, float)) and ran_in == profile:
            total += float(duration)
        else:
            unknown.append(path.stem)
    return total, unknown


def run(names: list[str], profile: str | None = None, out: str | Path | None = None) -> int:
    """Execute notebooks with papermill, each into a temporary directory and moved into place only when it
    finished: a failed or interrupted run leaves the stored notebook as it was and no temporary copy behind.

    ``names``: as :func:`find_notebooks` takes them (none: every numbered notebook); ``profile``: passed as the
    notebooks' ``profile`` parameter (None: their own choice); ``out``: a directory for the executed notebooks
    (None: in place). Bad arguments raise ValueError. Returns the exit status: 0 done, 1 a notebook failed (the
    executed copy is kept as ``<name>.failed.ipynb``), 130 / 143 stopped by Ctrl-C / SIGTERM."""
    if profile is not None and profile not in profiles.VALID_NAMES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(profiles.VALID_NAMES)}")
    paths = find_notebooks(names, notebooks_dir())
    out_dir = Path(out) if out else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory for the executed notebooks")
    params = {"profile": profile} if profile else {}
    chosen = profiles.get_profile(profile, resolve_data=False).name
    seconds, unknown = expected_seconds(paths, chosen)
    if len(unknown) < len(paths):
        print(f"expected: about {seconds / 60:.0f} minutes in the {chosen} profile (the stored notebooks' last run in "
              "it)" + (f"; no earlier {chosen} run of {', '.join(unknown)} to go by" if unknown else ""))
    else:
        print(f"expected: unknown (no stored notebook was last run in the {chosen} profile)")
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
                failure = _run_one(path, dest, params, tmp, chosen)
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
