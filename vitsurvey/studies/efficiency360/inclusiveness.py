"""Inclusiveness, as we read S1's dimension, in two ways: as a cost, what it takes to run the model on the
smallest machine (one CPU thread, batch 1); and as accuracy, how well a model serves classes that were rare
in its training data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import Tensor, nn

from ... import measure, train
from ...data import tensor_loader
from ...device import threads
from .evaluation import check_images, logits_of
from .fairness import per_class_accuracy

if TYPE_CHECKING:
    from ...profiles import Profile

__all__ = ["control_indices", "imbalanced_indices", "imbalanced_training", "who_can_run"]


def who_can_run(model: nn.Module, input_shape: tuple[int, int, int], iters: int = 20) -> dict[str, float]:
    """Our reading of inclusiveness as a cost: what it takes to run the model on the smallest machine, i.e.
    batch-1 latency on one CPU thread (ms), peak inference memory at batch 1 (bytes of live tensors) and
    the size of its saved weights (bytes)."""
    with threads(1):
        latency = measure.latency_ms(model, input_shape, "cpu", iters=iters)
    return {"latency_1_thread_ms": latency,
            "memory_bytes": float(measure.inference_memory(model, input_shape, 1, "cpu").peak_bytes or 0),
            "size_bytes": float(measure.serialized_bytes(model))}


def imbalanced_indices(labels: Tensor, rare: Sequence[int], keep: float, seed: int = 0) -> Tensor:
    """Indices of a training subset in which each class in ``rare`` keeps only a seeded fraction ``keep`` of
    its images and every other class keeps all of its own."""
    present = set(int(c) for c in labels.unique())
    missing = [c for c in rare if int(c) not in present]
    if missing or not rare:
        raise ValueError(f"rare must name classes present in the labels ({sorted(present)}); got {list(rare)}.")
    if not 0 < keep <= 1:
        raise ValueError(f"keep is the fraction of a rare class's images kept, in (0, 1], not {keep}.")
    scarce = {int(r) for r in rare}
    g = torch.Generator().manual_seed(seed)
    parts = []
    for c in sorted(present):
        idx = torch.nonzero(labels == c).flatten()
        if c in scarce:
            idx = idx[torch.randperm(len(idx), generator=g)[: max(1, round(keep * len(idx)))]]
        parts.append(idx)
    return torch.cat(parts).sort().values


def control_indices(n: int, size: int, seed: int = 0) -> Tensor:
    """Indices of the control's training subset in :func:`imbalanced_training`: a seeded random ``size`` of the
    ``n`` training images, so the classes keep the proportions they have in the data (balanced in expectation
    on a class-balanced data set)."""
    if not 0 < size <= n:
        raise ValueError(f"The control draws between 1 and all {n} training images, not {size}.")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def imbalanced_training(
    build: Callable[[], nn.Module],
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    profile: Profile,
    rare: Sequence[int],
    keep: float,
    seed: int = 0,
) -> pd.DataFrame:
    """Our reading of inclusiveness as accuracy: how well a model serves classes that are under-represented
    in its training data. One model trained (:func:`vitsurvey.train.fit`, the profile's settings) on an
    imbalanced subset (:func:`imbalanced_indices`) and one, the control, on a class-balanced random subset
    of the same size (:func:`control_indices`); one row per (training set, class) with top-1 (%), ``n`` and
    whether the class was rare."""
    (xs, ys), (xt, yt) = train_set, test_set
    check_images(xs, ys)
    check_images(xt, yt)
    skewed = imbalanced_indices(ys, rare, keep, seed)
    balanced = control_indices(len(ys), len(skewed), seed)
    test_loader = tensor_loader(xt, yt, 256)
    frames = []
    for name, idx in (("imbalanced", skewed), ("balanced (control)", balanced)):
        train.seed_everything(profile.seed)
        model = build()
        train.fit(model, tensor_loader(xs[idx], ys[idx], profile.batch_size, True, seed), test_loader, profile,
                  log=None)
        table = per_class_accuracy(yt, logits_of(model, xt).argmax(-1))
        table.insert(0, "trained on", name)
        table["rare"] = table["class"].astype(int).isin([int(r) for r in rare])
        table["train images"] = [int((ys[idx] == int(c)).sum()) for c in table["class"]]
        frames.append(table)
    return pd.concat(frames, ignore_index=True)
