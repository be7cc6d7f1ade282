"""A short E2ABL fit on GunPoint shared by the callback tests (CSV logs, media callbacks on)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from e2abl_lightning.callbacks import BackdoorEvalCallback, IsolationMonitor, TriggerGallery
from tests.helpers import Fit, tiny_fit


def logged_fit(root: Path, callbacks: list[L.Callback], epochs: int = 4) -> Fit:
    """:func:`tiny_fit` on GunPoint with validation and a CSV logger under ``root``; ``callbacks`` observe it."""
    logger = CSVLogger(str(root), name="run")
    return tiny_fit(epochs, None, callbacks, logger=logger, limit_val_batches=1.0, log_every_n_steps=1)


@pytest.fixture(scope="session")
def gunpoint_run(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    """One 4-epoch fit with CA/ASR, the gallery and an every-epoch isolation monitor."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gunpoint_run")
    return logged_fit(root, [BackdoorEvalCallback(2, 0), TriggerGallery(), IsolationMonitor(every_n_epochs=1)])
