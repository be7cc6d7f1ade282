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
from lightning.pytorch.callbacks import ModelCheckpoint

from e2abl_lightning.callbacks import BackdoorEvalCallback
from e2abl_lightning.models.e2abl import E2ABL
from tests.helpers import SeparableSeries, tiny_fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _datamodule() -> SeparableSeries:
    """Constructed data on which E2ABL names a target: a candidate at the end of epoch 2 (its first
    passing decision), named at the end of epoch 3 (the second), its poisons isolated from epoch 4."""
    return SeparableSeries(target_offset=4.0)


def _fit(epochs: int, root: Path, ckpt_path: Path | None = None) -> tuple[E2ABL, L.Trainer]:
    callbacks = [
        ModelCheckpoint(dirpath=root, save_last=True, save_on_train_epoch_end=True),
        BackdoorEvalCallback(4, 0),
    ]
    model, trainer, _ = tiny_fit(
        epochs,
        _datamodule(),
        callbacks,
        model_kwargs={"warmup_epochs": 2},
        ckpt_path=ckpt_path,
        enable_checkpointing=True,
        limit_val_batches=1.0,
        default_root_dir=root,
    )
    return model, trainer


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    full, full_trainer = _fit(5, tmp_path / "full")
    part, _ = _fit(3, tmp_path / "part")

    last = tmp_path / "part" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    saved = checkpoint["state_dict"]
    assert checkpoint["epoch"] == 2 and int(saved["state.epochs_decided"]) == 2  # decisions at epochs 1 and 2
    # stopped in the middle of the naming: one passing epoch, no target yet (the resumed run must carry it on)
    assert int(saved["state.candidate_streak"]) == 1 and int(saved["state.suspected_target"]) == -1
    for name, value in part.state_dict().items():  # the checkpoint holds the state decided at epoch 3's end
        assert torch.equal(saved[name], value), name
    assert "torch_rng_state" in checkpoint["SeparableSeries"]

    resumed, resumed_trainer = _fit(5, tmp_path / "resumed", ckpt_path=last)
    assert resumed_trainer.global_step == full_trainer.global_step
    expected, got = full.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:  # weights, BatchNorm statistics and the whole state bank, bit for bit
        assert torch.equal(expected[name], got[name]), name
    assert int(got["state.epochs_decided"]) == 4 and int(got["state.flagged"].sum()) > 0
    assert int(got["state.suspected_target"]) == 0 and int(got["state.isolated"].sum()) > 0
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
