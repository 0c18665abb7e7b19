"""Privacy, as we read S1's dimension: the AUC of a loss-threshold membership-inference attack (Yeom et al.,
2018), and the accuracy that differentially private training (opacus, through
:func:`vitsurvey.train.fit`) costs at a few privacy budgets."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ... import train
from ...data import tensor_loader
from .evaluation import check_images, logits_of

if TYPE_CHECKING:
    from ...profiles import Profile

__all__ = ["losses", "membership_auc", "private_training"]


@torch.no_grad()
def losses(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """Per-image cross-entropy."""
    return F.cross_entropy(logits_of(model, images, batch_size), labels, reduction="none")


def membership_auc(
    model: nn.Module, members: tuple[Tensor, Tensor], non_members: tuple[Tensor, Tensor]
) -> float:
    """AUC of the loss-threshold membership-inference attack (Yeom et al., 2018): it guesses "member" when an
    image's loss is low. 0.5: the model's losses do not tell its training images from others; 1: they do
    perfectly. ``members`` are (images, labels) the model was trained on, ``non_members`` held-out ones."""
    from sklearn.metrics import roc_auc_score

    for what, (x, y) in (("members", members), ("non_members", non_members)):
        if len(y) == 0:
            raise ValueError(f"{what} is empty: the attack needs images on both sides.")
        check_images(x, y)
    scores = torch.cat([-losses(model, *members), -losses(model, *non_members)]).numpy()
    truth = np.r_[np.ones(len(members[1])), np.zeros(len(non_members[1]))]
    return float(roc_auc_score(truth, scores))


_OPACUS_NOTICES = (
    "Secure RNG turned off",  # a seeded generator is the point here: reruns must agree
    "Optimal order is the largest alpha",  # at a large epsilon the bound is valid, only not the tightest
    "Full backward hook is firing",  # the first layer's input needs no gradient; its weights get theirs
    "There is a performance drop",  # torch.func looping where a kernel has no batching rule (small layers)
)
"""Warnings opacus gives on every private training here, each expected for the reason beside it."""


def private_training(
    build: Callable[[], nn.Module],
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    profile: Profile,
    epsilons: Sequence[float],
    delta: float | None = None,
    max_grad_norm: float = 1.0,
) -> pd.DataFrame:
    """What differential privacy costs in accuracy: one model (from ``build``, seeded alike) trained with
    :func:`vitsurvey.train.fit` and the profile's settings per privacy budget ``epsilon`` (``math.inf``: the
    usual, non-private training, the control), on ``train_set``, tested on ``test_set``.

    Private training is DP-SGD's recipe (Abadi et al., 2016) with AdamW as the optimiser: every image's
    gradient clipped to ``max_grad_norm``, Gaussian noise added to their sum, batches drawn by Poisson
    sampling; opacus does all three through fit's ``prepare`` hook and picks the noise for (epsilon, delta)
    over the profile's epochs with its RDP accountant. ``delta`` defaults to a tenth of 1 / (training
    images). One row per budget: top-1 (%), ``n``, the epsilon the accountant says was spent, the noise
    multiplier, the membership-inference AUC (:func:`membership_auc`; as many training images as test
    images) and the training seconds.
    """
    from opacus import PrivacyEngine
    from torch.nn.attention import SDPBackend, sdpa_kernel

    (xs, ys), (xt, yt) = train_set, test_set
    check_images(xs, ys)
    check_images(xt, yt)
    if not epsilons:
        raise ValueError("Give at least one privacy budget epsilon (math.inf for non-private training).")
    for eps in epsilons:
        if not eps > 0:  # also catches NaN
            raise ValueError(f"A privacy budget epsilon is positive (math.inf: not private), not {eps}.")
    delta = 0.1 / len(ys) if delta is None else delta
    if not 0 < delta < 1:
        raise ValueError(f"delta is a probability in (0, 1), typically below 1 / (training images); got {delta}.")
    if not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be positive, not {max_grad_norm}.")
    test_loader = tensor_loader(xt, yt, 256)
    rows = []
    for eps in epsilons:
        train.seed_everything(profile.seed)
        model = build()
        wrapped: list[nn.Module] = []
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            for said in _OPACUS_NOTICES:
                warnings.filterwarnings("ignore", message=said)
            engine = PrivacyEngine(accountant="rdp")

            def prepare(m: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader,
                        eps: float = eps) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
                m.train()  # opacus checks the mode it will train in
                out = engine.make_private_with_epsilon(
                    module=m, optimizer=opt, data_loader=loader, target_epsilon=eps, target_delta=delta,
                    epochs=profile.epochs, max_grad_norm=max_grad_norm,
                    noise_generator=torch.Generator().manual_seed(profile.seed))
                wrapped.append(out[0])
                return out

            if math.isfinite(eps):
                # per-image gradients vectorise (torch.func) through the composite attention, not the fused kernel
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            # one loader for every budget and the control; a private run samples its batches from it by
            # Poisson sampling, which has no drop_last
            loader = DataLoader(TensorDataset(xs, ys), batch_size=profile.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(profile.seed))
            result = train.fit(model, loader, test_loader, profile, log=None,
                               prepare=prepare if math.isfinite(eps) else None)
        spent, sigma = math.inf, 0.0
        if wrapped:
            spent, sigma = engine.accountant.get_epsilon(delta), float(engine.accountant.history[-1][0])
            wrapped[0].remove_hooks()  # leave ``model`` as it was built, without opacus's per-image hooks
        m = min(len(ys), len(yt))
        auc = membership_auc(model, (xs[:m], ys[:m]), (xt[:m], yt[:m]))
        rows.append({"epsilon": eps, "top1": result.top1, "n": len(yt), "epsilon spent": spent, "delta": delta,
                     "noise multiplier": sigma, "membership AUC": auc, "train_seconds": result.train_seconds})
    return pd.DataFrame(rows)
