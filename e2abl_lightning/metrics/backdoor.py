"""torchmetrics versions of the backdoor metrics: summed states, correct under DDP."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from e2abl_lightning.metrics.functional import isolation_precision_recall


class _MatchRate(Metric):
    """Running share of predictions equal to a reference label."""

    full_state_update = False
    higher_is_better: bool | None = None

    def __init__(self) -> None:
        super().__init__()
        self.add_state("matches", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, targets: Tensor) -> None:
        if preds.shape != targets.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ in shape")
        self.matches += (preds == targets).sum()
        self.total += targets.numel()

    def compute(self) -> Tensor:
        return self.matches.float() / self.total.clamp(min=1)


class AttackSuccessRate(_MatchRate):
    """ASR: ``update(preds, attack_targets)`` on the triggered non-target test samples."""

    higher_is_better = False


class RobustAccuracy(_MatchRate):
    """RA: ``update(preds, true_labels)`` on the triggered test samples."""

    higher_is_better = True


class IsolationPrecisionRecall(Metric):
    """Precision and recall of a flagged set against the oracle poisoned mask."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("hits", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("flagged", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("poisoned", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, flagged: Tensor, poisoned: Tensor) -> None:
        flagged, poisoned = flagged.bool(), poisoned.bool()
        self.hits += (flagged & poisoned).sum()
        self.flagged += flagged.sum()
        self.poisoned += poisoned.sum()

    def compute(self) -> tuple[Tensor, Tensor]:
        return (
            self.hits.float() / self.flagged.clamp(min=1),
            self.hits.float() / self.poisoned.clamp(min=1),
        )


__all__ = ["AttackSuccessRate", "IsolationPrecisionRecall", "RobustAccuracy", "isolation_precision_recall"]
