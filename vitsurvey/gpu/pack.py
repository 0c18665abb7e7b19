"""``python -m vitsurvey gpu-pack DIR``: what a GPU machine without a network needs for ``gpu-run``, in one folder.

A lent GPU machine typically has Python, torch with CUDA, timm, pandas and scipy, but not the packages this project
adds (fvcore and its small dependencies, torchao, opacus, fairlearn), nor the data set, and it cannot download them.
The pack holds, within :data:`LIMIT_BYTES`:

* ``wheels/`` -- a wheel of each of :data:`PACKAGES` for Python 3.12 on x86-64 Linux, at the version this project is
  tested with (the installed one), taken from the package registry with ``pip download`` (a binary wheel where one
  exists, else the source archive built here into a wheel with ``pip wheel --no-deps``); and a wheel of this package;
* ``data/fashion-mnist/`` -- the four Fashion-MNIST files, gzipped, found where :mod:`vitsurvey.data` finds them;
* ``reported/`` -- the papers' reported tables (S3's model list is read from there);
* ``install.sh`` -- installs the wheels without a network (``pip install --no-index --no-deps --target DIR/site``)
  and runs ``gpu-run`` (as ``python -m vitsurvey.gpu.run``) with results under ``$OUT`` (default ``DIR/out``);
  arguments given to it are passed on (``bash DIR/install.sh --rehearse`` rehearses the run from the pack);
* ``MANIFEST.txt`` -- every file with its size and SHA-256.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from . import add_pack_arguments

__all__ = [
    "FMNIST_FILES", "INSTALL_SCRIPT", "LIMIT_BYTES", "PACKAGES", "PLATFORMS", "PYTHON_VERSION", "PackError", "build",
    "command", "fetch_wheels", "gather_data", "main", "manifest", "pinned", "self_wheel",
]

PACKAGES = ("fvcore", "iopath", "yacs", "termcolor", "portalocker", "tabulate", "torchao", "opacus", "fairlearn")
"""What a GPU machine's image is known to lack (or, for portalocker and tabulate, what fvcore needs at a version it
takes), all small and pure Python but torchao."""
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
"""pip matches manylinux tags exactly, so every tag a wheel may carry is named."""
LIMIT_BYTES = 64 * 2**20
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
PIP_TIMEOUT_S = 600

INSTALL_SCRIPT = """#!/usr/bin/env bash
# Install what this GPU machine lacks from this folder (no network needed), then run the GPU measurements.
# Results: $OUT/data/results/gpu_run.csv, the log $OUT/gpu_run.log, the trained baseline in $OUT/checkpoints
# ($OUT defaults to this folder's out/). Arguments are passed on to gpu-run.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
SITE="$HERE/site"
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \\
    "$HERE"/wheels/*.whl
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export VITSURVEY_DATA="$HERE/data" VITSURVEY_OFFLINE=1
OUT_DIR="${OUT:-$HERE/out}"
mkdir -p "$OUT_DIR"
exec "$PY" -m vitsurvey.gpu.run --out "$OUT_DIR" --log "$OUT_DIR/gpu_run.log" --reported "$HERE/reported" "$@"
"""


class PackError(RuntimeError):
    """The pack could not be made: a package not obtainable, the data set not found, the folder too large."""


def pinned(name: str) -> str:
    """``name==version`` at the version installed here (the tested set), or ``name`` where it is not installed."""
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _pip(args: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
        raise PackError(f"{what} failed (pip exited {done.returncode}):\n{tail}")


def fetch_wheels(dest: Path, requirements: list[str], find_links: Path | None = None,
                 log: Callable[[str], None] = print) -> list[Path]:
    """A wheel of each requirement for Python :data:`PYTHON_VERSION` on x86-64 Linux in ``dest``: a binary wheel from
    the registry (or ``find_links``) where there is one, else the source archive, built into a wheel here."""
    dest.mkdir(parents=True, exist_ok=True)
    source = ["--no-index", "--find-links", str(find_links)] if find_links else []
    target = ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for tag in PLATFORMS:
        target += ["--platform", tag]
    for req in requirements:
        before = set(dest.glob("*.whl"))
        try:
            _pip(["download", "--quiet", "--no-deps", "--only-binary=:all:", *target, *source, "-d", str(dest), req],
                 f"downloading a wheel of {req}")
            how = "wheel"
        except PackError:
            with tempfile.TemporaryDirectory() as tmp:
                _pip(["download", "--quiet", "--no-deps", "--no-binary=:all:", *source, "-d", tmp, req],
                     f"downloading {req} (no wheel for Python {PYTHON_VERSION} on x86-64 Linux; its source archive)")
                archive = next(Path(tmp).iterdir())
                _pip(["wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dest), str(archive)],
                     f"building a wheel of {req} from {archive.name}")
            how = "built from its source archive"
        new = sorted(set(dest.glob("*.whl")) - before)
        log(f"  {req}: {', '.join(p.name for p in new) or 'already there'} ({how})")
    return sorted(dest.glob("*.whl"))


def self_wheel(dest: Path, log: Callable[[str], None] = print) -> Path:
    """A wheel of this package, built from the checkout it runs in (no dependencies: the GPU machine has torch)."""
    from ..paths import repository_root

    repo = repository_root()
    if repo is None or not (repo / "pyproject.toml").is_file():
        raise PackError("gpu-pack builds vitsurvey's own wheel from a checkout of the repository; run it inside one")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _pip(["wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp, str(repo)], "building vitsurvey's wheel")
        built = next(Path(tmp).glob("vitsurvey-*.whl"))
        out = dest / built.name
        shutil.copy2(built, out)
    log(f"  vitsurvey: {out.name}")
    return out


def gather_data(dest: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Fashion-MNIST's four files, gzipped, into ``dest/fashion-mnist`` (the layout :mod:`vitsurvey.data` reads),
    from where :func:`vitsurvey.data.find_all` finds it; then read back through the package to check them."""
    from .. import data

    found = data.find_all()["fashion_mnist"]
    if found == "not found":
        raise PackError("Fashion-MNIST was not found (looked in "
                        f"{', '.join(map(str, data.search_roots()))}); to get it: "
                        f"{data.DATASETS['fashion_mnist'].how_to_get}; or set $VITSURVEY_DATA to a folder holding it")
    folder = dest / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for stem in FMNIST_FILES:
        src = next((p for p in (Path(found) / f"{stem}.gz", Path(found) / stem) if p.is_file()), None)
        if src is None:
            raise PackError(f"{stem} (or {stem}.gz) is missing from {found}, where the other Fashion-MNIST files are")
        target = folder / f"{stem}.gz"
        if src.suffix == ".gz":
            shutil.copy2(src, target)
        else:
            with open(src, "rb") as f, gzip.open(target, "wb", compresslevel=9) as g:
                shutil.copyfileobj(f, g)
        out.append(target)
    for split in data.SPLITS:  # read back: a damaged file fails here, not on the GPU machine
        data.load("fashion_mnist", split, root=dest, download=False)
    log(f"  Fashion-MNIST from {found}: {sum(p.stat().st_size for p in out) / 2**20:.1f} MiB")
    return out


def manifest(root: Path) -> tuple[str, int]:
    """Every file under ``root`` with its size and SHA-256, as text; and the total size in bytes."""
    lines, total = [], 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.txt"):
        size = path.stat().st_size
        total += size
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{size:>12,}  {digest}  {path.relative_to(root)}")
    return "\n".join([*lines, f"{total:>12,}  total"]) + "\n", total


_PARTS = ("wheels", "data", "reported", "install.sh", "MANIFEST.txt")


def build(dest: Path, find_links: Path | None = None, log: Callable[[str], None] = print,
          fetch: Callable[..., list[Path]] = fetch_wheels, own_wheel: Callable[..., Path] = self_wheel) -> int:
    """Fill ``dest`` with the pack (see the module docstring); return its size in bytes. A folder that holds anything
    but an earlier pack is refused; an earlier pack is replaced. A pack over :data:`LIMIT_BYTES` is an error."""
    from ..survey import reported_dir

    dest = Path(dest)
    if dest.exists():
        stray = [p.name for p in dest.iterdir() if p.name not in _PARTS]
        if stray:
            raise PackError(f"{dest} holds other files ({', '.join(sorted(stray)[:5])}); give an empty or new folder")
        for part in _PARTS:
            target = dest / part
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    log(f"packing into {dest}")
    gather_data(dest / "data", log)
    fetch(dest / "wheels", [pinned(n) for n in PACKAGES], find_links, log)
    own_wheel(dest / "wheels", log)
    reported = dest / "reported"
    reported.mkdir()
    for table in sorted(reported_dir().glob("*.csv")):
        shutil.copy2(table, reported / table.name)
    script = dest / "install.sh"
    script.write_text(INSTALL_SCRIPT)
    script.chmod(0o755)
    text, total = manifest(dest)
    (dest / "MANIFEST.txt").write_text(text)
    if total > LIMIT_BYTES:
        largest = sorted((p for p in dest.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)[:3]
        raise PackError(f"the pack is {total / 2**20:.1f} MiB, over the limit of {LIMIT_BYTES / 2**20:.0f} MiB; largest: "
                        + ", ".join(f"{p.relative_to(dest)} ({p.stat().st_size / 2**20:.1f} MiB)" for p in largest))
    log(f"{total / 2**20:.1f} MiB of {LIMIT_BYTES / 2**20:.0f} MiB; on the GPU machine: bash {dest.name}/install.sh")
    return total


def command(args: argparse.Namespace) -> int:
    """``gpu-pack`` with parsed arguments: 0 when the pack was made; a :class:`PackError` is one line on stderr."""
    try:
        build(Path(args.dir), Path(args.find_links) if args.find_links else None)
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vitsurvey.gpu.pack DIR [--find-links DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m vitsurvey gpu-pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pack_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
