"""Backdoor metrics against hand-computed values; classes and functional twins agree."""

from __future__ import annotations

import pytest
import torch

from e2abl_lightning.metrics import (
    AttackSuccessRate,
    IsolationPrecisionRecall,
    RobustAccuracy,
    attack_success_rate,
    defense_effectiveness_rating,
    isolation_precision_recall,
    robust_accuracy,
)

# three batches of triggered non-target samples, attack target 0
PREDS = [torch.tensor([0, 0, 1, 2]), torch.tensor([0, 3, 3]), torch.tensor([1, 0, 0, 0, 2])]
TRUE = [torch.tensor([1, 2, 1, 2]), torch.tensor([3, 3, 1]), torch.tensor([1, 2, 3, 1, 2])]
# ASR: predicted 0 -> 2 + 1 + 3 = 6 of 12; RA: pred == true -> 2 + 1 + 2 = 5 of 12


def test_attack_success_rate_accumulates() -> None:
    metric = AttackSuccessRate()
    for p in PREDS:
        metric.update(p, torch.zeros_like(p))
    assert metric.compute().item() == pytest.approx(6 / 12)
    assert attack_success_rate(torch.cat(PREDS), torch.zeros(12, dtype=torch.long)).item() == pytest.approx(0.5)
    assert AttackSuccessRate.higher_is_better is False


def test_robust_accuracy_accumulates() -> None:
    metric = RobustAccuracy()
    for p, t in zip(PREDS, TRUE, strict=True):
        metric.update(p, t)
    assert metric.compute().item() == pytest.approx(5 / 12)
    assert robust_accuracy(torch.cat(PREDS), torch.cat(TRUE)).item() == pytest.approx(5 / 12)
    assert RobustAccuracy.higher_is_better is True


def test_per_batch_values_and_reset() -> None:
    metric = AttackSuccessRate()
    metric.update(PREDS[0], torch.zeros(4, dtype=torch.long))
    assert metric.compute().item() == pytest.approx(0.5)
    metric.reset()
    metric.update(PREDS[1], torch.zeros(3, dtype=torch.long))
    assert metric.compute().item() == pytest.approx(1 / 3)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_empty_is_zero() -> None:
    assert AttackSuccessRate().compute().item() == 0.0
    empty = torch.empty(0, dtype=torch.long)
    assert attack_success_rate(empty, empty).item() == 0.0
    assert robust_accuracy(empty, empty).item() == 0.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        AttackSuccessRate().update(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="differ in shape"):
        robust_accuracy(torch.zeros(3), torch.zeros(4))


FLAGGED = [torch.tensor([1, 1, 0, 0, 1]), torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0, 1])]
POISONED = [torch.tensor([1, 0, 0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([1, 0, 0, 1])]
# hits 2 + 1 + 1 = 4, flagged 3 + 2 + 1 = 6, poisoned 3 + 1 + 2 = 6 -> precision 4/6, recall 4/6


def test_isolation_precision_recall_accumulates() -> None:
    metric = IsolationPrecisionRecall()
    for f, p in zip(FLAGGED, POISONED, strict=True):
        metric.update(f.bool(), p)  # bools and ints are both accepted
    precision, recall = metric.compute()
    assert precision.item() == pytest.approx(4 / 6)
    assert recall.item() == pytest.approx(4 / 6)
    fp, fr = isolation_precision_recall(torch.cat(FLAGGED), torch.cat(POISONED))
    assert fp.item() == pytest.approx(4 / 6) and fr.item() == pytest.approx(4 / 6)


def test_isolation_precision_differs_from_recall() -> None:
    flagged = torch.tensor([True, True, True, True, False, False])
    poisoned = torch.tensor([True, False, False, False, True, False])
    precision, recall = isolation_precision_recall(flagged, poisoned)
    assert precision.item() == pytest.approx(1 / 4) and recall.item() == pytest.approx(1 / 2)
    metric = IsolationPrecisionRecall()
    metric.update(flagged[:3], poisoned[:3])
    metric.update(flagged[3:], poisoned[3:])
    assert [v.item() for v in metric.compute()] == pytest.approx([1 / 4, 1 / 2])


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_isolation_undefined_is_zero() -> None:
    none = torch.zeros(4, dtype=torch.bool)
    precision, recall = isolation_precision_recall(none, none)
    assert precision.item() == 0.0 and recall.item() == 0.0
    assert [v.item() for v in IsolationPrecisionRecall().compute()] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("ca_none", "asr_none", "ca_def", "asr_def", "expected"),
    [
        (0.9, 1.0, 0.9, 0.0, 1.0),  # perfect defense: ASR gone, CA kept
        (0.9, 1.0, 0.8, 0.1, (0.9 - 0.1 + 1) / 2),
        (0.9, 0.5, 0.95, 0.6, 0.5),  # CA up and ASR up: both clipped to 0
        (0.9, 1.0, 0.0, 1.0, (0 - 0.9 + 1) / 2),  # destroys the model, keeps the backdoor
        (0.8, 0.9, 0.8, 0.9, 0.5),  # no change
    ],
)
def test_defense_effectiveness_rating(ca_none, asr_none, ca_def, asr_def, expected) -> None:
    assert defense_effectiveness_rating(ca_none, asr_none, ca_def, asr_def) == pytest.approx(expected)
