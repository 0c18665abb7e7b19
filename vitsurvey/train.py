"""One small training loop, so that no notebook writes its own.

AdamW with linear warm-up and cosine decay, label smoothing, light augmentation (random shifts and
horizontal flips, done on whole batches), bf16 autocast on CUDA, seeded. The ``loss`` hook replaces
the objective (knowledge distillation wraps :func:`label_loss` in it), so variants reuse the loop
instead of copying it. The ``prepare`` hook wraps model, optimiser and data loader before the first step
(differentially private training hands them to opacus there), so private training is this loop too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import data as vdata
from . import mixers, progress
from .models import ViTConfig, VisionTransformer, small_resnet
from .profiles import Profile
from .results import project_root, write_atomic

Outputs = Tensor | tuple[Tensor, ...]
"""What a model returns in training mode: logits, or one logits tensor per head (a distillation token's
model returns two)."""
Loss = Callable[[nn.Module, Tensor, Tensor, Outputs], Tensor]
"""``loss(model, images, labels, outputs) -> scalar``: the training objective :func:`fit` minimises."""
Prepare = Callable[[nn.Module, torch.optim.Optimizer, DataLoader],
                   tuple[nn.Module, torch.optim.Optimizer, DataLoader]]
"""``prepare(model, optimizer, loader) -> (model, optimizer, loader)``: wraps the three before training."""

LABEL_SMOOTHING = 0.1


def label_loss(model: nn.Module, images: Tensor, labels: Tensor, outputs: Outputs) -> Tensor:
    """The default objective: cross-entropy with label smoothing 0.1 (as DeiT trains); for a model with
    several heads, the mean over the heads."""
    heads = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(F.cross_entropy(h.float(), labels, label_smoothing=LABEL_SMOOTHING) for h in heads) / len(heads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(x: Tensor, max_shift: int = 2, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by up to ``max_shift`` pixels and flip half of them horizontally.

    The border is filled by repeating the edge pixels: padding with zeros would draw a frame, since
    inputs are standardised and 0 is the mean grey, not the background.
    """
    B, _, H, W = x.shape
    dev = x.device
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator).to(dev)
    rows = (dy[:, None] + torch.arange(H, device=dev)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(W, device=dev)[None])[:, None, None, :]
    batch = torch.arange(B, device=dev)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    flip = (torch.rand(B, generator=generator) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(-1) == y).sum().item()
        total += y.numel()
    if total == 0:
        raise ValueError("Cannot evaluate on an empty data set.")
    return 100.0 * correct / total


@dataclass
class TrainResult:
    top1: float
    """Final test top-1 accuracy (%)."""
    epochs: int
    train_seconds: float
    train_img_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    profile: Profile,
    device: str | torch.device | None = None,
    loss: Loss | None = None,
    log: Callable[[str], None] | None = print,
    prepare: Prepare | None = None,
    resume: Path | None = None,
) -> TrainResult:
    """Train ``model`` with the profile's epochs, batch, learning rate and schedule; test each epoch.

    ``loss`` is the objective (default :func:`label_loss`); it sees the images after augmentation, so a
    teacher that it calls sees what the student sees. ``prepare`` wraps model, AdamW optimiser and training
    loader before the first step; with it, gradient clipping is left to the wrapped optimiser (a private one
    clips every image's gradient, which the usual clipping of the batch's gradient would distort).

    ``resume``: a file that holds the whole training state (weights, optimiser, schedule, augmentation
    generator, epoch, history), written after every epoch (by rank 0 only, under ``torch.distributed``). A run
    that finds it continues after its last epoch and ends where an uninterrupted run would; a file written by
    a different training is refused."""
    objective = loss or label_loss
    device = torch.device(device or profile.device)
    seed_everything(profile.seed)
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "pos_embed" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": profile.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=profile.lr,
    )
    net: nn.Module = model
    if prepare is not None:
        net, opt, train_loader = prepare(model, opt, train_loader)
    steps = profile.epochs * len(train_loader)
    if steps == 0:
        raise ValueError("The training set is smaller than one batch; use a larger subset or batch.")
    warm = max(1, int(profile.warmup_epochs * len(train_loader)))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    use_amp = profile.amp and device.type == "cuda"
    gen = torch.Generator().manual_seed(profile.seed)
    history: list[dict[str, float]] = []
    seen, before, first = 0, 0.0, 0
    settings = _training_settings(profile)
    if resume is not None and Path(resume).exists():
        state = _training_state(Path(resume), settings)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        first, history, seen, before = state["epoch"], state["history"], state["seen"], state["seconds"]
        if log is not None:
            log(f"resuming from {Path(resume).name} after epoch {first}/{profile.epochs}")
    start = time.perf_counter()
    for epoch in range(first, profile.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):  # a distributed sampler reshuffles by epoch
            train_loader.sampler.set_epoch(epoch)
        net.train()
        running, images = 0.0, 0
        for x, y in progress.bar(train_loader, f"epoch {epoch + 1}/{profile.epochs}"):
            if not len(y):  # a private loader samples every image independently: a batch can be empty
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if profile.augment:
                x = augment(x, generator=gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                value = objective(model, x, y, net(x))
            opt.zero_grad(set_to_none=True)
            value.backward()
            if prepare is None:
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += value.item() * y.numel()
            images += y.numel()
        seen += images
        top1 = evaluate(model, test_loader, device)
        history.append({"epoch": epoch + 1, "loss": running / max(images, 1), "test_top1": top1})
        if resume is not None and _is_main_process():
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "generator": gen.get_state(), "epoch": epoch + 1, "history": history, "seen": seen,
                     "seconds": before + time.perf_counter() - start, "trained_with": settings}
            write_atomic(Path(resume), lambda f: torch.save(state, f))
        if log is not None:
            log(f"epoch {epoch + 1}/{profile.epochs}: loss {running / max(images, 1):.3f}, test top-1 {top1:.2f}%")
    elapsed = before + time.perf_counter() - start
    return TrainResult(history[-1]["test_top1"], profile.epochs, elapsed, seen / max(elapsed, 1e-9), history)


def _is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _training_state(path: Path, settings: dict) -> dict:
    """A saved training state, loaded tensors-only; one from another training is refused by name."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"Training state {path} cannot be loaded: {_unreadable(path, exc)}; delete it to "
                              "start the training afresh.") from None
    if not isinstance(state, dict) or state.get("trained_with") != settings:
        raise CheckpointError(f"Training state {path} was written by a training with other settings; delete it to "
                              "start afresh, or resume with the settings that wrote it.")
    return state


def finetune(
    model: nn.Module,
    profile: Profile,
    root: str | Path | None = None,
    loss: Loss | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """The short recovery training after compression: the profile's fine-tune size, epochs and learning
    rate, a brief warm-up, the same loop as :func:`fit`; tested on the profile's test subset."""
    p = profile.replace(
        train_samples=profile.finetune_samples, epochs=profile.finetune_epochs, lr=profile.finetune_lr,
        warmup_epochs=0.1, augment=False,
    )
    train_loader, test_loader = vdata.loaders(p, root)
    return fit(model, train_loader, test_loader, p, loss=loss, log=log)


def baseline_config(profile: Profile) -> ViTConfig:
    """The profile's baseline ViT, with image size, channels and classes taken from its data set."""
    info = vdata.DATASETS[profile.dataset]
    b = profile.baseline
    return dataclasses.replace(
        b,
        img_size=info.img_size or b.img_size,
        in_chans=info.channels,
        num_classes=info.num_classes or b.num_classes,
    )


TRAINING_FIELDS = ("dataset", "train_samples", "test_samples", "baseline", "epochs", "batch_size", "lr",
                   "weight_decay", "warmup_epochs", "augment", "amp", "seed")
"""The profile fields that decide what training the baseline produces; a checkpoint is reused only if
they match. The teacher's settings replace ``baseline`` by ``teacher_channels``."""


_LATER_CONFIG_FIELDS = ("class_token", "global_pool", "mixer", *mixers.SETTINGS)


def _config_key(cfg: ViTConfig) -> dict:
    """A ViT config as part of a checkpoint's key. The pooling and token-mixer fields were added to
    ViTConfig later; at their defaults they are left out, so a checkpoint trained before they existed
    keeps its name and is still found."""
    out = asdict(cfg)
    for f in dataclasses.fields(ViTConfig):
        if f.name in _LATER_CONFIG_FIELDS and out[f.name] == f.default:
            del out[f.name]
    return out


def _training_settings(profile: Profile, kind: str = "baseline") -> dict:
    settings = {k: v for k, v in asdict(profile).items() if k in TRAINING_FIELDS}
    settings["baseline"] = _config_key(profile.baseline)
    if kind == "teacher":
        settings.pop("baseline")
        settings["teacher_channels"] = profile.teacher_channels
    return settings


def checkpoint_path(profile: Profile, kind: str = "baseline") -> Path:
    """Where the profile's trained ``kind`` (``"baseline"`` or ``"teacher"``) is kept: named by profile,
    data set and a digest of the training settings, so models trained differently (e.g. notebook 06's
    many-token baseline) never overwrite each other."""
    settings = json.dumps(_training_settings(profile, kind), sort_keys=True, default=str)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:8]
    return project_root() / "checkpoints" / f"{kind}_{profile.name}_{profile.dataset}_{digest}.pt"


def save(model: nn.Module, result: TrainResult, path: Path, settings: dict) -> None:
    """Save weights, the ViT config (for a ViT), training record and training settings; atomically and
    under the file's lock (:func:`vitsurvey.results.write_atomic`)."""
    checkpoint = {
        "config": asdict(model.cfg) if isinstance(model, VisionTransformer) else None,
        "state_dict": model.state_dict(),
        "result": asdict(result),
        "trained_with": settings,
    }
    write_atomic(path, lambda f: torch.save(checkpoint, f))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the model it should hold: empty, cut off, corrupt, holding
    more than tensors, or saved from a different model."""


class CheckpointWarning(UserWarning):
    """A checkpoint was set aside or could not be written; training went on."""


def _unreadable(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` failed, in words (torch's own message advises loading the file unsafely)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
        return "it holds Python objects beyond tensors, numbers and strings, which are never loaded (loading them can run code)"
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive: this one is damaged
    if zipped or isinstance(exc, EOFError):
        return "it is cut off (a write that did not finish) or corrupt"
    return "it is not a file torch.save wrote, or it is corrupt"


def load(path: Path, build: Callable[[], nn.Module] | None = None) -> tuple[nn.Module, TrainResult, dict]:
    """A saved model, its training record, and the training settings (a dict) that produced it.
    ``build`` makes the empty model to load into (default: the ViT the checkpoint's config describes).

    Only tensors and plain containers are unpickled (``weights_only=True``). A file that cannot be loaded
    raises :class:`CheckpointError` naming it and saying why."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle protocol before failing on it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"Checkpoint {path} cannot be loaded: {_unreadable(path, exc)}.") from None
    needed = {"state_dict", "result"} | ({"config"} if build is None else set())
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise CheckpointError(f"Checkpoint {path} is not a vitsurvey checkpoint (it lacks "
                              f"{', '.join(sorted(needed - set(ckpt) if isinstance(ckpt, dict) else needed))}).")
    try:
        model = build() if build is not None else VisionTransformer(ViTConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        result = TrainResult(**ckpt["result"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"Checkpoint {path} does not fit the model it should hold: {first}") from None
    return model.eval(), result, ckpt.get("trained_with", {})


def _set_aside(path: Path, why: CheckpointError) -> None:
    """Move an unloadable checkpoint to ``<name>.damaged`` (kept for inspection, never loaded) and warn."""
    aside = path.with_name(path.name + ".damaged")
    try:
        os.replace(path, aside)
        where = f"moved it to {aside.name}"
    except OSError as exc:
        where = f"could not move it aside ({exc.strerror or exc})"
    warnings.warn(f"{why} {where.capitalize()}; training the model again.", CheckpointWarning, stacklevel=4)


def _trained_once(
    kind: str, build: Callable[[], nn.Module], profile: Profile, root: str | Path | None, retrain: bool,
    log: Callable[[str], None] | None,
) -> tuple[nn.Module, TrainResult]:
    """Load ``kind`` from ``checkpoints/`` if it was trained with these settings, else train and save it.

    A checkpoint that cannot be loaded is set aside and the model retrained; a checkpoint folder that cannot
    be written loses nothing but the cache: the trained model is returned with a warning."""
    path, settings = checkpoint_path(profile, kind), _training_settings(profile, kind)
    if path.exists() and not retrain:
        try:
            model, result, trained_by = load(path, build)
        except CheckpointError as exc:
            _set_aside(path, exc)
        else:
            if trained_by == settings:
                return model, result
    seed_everything(profile.seed)
    model = build()
    train_loader, test_loader = vdata.loaders(profile, root)
    result = fit(model, train_loader, test_loader, profile, log=log)
    try:
        save(model.cpu().eval(), result, path, settings)
    except OSError as exc:
        warnings.warn(
            f"The trained {kind} could not be saved to {path} ({exc.strerror or exc}); it is used now but not kept, "
            f"so the next run trains it again. Make {path.parent} writable, or set $VITSURVEY_OUTPUT to a "
            "writable directory.", CheckpointWarning, stacklevel=3)
    return model.cpu().eval(), result


def baseline(
    profile: Profile,
    root: str | Path | None = None,
    retrain: bool = False,
    log: Callable[[str], None] | None = print,
) -> tuple[VisionTransformer, TrainResult]:
    """The profile's trained baseline ViT: loaded from ``checkpoints/`` if it was trained before with
    the same training settings (:data:`TRAINING_FIELDS`), else trained now on the profile's data and saved."""
    model, result = _trained_once("baseline", lambda: VisionTransformer(baseline_config(profile)), profile, root,
                                  retrain, log)
    assert isinstance(model, VisionTransformer)
    return model, result


def teacher(
    profile: Profile,
    root: str | Path | None = None,
    retrain: bool = False,
    log: Callable[[str], None] | None = print,
) -> tuple[nn.Module, TrainResult]:
    """The profile's convolutional teacher for distillation (notebook 07): a small timm ResNet
    (:func:`vitsurvey.models.small_resnet`, widths ``teacher_channels``), trained like the baseline on
    the same data, for ``teacher_epochs``, once per profile and then loaded from ``checkpoints/``."""
    p = profile.replace(epochs=profile.teacher_epochs or profile.epochs)
    cfg = baseline_config(p)  # the data set's channels and classes
    return _trained_once(
        "teacher", lambda: small_resnet(cfg.in_chans, cfg.num_classes, p.teacher_channels), p, root, retrain, log
    )
