"""The GPU run's throughput steps: how fast the GPU runs a ViT, in which precision, and S3's models.

* :func:`utilisation` -- ViT-B/16 bf16 inference, eager and torch.compile'd: images per second and model FLOP
  utilisation against the GPU's dense bf16 peak (2 FLOPs per MAC).
* :func:`low_precision` -- the low-precision paths torchao gives this GPU (int8 weights and activations, and fp8
  where the GPU has fp8 tensor cores) against bf16: speed on ViT-B/16 (each torch.compile'd), accuracy on the
  trained baseline (eager, paired against its bf16 copy on the same test images).
* :func:`s3_benchmark` -- S3's timm models (those it builds, as notebook 11 picks them), cheapest first while the
  step's time lasts: parameters, MACs, the best fp32 and bf16 throughput over a batch sweep, inference memory.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data, measure, metrics, models, survey, train
from ..device import device_name
from .runner import Context
from .speed import CastInput, build_vit, compiled, macs_of, mfu, peak_bf16_tflops, speed_columns

__all__ = ["low_precision", "s3_benchmark", "s3_names", "utilisation"]

BF16 = torch.bfloat16


def _reference(ctx: Context) -> tuple[nn.Module, tuple[int, int, int]]:
    """The utilisation step's ViT (ViT-B/16 on the GPU) in bf16, built once and shared with the low-precision step."""
    cfg = ctx.plan.vits[ctx.plan.mfu_vit]
    if "reference_vit" not in ctx.shared:
        ctx.shared["reference_vit"] = build_vit(cfg, ctx.device, BF16)
    return ctx.shared["reference_vit"], (cfg.in_chans, cfg.img_size, cfg.img_size)


def _compiled_bf16(ctx: Context, batch: int) -> nn.Module:
    """The reference ViT, bf16, compiled for ``batch`` (shared between the two steps that time it)."""
    key = f"compiled_bf16_{batch}"
    if key not in ctx.shared:
        vit, shape = _reference(ctx)
        start = time.monotonic()
        ctx.shared[key] = compiled(CastInput(vit), torch.randn(batch, *shape, device=ctx.device),
                                   ctx.plan.compile_backend, ctx.plan.compile_threads(ctx.profile, ctx.device))
        ctx.shared[f"{key}_seconds"] = time.monotonic() - start
        ctx.log(f"  compiled the bf16 {ctx.plan.mfu_vit} ({ctx.plan.compile_backend}) in "
                f"{ctx.shared[f'{key}_seconds']:.0f} s")
    return ctx.shared[key]


def utilisation(ctx: Context) -> None:
    """Throughput and model FLOP utilisation of the reference ViT in bf16, eager and compiled."""
    plan, dev = ctx.plan, ctx.device
    vit, shape = _reference(ctx)
    batch = plan.mfu_batch
    eager = CastInput(vit)
    macs, how = macs_of(eager, torch.zeros(1, *shape, device=dev))
    fast = _compiled_bf16(ctx, batch)
    timings = measure.relative_throughput({"eager": eager, "torch.compile": fast}, shape, batch, dev,
                                          reference="eager", **plan.timing_kwargs(ctx.profile))
    ctx.log(f"  {timings.describe()}")
    name = device_name(dev)
    peak = peak_bf16_tflops(name) if dev.type == "cuda" else None
    rows = []
    for key in ("eager", "torch.compile"):
        cols = speed_columns(timings, key, None)
        flops = 2 * macs if macs else None
        achieved = cols["throughput_img_s"] * flops / 1e12 if flops else None
        util = mfu(cols["throughput_img_s"], flops, peak) if flops and peak else None
        rows.append({
            "method": f"{plan.mfu_vit} bf16 inference", "setting": key, "model": plan.mfu_vit, "macs": macs,
            "mac_method": how, "flops_per_image": flops, "batch_size": batch, "dtype": "bf16 weights and activations",
            "achieved_tflops": achieved, "peak_bf16_tflops": peak, "mfu": util,
            "mfu_low": mfu(cols["throughput_low"], flops, peak) if util is not None else None,
            "mfu_high": mfu(cols["throughput_high"], flops, peak) if util is not None else None,
            "compile_seconds": ctx.shared.get(f"compiled_bf16_{batch}_seconds") if key != "eager" else None,
            "compile_backend": plan.compile_backend if key != "eager" else None,
            "note": "" if peak else f"no dense bf16 peak known for {name}: MFU not computed", **cols})
        ctx.log(f"    {key:<14} {cols['throughput_img_s']:,.0f} img/s"
                + (f", {achieved:,.4g} TFLOP/s" if achieved else "") + (f", MFU {util:.1%}" if util else ""))
    ctx.emit(rows)


# --------------------------------------------------------------------------- low precision


def _quantizable(module: nn.Module, fqn: str) -> bool:
    """torchao's int8 and fp8 matrix products need both dimensions in multiples of 16: every block's linear layer
    qualifies, a classifier head of 10 or 1000 classes does not (it stays in bf16)."""
    return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def _torchao_configs(device: torch.device) -> dict[str, tuple[Any, str]]:
    """The low-precision configurations torchao offers this device: name -> (config, "") or (None, why not)."""
    quiet = logging.getLogger("torchao")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as tq
    finally:
        quiet.setLevel(level)
    out: dict[str, tuple[Any, str]] = {"int8 dynamic": (tq.Int8DynamicActivationInt8WeightConfig(), "")}
    fp8_ok = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    if not fp8_ok:
        out["fp8 dynamic, per row"] = (None, "fp8 needs a CUDA GPU of compute capability 8.9 or more (Ada, Hopper)")
    else:
        out["fp8 dynamic, per row"] = (tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow()), "")
    return out


def _quantized(model: nn.Module, config: Any) -> nn.Module:
    """A copy of the bf16 ``model`` with torchao's ``config`` applied to every :func:`_quantizable` layer."""
    from torchao.quantization import quantize_

    q = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(q, config, filter_fn=_quantizable)
    return q


def _accuracy(ctx: Context, configs: dict[str, tuple[Any, str]]) -> list[dict[str, Any]]:
    """Test top-1 of the trained baseline in fp32, bf16 and each low-precision path (eager), each compared, image by
    image, with its bf16 copy."""
    vit, Pb = ctx.shared["baseline"]
    test = data.subset(data.load(Pb.dataset, "test"), Pb.test_samples)
    loader = data.tensor_loader(*test.tensors, batch_size=256)
    bf16 = CastInput(copy.deepcopy(vit).to(BF16).eval())
    predicted = {"fp32": train.predict(vit, loader, ctx.device)}
    predicted["bf16"] = train.predict(bf16, loader, ctx.device)
    rows = []
    for name, (config, why) in configs.items():
        if config is None:
            rows.append({"method": f"baseline, {name}", "setting": "accuracy", "status": f"skipped: {why}"})
            continue
        try:
            predicted[name] = train.predict(CastInput(_quantized(bf16.model, config)), loader, ctx.device)
        except Exception as exc:  # one path failing leaves the others
            ctx.log.traceback(f"  {name} on the baseline failed")
            rows.append({"method": f"baseline, {name}", "setting": "accuracy",
                         "status": f"failed: {type(exc).__name__}: {exc}"[:500]})
    labels = predicted["fp32"][1]
    for name, (pred, _) in predicted.items():
        top1 = 100.0 * float((pred == labels).float().mean())
        row = {"method": f"baseline, {name}", "setting": "accuracy", "top1": top1, "n_test": len(labels),
               "top1_se": metrics.top1_se(top1, len(labels)), "dataset": Pb.dataset}
        if name != "bf16":
            q = metrics.paired_comparison(pred, predicted["bf16"][0], labels)
            row |= {"vs_bf16": q.difference, "vs_bf16_low": q.low, "vs_bf16_high": q.high, "vs_bf16_p": q.p_value,
                    "vs_bf16_verdict": q.phrase("the bf16 model")}
        rows.append(row)
        ctx.log(f"    baseline {name:<22} top-1 {top1:.2f}%" + (f" ({row['vs_bf16_verdict']})" if "vs_bf16_verdict" in row
                                                               else ""))
    return rows


def low_precision(ctx: Context) -> None:
    """torchao's int8 and fp8 against bf16: speed on the reference ViT (compiled), accuracy on the baseline."""
    plan, dev = ctx.plan, ctx.device
    try:
        configs = _torchao_configs(dev)
    except ImportError as exc:
        ctx.emit([{"method": "torchao", "setting": "low precision", "status": f"skipped: torchao cannot be imported "
                   f"({type(exc).__name__}: {exc})"}])
        ctx.log(f"  torchao cannot be imported ({exc}): no low-precision rows")
        return
    if "baseline" in ctx.shared:
        ctx.emit(_accuracy(ctx, configs))
    else:
        ctx.log("  no trained baseline: accuracy not measured")
    vit, shape = _reference(ctx)
    batch = plan.lowp_batch
    example = torch.randn(batch, *shape, device=dev)
    timed: dict[str, nn.Module] = {"bf16, torch.compile": _compiled_bf16(ctx, batch), "bf16, eager": CastInput(vit)}
    failed = []
    for name, (config, why) in configs.items():
        if config is None:
            failed.append({"method": f"{plan.mfu_vit}, {name}", "setting": "speed", "status": f"skipped: {why}"})
            continue
        try:
            start = time.monotonic()
            timed[f"{name}, torch.compile"] = compiled(CastInput(_quantized(vit, config)), example, plan.compile_backend,
                                                       plan.compile_threads(ctx.profile, dev))
            ctx.log(f"  {name}: quantized and compiled in {time.monotonic() - start:.0f} s")
        except Exception as exc:
            ctx.log.traceback(f"  {name} on {plan.mfu_vit} failed")
            failed.append({"method": f"{plan.mfu_vit}, {name}", "setting": "speed",
                           "status": f"failed: {type(exc).__name__}: {exc}"[:500]})
    ctx.emit(failed)
    timings = measure.relative_throughput(timed, shape, batch, dev, reference="bf16, torch.compile",
                                          **plan.timing_kwargs(ctx.profile))
    ctx.log(f"  {timings.describe()}")
    rows = []
    for key in timed:
        cols = speed_columns(timings, key, None)
        rows.append({"method": f"{plan.mfu_vit}, {key.split(',')[0]}", "setting": key, "model": plan.mfu_vit,
                     "batch_size": batch, "quantized_layers": "block linears (both sides multiples of 16); head bf16",
                     **cols})
        ctx.log(f"    {key:<30} {cols['throughput_img_s']:,.0f} img/s, {cols['speedup']:.2f}x bf16 compiled")
    ctx.emit(rows)


# --------------------------------------------------------------------------- S3's models


def s3_names(reported: Path | None, limit: int | None) -> tuple[list[str], Any]:
    """S3's timm-buildable models at their evaluation resolution, cheapest (fewest GMACs) first, as notebook 11 picks
    them; with S3's row for each (its best run)."""
    runs = survey.read_reported("s3_runs", None if reported is None else Path(reported) / "s3_runs.csv")
    buildable = runs[runs["timm_match"] != "none"].copy()
    buildable["res"] = buildable["timm_name"].str.extract(r"_(\d{3})$", expand=False).astype(float).fillna(224)
    buildable = buildable[buildable["eval_res"] == buildable["res"]]
    s3 = buildable.loc[buildable.groupby("timm_name")["top1"].idxmax()].set_index("timm_name")
    return list(s3.sort_values("gmacs").index[:limit]), s3


def _s3_row(ctx: Context, name: str) -> dict[str, Any]:
    plan, dev = ctx.plan, ctx.device
    model = models.create(name)
    shape = measure.input_shape_of(model)
    model = model.to(dev).eval()
    macs, how = macs_of(model, torch.zeros(1, *shape, device=dev))
    sweep = dict(plan.s3_sweep)
    fp32 = measure.throughput(model, shape, plan.s3_batches, dev, None, **sweep)
    bf16 = measure.throughput(model, shape, plan.s3_batches, dev, BF16, **sweep) if dev.type == "cuda" else None
    mem = measure.inference_memory(model, shape, plan.s3_mem_batch, dev)
    return {"setting": f"{shape[-1]}px", "params": measure.count_params(model), "macs": macs, "mac_method": how,
            "throughput_img_s": fp32.img_per_s, "batch_size": fp32.batch_size,
            "fp32_per_batch": " ".join(f"{b}:{r:.0f}" for b, r in fp32.per_batch.items()), "oom_at": fp32.oom_at,
            "throughput_bf16_img_s": bf16.img_per_s if bf16 else None,
            "batch_size_bf16": bf16.batch_size if bf16 else None,
            "bf16_per_batch": " ".join(f"{b}:{r:.0f}" for b, r in bf16.per_batch.items()) if bf16 else None,
            "infer_mem_bytes": mem.peak_bytes, "mem_batch_size": mem.batch_size, "memory_method": mem.method,
            "tf32": torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None,
            "timing": "batch sweep, best batch (measure.throughput: synchronised wall clock, "
                      f"{sweep['warmup']:.0f} warm-up and {sweep['iters']:.0f} timed passes per batch); "
                      "bf16 by autocast, CUDA only"}


def s3_benchmark(ctx: Context) -> None:
    """S3's models, cheapest first, each in its own ``try``, while the step's time lasts."""
    names, s3 = s3_names(ctx.reported, None if ctx.plan.s3_only else ctx.profile.s3_models)
    if ctx.plan.s3_only:
        names = [n for n in names if n in ctx.plan.s3_only]
    ctx.log(f"  {len(names)} of S3's models: {', '.join(names)}")
    last: tuple[float, float] | None = None  # (seconds, GMACs) of the last model measured
    for i, name in enumerate(names):
        gmacs = float(s3.loc[name, "gmacs"])
        if last is not None:
            needed = last[0] * max(1.0, gmacs / max(last[1], 1e-9))
            if needed > ctx.step_left():
                ctx.log(f"  stopping before {name}: about {needed:.0f} s needed, {ctx.step_left():.0f} s left; not "
                        f"measured: {', '.join(names[i:])}")
                ctx.emit([{"method": n, "setting": "S3 benchmark", "s3_model": s3.loc[n, "model"],
                           "status": "skipped: the step's time ran out"} for n in names[i:]])
                return
        start = time.monotonic()
        base = {"method": name, "model": name, "s3_model": s3.loc[name, "model"],
                "s3_throughput_img_s": s3.loc[name, "throughput_img_s"], "s3_gmacs": gmacs}
        try:
            row = {**base, **_s3_row(ctx, name)}
            ctx.log(f"    {name:<32} fp32 {row['throughput_img_s'] or 0:,.0f} img/s (batch {row['batch_size']})"
                    + (f", bf16 {row['throughput_bf16_img_s']:,.0f} img/s (batch {row['batch_size_bf16']})"
                       if row["throughput_bf16_img_s"] else ""))
        except Exception as exc:  # one model failing costs its row
            ctx.log.traceback(f"  {name} failed")
            row = {**base, "setting": "S3 benchmark", "status": f"failed: {type(exc).__name__}: {exc}"[:500]}
        finally:
            measure.timing.free_cached(ctx.device)
        last = (time.monotonic() - start, gmacs)
        ctx.emit([{**row, "seconds": round(last[0], 1)}])
