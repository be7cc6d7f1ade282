"""Shared LightningModule plumbing: backbone building, optimisers, evaluation steps."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from e2abl_lightning.models.backbones import BackboneFactory


class BackdoorClassifier(L.LightningModule):
    """Base of every defense: a classifier whose evaluation follows the batch contract.

    ``validation_step``/``test_step`` return ``{"preds": [B]}`` for the evaluation callback, which
    scores loader 0 (clean) and loader 1 (poisoned). Subclasses implement ``training_step``.

    Args:
        backbone: callable ``(input_shape, num_classes) -> nn.Module`` (a ``class_path`` in YAML).
        num_classes: number of classes (linked from the datamodule by the CLI).
        input_shape: one sample's shape, ``(C, L)`` or ``(C, H, W)`` (linked from the datamodule).
        optimizer: optimiser callable, given the parameters.
        scheduler: optional LR scheduler callable, stepped every epoch.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        num_classes: int,
        input_shape: tuple[int, ...],
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be at least 2")
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.backbone = backbone(self.input_shape, self.num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, ...] -> [B, K]
        return self.backbone(x)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_run_length") and self._trainer is not None:  # CosineAnnealingToEnd
            scheduler.set_run_length(self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    def _eval_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"preds": self(batch["input"]).argmax(dim=1)}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return self._eval_step(batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return self._eval_step(batch)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self(batch["input"]).softmax(dim=1)  # [B, K]
