"""Measured numbers, appended to ``data/results/<notebook-stem>.csv`` atomically.

Every row carries its context (device name, profile, torch and timm versions, date), so numbers
measured on different machines or profiles can sit in one file and still be told apart. Where the files live
is :mod:`vitsurvey.paths`' concern and how the device is named :mod:`vitsurvey.device`'s; both are re-exported
here because notebooks read them as ``results.device_name`` and ``results.cpu_features``.

Atomic: the new file is written beside the old one and moved over it with ``os.replace``; a crash
mid-write leaves the previous file intact and no partial file under the final name.

Locked: appending is read-modify-replace, so two processes appending at once would each replace the file with
their own rows and one writer's rows would be lost. Every write holds an advisory lock on a hidden file beside
the results file (``filelock``; the kernel drops it when a writer dies, so a killed writer never blocks the
next). Under the lock, temporary files an interrupted writer left behind are removed.

Checked: a results file is parsed strictly before anything is appended to it. A damaged file (cut off
mid-row, an unclosed quote, empty, binary, a foreign header) is refused with its name and line and never
rewritten, so a damaged file is never "repaired" into silently wrong numbers.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import torch
from filelock import FileLock, Timeout

from .device import cpu_features, device_name
from .paths import ENV_OUTPUT, OutputDirError, project_root, repository_root, results_dir

__all__ = [
    "COLUMNS", "ENV_OUTPUT", "LOCK_TIMEOUT_S", "NUMERIC", "OutputDirError", "ResultsFileError", "SUPERSEDED", "append",
    "context", "cpu_features", "current", "device_name", "project_root", "read", "read_file", "repository_root",
    "results_dir", "supersede", "write_atomic", "write_text_atomic",
]

COLUMNS = [
    "method", "setting", "params", "macs", "top1", "throughput_img_s", "batch_size",
    "device", "profile", "torch", "timm", "date",
]
"""The leading columns of every results file; rows may add more (latency, memory, ...)."""


def context(profile: str, device: str | torch.device | None = None) -> dict[str, str]:
    """The columns that say where and when a number was measured."""
    import timm

    return {
        "device": device_name(device),
        "profile": profile,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": _dt.date.today().isoformat(),
    }


def _as_dict(row: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    if isinstance(row, Mapping):
        return dict(row)
    raise TypeError(f"A results row must be a mapping or a dataclass record, not {type(row).__name__}.")


LOCK_TIMEOUT_S = 600.0
"""How long a writer waits for another to finish with the same file before giving up."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock every writer of ``path`` takes: ``.<name>.lock`` beside it (kept, empty; a lock file that is
    removed while held would let a third writer in)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.with_name(f".{path.name}.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise TimeoutError(f"Another process has been writing {path.name} for {LOCK_TIMEOUT_S:.0f} s (it holds "
                           f"{lock.lock_file}); wait for it to finish, or stop it.") from None
    try:
        yield
    finally:
        lock.release()


def _target(path: Path) -> Path:
    """The file a write of ``path`` changes: ``path`` itself, or, for a symbolic link, the file it points to (so the
    link stays a link, and the lock and temporary file sit beside the file that is written)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file in the same directory, then ``os.replace``:
    a reader sees the old file or the new one, never half of one. Holds ``path``'s lock, so concurrent writers
    take turns, and first removes temporary files that interrupted writers left (only a writer holding the lock
    makes them). The file gets the permissions a plain ``open`` would give, not the temporary file's private mode.
    A symbolic link is written through: its target is replaced, the link kept. A write that fails (a full disk)
    raises OSError naming ``path``, which keeps its previous contents."""
    path = _target(path)
    with _locked(path):
        _write_locked(path, write)


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`write_atomic`."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _write_locked(path: Path, write: Callable[[BinaryIO], None]) -> None:
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # only a writer holding the lock makes these
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, f"{exc.strerror or exc} while writing {path} (it keeps its previous contents); "
                                 "free space there, or set $VITSURVEY_OUTPUT to another folder") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append(
    stem: str, rows: Iterable[Any], profile: str, device: str | torch.device | None = None
) -> Path:
    """Append ``rows`` (dicts or dataclass records) to ``data/results/<stem>.csv``; return its path.

    Context columns (device, profile, versions, date) are filled in unless a row sets them. New
    columns extend the file; rows that lack a column leave it empty.
    """
    ctx = context(profile, device)
    new = pd.DataFrame([{**ctx, **_as_dict(r)} for r in rows])
    if new.empty:
        raise ValueError("No rows to append.")
    path = _target(results_dir() / f"{Path(stem).stem}.csv")
    with _locked(path):  # read, add, replace: one writer at a time, or rows are lost
        old = read_file(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
        frame = pd.concat([old, new], ignore_index=True) if not old.empty else new
        for c in COLUMNS:
            if c not in frame.columns:
                frame[c] = pd.NA
        # convert_dtypes keeps whole numbers whole (no "64.0") in columns that other rows leave empty
        frame = frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]].convert_dtypes()
        text = frame.to_csv(index=False)
        _write_locked(path, lambda f: f.write(text.encode("utf-8")))
    return path


class ResultsFileError(ValueError):
    """A results file that cannot be trusted: cut off, binary, or not written by :func:`append`."""


def _damaged(path: Path, line: int | None, what: str) -> ResultsFileError:
    where = f"{path}, line {line}" if line else str(path)
    return ResultsFileError(
        f"{where}: {what}. The file is left as it is and nothing was added to it; restore it from version "
        "control, or move it aside to start a new one.")


def read_file(path: Path) -> pd.DataFrame:
    """A results file, parsed strictly: every row has the header's fields, the header begins with
    :data:`COLUMNS`, the file is UTF-8 text that ends with a newline (every file :func:`append` writes does;
    one that does not was cut off mid-row). Raises :class:`ResultsFileError` naming the file and line."""
    raw = path.read_bytes()
    if not raw:
        raise _damaged(path, None, "the file is empty (a results file always has a header line)")
    if b"\0" in raw:
        raise _damaged(path, raw[: raw.index(b"\0")].count(b"\n") + 1, "binary content (a NUL byte), not CSV text")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as spreadsheet programs save UTF-8, is dropped
    except UnicodeDecodeError as exc:
        raise _damaged(path, raw[: exc.start].count(b"\n") + 1, "bytes that are not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        if header[: len(COLUMNS)] != COLUMNS:
            raise _damaged(path, 1, f"the header does not begin with {','.join(COLUMNS)}; this is not a results "
                                    "file written by vitsurvey")
        numeric = [(i, c) for i, c in enumerate(header) if c in NUMERIC]
        for row in reader:
            if len(row) != len(header):
                raise _damaged(path, reader.line_num, f"{len(row)} fields where the header has {len(header)} "
                                                      "(a row cut off or written by hand)")
            for i, c in numeric:
                if row[i].strip() and not _is_number(row[i]):
                    raise _damaged(path, reader.line_num, f"{c} is {row[i]!r}, not a number")
    except csv.Error as exc:
        raise _damaged(path, reader.line_num, f"not valid CSV ({exc}; e.g. a quote that is never closed)") from None
    if not text.endswith("\n"):
        raise _damaged(path, reader.line_num, "the last row is cut off (the file does not end with a newline, as "
                                              "if a write was interrupted)")
    return pd.read_csv(io.StringIO(text))


NUMERIC = ("params", "macs", "top1", "throughput_img_s", "batch_size")
"""The standard columns that hold numbers: a value there that is not one is refused by :func:`read_file`."""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


SUPERSEDED = "superseded"
"""The column that marks a row no longer to be read, with the reason (e.g. measured with an earlier protocol)."""


def current(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a results frame that are not marked :data:`SUPERSEDED`."""
    if SUPERSEDED not in frame.columns:
        return frame
    return frame[frame[SUPERSEDED].isna() | (frame[SUPERSEDED].astype(str).str.strip() == "")]


def read(stem: str, superseded: bool = False) -> pd.DataFrame:
    """The results of one notebook (an empty frame with the standard columns if none yet), without the rows
    marked superseded unless ``superseded``; a damaged file raises :class:`ResultsFileError`."""
    path = results_dir() / f"{Path(stem).stem}.csv"
    frame = read_file(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
    return frame if superseded else current(frame)


def supersede(stem: str, rows: Callable[[pd.DataFrame], pd.Series], why: str) -> int:
    """Mark the rows of ``data/results/<stem>.csv`` that ``rows`` selects (a function of the whole frame returning
    a boolean mask) as superseded, giving ``why``; rows marked before keep their reason. They stay in the file, as
    history, but :func:`read` no longer returns them. Returns how many rows were newly marked."""
    if not why.strip():
        raise ValueError("Say why the rows are superseded (e.g. 'measured with the earlier timing routine').")
    path = _target(results_dir() / f"{Path(stem).stem}.csv")
    with _locked(path):
        frame = read_file(path)
        if SUPERSEDED not in frame.columns:
            frame[SUPERSEDED] = pd.NA
        fresh = rows(frame).fillna(False).astype(bool) & frame.index.isin(current(frame).index)
        frame.loc[fresh, SUPERSEDED] = why
        text = frame.convert_dtypes().to_csv(index=False)
        _write_locked(path, lambda f: f.write(text.encode("utf-8")))
    return int(fresh.sum())
