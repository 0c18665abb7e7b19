"""Measured numbers, appended to ``data/results/<notebook-stem>.csv`` atomically.

Every row carries its context (device name, profile, torch and timm versions, date), so numbers
measured on different machines or profiles can sit in one file and still be told apart.

Atomic: the new file is written beside the old one and moved over it with ``os.replace``; a crash
mid-write leaves the previous file intact and no partial file under the final name.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ENV_OUTPUT = "VITSURVEY_OUTPUT"
COLUMNS = [
    "method", "setting", "params", "macs", "top1", "throughput_img_s", "batch_size",
    "device", "profile", "torch", "timm", "date",
]
"""The leading columns of every results file; rows may add more (latency, memory, ...)."""


def repository_root() -> Path | None:
    """The checkout this package runs from: the nearest directory upwards from the working directory
    that holds ``data/results`` and ``vitsurvey/``, else the directory above an editable install."""
    here = Path.cwd().resolve()
    package_parent = Path(__file__).resolve().parent.parent
    for d in (*(here, *here.parents), package_parent):
        if (d / "data" / "results").is_dir() and (d / "vitsurvey").is_dir():
            return d
    return None


def project_root() -> Path:
    """Where outputs (results, figures, checkpoints) go: ``$VITSURVEY_OUTPUT`` if set, else the
    repository, else the working directory."""
    if os.environ.get(ENV_OUTPUT):
        return Path(os.environ[ENV_OUTPUT]).expanduser()
    return repository_root() or Path.cwd()


def results_dir() -> Path:
    return project_root() / "data" / "results"


_CPU_FLAGS = {"avx512_vnni": "VNNI", "avx_vnni": "VNNI", "avx512_bf16": "BF16", "amx_tile": "AMX"}
"""CPU features that change how fast low-precision kernels run (int8 dot products, bf16, matrix tiles)."""


def cpu_features() -> dict[str, object]:
    """The CPU's vector instruction set as torch dispatches to it, and its low-precision features.

    Two machines can both call themselves "AMD EPYC" and still differ by 2x in fp32 and far more in int8
    or bf16: one with AVX-512 VNNI and BF16 instructions, one with AVX2 only. ``int8_dot`` says whether
    int8 dot-product instructions (VNNI or AMX) exist, which int8 kernels need to be fast.
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    extras = sorted({name for flag, name in _CPU_FLAGS.items() if flag in flags})
    return {
        "isa": torch.backends.cpu.get_cpu_capability(),
        "extras": extras,
        "int8_dot": "VNNI" in extras or "AMX" in extras,
        "bf16": "BF16" in extras or "AMX" in extras,
    }


def device_name(device: str | torch.device | None = None) -> str:
    """A human name of the device: the GPU's product name, or the CPU's model, thread count and vector
    instruction set (e.g. ``AMD EPYC (2 threads; AVX2)``), so rows from different CPUs that share a
    model name are told apart."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    features = cpu_features()
    isa = " ".join([str(features["isa"]), *features["extras"]])  # type: ignore[list-item]
    return f"{model} ({torch.get_num_threads()} threads; {isa})"


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


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``: a reader sees
    the old file or the new one, never half of one. The file gets the permissions a plain ``open`` would give
    (the temporary file's private mode is not kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` atomically (:func:`write_text_atomic`)."""
    write_text_atomic(frame.to_csv(index=False), path)


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
    path = results_dir() / f"{Path(stem).stem}.csv"
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
    frame = pd.concat([old, new], ignore_index=True) if not old.empty else new
    for c in COLUMNS:
        if c not in frame.columns:
            frame[c] = pd.NA
    # convert_dtypes keeps whole numbers whole (no "64.0") in columns that other rows leave empty
    write_csv_atomic(frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]].convert_dtypes(), path)
    return path


def read(stem: str) -> pd.DataFrame:
    """The results of one notebook (an empty frame with the standard columns if none yet)."""
    path = results_dir() / f"{Path(stem).stem}.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
