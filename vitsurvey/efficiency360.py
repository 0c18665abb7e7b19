"""S1's "360" view of efficiency, as ``from vitsurvey import efficiency360 as e360`` reads it.

The code lives in :mod:`vitsurvey.studies.efficiency360`, one module per dimension (its docstring is the
map); this module re-exports its names so that ``e360.card(...)`` and the rest keep working.
"""

from __future__ import annotations

from .studies.efficiency360 import (CORRUPTIONS, SEVERITIES, adversarial_accuracy, agreement, attention_rollout,
                                    auc_se, calibration, card, check_images, class_incremental, continual_summary,
                                    corrupt, corruption_accuracy, corruption_error, curve_area, deletion_curve,
                                    device_of, explainable, fairness_summary, fit_temperature, imbalanced_indices,
                                    imbalanced_training, logits_of, losses, membership_auc, per_class_accuracy,
                                    perturb, private_training, relative_to, reliability, rollout_agreement,
                                    spectral_complexity, top1_of, who_can_run)

__all__ = [
    "CORRUPTIONS", "SEVERITIES", "adversarial_accuracy", "agreement", "attention_rollout", "auc_se", "calibration",
    "card", "check_images", "class_incremental", "continual_summary", "corrupt", "corruption_accuracy",
    "corruption_error", "curve_area", "deletion_curve", "device_of", "explainable", "fairness_summary",
    "fit_temperature", "imbalanced_indices", "imbalanced_training", "logits_of", "losses", "membership_auc",
    "per_class_accuracy", "perturb", "private_training", "relative_to", "reliability", "rollout_agreement",
    "spectral_complexity", "top1_of", "who_can_run",
]
