"""A short E2ABL fit on GunPoint shared by the callback tests (CSV logs, media callbacks on)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from e2abl_lightning.callbacks import BackdoorEvalCallback, IsolationMonitor, TriggerGallery
from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.triggers import StaticPattern
from e2abl_lightning.models.backbones import FCN
from e2abl_lightning.models.e2abl import E2ABL

SMALL_FCN = partial(FCN, layers=(16, 32, 16))


@dataclass
class Run:
    model: E2ABL
    trainer: L.Trainer
    datamodule: UCRDataModule
    log_dir: Path


def short_fit(root: Path, callbacks: list[L.Callback], epochs: int = 4, logger: bool = True) -> Run:
    """E2ABL (warmup 2) on GunPoint with a small FCN, seeded; ``callbacks`` observe it."""
    L.seed_everything(0, verbose=False)
    dm = UCRDataModule("GunPoint", StaticPattern(), poison_rate=0.2, batch_size=8, val_fraction=0.1)
    model = E2ABL(SMALL_FCN, dm.num_classes, dm.input_shape, warmup_epochs=2, target_patience=1)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(str(root), name="run") if logger else False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
        default_root_dir=str(root),
    )
    trainer.fit(model, dm)
    return Run(model, trainer, dm, Path(trainer.log_dir))


@pytest.fixture(scope="session")
def gunpoint_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One 4-epoch fit with CA/ASR, the gallery and an every-epoch isolation monitor."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gunpoint_run")
    return short_fit(root, [BackdoorEvalCallback(2, 0), TriggerGallery(), IsolationMonitor(every_n_epochs=1)])
