"""Knowledge distillation: a small student learns from a trained teacher's outputs as well as the labels.

Three objectives, each a :data:`~vitsurvey.train.Loss` for :func:`vitsurvey.train.fit`, so training
runs through the one loop:

* **soft** (Hinton et al., 2015): ``(1 - alpha) CE(s, y) + alpha tau^2 KL(softmax(t / tau) || softmax(s / tau))``;
  the ``tau^2`` keeps the distillation gradient's size independent of ``tau`` (notebook 07 derives it). As DeiT's
  code computes it, the KL summed over images and classes is divided by images x classes (``reduction="deit"``);
  Hinton's per-image KL (``"batchmean"``, divided by the images only) weighs the teacher term C times more at the
  same alpha, for C classes;
* **hard** (DeiT, Touvron et al., ICML 2021): ``(1 - alpha) CE(s, y) + alpha CE(s, argmax t)``, with
  DeiT's ``alpha = 1/2``;
* **distillation token** (DeiT): :class:`DistilledViT` carries a second token with its own head; the
  class head learns from the labels, the distillation head from the teacher; at inference the two
  heads' logits are averaged.

timm has DeiT's distilled model, but it is timm's ViT, not the from-scratch one whose token steps and
pruning the other notebooks use; the losses are a few lines each, written here to match the derivation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import ViTConfig, VisionTransformer, require_plain
from ..profiles import LABEL_SMOOTHING

__all__ = ["Distillation", "DistilledViT", "KINDS", "SOFT_REDUCTIONS", "hard_loss", "soft_loss"]

KINDS = ("soft", "hard")
SOFT_REDUCTIONS = ("deit", "batchmean")
"""How the soft term's KL, summed over images and classes, is divided: by images x classes (``deit``, as DeiT's
``losses.py`` divides by ``outputs.numel()``) or by images (``batchmean``, the per-image KL of Hinton et al.)."""


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ValueError(f"The temperature tau must be positive (it divides the logits), got {tau}.")


def _at_least_fp32(logits: Tensor) -> Tensor:
    """Losses in fp32 at least (logits may come from bf16 autocast); fp64 stays fp64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def soft_loss(student: Tensor, teacher: Tensor, tau: float = 1.0, reduction: str = "deit") -> Tensor:
    """``tau^2 KL(p_t || p_s)`` with ``p = softmax(logits / tau)``, summed over the batch and the classes and divided by
    batch x classes (``reduction="deit"``, DeiT's code) or by the batch (``"batchmean"``, one image's KL on average:
    C times larger)."""
    _check_tau(tau)
    if reduction not in SOFT_REDUCTIONS:
        raise ValueError(f"Unknown reduction {reduction!r} of the soft loss; use one of {', '.join(SOFT_REDUCTIONS)}.")
    log_p_s = F.log_softmax(_at_least_fp32(student) / tau, dim=-1)
    log_p_t = F.log_softmax(_at_least_fp32(teacher) / tau, dim=-1)
    total = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    return tau**2 * total / (student.numel() if reduction == "deit" else student.shape[0])


def hard_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Cross-entropy of the student against the teacher's top class (no label smoothing)."""
    return F.cross_entropy(_at_least_fp32(student), teacher.argmax(dim=-1))


@dataclass
class Distillation:
    """The distillation objective, for ``train.fit(..., loss=Distillation(teacher, "hard"))``.

    The teacher runs in eval mode, without gradients, on the same (augmented) images as the student; its
    parameters are left as they are (a model used as a teacher can still be fine-tuned elsewhere). For a
    :class:`DistilledViT`, the class head takes the label term and the distillation head the teacher
    term, as DeiT trains it; for any other student both terms apply to its one output.
    """

    teacher: nn.Module
    kind: str = "hard"
    alpha: float = 0.5
    """Weight of the teacher term; ``1 - alpha`` goes to the labels."""
    tau: float = 1.0
    """Temperature of the soft loss (unused by the hard loss)."""
    reduction: str = "deit"
    """How the soft loss is averaged (:data:`SOFT_REDUCTIONS`): DeiT's, over images and classes, by default."""
    label_smoothing: float = LABEL_SMOOTHING
    """Of the label term, as :func:`vitsurvey.train.label_loss` and DeiT's base criterion."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown distillation kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        if not 0 <= self.alpha <= 1:
            raise ValueError(
                f"alpha weighs the teacher term against the labels and must be in [0, 1], got {self.alpha}."
            )
        _check_tau(self.tau)
        if self.reduction not in SOFT_REDUCTIONS:
            raise ValueError(f"Unknown reduction {self.reduction!r}; use one of {', '.join(SOFT_REDUCTIONS)}.")

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        self.teacher.to(images.device).eval()
        return self.teacher(images).float()

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, outputs: Tensor | tuple[Tensor, ...]
    ) -> Tensor:
        cls_out, dist_out = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        teacher = self.teacher_logits(images)
        if teacher.shape[-1] != dist_out.shape[-1]:
            raise ValueError(
                f"The teacher predicts {teacher.shape[-1]} classes and the student {dist_out.shape[-1]}; "
                "distil from a teacher trained on the student's classes."
            )
        kd = soft_loss(dist_out, teacher, self.tau, self.reduction) if self.kind == "soft" else hard_loss(dist_out, teacher)
        label = F.cross_entropy(cls_out.float(), labels, label_smoothing=self.label_smoothing)
        return (1 - self.alpha) * label + self.alpha * kd


class DistilledViT(VisionTransformer):
    """The from-scratch ViT with DeiT's distillation token: a second learned token after the class token,
    with its own position embedding and head. Training mode returns ``(class logits, distillation
    logits)``; eval mode returns their mean. With ``distill_token=False`` it is the plain ViT: same
    parameters, same logits."""

    def __init__(self, cfg: ViTConfig | None = None, distill_token: bool = True) -> None:
        super().__init__(cfg)
        require_plain(self, "DistilledViT")
        self.distill_token = distill_token
        if distill_token:
            D = self.cfg.embed_dim
            self.num_prefix_tokens = 2
            self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
            self.pos_embed = nn.Parameter(torch.zeros(1, self.cfg.num_tokens + 1, D))
            self.head_dist = nn.Linear(D, self.cfg.num_classes)
            # only the new parameters are initialised (as the ViT's own): the rest is exactly the plain
            # ViT's initialisation from the same seed
            for param in (self.dist_token, self.pos_embed, self.head_dist.weight):
                nn.init.trunc_normal_(param, std=0.02)
            nn.init.zeros_(self.head_dist.bias)

    def embed(self, x: Tensor) -> Tensor:
        if not self.distill_token:
            return super().embed(x)
        x = self.patch_embed(x)
        B = x.shape[0]
        prefix = [self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1)]
        return torch.cat([*prefix, x], dim=1) + self.pos_embed

    def forward_head(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not self.distill_token:
            return super().forward_head(x)
        cls_logits, dist_logits = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.training:
            return cls_logits, dist_logits  # type: ignore[return-value]
        return (cls_logits + dist_logits) / 2
