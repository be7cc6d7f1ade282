"""E2ABL losses as pure functions (per-sample where the algorithm needs per-sample values)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lga(loss: Tensor, gamma: float) -> Tensor:
    """Local gradient ascent of ABL (Li et al., 2021): ``sign(l - gamma) * l``."""
    return torch.sign(loss - gamma) * loss


def shallow_losses(shallow_logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy of every shallow head on the given labels, ``[H, B]``."""
    h, b, k = shallow_logits.shape
    # in float32: under bf16 autocast, losses below ~4e-3 round to 0 and the ranking of trapped samples ties
    logits = shallow_logits.float().reshape(h * b, k)
    return F.cross_entropy(logits, targets.repeat(h), reduction="none").view(h, b)


def main_losses(
    logits: Tensor,
    targets: Tensor,
    cleanse: Tensor,
    ascend: Tensor,
    recovered: Tensor,
    train_recovered: Tensor,
    ascent_ceiling: float = 5.0,
    ascent_weight: float = 1.0,
) -> Tensor:
    """Per-sample main-head loss, ``[B]``.

    * trusted samples: cross-entropy on the given label (descend);
    * cleansed samples (``cleanse``): bounded ascent ``-min(CE, ceiling)`` where ``ascend`` (no
      gradient once the loss passes the ceiling), weight 0 otherwise;
    * cleansed samples with ``train_recovered``: plus cross-entropy on the recovered label.

    Args:
        logits: main-head logits, ``[B, K]``.
        targets: given labels, ``[B]``.
        cleanse: samples removed from normal training, bool ``[B]``.
        ascend: cleansed samples unlearned by gradient ascent, bool ``[B]``.
        recovered: recovered labels (-1 for none), ``[B]``.
        train_recovered: samples trained on their recovered label, bool ``[B]``.
        ascent_ceiling: loss above which ascent stops.
        ascent_weight: weight of the ascent term.
    """
    ce = F.cross_entropy(logits, targets, reduction="none")  # [B]
    unlearn = torch.where(ascend, -ascent_weight * ce.clamp(max=ascent_ceiling), torch.zeros_like(ce))
    loss = torch.where(cleanse, unlearn, ce)
    train_recovered = train_recovered & cleanse & (recovered >= 0)
    recover_ce = F.cross_entropy(logits, recovered.clamp(min=0), reduction="none")  # [B]
    return loss + torch.where(train_recovered, recover_ce, torch.zeros_like(recover_ce))


def total_loss(main: Tensor, shallow: Tensor, shallow_weight: float = 1.0) -> Tensor:
    """One scalar per step: mean main loss plus ``shallow_weight`` times the heads' mean losses."""
    return main.mean() + shallow_weight * shallow.mean(dim=1).sum()
