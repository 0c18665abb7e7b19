"""S1's "360" view of efficiency: one measured quantity per dimension, for any classifier and data set.

S1 (Patro & Agneeswaran, *Efficiency 360*) names ten dimensions beyond memory and compute; its tables could
not be obtained, so what each dimension measures here is our reading, stated with each function. One module
per dimension:

* :mod:`.robustness`: accuracy under common corruptions at five severities, the corruption error relative to
  a reference model (Hendrycks & Dietterich's mCE, with our baseline in place of AlexNet), and accuracy under
  FGSM and PGD perturbations over an epsilon sweep;
* :mod:`.probabilistic` (probabilistic behaviour): expected calibration error (torchmetrics), a reliability
  table, and what temperature scaling does to both;
* :mod:`.fairness`: accuracy per class (fairlearn's MetricFrame, the class as the group: our data have no
  demographic attribute), the worst class and the gap;
* :mod:`.privacy`: the AUC of a loss-threshold membership-inference attack (Yeom et al., 2018), and the
  accuracy that differentially private training (opacus) costs at a few privacy budgets;
* :mod:`.transparency`: attention rollout maps (Abnar & Zuidema, 2020) and their faithfulness, by a deletion
  curve;
* :mod:`.inclusiveness`: what it takes to run the model on the smallest machine (one CPU thread, batch 1),
  and accuracy on classes that were rare in the training data;
* :mod:`.continual` (continual learning): class-incremental training over task splits, with average accuracy
  and forgetting, for naive fine-tuning and a replay buffer;
* :mod:`.approximation`: how closely a compressed model reproduces the model it was made from;
* computational complexity: multiply-accumulates per image (derived in notebook 01, counted by
  :func:`vitsurvey.measure.count_macs`);
* :mod:`.complexity` (spectral complexity): Bartlett et al.'s spectral capacity measure of the weight
  matrices.

:mod:`.evaluation` holds what they all read (checked inputs, logits, top-1); :mod:`.cards` gathers the
per-model dimensions for one model (:func:`card`) and sets several cards against a reference
(:func:`relative_to`); the ones that train (privacy by DP, inclusiveness by imbalance, continual learning)
are separate.

Every function takes standardised images (as :func:`vitsurvey.data.load` returns them) and returns a tidy
table or a number. Perturbations are applied in pixel space, [0, 1] per channel, and standardised again, so
an epsilon or a noise level means the same thing on every data set. What trains goes through
:func:`vitsurvey.train.fit`.
"""

from __future__ import annotations

from ...device import device_of
from .approximation import agreement
from .cards import auc_se, card, relative_to
from .complexity import spectral_complexity
from .continual import class_incremental, continual_summary
from .evaluation import check_images, logits_of, top1_of
from .fairness import fairness_summary, per_class_accuracy
from .inclusiveness import imbalanced_indices, imbalanced_training, who_can_run
from .privacy import losses, membership_auc, private_training
from .probabilistic import calibration, fit_temperature, reliability
from .robustness import (CORRUPTIONS, SEVERITIES, adversarial_accuracy, corrupt, corruption_accuracy,
                         corruption_error, perturb)
from .transparency import attention_rollout, curve_area, deletion_curve, explainable, rollout_agreement

__all__ = [
    "CORRUPTIONS", "SEVERITIES", "adversarial_accuracy", "agreement", "attention_rollout", "auc_se", "calibration",
    "card", "check_images", "class_incremental", "continual_summary", "corrupt", "corruption_accuracy",
    "corruption_error", "curve_area", "deletion_curve", "device_of", "explainable", "fairness_summary",
    "fit_temperature", "imbalanced_indices", "imbalanced_training", "logits_of", "losses", "membership_auc",
    "per_class_accuracy", "perturb", "private_training", "relative_to", "reliability", "rollout_agreement",
    "spectral_complexity", "top1_of", "who_can_run",
]
