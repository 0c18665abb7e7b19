"""S1's "360" view of efficiency: one measured quantity per dimension, for any classifier and data set.

S1 (Patro & Agneeswaran, *Efficiency 360*) names ten dimensions beyond memory and compute; its tables could
not be obtained, so what each dimension measures here is our reading, stated with each function. One module
per dimension:

* :mod:`.robustness`: accuracy under common corruptions at five severities, the corruption error relative to
  a reference model (Hendrycks & Dietterich's mCE and relative mCE, with our baseline in place of AlexNet), and
  accuracy under FGSM and PGD perturbations over an epsilon sweep;
* :mod:`.probabilistic` (probabilistic behaviour): expected calibration error (torchmetrics), a reliability
  table, and what temperature scaling does to both;
* :mod:`.fairness`: accuracy per class (fairlearn's MetricFrame, the class as the group: our data have no
  demographic attribute), the worst class and the gap, and whether compression costs one group of classes
  more than the rest (Hooker et al.'s question);
* :mod:`.privacy`: membership-inference attacks, a loss threshold (Yeom et al., 2018) and the offline
  likelihood-ratio attack with shadow models (LiRA, Carlini et al., 2022), and the accuracy that
  differentially private training (opacus) costs at a few privacy budgets;
* :mod:`.transparency`: attention rollout maps (Abnar & Zuidema, 2020) and their faithfulness, by a deletion
  curve against the same model's random deletion order;
* :mod:`.inclusiveness`: what it takes to run the model on the smallest machine (one CPU thread, batch 1),
  and accuracy on classes that were rare in the training data;
* :mod:`.continual` (continual learning): class-incremental training over task splits, with average accuracy
  and forgetting, for naive fine-tuning and a replay buffer appended to each later task's data, and for
  compressed versions of the learner;
* :mod:`.approximation`: how closely a compressed model reproduces the model it was made from;
* computational complexity: multiply-accumulates per image (derived in notebook 01, counted by
  :func:`vitsurvey.measure.count_macs`);
* :mod:`.complexity` (spectral complexity): Bartlett et al.'s spectral capacity measure of the weight
  matrices; not on the card, since a ViT's LayerNorms leave it unidentifiable (see :mod:`.cards`).

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
from .fairness import damage_gap, fairness_summary, per_class_accuracy
from .inclusiveness import control_indices, imbalanced_indices, imbalanced_training, who_can_run
from .privacy import lira_offline, losses, membership_auc, membership_scores, private_training, shadow_splits
from .probabilistic import calibration, fit_temperature, reliability
from .robustness import (CORRUPTIONS, SEVERITIES, adversarial_accuracy, corrupt, corrupted_correctness,
                         corruption_accuracy, corruption_error, perturb, relative_corruption_error)
from .transparency import (attention_rollout, curve_area, deletion_curve, deletion_versus_random, explainable,
                           rollout_agreement)

__all__ = [
    "CORRUPTIONS", "SEVERITIES", "adversarial_accuracy", "agreement", "attention_rollout", "auc_se", "calibration",
    "card", "check_images", "class_incremental", "continual_summary", "control_indices", "corrupt", "corrupted_correctness",
    "corruption_accuracy", "corruption_error", "curve_area", "damage_gap", "deletion_curve", "deletion_versus_random",
    "device_of", "explainable", "fairness_summary", "fit_temperature", "imbalanced_indices", "imbalanced_training",
    "lira_offline", "logits_of", "losses", "membership_auc", "membership_scores", "per_class_accuracy", "perturb",
    "private_training", "relative_corruption_error", "relative_to", "reliability", "rollout_agreement",
    "shadow_splits", "spectral_complexity", "top1_of", "who_can_run",
]
