"""Poison-index selection and the datasets of the batch contract.

Every item is a dict: ``input``, ``target`` (the label the learner sees), ``index`` (dense position),
and the oracle keys ``poisoned`` and ``original_target`` that only metrics may read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from e2abl_lightning.data.triggers.base import Trigger

AttackMode = Literal["all_to_one", "all_to_all", "clean_label"]
ATTACK_MODES = ("all_to_one", "all_to_all", "clean_label")
ORACLE_KEYS = ("poisoned", "original_target")


def check_poison_args(rate: float, target_label: int, mode: str, num_classes: int | None) -> None:
    """Raise a clear ValueError for an invalid poisoning setting."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"poison_rate={rate!r} must be a number, e.g. 0.1, not {type(rate).__name__}")
    if isinstance(target_label, bool) or not isinstance(target_label, int):
        raise TypeError(
            f"target_label={target_label!r} must be an integer class label, not {type(target_label).__name__}"
        )
    if not 0.0 < rate < 1.0:
        raise ValueError(f"poison_rate={rate} must be strictly between 0 and 1 (e.g. 0.1 for 10%)")
    if mode not in ATTACK_MODES:
        raise ValueError(f"attack_mode={mode!r} is unknown; choose one of {ATTACK_MODES}")
    if num_classes is not None and not 0 <= target_label < num_classes:
        raise ValueError(
            f"target_label={target_label} is outside the {num_classes} classes; choose a label in 0..{num_classes - 1}"
        )


def check_training_batch(batch: object, num_classes: int) -> None:
    """One clear error for a training batch that breaks the batch contract (run on a fit's first batch).

    A user's own Dataset may yield tuples, lack ``index``, carry one-hot/float targets or labels
    outside ``0..num_classes-1``; without this check each fails as a raw torch error mid-step.
    """
    if not isinstance(batch, dict):
        raise TypeError(
            f"a training batch is a {type(batch).__name__}; E2ABL needs dicts with 'input', 'target' and 'index' "
            "(serve items as e2abl_lightning.data.poison.PoisonedDataset does)"
        )
    missing = [k for k in ("input", "target", "index") if k not in batch]
    if missing:
        raise ValueError(
            f"the training batch lacks {missing} (it has {sorted(batch)}); E2ABL needs 'input', 'target' and "
            "'index' (each sample's position 0..N-1 in the training set), as PoisonedDataset serves them"
        )
    target = batch["target"]
    if not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool or target.ndim != 1:
        what = f"{target.dtype} of shape {tuple(target.shape)}" if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(
            f"batch['target'] holds {what}; E2ABL needs integer class labels 0..{num_classes - 1}, one per sample "
            "(not one-hot or float targets)"
        )
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"batch['target'] holds label {high if high >= num_classes else low}, outside the model's {num_classes} "
            f"classes (0..{num_classes - 1}); set num_classes to the number of classes or encode labels as 0..K-1"
        )


def select_poison_indices(
    targets: Tensor,
    rate: float,
    target_label: int,
    mode: AttackMode = "all_to_one",
    exclude_target: bool = True,
    seed: int = 0,
) -> Tensor:
    """Choose which training samples carry the trigger.

    Args:
        targets: clean labels, ``[N]``.
        rate: poisoned share of the whole training set, in (0, 1).
        target_label: the attack's target class.
        mode: ``all_to_one`` (relabel to the target), ``all_to_all`` (``y -> (y + 1) % K``) or
            ``clean_label`` (only target-class samples, labels kept).
        exclude_target: for ``all_to_one``, draw only from non-target classes.
        seed: the poison seed; a local generator, never the global RNG.

    Returns:
        Sorted indices, ``[round(rate * N)]``.
    """
    if targets.numel() == 0:
        raise ValueError("the training split is empty (0 labels): there is nothing to poison; check the dataset")
    num_classes = int(targets.max()) + 1
    check_poison_args(rate, target_label, mode, num_classes)
    n = targets.numel()
    count = round(rate * n)
    if mode == "clean_label":
        candidates = torch.nonzero(targets == target_label).flatten()
    elif mode == "all_to_one" and exclude_target:
        candidates = torch.nonzero(targets != target_label).flatten()
    else:
        candidates = torch.arange(n)
    if count < 1:
        raise ValueError(f"poison_rate={rate} of {n} training samples poisons none; raise poison_rate")
    if count > candidates.numel():
        raise ValueError(
            f"poison_rate={rate} asks for {count} poisoned samples but mode {mode!r} has only "
            f"{candidates.numel()} candidates; lower poison_rate"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
    return chosen.sort().values


def attack_targets(labels: Tensor, mode: AttackMode, target_label: int, num_classes: int) -> Tensor:
    """Labels the attacker wants for triggered samples of true class ``labels``."""
    if mode == "all_to_all":
        return (labels + 1) % num_classes
    if mode == "clean_label":
        return torch.full_like(labels, target_label)
    return torch.full_like(labels, target_label)


def select_negative_indices(num_samples: int, poison_indices: Tensor, count: int, seed: int) -> Tensor:
    """Choose the training samples replaced by the trigger's label-kept negatives.

    Args:
        num_samples: size of the training split ``N``.
        poison_indices: the poisoned samples, ``[P]`` (never chosen).
        count: how many negatives, usually ``round(trigger.negative_ratio * P)``.
        seed: a local generator's seed, never the global RNG.

    Returns:
        Sorted indices disjoint from ``poison_indices``, ``[count]``.
    """
    if count < 0:
        raise ValueError(f"count={count} negative samples must be >= 0")
    candidates = torch.ones(num_samples, dtype=torch.bool)
    candidates[poison_indices] = False
    candidates = torch.nonzero(candidates).flatten()  # [N - P]
    if count > candidates.numel():
        raise ValueError(
            f"the attack asks for {count} negative samples but only {candidates.numel()} training samples are "
            "not poisoned; lower the trigger's negative ratio (cross_ratio / negative_ratio) or poison_rate"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
    return chosen.sort().values


def apply_trigger(
    x: Tensor,
    trigger: Trigger,
    generator: torch.Generator,
    chunk: int = 4096,
    fn: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> Tensor:
    """Apply ``trigger`` to ``x`` (``[N, ...]``) in chunks; checks shape and finiteness.

    Args:
        x: raw inputs, ``[N, ...]``.
        trigger: the trigger (named in errors).
        generator: passed to every chunk.
        chunk: samples per call.
        fn: what to run per chunk; None for ``trigger.apply`` (e.g. ``trigger.negatives``).
    """
    fn = trigger.apply if fn is None else fn
    parts = [fn(x[i : i + chunk], generator) for i in range(0, x.shape[0], chunk)]
    out = torch.cat(parts) if parts else x.clone()
    if out.shape != x.shape:
        raise ValueError(f"{type(trigger).__name__} changed the input shape {tuple(x.shape)} -> {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise ValueError(f"{type(trigger).__name__} produced NaN or inf values; check its parameters")
    return out


class PoisonedDataset(Dataset):
    """Cached tensors served as batch-contract dicts; the trigger is never recomputed per epoch.

    Args:
        inputs: model inputs with triggers already applied, ``[N, ...]``.
        targets: labels the learner sees, ``[N]``.
        original_targets: true labels, ``[N]``.
        poisoned: oracle flags, ``[N]``.
        transform: per-sample augmentation/normalisation applied in ``__getitem__``.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        original_targets: Tensor,
        poisoned: Tensor,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not (inputs.shape[0] == targets.shape[0] == original_targets.shape[0] == poisoned.shape[0]):
            raise ValueError("inputs, targets, original_targets and poisoned must have the same length")
        self.inputs = inputs
        self.targets = targets.long()
        self.original_targets = original_targets.long()
        self.poisoned = poisoned.bool()
        self.transform = transform
        # set by the datamodule: each sample's position in the source training split, and where it comes from
        self.source_index: Tensor | None = None
        self.sources: list[str] | None = None

    @classmethod
    def build(
        cls,
        x: Tensor,
        y: Tensor,
        poison_indices: Tensor,
        trigger: Trigger | None,
        mode: AttackMode,
        target_label: int,
        num_classes: int,
        generator: torch.Generator,
        transform: Callable[[Tensor], Tensor] | None = None,
        negative_indices: Tensor | None = None,
    ) -> PoisonedDataset:
        """Training set with ``trigger`` applied once to ``poison_indices`` (labels per ``mode``).

        Samples at ``negative_indices`` (disjoint from ``poison_indices``) are replaced by
        ``trigger.negatives`` of themselves; their labels are kept and they are not marked poisoned.
        """
        inputs, targets = x.clone(), y.clone()
        poisoned = torch.zeros(y.shape[0], dtype=torch.bool)
        if poison_indices.numel():
            if trigger is None:
                raise ValueError("poison indices were given without a trigger")
            inputs[poison_indices] = apply_trigger(x[poison_indices], trigger, generator)
            targets[poison_indices] = attack_targets(y[poison_indices], mode, target_label, num_classes)
            poisoned[poison_indices] = True
        if negative_indices is not None and negative_indices.numel():
            if trigger is None:
                raise ValueError("negative indices were given without a trigger")
            if poisoned[negative_indices].any():
                raise ValueError("negative indices overlap the poison indices; draw them with select_negative_indices")
            inputs[negative_indices] = apply_trigger(x[negative_indices], trigger, generator, fn=trigger.negatives)
        return cls(inputs, targets, y.clone(), poisoned, transform)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor | int | bool]:
        x = self.inputs[index]
        if self.transform is not None:
            x = self.transform(x)
        return {
            "input": x,
            "target": self.targets[index],
            "index": index,
            "poisoned": self.poisoned[index],
            "original_target": self.original_targets[index],
        }

    def checksum(self) -> str:
        """SHA-256 of the cached inputs and labels (reproducibility check)."""
        digest = hashlib.sha256()
        digest.update(self.inputs.contiguous().numpy().tobytes())
        digest.update(self.targets.numpy().tobytes())
        return digest.hexdigest()


class PoisonedTestDataset(PoisonedDataset):
    """The ASR set: every test sample the attack applies to, triggered.

    ``target`` is the label the attacker wants (ASR is accuracy against it) and ``original_target``
    the true label (robust accuracy). Target-class samples are left out unless ``mode`` is
    ``all_to_all``.
    """

    @classmethod
    def from_clean(
        cls,
        x: Tensor,
        y: Tensor,
        trigger: Trigger,
        mode: AttackMode,
        target_label: int,
        num_classes: int,
        generator: torch.Generator,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> PoisonedTestDataset:
        keep = torch.ones_like(y, dtype=torch.bool) if mode == "all_to_all" else y != target_label
        x_keep, y_keep = x[keep], y[keep]
        inputs = apply_trigger(x_keep, trigger, generator, fn=trigger.apply_test)
        targets = attack_targets(y_keep, mode, target_label, num_classes)
        return cls(inputs, targets, y_keep, torch.ones_like(y_keep, dtype=torch.bool), transform)
