"""Tiny seeded fits: GunPoint with a small FCN, or constructed series whose poisons are trivially separable.

``SeparableSeries`` is the data for tests that check what a defense does with its poisons: clean inputs
are pure noise with random labels (nothing to learn, so their loss stays near log K), while the trigger
is a large constant spike that any network fits within an epoch. Every poison is far easier than every
clean sample, whatever the CPU, thread count or seed, so the defense's answer is known exactly. E2ABL's
tests give the target's clean members a learnable offset (``target_offset=4.0``, see the class).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor

from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.datamodules.base import BackdoorDataModule, RawData
from e2abl_lightning.data.triggers import StaticPattern
from e2abl_lightning.data.triggers.base import Trigger
from e2abl_lightning.models.backbones import FCN
from e2abl_lightning.models.e2abl import E2ABL, IsolationPolicy

SMALL_FCN = partial(FCN, layers=(16, 32, 16))


def gunpoint(datamodule_cls: type[UCRDataModule] = UCRDataModule, **kwargs: Any) -> UCRDataModule:
    """GunPoint (bundled offline) under the static trigger; ``kwargs`` override the small-fit defaults."""
    settings = {"poison_rate": 0.2, "batch_size": 8, "val_fraction": 0.1, "download": False} | kwargs
    return datamodule_cls("GunPoint", StaticPattern(), **settings)


def quiet_trainer(max_epochs: int, callbacks: Iterable[L.Callback] = (), **overrides: Any) -> L.Trainer:
    """A deterministic one-device CPU trainer that logs, checkpoints, validates and prints nothing."""
    settings = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "deterministic": True,
    } | overrides
    return L.Trainer(callbacks=list(callbacks), **settings)


def tiny_e2abl(dm: BackdoorDataModule, warmup_epochs: int | None = None, **kwargs: Any) -> E2ABL:
    """E2ABL on the small FCN with ``policy=IsolationPolicy(warmup_epochs=warmup_epochs)`` (default 2: the
    first decision at the end of the second epoch), unless ``kwargs`` give the whole ``policy``. A target
    is named after ``policy.PERSISTENCE`` (2) consecutive passing epochs, so the earliest it is named is
    the end of epoch ``warmup_epochs``."""
    if "policy" in kwargs and warmup_epochs is not None:
        raise TypeError("give warmup_epochs or policy, not both")
    kwargs.setdefault("policy", IsolationPolicy(warmup_epochs=2 if warmup_epochs is None else warmup_epochs))
    return E2ABL(SMALL_FCN, dm.num_classes, dm.input_shape, **kwargs)


class Fit(NamedTuple):
    """A finished fit: ``model, trainer, datamodule = tiny_fit(...)``."""

    model: E2ABL
    trainer: L.Trainer
    datamodule: BackdoorDataModule

    @property
    def log_dir(self) -> Path:
        return Path(self.trainer.log_dir)


def tiny_fit(
    epochs: int = 4,
    dm: BackdoorDataModule | None = None,
    callbacks: Iterable[L.Callback] = (),
    model_kwargs: dict[str, Any] | None = None,
    ckpt_path: str | Path | None = None,
    **trainer_overrides: Any,
) -> Fit:
    """Seed 0, then :func:`tiny_e2abl` on ``dm`` (default :func:`gunpoint`) for ``epochs`` epochs with
    :func:`quiet_trainer` (``trainer_overrides`` turn logging, validation or checkpoints on)."""
    L.seed_everything(0, verbose=False)
    dm = gunpoint() if dm is None else dm
    model = tiny_e2abl(dm, **(model_kwargs or {}))
    trainer = quiet_trainer(epochs, callbacks, **trainer_overrides)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return Fit(model, trainer, dm)


class Spike(Trigger):
    """A constant ``height`` over the first ``steps`` time steps of every channel."""

    def __init__(self, height: float = 8.0, steps: int = 6) -> None:
        self.height = height
        self.steps = steps

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        out = x.clone()
        out[..., : self.steps] = self.height
        return out


class SeparableSeries(BackdoorDataModule):
    """Noise series ``[N, 1, length]`` with uniformly random labels over ``num_classes`` (seed fixed), poisoned
    with :class:`Spike`: the poisons are the only learnable samples. The data do not depend on the run's seed.

    ``target_offset`` adds a constant to the clean samples of the target class, over the time steps
    ``target_span`` (``(start, stop)``; None: all of them); the poisons, drawn from the other classes, do
    not carry it. The target's clean members become learnable, so that the main head gives them their
    label: E2ABL's policy reads a class whose worse-fitted members the main head gives to other classes
    as label noise, so the target of pure noise (``target_offset=0``) is never named.
    """

    def __init__(
        self,
        n_train: int = 200,
        n_test: int = 60,
        num_classes: int = 4,
        length: int = 48,
        target_offset: float = 0.0,
        target_span: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        settings = {"poison_rate": 0.2, "batch_size": 20, "val_fraction": 0.0} | kwargs
        super().__init__(Spike(), **settings)
        self.sizes = (n_train, n_test, num_classes, length)
        self.target_offset = target_offset
        self.target_span = target_span

    def load_raw(self) -> RawData:
        n_train, n_test, num_classes, length = self.sizes
        generator = torch.Generator().manual_seed(1234)
        x = torch.randn(n_train + n_test, 1, length, generator=generator)
        y = torch.arange(n_train + n_test) % num_classes  # every class present in both splits
        y = y[torch.randperm(n_train + n_test, generator=generator)]
        if self.target_offset:
            start, stop = self.target_span or (0, length)
            x[y == self.target_label, :, start:stop] += self.target_offset
        classes = [f"class{k}" for k in range(num_classes)]
        return RawData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes, "separable", "constructed")
