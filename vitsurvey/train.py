"""One small training loop, so that no notebook writes its own, and the models the notebooks train with it.

AdamW with linear warm-up and cosine decay, label smoothing, light augmentation (random shifts and
horizontal flips, done on whole batches), bf16 autocast on CUDA, seeded. The ``loss`` hook replaces
the objective (knowledge distillation wraps :func:`label_loss` in it), so variants reuse the loop
instead of copying it. The ``prepare`` hook wraps model, optimiser and data loader before the first step
(differentially private training hands them to opacus there, DDP in :mod:`vitsurvey.distributed`), so private
and multi-process training are this loop too.

Built on the loop: :func:`finetune` (the short recovery training after compression), the profile's
:func:`trained_baseline` ViT and :func:`trained_teacher` ResNet (trained once, then loaded from the cache in
:mod:`vitsurvey.checkpoints`), and :func:`train_by_name`, the training behind ``python -m vitsurvey train``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import checkpoints, distributed, progress
from . import data as vdata
from .checkpoints import CheckpointError, TrainResult
from .models import ViTConfig, VisionTransformer, create, mixers, small_resnet
from .profiles import GRAD_CLIP, LABEL_SMOOTHING

if TYPE_CHECKING:
    from .profiles import Profile

__all__ = [
    "CheckpointError", "Loss", "Outputs", "Prepare", "TrainResult", "TrainedModel", "augment", "baseline_config",
    "evaluate", "finetune", "fit", "label_loss", "model_by_name", "predict", "seed_everything", "train_by_name",
    "trained_baseline", "trained_teacher",
]

Outputs = Tensor | tuple[Tensor, ...]
"""What a model returns in training mode: logits, or one logits tensor per head (a distillation token's
model returns two)."""
Loss = Callable[[nn.Module, Tensor, Tensor, Outputs], Tensor]
"""``loss(model, images, labels, outputs) -> scalar``: the training objective :func:`fit` minimises."""
Prepare = Callable[[nn.Module, torch.optim.Optimizer, DataLoader],
                   tuple[nn.Module, torch.optim.Optimizer, DataLoader]]
"""``prepare(model, optimizer, loader) -> (model, optimizer, loader)``: wraps the three before training."""


def label_loss(model: nn.Module, images: Tensor, labels: Tensor, outputs: Outputs) -> Tensor:
    """The default objective: cross-entropy with label smoothing 0.1 (as DeiT trains); for a model with
    several heads, the mean over the heads."""
    heads = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(F.cross_entropy(h.float(), labels, label_smoothing=LABEL_SMOOTHING) for h in heads) / len(heads)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators: the same seed gives the same weights and batches."""
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
def predict(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """The model's predicted class and the label of every image, in the loader's order (on the CPU): what
    :func:`vitsurvey.metrics.paired_comparison` compares two models on."""
    model.eval()
    predicted, labels = [], []
    for x, y in loader:
        predicted.append(model(x.to(device)).argmax(-1).cpu())
        labels.append(y.cpu())
    if not labels or sum(len(y) for y in labels) == 0:
        raise ValueError("Cannot evaluate on an empty data set.")
    return torch.cat(predicted), torch.cat(labels)


def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy in percent."""
    predicted, labels = predict(model, loader, device)
    return 100.0 * (predicted == labels).sum().item() / labels.numel()


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader | None,
    profile: Profile,
    device: str | torch.device | None = None,
    loss: Loss | None = None,
    log: Callable[[str], None] | None = print,
    prepare: Prepare | None = None,
    resume: Path | None = None,
    key: dict | None = None,
) -> TrainResult:
    """Train ``model`` with the profile's epochs, batch, learning rate and schedule; test each epoch (with
    ``test_loader`` None: never, and the result's ``top1`` is NaN, for a caller that scores the model itself).

    ``loss`` is the objective (default :func:`label_loss`); it sees the images after augmentation, so a
    teacher that it calls sees what the student sees. ``prepare`` wraps model, AdamW optimiser and training
    loader before the first step; with it, gradient clipping is left to the wrapped optimiser (a private one
    clips every image's gradient, which the usual clipping of the batch's gradient would distort).

    ``resume``: a file that holds the whole training state (weights, optimiser, schedule, augmentation
    generator, epoch, history), written after every epoch (by rank 0 only, under ``torch.distributed``). A run
    that finds it continues after its last epoch and ends where an uninterrupted run would; a file written by
    a different training is refused: one with other :func:`vitsurvey.checkpoints.training_settings`, or other ``key``
    (what else decides the training, e.g. the image size of a model that is not the profile's ViT)."""
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
    settings = {**checkpoints.training_settings(profile), **(key or {})}
    if resume is not None and Path(resume).exists():
        state = checkpoints.load_training_state(Path(resume), settings)
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
                nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
            running += value.item() * y.numel()
            images += y.numel()
        seen += images
        top1 = evaluate(model, test_loader, device) if test_loader is not None else math.nan
        history.append({"epoch": epoch + 1, "loss": running / max(images, 1), "test_top1": top1})
        if resume is not None and _is_main_process():
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "generator": gen.get_state(), "epoch": epoch + 1, "history": history, "seen": seen,
                     "seconds": before + time.perf_counter() - start, "trained_with": settings}
            checkpoints.save_training_state(Path(resume), state)
        if log is not None:
            tested = f", test top-1 {top1:.2f}%" if test_loader is not None else ""
            log(f"epoch {epoch + 1}/{profile.epochs}: loss {running / max(images, 1):.3f}{tested}")
    elapsed = before + time.perf_counter() - start
    return TrainResult(history[-1]["test_top1"], profile.epochs, elapsed, seen / max(elapsed, 1e-9), history)


def _is_main_process() -> bool:
    """Whether this process writes files: the only one, or rank 0 under ``torch.distributed``."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def finetune(
    model: nn.Module,
    profile: Profile,
    root: str | Path | None = None,
    loss: Loss | None = None,
    log: Callable[[str], None] | None = None,
    test: bool = True,
) -> TrainResult:
    """The short recovery training after compression: the profile's fine-tune size, epochs and learning
    rate, a brief warm-up, the same loop as :func:`fit`; tested on the profile's test subset unless ``test`` is
    False (a caller that scores the model on the test images itself need not pay for it twice; ``top1`` is NaN)."""
    p = profile.replace(
        train_samples=profile.finetune_samples, epochs=profile.finetune_epochs, lr=profile.finetune_lr,
        warmup_epochs=0.1, augment=False,
    )
    train_loader, test_loader = vdata.loaders(p, root)
    return fit(model, train_loader, test_loader if test else None, p, loss=loss, log=log)


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


def _trainer(build: Callable[[], nn.Module], profile: Profile, root: str | Path | None,
             log: Callable[[str], None] | None) -> Callable[[], tuple[nn.Module, TrainResult]]:
    """The training :func:`vitsurvey.checkpoints.load_or_train` runs when no checkpoint fits: seeded before the
    model is built, so its initial weights, and so the trained model, are the same in every run."""

    def train() -> tuple[nn.Module, TrainResult]:
        seed_everything(profile.seed)
        model = build()
        train_loader, test_loader = vdata.loaders(profile, root)
        return model, fit(model, train_loader, test_loader, profile, log=log)

    return train


def trained_baseline(
    profile: Profile,
    root: str | Path | None = None,
    retrain: bool = False,
    log: Callable[[str], None] | None = print,
) -> tuple[VisionTransformer, TrainResult]:
    """The profile's trained baseline ViT: loaded from ``checkpoints/`` if it was trained before with
    the same training settings (:data:`vitsurvey.checkpoints.TRAINING_FIELDS`), else trained now on the
    profile's data and saved."""

    def build() -> nn.Module:
        return VisionTransformer(baseline_config(profile))

    model, result = checkpoints.load_or_train("baseline", build, profile, _trainer(build, profile, root, log),
                                              retrain)
    assert isinstance(model, VisionTransformer)
    return model, result


def trained_teacher(
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

    def build() -> nn.Module:
        return small_resnet(cfg.in_chans, cfg.num_classes, p.teacher_channels)

    return checkpoints.load_or_train("teacher", build, p, _trainer(build, p, root, log), retrain)


# --------------------------------------------------------------------------- one model by name
def _own_model(name: str) -> bool:
    """Whether ``name`` is one of the profile's own models (not a timm name)."""
    return name in ("baseline", "teacher") or name.startswith("mixer:")


def _sized_config(profile: Profile, channels: int, classes: int, img_size: int) -> ViTConfig:
    """The profile's baseline ViT for images of ``channels`` x ``img_size`` px in ``classes`` classes."""
    cfg = profile.baseline
    if img_size % cfg.patch_size:
        raise ValueError(f"the images are {img_size} px, not a multiple of the baseline's patch size "
                         f"{cfg.patch_size}; set --img-size to a multiple of it, e.g. {cfg.img_size}")
    return dataclasses.replace(cfg, img_size=img_size, in_chans=channels, num_classes=classes)


def model_by_name(name: str, profile: Profile, channels: int, classes: int, img_size: int) -> nn.Module:
    """``baseline`` (the profile's ViT), ``teacher`` (its small ResNet), a token mixer's ViT (``mixer:NAME``), or
    any timm model by name, each sized for the data: ``channels`` x ``img_size`` px images in ``classes``."""
    if name == "baseline":
        return VisionTransformer(_sized_config(profile, channels, classes, img_size))
    if name == "teacher":
        return small_resnet(channels, classes, profile.teacher_channels)
    if name.startswith("mixer:"):
        mixer = name.split(":", 1)[1]
        if mixer not in mixers.MIXERS:
            raise ValueError(f"unknown token mixer {mixer!r}; valid: {', '.join(mixers.MIXERS)}")
        return VisionTransformer(_sized_config(profile, channels, classes, img_size).with_mixer(mixer))
    return create(name, img_size=img_size, in_chans=channels, num_classes=classes)


@dataclass
class TrainedModel:
    """What :func:`train_by_name` trained, as its main process reports it."""

    model: nn.Module
    """The trained model, on the CPU, in eval mode."""
    result: TrainResult
    profile: Profile
    """The settings it was trained with (the data set resolved to the one found)."""
    image_shape: tuple[int, int, int]
    """One input image's channels, height and width."""
    world: int
    """How many processes trained it."""
    device: torch.device
    state: Path
    """The training-state file it resumed from and wrote."""
    epochs_run: int
    """Epochs trained in this call (0: the state file held a finished training, which was only reported)."""


def train_by_name(
    name: str,
    profile: Profile,
    root: str | Path | None = None,
    init: Path | None = None,
    state: Path | None = None,
    log: Callable[[str], None] = print,
    img_size: int | None = None,
) -> TrainedModel | None:
    """Train the model :func:`model_by_name` builds on the profile's data set, in one process or, under
    ``torchrun``, in several with DDP (:mod:`vitsurvey.distributed`); resumable from ``state`` (default:
    :func:`vitsurvey.checkpoints.training_state_path`). ``init``: a file whose weights the model starts from
    where names and shapes agree. ``img_size``: the side images are resized to (default: the data set's own; an
    ImageFolder tree, whose images vary, at the baseline's size for the profile's own models, 224 px for timm's).
    The profile's models adapt to the data's channels, size and classes. Returns what was trained in the main
    process, None in the others (which neither log nor report)."""
    if root is None:
        profile = vdata.resolve(profile)
    info = vdata.DATASETS[profile.dataset]
    if img_size is None and info.img_size is None and _own_model(name):
        img_size = profile.baseline.img_size
    ctx = distributed.init(profile.device)
    try:
        train_loader, test_loader = vdata.loaders(profile, root, img_size=img_size)
        x0 = test_loader.dataset[0][0]
        channels, size = int(x0.shape[0]), int(x0.shape[-1])
        found = getattr(getattr(train_loader.dataset, "dataset", train_loader.dataset), "classes", None)  # ImageFolder
        classes = len(found) if found else info.num_classes or baseline_config(profile).num_classes
        vit = name != "teacher" and _own_model(name)
        if vit:  # the ViT trained is part of the settings its training state is keyed by
            profile = profile.replace(baseline=_sized_config(profile, channels, classes, size))
        key = None if vit else {"img_size": size}
        seed_everything(profile.seed)
        model = model_by_name(name, profile, channels, classes, size)
        said = log if ctx.main else None
        if init is not None:
            kept, total = checkpoints.initialise_from(model, Path(init))
            if said:
                said(f"initialised {kept} of {total} tensors from {init} (the others, e.g. a head for another "
                     "set of classes, start fresh)")
        state = Path(state) if state is not None else checkpoints.training_state_path(name, profile)
        if said:
            said(f"training {name} on {vdata.describe(profile.dataset)} ({len(train_loader.dataset)} images), "
                 f"{ctx.world} process(es) on {ctx.device}, global batch {profile.batch_size}; state: {state}")
        done = (checkpoints.load_training_state(state, {**checkpoints.training_settings(profile), **(key or {})})
                ["epoch"] if state.exists() else 0)
        result = fit(model, train_loader, test_loader, profile.replace(device=str(ctx.device)), log=said,
                     prepare=distributed.prepare(ctx, profile.seed), resume=state, key=key)
        if not ctx.main:
            return None
        return TrainedModel(model.cpu().eval(), result, profile, (channels, size, size), ctx.world, ctx.device, state,
                            max(profile.epochs - done, 0))
    finally:
        distributed.shutdown()
