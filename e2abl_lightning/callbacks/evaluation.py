"""BackdoorEvalCallback: clean accuracy, ASR and RA on the ``[clean, poisoned]`` loaders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from e2abl_lightning.metrics import AttackSuccessRate, RobustAccuracy


class BackdoorEvalCallback(L.Callback):
    """Scores evaluation loader 0 (clean) and loader 1 (triggered) on every rank.

    Logs ``{val,test}/clean_acc``, ``{val,test}/asr`` and ``{val,test}/ra``, and writes the
    datamodule's poison manifest (``poison_manifest.json``) into the run directory. It observes
    only: the model returns ``{"preds": [B]}`` from its evaluation steps.

    Args:
        num_classes: number of classes (linked from the datamodule).
        target_label: the attack's target class (linked from the datamodule), logged for reference.
    """

    def __init__(self, num_classes: int, target_label: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.target_label = target_label
        self.results: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        device = pl_module.device
        self.clean_acc = MulticlassAccuracy(self.num_classes, average="micro").to(device)
        self.asr = AttackSuccessRate().to(device)
        self.ra = RobustAccuracy().to(device)
        self._write_manifest(trainer)

    @rank_zero_only
    def _write_manifest(self, trainer: L.Trainer) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if (
            datamodule is None
            or not hasattr(datamodule, "manifest")
            or trainer.logger is None
            or trainer.log_dir is None
        ):
            return
        path = Path(trainer.log_dir) / "poison_manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(datamodule.manifest(), indent=1))

    def _update(self, outputs: Any, batch: dict[str, Tensor], dataloader_idx: int) -> None:
        if not isinstance(outputs, dict) or "preds" not in outputs:
            raise ValueError("evaluation steps must return {'preds': predicted labels} for BackdoorEvalCallback")
        preds = outputs["preds"].to(self.asr.device)
        if dataloader_idx == 0:
            self.clean_acc.update(preds, batch["target"].to(preds.device))
        else:
            self.asr.update(preds, batch["target"].to(preds.device))
            self.ra.update(preds, batch["original_target"].to(preds.device))

    def _log(self, pl_module: L.LightningModule, prefix: str) -> None:
        values = {"clean_acc": self.clean_acc, "asr": self.asr, "ra": self.ra}
        for name, metric in values.items():
            if metric.update_count == 0:
                continue
            value = metric.compute()
            self.results[f"{prefix}/{name}"] = float(value)
            pl_module.log(f"{prefix}/{name}", value, prog_bar=name != "ra", sync_dist=False)
            metric.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._update(outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(pl_module, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "test")
