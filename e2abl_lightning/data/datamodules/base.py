"""BackdoorDataModule: poisoned training split, ``[clean, poisoned]`` evaluation loaders."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from e2abl_lightning import __version__
from e2abl_lightning.data.poison import (
    AttackMode,
    PoisonedDataset,
    PoisonedTestDataset,
    check_poison_args,
    select_negative_indices,
    select_poison_indices,
)
from e2abl_lightning.data.triggers.base import Trigger


@dataclass
class RawData:
    """Raw inputs before any trigger: images in [0, 1] ``[N, C, H, W]``, series ``[N, C, L]``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[str]
    name: str
    source: str
    train_sources: list[str] | None = (
        None  # each training sample's origin (file line, image path); None: "<name> train[i]"
    )


def stratified_split(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices of ``y`` into (train, val), taking ``fraction`` of each class for val."""
    generator = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        take = int(round(fraction * members.numel()))
        val.append(members[: min(take, members.numel() - 1)])
    val_idx = torch.cat(val).sort().values if val else torch.empty(0, dtype=torch.long)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx


class BackdoorDataModule(L.LightningDataModule, abc.ABC):
    """Base of every datamodule: loads raw data, poisons the training split, serves the contract.

    Subclasses implement :meth:`load_raw` and may override :meth:`train_transform` and
    :meth:`eval_transform` (augmentation and normalisation run after the trigger).

    Args:
        trigger: the attack's trigger, applied to raw inputs.
        poison_rate: poisoned share of the training split, in (0, 1).
        target_label: the attack's target class.
        attack_mode: ``all_to_one``, ``all_to_all`` or ``clean_label``.
        exclude_target: draw poisoned samples from non-target classes only (``all_to_one``).
        poison_seed: seeds which samples are poisoned and any trigger randomness.
        val_fraction: share of each training class held out for validation (0 for none: then the
            validation loaders are the test loaders, for monitoring only).
        split_seed: seeds the validation split.
        clean_oracle: drop the poisoned samples (and the trigger's label-kept negatives) from training
            (the clean-oracle reference).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        num_workers: DataLoader workers.
        drop_last: drop the last incomplete training batch.
        train_size: train on a stratified random subset of about this many samples of the training
            split (drawn with ``split_seed``, before poisoning), e.g. for CPU-sized image cells; None
            for the whole split.
    """

    def __init__(
        self,
        trigger: Trigger,
        poison_rate: float = 0.1,
        target_label: int = 0,
        attack_mode: Literal["all_to_one", "all_to_all", "clean_label"] = "all_to_one",
        exclude_target: bool = True,
        poison_seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        clean_oracle: bool = False,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        drop_last: bool = True,
        train_size: int | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("poison_rate", poison_rate), ("val_fraction", val_fraction)):
            _check_type(arg, value, (int, float), "a number, e.g. 0.1")
        for arg, value in (
            ("target_label", target_label),
            ("poison_seed", poison_seed),
            ("split_seed", split_seed),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("num_workers", num_workers),
        ):
            _check_type(arg, value, (int,), "an integer")
        if train_size is not None:
            _check_type("train_size", train_size, (int,), "an integer or None")
        for arg, value in (
            ("exclude_target", exclude_target),
            ("clean_oracle", clean_oracle),
            ("drop_last", drop_last),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{arg}={value!r} must be True or False, got {type(value).__name__}")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0 (0 loads in the main process)")
        check_poison_args(poison_rate, target_label, attack_mode, None)
        if not 0.0 <= val_fraction < 0.5:
            raise ValueError(f"val_fraction={val_fraction} must be in [0, 0.5)")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch_size={batch_size} and eval_batch_size={eval_batch_size} must be >= 1")
        if train_size is not None and train_size < 2:
            raise ValueError(f"train_size={train_size} must be at least 2, or None for the whole training split")
        if not isinstance(trigger, Trigger):
            raise ValueError(f"trigger must be a Trigger instance, got {type(trigger).__name__}")
        self.trigger = trigger
        self.poison_rate = poison_rate
        self.target_label = target_label
        self.attack_mode: AttackMode = attack_mode
        self.exclude_target = exclude_target
        self.poison_seed = poison_seed
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.clean_oracle = clean_oracle
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.train_size = train_size
        self._raw: RawData | None = None
        self._checksum: str | None = None
        self.train_set: PoisonedDataset | None = None
        self.negative_indices: Tensor | None = None  # label-kept negatives of the trigger (after setup)

    # ---- to implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def load_raw(self) -> RawData:
        """Load the official train/test splits as raw tensors."""

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        """Per-sample augmentation and normalisation for training (after the trigger)."""
        return self.eval_transform()

    def eval_transform(self) -> Callable[[Tensor], Tensor] | None:
        """Per-sample normalisation for evaluation."""
        return None

    def cache_dir(self) -> Path | None:
        """Where trained attack parts may be cached."""
        return None

    # ---- metadata (available before setup; loads the raw data once) --------------------------
    @property
    def raw(self) -> RawData:
        if self._raw is None:
            raw = self.load_raw()
            for split, x in (("train", raw.x_train), ("test", raw.x_test)):
                if not torch.isfinite(x).all():
                    raise ValueError(f"{raw.name}: the {split} split holds NaN or inf values; clean the data first")
            present = torch.unique(raw.y_train).numel()
            if len(raw.classes) < 2 or present < 2:
                raise ValueError(
                    f"{raw.name}: the training split holds {present} class(es) ({', '.join(map(str, raw.classes))}); "
                    "a classifier needs at least 2: give data with two or more labels"
                )
            if raw.train_sources is not None and len(raw.train_sources) != raw.y_train.numel():
                raise ValueError(
                    f"{raw.name}: {len(raw.train_sources)} train_sources for {raw.y_train.numel()} samples"
                )
            check_poison_args(self.poison_rate, self.target_label, self.attack_mode, len(raw.classes))
            self._raw = raw
        return self._raw

    @property
    def num_classes(self) -> int:
        return len(self.raw.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.raw.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        self.setup("fit")
        assert self.train_set is not None
        return len(self.train_set)

    # ---- building ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        raw = self.raw
        k = self.num_classes
        src = torch.arange(raw.y_train.numel())  # each training sample's position in the source training split
        if self.val_fraction > 0:
            tr_idx, val_idx = stratified_split(raw.y_train, self.val_fraction, self.split_seed)
            x_tr, y_tr, src = raw.x_train[tr_idx], raw.y_train[tr_idx], src[tr_idx]
            x_val, y_val = raw.x_train[val_idx], raw.y_train[val_idx]
        else:
            x_tr, y_tr, x_val, y_val = raw.x_train, raw.y_train, raw.x_test, raw.y_test
        if self.train_size is not None:
            if self.train_size >= y_tr.numel():
                raise ValueError(
                    f"train_size={self.train_size} is not below the {y_tr.numel()} training samples of {raw.name}; "
                    "lower it, or set None to train on all of them"
                )
            keep, _ = stratified_split(y_tr, 1.0 - self.train_size / y_tr.numel(), self.split_seed + 1)
            x_tr, y_tr, src = x_tr[keep], y_tr[keep], src[keep]
        self.poison_indices = select_poison_indices(
            y_tr, self.poison_rate, self.target_label, self.attack_mode, self.exclude_target, self.poison_seed
        )
        setup_gen = torch.Generator().manual_seed(self.poison_seed)
        self.trigger.setup(x_tr, y_tr, self.target_label, setup_gen, self.cache_dir())
        count = round(self.trigger.negative_ratio * len(self.poison_indices))
        if count > 0:
            self.negative_indices = select_negative_indices(len(y_tr), self.poison_indices, count, self.poison_seed + 4)
        else:
            self.negative_indices = torch.empty(0, dtype=torch.long)
        args = (self.trigger, self.attack_mode, self.target_label, k)
        train = PoisonedDataset.build(
            x_tr,
            y_tr,
            self.poison_indices,
            *args,
            torch.Generator().manual_seed(self.poison_seed + 1),
            self.train_transform(),
            negative_indices=self.negative_indices,
        )
        if self.clean_oracle:  # the attack's samples out: poisoned ones and label-kept negatives
            keep = ~train.poisoned
            keep[self.negative_indices] = False
            train = PoisonedDataset(
                train.inputs[keep],
                train.targets[keep],
                train.original_targets[keep],
                train.poisoned[keep],
                train.transform,
            )
            src = src[keep]
        train.source_index = src
        train.sources = [raw.train_sources[i] if raw.train_sources else f"{raw.name} train[{i}]" for i in src.tolist()]
        self.train_set = train
        eval_tf = self.eval_transform()

        def pair(x: Tensor, y: Tensor, seed: int) -> list[PoisonedDataset]:
            clean = PoisonedDataset(x, y, y, torch.zeros_like(y, dtype=torch.bool), eval_tf)
            poisoned = PoisonedTestDataset.from_clean(x, y, *args, torch.Generator().manual_seed(seed), eval_tf)
            return [clean, poisoned]

        self.val_sets = pair(x_val, y_val, self.poison_seed + 2)
        self.test_sets = pair(raw.x_test, raw.y_test, self.poison_seed + 3)

    def manifest(self) -> dict[str, Any]:
        """What was poisoned and how: saved with every run."""
        self.setup("fit")
        assert self.train_set is not None and self.negative_indices is not None
        return {
            "package_version": __version__,
            "dataset": self.raw.name,
            "source": self.raw.source,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "num_train": len(self.train_set),
            "num_val": len(self.val_sets[0]),
            "num_test": len(self.test_sets[0]),
            "attack_mode": self.attack_mode,
            "target_label": self.target_label,
            "poison_rate": self.poison_rate,
            "exclude_target": self.exclude_target,
            "poison_seed": self.poison_seed,
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "train_size": self.train_size,
            "clean_oracle": self.clean_oracle,
            "trigger": self.trigger.describe(),
            "num_poisoned": int(self.train_set.poisoned.sum()),
            "poison_indices": self.poison_indices.tolist(),
            "num_negative": len(self.negative_indices),
            "negative_indices": self.negative_indices.tolist(),
            "train_checksum": self.fingerprint()["train_checksum"],
            # split position i (the ``index`` of suspects.csv and the state bank) -> position in the source
            # training split (UCR file row, torchvision index, image folder order); see train_sources
            "source_indices": self.train_set.source_index.tolist(),
            "poison_source_indices": self.train_set.source_index[self.poison_indices].tolist()
            if not self.clean_oracle
            else [],
        }

    # ---- loaders ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Checkpointed with the run: the global torch RNG state and the training set's fingerprint.

        The training loader draws its shuffle seed from the global RNG when an epoch starts, and
        Lightning does not checkpoint that RNG; restoring it in :meth:`load_state_dict` (before the
        first resumed epoch's loader is iterated) gives a resumed run the uninterrupted run's order.
        The fingerprint lets a resumed fit refuse another poisoned training set.
        """
        state: dict[str, Any] = {"torch_rng_state": torch.get_rng_state()}
        if self.train_set is not None:
            state["fingerprint"] = self.fingerprint()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch_rng_state" in state_dict:
            torch.set_rng_state(state_dict["torch_rng_state"])

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed fit must train on: the dataset, the poisoning and the training set's checksum."""
        self.setup("fit")
        assert self.train_set is not None
        if self._checksum is None:
            self._checksum = self.train_set.checksum()
        return {
            "dataset": self.raw.name,
            "poison_seed": self.poison_seed,
            "poison_rate": self.poison_rate,
            "target_label": self.target_label,
            "num_train": len(self.train_set),
            "train_checksum": self._checksum,
        }

    def check_resume_state(self, state_dict: dict[str, Any], source: str = "the checkpoint") -> None:
        """Refuse to resume a fit on another poisoned training set than the checkpoint's (one line)."""
        saved = state_dict.get("fingerprint")
        if not isinstance(saved, dict):
            return  # a checkpoint from before fingerprints: nothing to compare
        now = self.fingerprint()
        settings = [k for k in now if k != "train_checksum"]
        diffs = [f"{k}={saved.get(k)!r} there, {now[k]!r} now" for k in settings if saved.get(k) != now[k]]
        if not diffs and saved.get("train_checksum") != now["train_checksum"]:
            diffs = ["the same settings but other training data (another file, split or trigger)"]
        if diffs:
            raise ValueError(
                f"{source} was trained on another poisoned training set ({'; '.join(diffs)}): resume with that run's "
                "data settings (its config.yaml), or start a new fit without ckpt_path"
            )

    def _loader(self, dataset: PoisonedDataset, train: bool) -> DataLoader:
        batch = self.batch_size if train else self.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch,
            shuffle=train,
            drop_last=train and self.drop_last and len(dataset) > batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, train=False) for d in self.val_sets]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, train=False) for d in self.test_sets]

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_sets[0], train=False)


def _check_type(name: str, value: Any, types: tuple[type, ...], what: str) -> None:
    """A TypeError naming the argument (a string from a config, ``poison_rate="0.1"``, fails here, not deep inside)."""
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"{name}={value!r} must be {what}, not {type(value).__name__}")
