"""Backdoor metrics: torchmetrics classes and their functional twins."""

from e2abl_lightning.metrics.backdoor import AttackSuccessRate, IsolationPrecisionRecall, RobustAccuracy
from e2abl_lightning.metrics.functional import (
    attack_success_rate,
    defense_effectiveness_rating,
    isolation_precision_recall,
    robust_accuracy,
)

__all__ = [
    "AttackSuccessRate",
    "IsolationPrecisionRecall",
    "RobustAccuracy",
    "attack_success_rate",
    "defense_effectiveness_rating",
    "isolation_precision_recall",
    "robust_accuracy",
]
