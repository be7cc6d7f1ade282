"""Backdoor metrics as pure functions (the torchmetrics classes are their stateful twins)."""

from __future__ import annotations

import torch
from torch import Tensor


def match_rate(preds: Tensor, targets: Tensor) -> Tensor:
    """Share of ``preds`` equal to ``targets`` (0 for empty input)."""
    if preds.shape != targets.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ in shape")
    if preds.numel() == 0:
        return torch.tensor(0.0)
    return (preds == targets).float().mean()


def attack_success_rate(preds: Tensor, attack_targets: Tensor) -> Tensor:
    """ASR: triggered non-target samples predicted as the attacker's label."""
    return match_rate(preds, attack_targets)


def robust_accuracy(preds: Tensor, true_labels: Tensor) -> Tensor:
    """RA: triggered samples still predicted as their true label."""
    return match_rate(preds, true_labels)


def isolation_precision_recall(flagged: Tensor, poisoned: Tensor) -> tuple[Tensor, Tensor]:
    """Precision (flagged that are poisoned) and recall (poisoned that are flagged) over the whole set.

    ``poisoned`` is a bool mask ``[N]``, or the oracle as integers ``[N]`` (1 poisoned, 0 clean, -1 not
    known: a sample the run never saw); unknown samples count in neither denominator. 0 when undefined.
    The one implementation behind every logged and plotted isolation precision/recall.
    """
    flagged = flagged.bool()
    known = torch.ones_like(flagged) if poisoned.dtype == torch.bool else poisoned >= 0
    poisoned = poisoned.bool() & known if poisoned.dtype == torch.bool else poisoned > 0
    hits = (flagged & poisoned).sum().float()
    precision = hits / (flagged & known).sum().clamp(min=1)
    recall = hits / poisoned.sum().clamp(min=1)
    return precision, recall


def defense_effectiveness_rating(ca_none: float, asr_none: float, ca_def: float, asr_def: float) -> float:
    """DER = (max(0, dASR) - max(0, dCA) + 1) / 2 against the undefended model (rates in [0, 1])."""
    return (max(0.0, asr_none - asr_def) - max(0.0, ca_none - ca_def) + 1.0) / 2.0
