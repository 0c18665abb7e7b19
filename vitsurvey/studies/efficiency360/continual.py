"""Continual learning, as we read S1's dimension: class-incremental training over task splits, with average
accuracy and forgetting, for naive fine-tuning and for a replay buffer appended to each later task's data, and
for compressed versions of the learner (any model-to-model strategy applied after each task)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ... import checks, train
from ...data import tensor_loader
from .evaluation import check_images, top1_of

if TYPE_CHECKING:
    from ...profiles import Profile

__all__ = ["class_incremental", "continual_summary"]


def class_incremental(
    build: Callable[[], nn.Module],
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    profile: Profile,
    tasks: int = 5,
    replay_per_class: int = 0,
    seed: int = 0,
    variants: Mapping[str, Callable[[nn.Module], nn.Module]] | None = None,
) -> pd.DataFrame:
    """Class-incremental learning: the classes are split into ``tasks`` consecutive groups, and one model
    (from ``build``) is trained on them one after another with :func:`vitsurvey.train.fit` and the profile's
    settings, with no task identity at test time. ``replay_per_class`` > 0 keeps that many seeded training
    images of every class already seen and appends them to each later task's training images, which are then
    shuffled together (a replay buffer in the data: a batch holds buffer images only in their share of the task's
    data, not in every batch as in experience replay); 0 is naive fine-tuning. One row per (model, after task,
    task seen so far): top-1 (%) on that task's test images over all classes, and ``n``. ``model`` is ``"as
    trained"``, and also each of ``variants``, a name and a strategy that takes the model and returns one (e.g.
    token merging): applied to the learner after each task and measured alike, never trained."""
    (xs, ys), (xt, yt) = train_set, test_set
    check_images(xs, ys)
    check_images(xt, yt)
    classes = sorted(int(c) for c in ys.unique())
    if not checks.is_whole(tasks, 2, len(classes)):
        raise ValueError(f"tasks must be a whole number from 2 to the number of classes ({len(classes)}), not {tasks!r}.")
    if replay_per_class < 0:
        raise ValueError(f"replay_per_class cannot be negative, got {replay_per_class}.")
    groups = [list(g) for g in np.array_split(classes, tasks)]
    g = torch.Generator().manual_seed(seed)
    model, buffer, rows = build(), torch.zeros(0, dtype=torch.long), []
    for t, group in enumerate(groups):
        idx = torch.nonzero(torch.isin(ys, torch.tensor(group))).flatten()
        if not len(idx):
            raise ValueError(f"No training images of classes {group}.")
        mixed = torch.cat([idx, buffer])
        test_idx = torch.nonzero(torch.isin(yt, torch.tensor(group))).flatten()
        train.fit(model, tensor_loader(xs[mixed], ys[mixed], profile.batch_size, True, seed + t),
                  tensor_loader(xt[test_idx], yt[test_idx], 256), profile, log=None)
        measured = {"as trained": model, **{n: make(model) for n, make in (variants or {}).items()}}
        for name, m in measured.items():
            for s, seen in enumerate(groups[: t + 1]):
                sel = torch.isin(yt, torch.tensor(seen))
                rows.append({"model": name, "after task": t + 1, "task": s + 1, "classes": ", ".join(map(str, seen)),
                             "top1": top1_of(m, xt[sel], yt[sel]), "n": int(sel.sum())})
        if replay_per_class:
            keep = [idx_c[torch.randperm(len(idx_c), generator=g)[:replay_per_class]]
                    for c in group for idx_c in [torch.nonzero(ys == c).flatten()]]
            buffer = torch.cat([buffer, *keep])
    return pd.DataFrame(rows)


def continual_summary(table: pd.DataFrame) -> dict[str, float]:
    """Average accuracy over all tasks after the last one, and forgetting: for each task but the last, its
    best accuracy before the end minus its accuracy at the end, averaged (Chaudhry et al., 2018). ``table``: one
    model's rows of :func:`class_incremental` (select one ``model`` first where there are several)."""
    if "model" in table.columns and table["model"].nunique() > 1:
        raise ValueError(f"The table holds several models ({sorted(table['model'].unique())}); summarise one at a "
                         "time: table[table['model'] == name].")
    last = int(table["after task"].max())
    final = table[table["after task"] == last].set_index("task")["top1"]
    earlier = table[table["after task"] < last]
    forgetting = [earlier[earlier["task"] == t]["top1"].max() - final[t] for t in final.index if t < last]
    return {"average accuracy": float(final.mean()), "forgetting": float(np.mean(forgetting)) if forgetting else 0.0}
