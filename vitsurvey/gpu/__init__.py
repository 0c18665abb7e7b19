"""The GPU run: every GPU measurement of the project in one prepared process, and the pack that carries what an
offline GPU machine lacks.

A data-centre GPU is often lent for minutes, without a network. So the GPU numbers come from one command,
``python -m vitsurvey gpu-run``, that runs in one process within a fixed time (:mod:`~vitsurvey.gpu.run`), step
by step, each step in its own time budget and its own ``try`` (:mod:`~vitsurvey.gpu.runner`), so that one bug costs
one row and not the run. ``--rehearse`` runs every step on this CPU at tiny sizes first, which is what the tests
do. ``python -m vitsurvey gpu-pack DIR`` (:mod:`~vitsurvey.gpu.pack`) gathers the wheels, the data set and an
install-and-run script for a machine that cannot download them.

This module only declares the two commands' arguments, so that the command line can list them without importing
torch, timm or the measuring code; the work is imported when a command runs.
"""

from __future__ import annotations

import argparse

__all__ = ["add_pack_arguments", "add_run_arguments"]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``gpu-run`` (:func:`vitsurvey.gpu.run.command` reads them)."""
    parser.add_argument("--rehearse", action="store_true",
                        help="run every step on this machine's CPU at tiny sizes (the smoke profile, small ViTs, "
                             "1-2 timing rounds) to check the run before a GPU is at hand; writes into a temporary "
                             "folder unless --out is given")
    parser.add_argument("--out", default=None,
                        help="output root: results go to OUT/data/results/gpu_run.csv, the trained baseline to "
                             "OUT/checkpoints/ (default: the repository, as every command)")
    parser.add_argument("--log", default=None, help="the log file, tracebacks included (default: OUT/gpu_run.log)")
    parser.add_argument("--reported", default=None,
                        help="folder holding S3's s3_runs.csv (default: the repository's data/reported)")


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``gpu-pack`` (:func:`vitsurvey.gpu.pack.command` reads them)."""
    parser.add_argument("dir", help="the folder to fill (created; a previous pack there is replaced)")
    parser.add_argument("--find-links", default=None,
                        help="take wheels and source archives from this folder instead of the package registry")
