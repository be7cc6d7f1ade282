"""The undefended model: plain cross-entropy on the (poisoned) training labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from e2abl_lightning.models.backbones import BackboneFactory
from e2abl_lightning.models.base import BackdoorClassifier


class NoDefense(BackdoorClassifier):
    """Undefended training: the attack's strength, and with ``clean_oracle`` data the ceiling."""

    def __init__(
        self,
        backbone: BackboneFactory,
        num_classes: int,
        input_shape: tuple[int, ...],
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, input_shape, optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch["input"]), batch["target"])
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=batch["target"].shape[0])
        return loss
