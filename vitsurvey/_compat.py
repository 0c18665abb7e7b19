"""Make ``import torchvision`` (and so ``import timm``) work when torch and torchvision builds disagree.

Why this exists: the package registry serves torchvision only as a CUDA build. Its compiled
extension ``_C.so`` links ``libtorch_cuda.so``, which a CPU-only torch does not ship, so the
extension fails to load. torchvision then registers fake kernels for ``torchvision::nms`` whose
schema was never defined, and ``import torchvision`` dies with
``RuntimeError: operator torchvision::nms does not exist``. timm imports torchvision, so timm dies
too.

The fix, applied once before torchvision is first imported:

1. try to load ``_C.so`` ourselves. Where the builds match (GPU machines, normal CUDA installs)
   this succeeds, the operators are defined by the real library, and nothing else happens;
2. otherwise define the two operator *schemas* torchvision expects (``nms`` and ``qnms``), without
   kernels. Everything the project uses (models, transforms, data sets, all of timm) then works;
   only detection ops and torchvision's image decoders stay unavailable, as they already were.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

__all__ = [
    "STATE", "ensure_torchvision_importable",
]

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
# Keep a reference: a torch.library.Library that is garbage-collected unregisters its definitions.
_fallback_library: torch.library.Library | None = None
STATE: str = "not applied"
"""What :func:`ensure_torchvision_importable` did: ``"native"``, ``"schemas defined"``,
``"already imported"``, ``"torchvision not installed"`` or ``"not applied"``."""


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def ensure_torchvision_importable() -> str:
    """Prepare torch so that torchvision imports; return what was done (see :data:`STATE`)."""
    global _fallback_library, STATE
    if STATE != "not applied":  # idempotent: report what the first call did
        return STATE
    if "torchvision" in sys.modules:
        STATE = "already imported"
        return STATE
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        STATE = "torchvision not installed"
        return STATE
    if _op_exists("nms"):
        STATE = "native"
        return STATE
    extension = Path(spec.origin).parent / "_C.so"
    try:
        torch.ops.load_library(str(extension))
    except (OSError, RuntimeError):
        pass
    if _op_exists("nms"):
        STATE = "native"
        return STATE
    _fallback_library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        if not _op_exists(name):
            _fallback_library.define(name + _NMS_SCHEMA)
    STATE = "schemas defined"
    return STATE
