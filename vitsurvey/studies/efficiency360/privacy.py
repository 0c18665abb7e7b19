"""Privacy, as we read S1's dimension: how well a membership-inference attack tells a model's training images
from others, and the accuracy that differentially private training (opacus, through :func:`vitsurvey.train.fit`)
costs at a few privacy budgets.

Two attacks. Yeom et al.'s (2018) loss threshold (:func:`membership_auc`) uses one threshold for every image, so
an image that is easy for every model looks like a member; on a model that generalises well it hardly beats a
coin. Carlini et al.'s likelihood-ratio attack (LiRA, *Membership inference attacks from first principles*,
2022) gives every image its own threshold: shadow models trained on random halves of a pool of images
(:func:`shadow_splits`) show how confident a model is on that image when it has *not* trained on it, and the
target's confidence is tested against that (:func:`lira_offline`, the offline variant, which needs no shadow
model trained on the image).
"""

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
from .evaluation import check_images, logits_of, top1_of

if TYPE_CHECKING:
    from ...profiles import Profile

__all__ = ["lira_offline", "losses", "membership_auc", "membership_scores", "private_training", "shadow_splits"]


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


@torch.no_grad()
def membership_scores(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """LiRA's per-image statistic: the logit-scaled confidence in the true class, ``log(p_y / (1 - p_y))``, computed
    as ``z_y - logsumexp_{k != y} z_k`` so that it stays finite where ``p_y`` rounds to 1. Carlini et al. scale the
    confidence so that its spread over models is close to Gaussian, which the likelihood ratio assumes."""
    check_images(images, labels)
    z = logits_of(model, images, batch_size).double()
    true = z.gather(1, labels[:, None]).squeeze(1)
    others = z.scatter(1, labels[:, None], -math.inf).logsumexp(1)
    return (true - others).float()


def shadow_splits(n: int, shadows: int, seed: int = 0) -> Tensor:
    """Which of ``n`` pool images each of ``shadows`` shadow models trains on, as a (shadows, n) boolean tensor: every
    image in exactly half of them (Carlini et al.'s split: each image's ranks over independent uniforms, the lower
    half in), so every image has ``shadows / 2`` shadow models that never saw it. ``shadows``: an even number >= 2."""
    from ... import checks

    checks.whole("n", n, 1)
    if not (checks.is_whole(shadows, 2) and shadows % 2 == 0):
        raise ValueError(f"shadows must be an even whole number >= 2 (each image in exactly half), not {shadows!r}.")
    g = torch.Generator().manual_seed(seed)
    ranks = torch.rand(shadows, n, generator=g).argsort(0).argsort(0)
    return ranks < shadows // 2


def lira_offline(target: Tensor, shadow: Tensor, trained_on: Tensor, fix_variance: bool = False,
                 one_sided: bool = False) -> Tensor:
    """Offline LiRA (Carlini et al., 2022): a membership score per image, higher meaning "more likely a member".

    ``target``: the target model's :func:`membership_scores` on the images (N,); ``shadow``: every shadow model's on
    the same images (K, N); ``trained_on``: (K, N), whether each shadow trained on each image (:func:`shadow_splits`).
    For each image the shadows that did not train on it give a Gaussian, its median and standard deviation (the
    standard deviation over all their scores with ``fix_variance``, which Carlini et al. advise with few shadows).
    By default the score is what the authors' released code computes, minus the Gaussian's log-density at the
    target's score (how unlike a non-member it is, in either direction); ``one_sided`` is the paper's test, the
    Gaussian's CDF at the target's score (members are more confident than non-members)."""
    from scipy.stats import norm

    if target.ndim != 1 or shadow.ndim != 2 or shadow.shape != trained_on.shape or shadow.shape[1] != target.shape[0]:
        raise ValueError(f"Expected target scores (N,), shadow scores (K, N) and trained_on (K, N); got "
                         f"{tuple(target.shape)}, {tuple(shadow.shape)} and {tuple(trained_on.shape)}.")
    out = ~trained_on.bool()
    if not out.any(0).all():
        raise ValueError("Some images have no shadow model that left them out: split the pool with shadow_splits.")
    s = shadow.double().numpy()
    masked = np.where(out.numpy(), s, np.nan)
    mean = np.nanmedian(masked, axis=0)
    if fix_variance:
        std = np.full_like(mean, float(np.nanstd(masked)))
    else:
        if int(out.sum(0).min()) < 2:
            raise ValueError("A per-image variance needs two or more shadows that left each image out; train more "
                             "shadows or pass fix_variance=True.")
        std = np.nanstd(masked, axis=0)
    t = target.double().numpy()
    scores = norm.cdf(t, mean, std + 1e-30) if one_sided else -norm.logpdf(t, mean, std + 1e-30)
    return torch.as_tensor(scores)


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
    images) and the training seconds. ``fit`` follows the first 256 test images after each epoch (a monitor);
    the top-1 is measured once, after training, on all of ``test_set``. Learning rate, epochs and batch size
    are the profile's: tune them with ``max_grad_norm`` on validation images, as DP-SGD's accuracy depends on
    all four.
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
    monitor = tensor_loader(xt[:256], yt[:256], 256)  # what fit reports each epoch; the top-1 is on all of test_set
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
            result = train.fit(model, loader, monitor, profile, log=None,
                               prepare=prepare if math.isfinite(eps) else None)
        spent, sigma = math.inf, 0.0
        if wrapped:
            spent, sigma = engine.accountant.get_epsilon(delta), float(engine.accountant.history[-1][0])
            wrapped[0].remove_hooks()  # leave ``model`` as it was built, without opacus's per-image hooks
        m = min(len(ys), len(yt))
        auc = membership_auc(model, (xs[:m], ys[:m]), (xt[:m], yt[:m]))
        rows.append({"epsilon": eps, "top1": top1_of(model, xt, yt), "n": len(yt), "epsilon spent": spent, "delta": delta,
                     "noise multiplier": sigma, "membership AUC": auc, "train_seconds": result.train_seconds})
    return pd.DataFrame(rows)
