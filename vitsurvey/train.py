"""One small training loop, so that no notebook writes its own.

AdamW with linear warm-up and cosine decay, label smoothing, light augmentation (random shifts and
horizontal flips, done on whole batches), bf16 autocast on CUDA, seeded. ``extra_loss`` adds a term
to the loss (knowledge distillation uses it), so variants reuse the loop instead of copying it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import data as vdata
from .models import ViTConfig, VisionTransformer
from .profiles import Profile
from .results import project_root

ExtraLoss = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]
"""``extra_loss(model, images, labels, logits) -> scalar`` added to the cross-entropy."""


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
    extra_loss: ExtraLoss | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train ``model`` with the profile's epochs, batch, learning rate and schedule; test each epoch."""
    device = torch.device(device or profile.device)
    seed_everything(profile.seed)
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "pos_embed" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": profile.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=profile.lr,
    )
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
    seen, start = 0, time.perf_counter()
    for epoch in range(profile.epochs):
        model.train()
        running = 0.0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if profile.augment:
                x = augment(x, generator=gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
                if extra_loss is not None:
                    loss = loss + extra_loss(model, x, y, logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += loss.item() * y.numel()
            seen += y.numel()
        elapsed = time.perf_counter() - start
        top1 = evaluate(model, test_loader, device)
        n_train = len(train_loader) * (train_loader.batch_size or 1)
        history.append({"epoch": epoch + 1, "loss": running / n_train, "test_top1": top1})
        if log is not None:
            log(f"epoch {epoch + 1}/{profile.epochs}: loss {running / n_train:.3f}, test top-1 {top1:.2f}%")
    elapsed = time.perf_counter() - start
    return TrainResult(history[-1]["test_top1"], profile.epochs, elapsed, seen / elapsed, history)


def finetune(
    model: nn.Module,
    profile: Profile,
    root: str | Path | None = None,
    extra_loss: ExtraLoss | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """The short recovery training after compression: the profile's fine-tune size, epochs and learning
    rate, a brief warm-up, the same loop as :func:`fit`; tested on the profile's test subset."""
    p = profile.replace(
        train_samples=profile.finetune_samples, epochs=profile.finetune_epochs, lr=profile.finetune_lr,
        warmup_epochs=0.1, augment=False,
    )
    train_loader, test_loader = vdata.loaders(p, root)
    return fit(model, train_loader, test_loader, p, extra_loss=extra_loss, log=log)


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


def checkpoint_path(profile: Profile) -> Path:
    """Where the profile's baseline is kept: named by profile, data set and a digest of the training
    settings, so baselines trained differently (e.g. notebook 06's many-token one) never overwrite
    each other."""
    settings = json.dumps(_training_settings(profile), sort_keys=True, default=str)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:8]
    return project_root() / "checkpoints" / f"baseline_{profile.name}_{profile.dataset}_{digest}.pt"


TRAINING_FIELDS = ("dataset", "train_samples", "test_samples", "baseline", "epochs", "batch_size", "lr",
                   "weight_decay", "warmup_epochs", "augment", "amp", "seed")
"""The profile fields that decide what training produces; a checkpoint is reused only if they match."""


def _training_settings(profile: Profile) -> dict:
    return {k: v for k, v in asdict(profile).items() if k in TRAINING_FIELDS}


def save(model: VisionTransformer, result: TrainResult, path: Path, profile: Profile) -> None:
    """Save weights, config, training record and the profile that trained them; atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "config": asdict(model.cfg),
            "state_dict": model.state_dict(),
            "result": asdict(result),
            "trained_with": _training_settings(profile),
        },
        tmp,
    )
    os.replace(tmp, path)


def load(path: Path) -> tuple[VisionTransformer, TrainResult, dict]:
    """A saved model, its training record, and the training settings (a dict) that produced it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = VisionTransformer(ViTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), TrainResult(**ckpt["result"]), ckpt.get("trained_with", {})


def baseline(
    profile: Profile,
    root: str | Path | None = None,
    retrain: bool = False,
    log: Callable[[str], None] | None = print,
) -> tuple[VisionTransformer, TrainResult]:
    """The profile's trained baseline ViT: loaded from ``checkpoints/`` if it was trained before with
    the same training settings (:data:`TRAINING_FIELDS`), else trained now on the profile's data and saved."""
    path = checkpoint_path(profile)
    if path.exists() and not retrain:
        model, result, trained_by = load(path)
        if trained_by == _training_settings(profile):
            return model, result
    seed_everything(profile.seed)
    model = VisionTransformer(baseline_config(profile))
    train_loader, test_loader = vdata.loaders(profile, root)
    result = fit(model, train_loader, test_loader, profile, log=log)
    save(model.cpu().eval(), result, path, profile)
    return model, result
