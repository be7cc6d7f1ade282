"""Checkpoints, cached arrays and trigger files load without running pickled code.

* Lightning 2.6 on torch >= 2.6 loads a local ``ckpt_path`` with ``torch.load``'s default,
  ``weights_only=True`` (``LightningCLI`` even passes it explicitly); our checkpoints must therefore
  hold only tensors and plain values, hyperparameters and datamodule state included.
* Every ``torch.load`` in the package passes ``weights_only=True`` and every ``np.load``
  ``allow_pickle=False``; images go through PIL; YAML through ``safe_load``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.cloud_io import _load as lightning_load
from lightning.pytorch.callbacks import ModelCheckpoint

from e2abl_lightning.callbacks import BackdoorEvalCallback
from e2abl_lightning.data.datasets.ucr import load_ucr
from e2abl_lightning.models.e2abl import E2ABL
from tests.helpers import SMALL_FCN, gunpoint, tiny_fit

PACKAGE = Path(__file__).resolve().parents[2] / "e2abl_lightning"


class _Payload:
    """Unpickling this touches ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def e2abl_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("security")
    callbacks = [
        ModelCheckpoint(dirpath=root, save_last=True, save_on_train_epoch_end=True),
        BackdoorEvalCallback(2, 0),
    ]
    tiny_fit(
        2,
        gunpoint(batch_size=16),
        callbacks,
        model_kwargs={"warmup_epochs": 1},
        enable_checkpointing=True,
        limit_val_batches=1,
        default_root_dir=root,
    )
    torch.set_num_threads(threads)
    yield root / "last.ckpt"


def test_e2abl_checkpoint_loads_with_weights_only(e2abl_checkpoint: Path) -> None:
    checkpoint = torch.load(e2abl_checkpoint, weights_only=True)
    assert checkpoint["hyper_parameters"]["shallow_poolings"] == ("max", "avg")
    assert checkpoint["UCRDataModule"]["torch_rng_state"].dtype == torch.uint8
    assert int(checkpoint["state_dict"]["state.epochs_decided"]) == 2
    model = E2ABL.load_from_checkpoint(e2abl_checkpoint, backbone=SMALL_FCN, weights_only=True)
    assert model.state.num_samples == checkpoint["state_dict"]["state.flagged"].numel()


def test_lightning_loads_local_checkpoints_weights_only(tmp_path: Path) -> None:
    """A checkpoint carrying a pickled payload is refused by Lightning's loader and the payload never runs."""
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(marker)}}, evil)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        lightning_load(evil)  # what Trainer.fit(ckpt_path=...) calls, with weights_only=None
    with pytest.raises(pickle.UnpicklingError):
        E2ABL.load_from_checkpoint(evil, backbone=SMALL_FCN)
    assert not marker.exists()


def test_cached_arrays_refuse_pickled_objects(tmp_path: Path) -> None:
    """The UCR cache is read with ``np.load(allow_pickle=False)``: an object array is refused."""
    marker = tmp_path / "payload_ran"
    folder = tmp_path / "cache" / "GunPoint"
    folder.mkdir(parents=True)
    for name in ("X_train", "y_train", "X_valid", "y_valid"):
        np.save(folder / f"{name}.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_ucr("GunPoint", cache_dir=tmp_path / "cache", download=False)
    assert not marker.exists()


def _calls(pattern: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(pattern, text):
            start = match.start()
            depth, end = 0, start
            for end in range(text.index("(", start), len(text)):  # the call up to its closing bracket
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            found.append((f"{path.relative_to(PACKAGE)}:{text.count(chr(10), 0, start) + 1}", text[start : end + 1]))
    return found


def test_package_never_unpickles() -> None:
    torch_loads = _calls(r"\btorch\.load\(")
    assert torch_loads, "expected the package's cached-trigger loads"
    for where, call in torch_loads:
        assert "weights_only=True" in call, f"{where}: {call}"
    for where, call in _calls(r"\bnp\.load\("):
        assert "allow_pickle=False" in call, f"{where}: {call}"
    assert not _calls(r"\bpickle\.loads?\("), "the package must not unpickle"
    for where, call in _calls(r"\byaml\.load\("):
        pytest.fail(f"{where}: use yaml.safe_load, not {call}")
