"""Every quantity of a model at once: one results row per model (:func:`benchmark`), and a list of timm
models benchmarked without stopping at a bad one, then timed again in interleaved rounds so that their rates
can be compared (:func:`benchmark_models`).

Units are part of the names: ``macs`` are multiply-accumulates, memory is in bytes, throughput in images per
second, latency in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import models, progress
from ..models import ViTConfig
from ..models.counts import count_params, vit_macs
from .macs import count_macs
from .memory import inference_memory, model_size_bytes, training_memory
from .timing import free_cached, is_oom, latency_ms, relative_throughput, throughput

if TYPE_CHECKING:
    from ..profiles import Profile

__all__ = ["Benchmark", "benchmark", "benchmark_models", "input_shape_of"]


@dataclass
class Benchmark:
    """Every quantity of one model under one profile: a results row (see vitsurvey.results)."""

    method: str
    setting: str
    params: int
    macs: int
    analytic_macs: int | None
    """From :func:`vit_macs` for plain ViTs, else None."""
    throughput_img_s: float | None
    """Best fp32 rate over the batch sweep; None if not even the smallest batch fitted."""
    batch_size: int | None
    max_batch_fitted: int | None
    oom_at: int | None
    throughput_bf16_img_s: float | None
    """Best rate under bf16 autocast (measured on CUDA only, as S3's second setting)."""
    latency_ms: float
    infer_mem_bytes: int | None
    train_mem_bytes: int | None
    mem_batch_size: int
    weights_bytes: int
    size_bytes_fp32: int
    memory_method: str


def benchmark(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    profile: Profile,
    name: str = "model",
    batch_sizes: tuple[int, ...] | None = None,
    mem_batch: int | None = None,
    device: str | torch.device | None = None,
) -> Benchmark:
    """Params, MACs, throughput (batch sweep), latency, inference and training memory, model size.

    The sweep uses ``batch_sizes`` (default: the profile's); memory is measured at ``mem_batch``
    (default: the largest swept batch that is at most 32). On CUDA the sweep runs twice, in fp32 and
    under bf16 autocast.
    """
    device = torch.device(device or profile.device)
    model = model.to(device).eval()
    cfg = ViTConfig.of(model)
    macs = count_macs(model, torch.zeros(1, *input_shape, device=device)).total
    sweep = tuple(batch_sizes or profile.bench_batch_sizes)
    timing = {"warmup": profile.bench_warmup, "iters": profile.bench_iters, "min_seconds": profile.bench_min_seconds}
    speed = throughput(model, input_shape, sweep, device, **timing)
    speed16 = throughput(model, input_shape, sweep, device, torch.bfloat16, **timing) if device.type == "cuda" else None
    mem_batch = mem_batch or max([b for b in sweep if b <= 32] or [min(sweep)])
    infer = inference_memory(model, input_shape, mem_batch, device)
    train = training_memory(model, input_shape, mem_batch, device, amp=device.type == "cuda")
    return Benchmark(
        method=name,
        setting=f"{input_shape[-1]}px",
        params=count_params(model),
        macs=macs,
        analytic_macs=vit_macs(cfg)["total"] if cfg is not None else None,
        throughput_img_s=speed.img_per_s,
        batch_size=speed.batch_size,
        max_batch_fitted=speed.max_batch_fitted,
        oom_at=speed.oom_at,
        throughput_bf16_img_s=speed16.img_per_s if speed16 else None,
        latency_ms=latency_ms(model, input_shape, device, warmup=profile.bench_warmup, iters=profile.latency_iters),
        infer_mem_bytes=infer.peak_bytes,
        train_mem_bytes=train.peak_bytes,
        mem_batch_size=mem_batch,
        weights_bytes=infer.weights_bytes,
        size_bytes_fp32=model_size_bytes(model, 32),
        memory_method=infer.method,
    )


def input_shape_of(model: nn.Module, img_size: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) a timm model expects, from its pretrained config, or at ``img_size``."""
    c, h, w = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
    return (c, img_size or h, img_size or w)


def benchmark_models(
    names: list[str],
    profile: Profile,
    batch_sizes: tuple[int, ...] | None = None,
    mem_batch: int | None = None,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = print,
    reference: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`benchmark` for each timm model name, never stopping at one bad model; then every model
    that ran is timed again, interleaved with the others, so their rates can be compared.

    The sweep finds each model's best batch on the whole machine (all threads, wall clock: what a user's machine
    does with the model), kept as ``sweep_best_img_s``. Then every model that ran is timed at that batch by
    :func:`relative_throughput` with the profile's settings (on a CPU: one thread per model, by its CPU time,
    which other processes cannot distort): ``throughput_img_s`` is that per-core rate's median with its 95%
    interval (``throughput_low``, ``throughput_high``), and ``relative_throughput`` the ratio to ``reference``
    (default: the first model that ran) with its interval (``relative_low``, ``relative_high``). Each row also
    carries how it was timed and the machine's load (:meth:`~vitsurvey.measure.timing.Timings.columns`). A
    machine whose speed drifts between two runs moves absolute rates more than these ratios: compare runs by
    ratio.

    Each row has ``model`` and ``status``: ``ok``; ``unknown model`` (skipped, with close names in the
    log); ``out of memory at batch N`` (the row keeps what fitted, ``max_batch_fitted`` included); or
    ``failed: <error>`` for anything else. A model that runs out of memory is thus recorded, not fatal.
    """
    rows: list[dict[str, Any]] = []
    kept: dict[str, nn.Module] = {}
    dev = torch.device(device or profile.device)
    for name in progress.bar(names, "models"):
        try:
            model = models.create(name)
        except ValueError as exc:
            rows.append({"model": name, "status": "unknown model"})
            if log:
                log(f"{name}: skipped ({exc})")
            continue
        try:
            record = benchmark(model, input_shape_of(model), profile, name, batch_sizes, mem_batch, device)
        except RuntimeError as exc:
            status = "out of memory" if is_oom(exc) else f"failed: {type(exc).__name__}: {exc}"
            rows.append({"model": name, "status": status})
            if log:
                log(f"{name}: {status}")
            del model
            free_cached(dev)
            continue
        row = {"model": name, "status": "ok", **asdict(record)}
        row["sweep_best_img_s"] = row.pop("throughput_img_s")
        if record.oom_at is not None or record.throughput_img_s is None:
            row["status"] = f"out of memory at batch {record.oom_at}"
        if record.throughput_img_s is not None:
            kept[name] = model
        rows.append(row)
        if log:
            rate = f"{record.throughput_img_s:,.1f} img/s" if record.throughput_img_s else "no batch fitted"
            log(f"{name}: {row['status']}, sweep best {rate} at batch {record.batch_size}")
    if kept:
        by_name = {r["model"]: r for r in rows}
        timings = relative_throughput(
            kept, {n: input_shape_of(m) for n, m in kept.items()}, {n: by_name[n]["batch_size"] for n in kept},
            dev, reference=reference if reference in kept else None, **profile.timing(),
        )
        for name in kept:
            rate, ratio = timings.rate(name), timings.ratio(name)
            by_name[name].update({
                "throughput_img_s": rate.median, "throughput_low": rate.low, "throughput_high": rate.high,
                "reference": timings.reference,
                "relative_throughput": ratio.median, "relative_low": ratio.low, "relative_high": ratio.high,
                **timings.columns(),
            })
        if log:
            log(f"interleaved: {timings.describe()} Relative to {timings.reference}.")
    for row in rows:
        row.setdefault("throughput_img_s", None)
    return rows
