"""What the GPU run's steps share: low-precision models, MAC counts that survive a missing fvcore, how much of a MAC
cut comes back as speed, and model FLOP utilisation.

* :class:`CastInput` runs a model whose weights are in bf16 on the fp32 images every loader and every timing feeds:
  pure bf16 inference, as deployed, without autocast's per-pass weight casts.
* :func:`macs_of` counts with fvcore (:func:`vitsurvey.measure.count_macs`); where fvcore cannot be imported it
  falls back to the package's formulas (:func:`vitsurvey.models.counts.vit_macs`, which agree with fvcore term by
  term on these models) and says so.
* :func:`mac_cut_share`: the share of a MAC cut that came back as speed, (speed-up - 1) / (MAC speed-up - 1): 1 when
  halving the MACs doubles the speed, 0 when it changes nothing (notebook 06's measure).
* :func:`mfu`: achieved FLOP/s (2 FLOPs per MAC) over the GPU's dense bf16 peak (:func:`peak_bf16_tflops`).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .. import measure
from ..device import threads as threads_limited
from ..models import VisionTransformer, ViTConfig, vit_macs
from ..strategies import tokens
from .plan import SHARE_GOAL

__all__ = [
    "CastInput", "PEAK_BF16_TFLOPS", "build_vit", "compiled", "goal_verdict", "mac_cut_share", "macs_of", "mfu",
    "peak_bf16_tflops", "speed_columns", "unwrap",
]

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.5), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H200", 989.4), ("H100", 989.4),
    ("A100", 312.0), ("L40S", 362.05),
)
"""Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, by a part of the device name;
the first match counts, so the PCIe and NVL parts are listed before the SXM ones they share a name with."""


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU named ``device_name`` (as ``torch.cuda.get_device_name`` says it), or None
    for a device not in :data:`PEAK_BF16_TFLOPS` (a CPU, say)."""
    name = device_name.lower()
    return next((peak for part, peak in PEAK_BF16_TFLOPS if part.lower() in name), None)


def mfu(img_per_s: float, flops_per_image: float, peak_tflops: float) -> float:
    """Model FLOP utilisation: FLOPs done per second over the peak (both dense)."""
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be positive, not {peak_tflops}.")
    return img_per_s * flops_per_image / (peak_tflops * 1e12)


def mac_cut_share(speedup: float, mac_ratio: float) -> float | None:
    """(speed-up - 1) / (1 / mac_ratio - 1): the share of the MAC cut that came back as speed; None where the MACs
    were not cut (a ratio of 1 or more leaves nothing to share)."""
    if not mac_ratio > 0:
        raise ValueError(f"mac_ratio is the reduced model's MACs over the reference's, a positive number, not "
                         f"{mac_ratio}.")
    mac_speedup = 1.0 / mac_ratio
    if mac_speedup <= 1.0 + 1e-9:
        return None
    return (speedup - 1.0) / (mac_speedup - 1.0)


def goal_verdict(low: float | None, high: float | None, goal: float = SHARE_GOAL) -> str:
    """Whether an interval of shares meets ``goal``: beyond noise either way, or inconclusive."""
    if low is None or high is None:
        return "no MAC cut"
    if low >= goal:
        return "meets the goal"
    if high < goal:
        return "misses the goal"
    return "inconclusive at this precision"


def speed_columns(timings: measure.Timings, name: str, mac_ratio: float | None) -> dict[str, Any]:
    """The speed columns of one timed model: its rate and speed-up over the timing's reference (medians with 95%
    intervals), and, given its MAC ratio, the share of the MAC cut that came back as speed with that interval."""
    rate, ratio = timings.rate(name), timings.ratio(name)
    cols: dict[str, Any] = {
        "throughput_img_s": rate.median, "throughput_low": rate.low, "throughput_high": rate.high,
        "reference": timings.reference, "speedup": ratio.median, "speedup_low": ratio.low,
        "speedup_high": ratio.high, "speed_verdict": "reference" if name == timings.reference else ratio.verdict(),
        **timings.columns(),
    }
    if mac_ratio is not None:
        share = [mac_cut_share(s, mac_ratio) for s in (ratio.median, ratio.low, ratio.high)]
        cols |= {"mac_ratio": mac_ratio, "mac_speedup": 1.0 / mac_ratio, "speedup_per_mac_speedup": ratio.median * mac_ratio,
                 "mac_cut_share": share[0], "mac_cut_share_low": share[1], "mac_cut_share_high": share[2],
                 "share_goal": SHARE_GOAL, "share_verdict": goal_verdict(share[1], share[2])}
    return cols


class CastInput(nn.Module):
    """``model`` fed its input cast to ``dtype`` (its weights are expected in that dtype already): pure bf16 inference
    on the fp32 batches the loaders and the timing routine make."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.dtype))


def build_vit(cfg: ViTConfig, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> VisionTransformer:
    """A randomly initialised ViT of ``cfg``, built on ``device`` (initialising ViT-B's 86 M weights on the GPU takes
    milliseconds, on the CPU seconds), in ``dtype``, in eval mode."""
    with torch.device(device):
        vit = VisionTransformer(cfg)
    return vit.to(dtype).eval()


def compiled(model: nn.Module, example: Tensor, backend: str = "inductor", threads: int | None = None) -> nn.Module:
    """``torch.compile(model)`` with ``backend``, compiled now by one pass on ``example`` (so timings never include
    compilation), its one-time notices silenced. ``threads``: the CPU thread count it will be timed with (compiled
    code is guarded on it)."""
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        if threads is not None:
            stack.enter_context(threads_limited(threads))
        fast = torch.compile(model.eval(), backend=backend)
        with torch.inference_mode():
            fast(example)
    return fast


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside the wrappers that change neither its shape nor its MACs: :class:`CastInput`,
    :class:`vitsurvey.measure.Autocast`, a torch.compile'd module."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (CastInput, measure.Autocast)):
            inner = model.model
        if inner is None:
            return model
        model = inner


def _formula(model: nn.Module, example: Tensor) -> int | None:
    """MACs of one image by the package's formulas, for the models the GPU run builds; None for others."""
    m = unwrap(model)
    if isinstance(m, tokens.ToMe):
        return vit_macs(m.vit, tokens=m.token_counts(), merges=m.schedule)["total"]
    if isinstance(m, tokens.EViT):
        pairs = m.token_counts()
        return vit_macs(m.vit, tokens=[a for a, _ in pairs], mlp_tokens=[b for _, b in pairs])["total"]
    if isinstance(m, tokens.WithTokenStep):
        x = example[:1].to(next(m.vit.parameters()).dtype)
        return vit_macs(m.vit, tokens=m.vit.token_counts(x, m.step))["total"]
    if isinstance(m, VisionTransformer):
        return vit_macs(m)["total"]
    cfg = ViTConfig.of(m)  # a timm ViT
    return vit_macs(cfg)["total"] if cfg is not None else None


def macs_of(model: nn.Module, example: Tensor) -> tuple[int | None, str]:
    """MACs of one image (``example`` holds one) and how they were counted: ``fvcore``, or, where fvcore cannot be
    imported, the package's formula (``None`` for an architecture that has none), saying so."""
    try:
        return measure.count_macs(model, example).total, "fvcore"
    except ImportError as exc:
        missing = (getattr(exc, "name", None) or "fvcore").split(".")[0]
    total = _formula(model, example)
    if total is None:
        return None, f"not counted: {missing} is not installed and {type(unwrap(model)).__name__} has no formula here"
    return total, f"formula (vit_macs; {missing} is not installed)"
