"""UCR/UEA time-series datamodule."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from e2abl_lightning.data.datamodules.base import BackdoorDataModule, RawData
from e2abl_lightning.data.datasets.ucr import load_ucr
from e2abl_lightning.data.triggers.base import Trigger


class UCRDataModule(BackdoorDataModule):
    """A poisoned UCR (univariate) or UEA (multivariate) dataset, ``(B, C, L)`` batches.

    Series are z-normalised per series and channel at load time (the UCR convention); the trigger is
    applied to those series, and nothing is rescaled afterwards.

    Args:
        dataset: archive name, e.g. ``"OSULeaf"`` or ``"BasicMotions"``.
        trigger: the time-series trigger.
        data_dir: a folder holding ``<dataset>_TRAIN/_TEST`` files (.ts/.tsv/.txt), used first.
        cache_dir: where downloads of the real archive are cached; trained triggers (TSBA's
            generator) are cached in its ``triggers`` subfolder.
        download: allow downloading the archive when no local, cached or bundled copy exists.
        (the remaining arguments: see :class:`BackdoorDataModule`)
    """

    def __init__(
        self,
        dataset: str,
        trigger: Trigger,
        data_dir: str | None = None,
        cache_dir: str = "~/.cache/e2abl/UCR",
        download: bool = True,
        poison_rate: float = 0.1,
        target_label: int = 0,
        attack_mode: Literal["all_to_one", "all_to_all", "clean_label"] = "all_to_one",
        exclude_target: bool = True,
        poison_seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        clean_oracle: bool = False,
        batch_size: int = 16,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        drop_last: bool = True,
        train_size: int | None = None,
    ) -> None:
        super().__init__(
            trigger,
            poison_rate,
            target_label,
            attack_mode,
            exclude_target,
            poison_seed,
            val_fraction,
            split_seed,
            clean_oracle,
            batch_size,
            eval_batch_size,
            num_workers,
            drop_last,
            train_size=train_size,
        )
        self.save_hyperparameters(ignore=["trigger"])
        self.dataset = dataset
        self.data_dir = data_dir
        self.cache_dir_path = cache_dir
        self.download = download

    def cache_dir(self) -> Path | None:
        return Path(self.cache_dir_path).expanduser() / "triggers"

    def load_raw(self) -> RawData:
        s = load_ucr(self.dataset, self.data_dir, self.cache_dir_path, self.download)
        return RawData(s.x_train, s.y_train, s.x_test, s.y_test, s.classes, self.dataset, s.source, s.train_sources)
