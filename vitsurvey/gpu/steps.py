"""The GPU run's first steps: the machine, the trained baseline, and what compression buys in speed.

* :func:`environment` -- one row saying what the run ran on (versions, device, peak, data, optional packages).
* :func:`baseline` -- the profile's baseline ViT through :func:`vitsurvey.train.trained_baseline` (bf16 autocast on
  a GPU; the checkpoint is then reused by the notebooks). A few timed training steps first project the time of
  the profile's epochs; where they would not fit the step's budget, fewer epochs are trained and the row says so.
* :func:`token_schedules` -- ToMe, EViT and Patch Slimming schedules on the reference ViTs (ViT-S/16, ViT-B/16 at
  224 px), bf16: speed-up against the MAC cut. Patch Slimming's keep sets are found on the trained baseline and
  carried to the reference ViT's depth and tokens as notebook 06 does.
* :func:`structured_pruning` -- heads and MLP neurons removed from ViT-S/16: speed-up against the MAC cut.
* :func:`multiplexing` -- the multiplexers' speed per image against the plain ViT, on the baseline's backbone.
"""

from __future__ import annotations

import math
import platform
from importlib import metadata
from typing import Any

import torch

from .. import data, measure, train
from ..checkpoints import checkpoint_path
from ..device import device_name
from ..models import VisionTransformer, ViTConfig
from ..strategies import multiplex, pruning, tokens
from .runner import Context
from .speed import CastInput, build_vit, macs_of, peak_bf16_tflops, speed_columns

__all__ = [
    "baseline", "environment", "multiplexers", "multiplexing", "pruned_variants", "slimming_counts",
    "structured_pruning", "token_schedules", "token_variants",
]

BF16 = torch.bfloat16


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(ctx: Context) -> None:
    """One row: versions, device, its dense bf16 peak, the data set the profile resolved to, optional packages."""
    dev, P = ctx.device, ctx.profile
    row: dict[str, Any] = {"method": "environment", "setting": device_name(dev), "python": platform.python_version(),
                           "dataset": P.dataset}
    for dist in ("torch", "timm", "fvcore", "iopath", "torchao", "opacus", "fairlearn", "triton"):
        row[f"version_{dist}"] = _version(dist)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        row |= {"cuda": torch.version.cuda, "capability": ".".join(map(str, torch.cuda.get_device_capability(dev))),
                "gpu_memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count}
    row["peak_bf16_tflops"] = peak_bf16_tflops(device_name(dev))
    ctx.log("  " + "; ".join(f"{k}={v}" for k, v in row.items()))
    if P.dataset != "fashion_mnist":
        ctx.log(f"  WARNING: full Fashion-MNIST was not found; the {P.name} profile uses {data.describe(P.dataset)} "
                f"(search: {', '.join(map(str, data.search_roots()))}; set $VITSURVEY_DATA)")
    ctx.emit([row])


# --------------------------------------------------------------------------- the baseline


def _seconds_per_step(ctx: Context) -> float:
    """Seconds per training step of the profile's baseline, data loading and augmentation included: two short
    trainings through :func:`vitsurvey.train.fit` (the first warms the kernels up), the second timed."""
    P = ctx.profile
    times = []
    for steps in (2, ctx.plan.probe_steps):
        probe = P.replace(train_samples=P.batch_size * steps, test_samples=P.batch_size, epochs=1)
        loader, test = data.loaders(probe)
        train.seed_everything(P.seed)
        result = train.fit(VisionTransformer(train.baseline_config(probe)), loader, test, probe, log=None)
        times.append(result.train_seconds / max(len(loader), 1))
    return times[-1]


def baseline(ctx: Context) -> None:
    """Train (or load) the profile's baseline; record its accuracy against the target and its training time."""
    P, plan = ctx.profile, ctx.plan
    note, epochs = "", P.epochs
    if not checkpoint_path(P).exists():
        per_step = _seconds_per_step(ctx)
        steps = len(data.training_images(P)) // P.batch_size
        n_test = len(data.subset(data.load(P.dataset, "test"), P.test_samples))
        per_epoch = per_step * (steps + n_test / max(256, P.batch_size) / 3)  # evaluation: forward passes only
        budget = ctx.step_left() - 25.0  # kept for evaluating, counting, and a projection 10% short
        projected = 1.1 * P.epochs * per_epoch
        ctx.log(f"  {per_step * 1e3:.1f} ms per training step; {P.epochs} epochs of {steps} steps projected at "
                f"{projected:.0f} s, budget {budget:.0f} s")
        if projected > budget:
            epochs = max(1, math.floor(budget / (1.1 * per_epoch)))
            note = (f"epochs reduced from {P.epochs} to {epochs}: {P.epochs} were projected at {projected:.0f} s, over "
                    f"the step's budget of {budget:.0f} s")
            ctx.log(f"  {note}")
    Pb = P if epochs == P.epochs else P.replace(epochs=epochs)
    model, result = train.trained_baseline(Pb, log=lambda m: ctx.log(f"  {m}"))
    model = model.to(ctx.device).eval()
    ctx.shared["baseline"] = (model, Pb)
    cfg = model.cfg
    macs, how = macs_of(model, torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size, device=ctx.device))
    history = " ".join(f"{h['test_top1']:.2f}" for h in result.history)
    target = plan.target_top1
    ctx.emit([{
        "method": "baseline ViT", "setting": f"p{cfg.patch_size} D{cfg.embed_dim} L{cfg.depth} h{cfg.num_heads}, "
        f"{Pb.epochs} epochs" + (", bf16 autocast" if Pb.amp and ctx.device.type == "cuda" else ""),
        "params": measure.count_params(model), "macs": macs, "mac_method": how, "top1": result.top1,
        "batch_size": Pb.batch_size, "epochs": Pb.epochs, "dataset": Pb.dataset, "train_seconds": result.train_seconds,
        "train_img_per_s": result.train_img_per_s, "top1_by_epoch": history, "target_top1": target,
        "target_met": None if target is None else result.top1 >= target, "checkpoint": checkpoint_path(Pb).name,
        "note": note,
    }])
    ctx.log(f"  test top-1 {result.top1:.2f}%" + (f" (target {target:.0f}%)" if target else ""))


# --------------------------------------------------------------------------- token schedules


def slimming_counts(found: tokens.SlimmingResult, n_tokens: int, depth: int, patches: int) -> list[int]:
    """Patch Slimming's keep sets, found on a model of ``n_tokens`` tokens, as a token schedule for a ViT of ``depth``
    blocks and ``patches`` patches: each block keeps the share of image tokens that the block at the same relative
    depth kept, never more than the block before (notebook 06's mapping)."""
    fractions = [(c - 1) / (n_tokens - 1) for c in found.token_counts()]
    per_block = [fractions[min(len(fractions) - 1, b * len(fractions) // depth)] for b in range(depth)]
    counts = [1 + max(0, round(f * patches)) for f in per_block]
    return [min(counts[: i + 1]) for i in range(depth)]


def _slimmed(ctx: Context) -> dict[str, tokens.SlimmingResult]:
    """Patch Slimming's keep sets on the trained baseline at two of the profile's tolerances, a middle and the
    largest (found once)."""
    if "slimming" in ctx.shared:
        return ctx.shared["slimming"]
    found: dict[str, tokens.SlimmingResult] = {}
    if "baseline" in ctx.shared:
        vit, Pb = ctx.shared["baseline"]
        sample = data.validation_images(Pb).tensors[0][: Pb.slim_sample].to(ctx.device)
        r0 = max(1, (vit.cfg.num_tokens - 1) // 16)
        chosen = Pb.slim_tolerances
        for tol in sorted({chosen[(len(chosen) - 1) // 2], chosen[-1]}):
            found[f"tolerance {tol}"] = tokens.patch_slimming(vit, sample, tol, r0=r0)[1]
    ctx.shared["slimming"] = found
    return found


def token_variants(vit: VisionTransformer, slimmed: dict[str, tokens.SlimmingResult] | None = None,
                   slimmed_tokens: int = 0) -> dict[str, tuple[str, str, torch.nn.Module]]:
    """The token schedules timed on ``vit``, by key: (method, setting, model), the dense model first. ``slimmed``:
    Patch Slimming's keep sets found on a model of ``slimmed_tokens`` tokens (None: a fixed schedule stands in)."""
    cfg = vit.cfg
    depth, n = cfg.depth, cfg.num_tokens
    blocks = sorted({depth // 4, depth // 2, (3 * depth) // 4})
    r_max = (n - 1) // (depth + 1)
    out = {"dense": ("ViT", "dense", vit),
           "dense, explicit attention": ("ViT", "dense, explicit attention (as a token step computes it)",
                                         tokens.WithTokenStep(vit, tokens.schedule_step([n] * depth)))}
    for keep in (0.7, 0.5):
        out[f"EViT keep {keep}"] = ("EViT (fused)", f"keep {keep}, blocks {blocks}", tokens.EViT(vit, keep, blocks))
    for r in sorted({max(1, round(r_max * f)) for f in (0.5, 0.85, 1.0)}):
        out[f"ToMe r {r}"] = ("ToMe", f"r = {r}", tokens.ToMe(vit, r))
    for label, result in (slimmed or {}).items():
        counts = slimming_counts(result, slimmed_tokens, depth, cfg.num_patches)
        out[f"Patch Slimming {label}"] = ("Patch Slimming schedule", f"{label} on the baseline; tokens {counts}",
                                          tokens.WithTokenStep(vit, tokens.schedule_step(counts)))
    if not slimmed:
        counts = [n] * (depth // 3) + [1 + cfg.num_patches // 2] * (depth // 3)
        counts += [1 + cfg.num_patches // 4] * (depth - len(counts))
        out["fixed schedule"] = ("Patch Slimming schedule", f"fixed schedule (no trained baseline to slim); tokens "
                                 f"{counts}", tokens.WithTokenStep(vit, tokens.schedule_step(counts)))
    return out


def _timed_variants(ctx: Context, model_name: str, variants: dict[str, tuple[str, str, torch.nn.Module]],
                    shape: tuple[int, int, int], batch: int, extra: dict[str, dict[str, Any]] | None = None) -> None:
    """MACs and interleaved timing of ``variants`` (the first is the reference); one row each."""
    example = torch.zeros(1, *shape, device=ctx.device)
    models = {k: CastInput(m) for k, (_, _, m) in variants.items()}
    counted = {k: macs_of(m, example) for k, m in models.items()}
    reference = next(iter(variants))
    base_macs = counted[reference][0]
    ctx.log(f"  {model_name}: MACs counted ({counted[reference][1]}); timing {len(models)} models at batch {batch}")
    timings = measure.relative_throughput(models, shape, batch, ctx.device, reference=reference,
                                          **ctx.plan.timing_kwargs(ctx.profile))
    ctx.log(f"  {timings.describe()}")
    rows = []
    for key, (method, setting, _) in variants.items():
        macs, how = counted[key]
        ratio = macs / base_macs if macs and base_macs else None
        cols = speed_columns(timings, key, ratio)
        rows.append({"method": method, "setting": setting, "model": model_name, "macs": macs, "mac_method": how,
                     "batch_size": batch, "dtype": "bf16 weights and activations", **(extra or {}).get(key, {}),
                     **cols})
        share = cols.get("mac_cut_share")
        ctx.log(f"    {key:<38} {cols['speedup']:.3f}x" + (f" at MAC ratio {ratio:.3f}" if ratio else "")
                + (f", share of the MAC cut {share:.2f} ({cols['share_verdict']})" if share is not None else ""))
    ctx.emit(rows)


def token_schedules(ctx: Context) -> None:
    """ToMe, EViT and Patch Slimming schedules on each reference ViT: speed-up against the MAC cut."""
    for name in ctx.plan.token_vits:
        cfg = ctx.plan.vits[name]
        vit = build_vit(cfg, ctx.device, BF16)
        found = _slimmed(ctx)
        variants = token_variants(vit, found, ctx.shared["baseline"][0].cfg.num_tokens if found else 0)
        _timed_variants(ctx, name, variants, (cfg.in_chans, cfg.img_size, cfg.img_size), ctx.plan.token_batch[name])
        del vit, variants


def pruned_variants(cfg: ViTConfig, ratios: tuple[float, ...], device: torch.device
                    ) -> tuple[dict[str, tuple[str, str, torch.nn.Module]], dict[str, dict[str, Any]]]:
    """A random ViT of ``cfg`` and its structurally pruned copies at ``ratios``, in bf16 on ``device``: (variants by
    key, the dense one first; what each removed). Pruned on the CPU and then moved:
    :func:`vitsurvey.strategies.pruning.prune_structured` builds its index tensors on the CPU, which a model on a
    GPU cannot be indexed with."""
    dense = VisionTransformer(cfg).eval()
    variants: dict[str, tuple[str, str, torch.nn.Module]] = {"dense": ("ViT", "dense", dense)}
    extra: dict[str, dict[str, Any]] = {}
    for ratio in ratios:
        pruned = pruning.prune_structured(dense, ratio)
        removed = pruning.removed_fraction(dense, pruned)
        key = f"pruned {ratio}"
        variants[key] = ("heads + neurons (structured)", f"{ratio:.0%} asked: {removed['heads']:.0%} of heads, "
                         f"{removed['neurons']:.0%} of neurons removed", pruned)
        extra[key] = {"heads_removed": removed["heads"], "neurons_removed": removed["neurons"], "ratio": ratio}
    moved = {k: (a, b, m.to(device, BF16).eval()) for k, (a, b, m) in variants.items()}
    return moved, extra


def structured_pruning(ctx: Context) -> None:
    """Heads and MLP neurons removed (structured pruning) from the pruning reference ViT: speed-up against MACs."""
    plan = ctx.plan
    cfg = plan.vits[plan.prune_vit]
    variants, extra = pruned_variants(cfg, plan.prune_ratios, ctx.device)
    _timed_variants(ctx, plan.prune_vit, variants, (cfg.in_chans, cfg.img_size, cfg.img_size), plan.prune_batch, extra)


def multiplexers(cfg: ViTConfig, profile: Any, device: torch.device) -> dict[str, torch.nn.Module]:
    """The plain ViT of ``cfg`` and the multiplexers built on copies of it (Image Multiplexer, orthogonal, N = 2, 4, 8;
    ConcatPlexer with the profile's k, N = 2, 4), random weights, in bf16 on ``device``."""
    built: dict[str, torch.nn.Module] = {"ViT": VisionTransformer(cfg)}
    for n in (2, 4, 8):
        built[f"IM orthogonal, N={n}"] = multiplex.ImageMultiplexer(VisionTransformer(cfg), n, "orthogonal",
                                                                    seed=profile.seed)
    for n in (2, 4):
        built[f"CP k={profile.multiplex_k}, N={n}"] = multiplex.ConcatPlexer(VisionTransformer(cfg), n,
                                                                             profile.multiplex_k)
    return {k: m.to(device, BF16).eval() for k, m in built.items()}


def multiplexing(ctx: Context) -> None:
    """The multiplexers' speed per image against the plain ViT, on the profile's baseline backbone (random weights):
    Image Multiplexer (orthogonal) with N = 2, 4, 8 and ConcatPlexer with k tokens and N = 2, 4."""
    P, plan = ctx.profile, ctx.plan
    cfg = train.baseline_config(P)
    built = multiplexers(cfg, P, ctx.device)
    models = {k: CastInput(m) for k, m in built.items()}
    shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
    timings = measure.relative_throughput(models, shape, plan.multiplex_batch, ctx.device, reference="ViT",
                                          **plan.timing_kwargs(P))
    ctx.log(f"  {timings.describe()}")
    base = multiplex.macs_per_image(built["ViT"])["total"]
    rows = []
    for key, model in built.items():
        per_image = multiplex.macs_per_image(model)["total"]
        cols = speed_columns(timings, key, per_image / base)
        rows.append({**multiplex.method_of(model), "setting": key, "model": "baseline backbone (random weights)",
                     "macs": round(per_image), "mac_method": "formula (multiplex.macs_per_image, per image)",
                     "batch_size": plan.multiplex_batch, "dtype": "bf16 weights and activations", **cols})
        ctx.log(f"    {key:<22} {cols['throughput_img_s']:,.0f} img/s, {cols['speedup']:.2f}x the ViT per image, "
                f"MACs per image {per_image / base:.3f} of the ViT's")
    ctx.emit(rows)
