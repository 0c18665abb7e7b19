"""The GPU run's sizes and time budgets: the real run on one data-centre GPU, and its rehearsal on a CPU.

The project's profiles size the notebooks (:mod:`vitsurvey.profiles`); a :class:`Plan` sizes the GPU run on top
of its profile: which reference ViTs the speed steps build, the batches they time at, how long each step may
take. The real plan (:data:`GPU`) fits one process into 8 minutes on an H100 or H200; the rehearsal
(:data:`REHEARSAL`) runs every step on 2 CPU cores in under 2 minutes, with small ViTs standing in for ViT-S/16
and ViT-B/16 and one or two timing rounds, so that a mistake shows here rather than on a borrowed GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..models import PRESETS, ViTConfig

__all__ = ["GPU", "Plan", "REHEARSAL", "SHARE_GOAL", "TARGET_TOP1"]

TARGET_TOP1 = 91.0
"""The test top-1 (%) the gpu profile's baseline is to reach on Fashion-MNIST."""
SHARE_GOAL = 0.95
"""The share of a MAC cut that should come back as speed: (speed-up - 1) / (MAC speed-up - 1)."""


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one GPU run (see the module docstring for the two plans)."""

    name: str
    profile: str
    """The project profile the run measures with (its timing settings, baseline, data)."""
    total_s: float
    """The run's wall-clock limit: steps that would overrun it are skipped."""
    budgets: Mapping[str, tuple[float, float]]
    """Per step: (expected seconds, cap in seconds)."""
    vits: Mapping[str, ViTConfig]
    """The reference ViTs the speed steps build (random weights), by name."""
    token_vits: tuple[str, ...]
    """The reference ViTs whose token schedules are timed."""
    token_batch: Mapping[str, int]
    """Batch at which each reference ViT's token schedules are timed."""
    prune_vit: str
    prune_ratios: tuple[float, ...]
    prune_batch: int
    multiplex_batch: int
    """Images per timed pass of the multiplexers (a multiple of every N)."""
    mfu_vit: str
    mfu_batch: int
    lowp_batch: int
    s3_only: tuple[str, ...]
    """S3's models to benchmark (empty: as many of S3's models as the profile's ``s3_models`` and the time allow)."""
    s3_batches: tuple[int, ...]
    """Batch sizes of the sweep that finds each S3 model's best batch, in fp32 and bf16."""
    s3_mem_batch: int
    s3_sweep: Mapping[str, float]
    """Warm-up passes, timed passes and minimum seconds per batch size of that sweep."""
    timing: Mapping[str, Any]
    """Changes to the profile's timing settings (:meth:`vitsurvey.profiles.Profile.timing`); none on the GPU."""
    compile_backend: str
    """torch.compile's backend: inductor on the GPU; aot_eager when rehearsing (same graph capture, no code
    generation, which would take minutes on 2 cores)."""
    probe_steps: int
    """Training steps timed to project how many epochs fit the baseline's budget."""
    target_top1: float | None
    rehearsal: bool

    def timing_kwargs(self, profile: Any) -> dict[str, Any]:
        """Keyword arguments of :func:`vitsurvey.measure.relative_throughput` for this run."""
        return {**profile.timing(), **self.timing}

    def budget(self, step: str) -> tuple[float, float]:
        return self.budgets[step]

    def compile_threads(self, profile: Any, device: Any) -> int | None:
        """The CPU threads a model is timed with (None on a GPU, or for the whole machine): torch.compile guards on
        the thread count, so a model compiled with another count would be compiled again inside the timing."""
        return self.timing_kwargs(profile).get("threads") if getattr(device, "type", device) == "cpu" else None


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(d)


GPU = Plan(
    name="gpu",
    profile="gpu",
    total_s=465.0,  # 8 minutes less the interpreter's start and the imports before the clock starts
    budgets=_frozen({
        "environment": (1, 30), "baseline": (120, 230), "tokens": (60, 110), "pruning": (15, 45),
        "multiplex": (15, 45), "mfu": (60, 120), "low_precision": (90, 150), "s3": (25, 200),
    }),
    vits=_frozen({"ViT-S/16": PRESETS["vit_small_patch16_224"], "ViT-B/16": PRESETS["vit_base_patch16_224"]}),
    token_vits=("ViT-S/16", "ViT-B/16"),
    token_batch=_frozen({"ViT-S/16": 256, "ViT-B/16": 128}),
    prune_vit="ViT-S/16",
    prune_ratios=(0.25, 0.5),
    prune_batch=256,
    multiplex_batch=1024,
    mfu_vit="ViT-B/16",
    mfu_batch=256,
    lowp_batch=256,
    s3_only=(),
    s3_batches=(64, 256, 1024),
    s3_mem_batch=64,
    s3_sweep=_frozen({"warmup": 2, "iters": 3, "min_seconds": 0.0}),
    timing=_frozen({}),
    compile_backend="inductor",
    probe_steps=30,
    target_top1=TARGET_TOP1,
    rehearsal=False,
)

REHEARSAL = Plan(
    name="rehearsal",
    profile="smoke",
    total_s=115.0,
    budgets=_frozen({
        "environment": (0.5, 20), "baseline": (3, 40), "tokens": (3, 40), "pruning": (1, 20),
        "multiplex": (1, 20), "mfu": (2, 40), "low_precision": (2, 40), "s3": (2, 40),
    }),
    # half the depth of the real ones: every code path, half the tracing and compiling
    vits=_frozen({"ViT-S/16": ViTConfig(img_size=32, patch_size=4, embed_dim=32, depth=6, num_heads=2),
                  "ViT-B/16": ViTConfig(img_size=32, patch_size=4, embed_dim=48, depth=6, num_heads=3)}),
    token_vits=("ViT-S/16",),
    token_batch=_frozen({"ViT-S/16": 4, "ViT-B/16": 4}),
    prune_vit="ViT-S/16",
    prune_ratios=(0.25, 0.5),
    prune_batch=4,
    multiplex_batch=8,
    mfu_vit="ViT-B/16",
    mfu_batch=4,
    lowp_batch=4,
    s3_only=("vit_tiny_patch16_224",),  # the cheapest on a CPU: S3's CNNs and hybrids take seconds a pass here
    s3_batches=(1, 2),
    s3_mem_batch=1,
    s3_sweep=_frozen({"warmup": 0, "iters": 1, "min_seconds": 0.0}),
    timing=_frozen({"rounds": 2, "max_rounds": 2, "iters": 1, "warmup": 1}),
    compile_backend="aot_eager",
    probe_steps=2,
    target_top1=None,
    rehearsal=True,
)
