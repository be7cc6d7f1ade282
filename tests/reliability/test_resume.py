"""Stop after epoch k, resume from ``last.ckpt`` to epoch K: the same run as K epochs in one go.

Deterministic CPU mode. E2ABL takes its epoch decision at the last training batch, so the checkpoint
written at the end of the training epoch holds the decided state. The training loader draws each
epoch's shuffle seed from the global torch RNG, which Lightning does not checkpoint: the datamodule
saves that RNG's state with the checkpoint and restores it, else the resumed epochs see another order.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from _e2abl_fit import SMALL_FCN
from lightning.pytorch.callbacks import ModelCheckpoint

from e2abl_lightning.callbacks import BackdoorEvalCallback
from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.triggers import StaticPattern
from e2abl_lightning.models.e2abl import E2ABL

pytestmark = pytest.mark.usefixtures("one_thread")


def _datamodule() -> UCRDataModule:
    return UCRDataModule("GunPoint", StaticPattern(), poison_rate=0.2, batch_size=8, download=False)


def _fit(epochs: int, root: Path, ckpt_path: Path | None = None) -> tuple[E2ABL, L.Trainer]:
    L.seed_everything(0, verbose=False)
    dm = _datamodule()
    model = E2ABL(SMALL_FCN, dm.num_classes, dm.input_shape, warmup_epochs=1, target_patience=1)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        deterministic=True,
        logger=False,
        default_root_dir=root,
        callbacks=[
            ModelCheckpoint(dirpath=root, save_last=True, save_on_train_epoch_end=True),
            BackdoorEvalCallback(dm.num_classes, dm.target_label),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    full, full_trainer = _fit(4, tmp_path / "full")
    part, _ = _fit(2, tmp_path / "part")

    last = tmp_path / "part" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 1 and int(checkpoint["state_dict"]["state.epochs_decided"]) == 2
    for name, value in part.state_dict().items():  # the checkpoint holds the state decided at epoch 2's end
        assert torch.equal(checkpoint["state_dict"][name], value), name
    assert "torch_rng_state" in checkpoint["UCRDataModule"]

    resumed, resumed_trainer = _fit(4, tmp_path / "resumed", ckpt_path=last)
    assert resumed_trainer.global_step == full_trainer.global_step
    expected, got = full.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:  # weights, BatchNorm statistics and the whole state bank, bit for bit
        assert torch.equal(expected[name], got[name]), name
    assert int(got["state.epochs_decided"]) == 4 and int(got["state.flagged"].sum()) > 0
    metrics = {k: float(v) for k, v in full_trainer.callback_metrics.items()}
    assert {k: float(v) for k, v in resumed_trainer.callback_metrics.items()} == metrics
    assert {"val/clean_acc", "val/asr", "train/loss", "isolation/precision"} <= metrics.keys()


def test_shuffle_order_is_restored_from_the_datamodule_state() -> None:
    torch.manual_seed(0)
    dm = _datamodule()
    dm.setup("fit")
    state = dm.state_dict()
    expected = [batch["index"] for batch in dm.train_dataloader()]

    torch.manual_seed(123)  # whatever happened to the global RNG in between
    other = _datamodule()
    other.setup("fit")
    other.load_state_dict(state)
    again = [batch["index"] for batch in other.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(expected, again, strict=True))
