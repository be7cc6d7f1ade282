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
    # in float32: under bf16 autocast, small losses round to 0 and the trapped samples' ranking ties
    logits = shallow_logits.float().reshape(h * b, k)
    return F.cross_entropy(logits, targets.repeat(h), reduction="none").view(h, b)


def trusted_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy of the main head on the given labels, ``[B]``: what
    :func:`cleansing_losses` gives every sample that is not isolated (the step skips the rest while
    nothing is)."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def cleansing_losses(logits: Tensor, targets: Tensor, isolated: Tensor, pseudo: Tensor, confidence: Tensor) -> Tensor:
    """Per-sample main-head loss, ``[B]``.

    * trusted samples: cross-entropy on the given label;
    * isolated samples: the complementary loss ``-log(1 - p_given)`` (NLNL, Kim et al. 2019), whose
      gradient on the given logit is ``p_given``: strongest on a fitted poison, vanishing once it is
      unlearned, so it needs no ceiling; plus ``confidence`` times the cross-entropy on the soft
      pseudo-label ``pseudo`` ``[B, K]`` (which excludes the given class), as a label is recovered.

    Args:
        logits: main-head logits, ``[B, K]``.
        targets: given labels, ``[B]``.
        isolated: samples removed from normal training, bool ``[B]``.
        pseudo: soft pseudo-labels, ``[B, K]`` (rows sum to 1).
        confidence: weight of each pseudo-label, ``[B]`` in [0, 1].
    """
    logits = logits.float()
    log_p = logits.log_softmax(dim=1)  # [B, K]
    ce = trusted_losses(logits, targets)  # [B]
    others = logits.scatter(1, targets.unsqueeze(1), float("-inf"))
    complementary = logits.logsumexp(dim=1) - others.logsumexp(dim=1)  # -log(1 - p_given), [B]
    recover = -(pseudo * log_p).sum(dim=1)  # [B]
    return torch.where(isolated, complementary + confidence * recover, ce)


def total_loss(main: Tensor, shallow: Tensor) -> Tensor:
    """One scalar per step: mean main loss plus the shallow heads' mean losses."""
    return main.mean() + shallow.mean(dim=1).sum()
