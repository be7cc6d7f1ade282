"""Poison-index selection, the training dataset and the ASR test set (batch contract)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from e2abl_lightning.data.poison import (
    ORACLE_KEYS,
    PoisonedDataset,
    PoisonedTestDataset,
    attack_targets,
    select_negative_indices,
    select_poison_indices,
)
from e2abl_lightning.data.triggers.base import Trigger

NUM_CLASSES = 4


class ShiftTrigger(Trigger):
    """Adds a constant: every triggered value is exactly recognisable."""

    def __init__(self, shift: float = 100.0) -> None:
        self.shift = shift

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x + self.shift


class NegativeShiftTrigger(ShiftTrigger):
    """Also makes negatives: subtracts the shift plus seeded noise (recognisable, and random)."""

    negative_ratio = 1.0

    def negatives(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x - self.shift - torch.rand(x.shape, generator=generator)


def balanced_labels(per_class: int = 25, num_classes: int = NUM_CLASSES) -> Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)  # [K * per_class]


def series(n: int, seed: int = 0) -> Tensor:
    return torch.randn(n, 2, 16, generator=torch.Generator().manual_seed(seed))  # [N, C, L]


# ---- select_poison_indices -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.13, 0.3, 0.5])
@pytest.mark.parametrize("mode", ["all_to_one", "all_to_all"])
def test_count_is_round_rate_times_n(rate: float, mode: str) -> None:
    y = balanced_labels()
    idx = select_poison_indices(y, rate, target_label=0, mode=mode, seed=3)
    assert idx.numel() == round(rate * y.numel())
    assert idx.unique().numel() == idx.numel(), "indices must be distinct"
    assert torch.equal(idx, idx.sort().values), "indices are returned sorted"
    assert idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < y.numel()


def test_same_seed_same_indices_different_seed_different() -> None:
    y = balanced_labels(per_class=50)
    a = select_poison_indices(y, 0.1, 0, seed=7)
    b = select_poison_indices(y, 0.1, 0, seed=7)
    c = select_poison_indices(y, 0.1, 0, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_selection_does_not_touch_global_rng() -> None:
    y = balanced_labels()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    select_poison_indices(y, 0.2, 0, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_selection_independent_of_global_seed() -> None:
    y = balanced_labels()
    torch.manual_seed(1)
    a = select_poison_indices(y, 0.2, 0, seed=5)
    torch.manual_seed(2)
    b = select_poison_indices(y, 0.2, 0, seed=5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("target", [0, 2])
def test_all_to_one_excludes_target_class(target: int) -> None:
    y = balanced_labels()
    for seed in range(5):
        idx = select_poison_indices(y, 0.5, target, "all_to_one", exclude_target=True, seed=seed)
        assert (y[idx] != target).all()


def test_all_to_one_includes_target_class_when_not_excluded() -> None:
    y = torch.tensor([0] * 10 + [1] * 10)
    # 15 poisoned samples but only 10 non-target candidates: target-class samples must be drawn
    idx = select_poison_indices(y, 0.75, 0, "all_to_one", exclude_target=False, seed=0)
    assert idx.numel() == 15
    assert (y[idx] == 0).any()
    with pytest.raises(ValueError, match="candidates"):
        select_poison_indices(y, 0.75, 0, "all_to_one", exclude_target=True, seed=0)


def test_all_to_one_not_excluded_draws_from_target_class_across_seeds() -> None:
    y = balanced_labels()
    drawn_target = [
        bool((y[select_poison_indices(y, 0.2, 0, exclude_target=False, seed=s)] == 0).any()) for s in range(5)
    ]
    assert any(drawn_target)


def test_clean_label_draws_only_target_class() -> None:
    y = balanced_labels()
    idx = select_poison_indices(y, 0.1, 1, "clean_label", seed=0)
    assert idx.numel() == 10
    assert (y[idx] == 1).all()


def test_clean_label_too_many_raises() -> None:
    y = balanced_labels()  # 25 target-class samples of 100
    with pytest.raises(ValueError, match="poison_rate=0.3"):
        select_poison_indices(y, 0.3, 1, "clean_label", seed=0)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_bad_rate_raises(rate: float) -> None:
    with pytest.raises(ValueError, match=f"poison_rate={rate}"):
        select_poison_indices(balanced_labels(), rate, 0)


def test_bad_target_and_mode_raise() -> None:
    with pytest.raises(ValueError, match="target_label=4"):
        select_poison_indices(balanced_labels(), 0.1, 4)
    with pytest.raises(ValueError, match="target_label=-1"):
        select_poison_indices(balanced_labels(), 0.1, -1)
    with pytest.raises(ValueError, match="attack_mode='one_to_one'"):
        select_poison_indices(balanced_labels(), 0.1, 0, mode="one_to_one")  # type: ignore[arg-type]


def test_rate_that_poisons_nothing_raises() -> None:
    with pytest.raises(ValueError, match="poisons none"):
        select_poison_indices(torch.tensor([0, 1, 0, 1]), 0.1, 0)


def test_attack_targets() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    assert attack_targets(labels, "all_to_all", 0, 4).tolist() == [1, 2, 3, 0]
    assert attack_targets(labels, "all_to_one", 2, 4).tolist() == [2, 2, 2, 2]
    assert attack_targets(labels, "clean_label", 3, 4).tolist() == [3, 3, 3, 3]


# ---- PoisonedDataset ---------------------------------------------------------------------------


def build(mode: str = "all_to_one", target: int = 0, rate: float = 0.2):
    y = balanced_labels(per_class=10)
    x = series(y.numel())
    idx = select_poison_indices(y, rate, target, mode, seed=0)
    ds = PoisonedDataset.build(x, y, idx, ShiftTrigger(), mode, target, NUM_CLASSES, torch.Generator().manual_seed(1))
    return x, y, idx, ds


def test_build_changes_only_selected_samples_all_to_one() -> None:
    x, y, idx, ds = build("all_to_one", target=0)
    mask = torch.zeros(y.numel(), dtype=torch.bool)
    mask[idx] = True
    assert torch.equal(ds.inputs[~mask], x[~mask])
    assert torch.equal(ds.inputs[mask], x[mask] + 100.0)
    assert torch.equal(ds.targets[~mask], y[~mask])
    assert (ds.targets[mask] == 0).all()
    assert torch.equal(ds.original_targets, y)
    assert torch.equal(ds.poisoned, mask)
    assert len(ds) == y.numel()


def test_build_does_not_modify_its_inputs() -> None:
    y = balanced_labels(per_class=10)
    x = series(y.numel())
    x_copy, y_copy = x.clone(), y.clone()
    idx = select_poison_indices(y, 0.2, 0, seed=0)
    PoisonedDataset.build(x, y, idx, ShiftTrigger(), "all_to_one", 0, NUM_CLASSES, torch.Generator())
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)


def test_build_all_to_all_labels_shift_by_one() -> None:
    x, y, idx, ds = build("all_to_all")
    assert torch.equal(ds.targets[idx], (y[idx] + 1) % NUM_CLASSES)
    assert torch.equal(ds.original_targets[idx], y[idx])
    assert (ds.targets[idx] != y[idx]).all()


def test_build_clean_label_keeps_labels() -> None:
    x, y, idx, ds = build("clean_label", target=2, rate=0.1)
    assert (y[idx] == 2).all()
    assert torch.equal(ds.targets, y), "clean-label poisoning must not change any label"
    assert torch.equal(ds.inputs[idx], x[idx] + 100.0)
    assert int(ds.poisoned.sum()) == idx.numel()


def test_build_without_indices_is_clean_and_needs_no_trigger() -> None:
    y = balanced_labels(per_class=5)
    x = series(y.numel())
    ds = PoisonedDataset.build(
        x, y, torch.empty(0, dtype=torch.long), None, "all_to_one", 0, NUM_CLASSES, torch.Generator()
    )
    assert torch.equal(ds.inputs, x) and torch.equal(ds.targets, y) and not ds.poisoned.any()


def test_build_with_indices_but_no_trigger_raises() -> None:
    y = balanced_labels(per_class=5)
    with pytest.raises(ValueError, match="without a trigger"):
        PoisonedDataset.build(
            series(y.numel()), y, torch.tensor([1]), None, "all_to_one", 0, NUM_CLASSES, torch.Generator()
        )


def test_trigger_that_changes_shape_or_makes_nan_is_rejected() -> None:
    class Crop(Trigger):
        def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
            return x[..., :-1]

    class Nan(Trigger):
        def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
            return x * float("nan")

    y = balanced_labels(per_class=5)
    idx = torch.tensor([5, 6])
    with pytest.raises(ValueError, match="Crop changed the input shape"):
        PoisonedDataset.build(series(y.numel()), y, idx, Crop(), "all_to_one", 0, NUM_CLASSES, torch.Generator())
    with pytest.raises(ValueError, match="Nan produced NaN"):
        PoisonedDataset.build(series(y.numel()), y, idx, Nan(), "all_to_one", 0, NUM_CLASSES, torch.Generator())


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="same length"):
        PoisonedDataset(torch.zeros(3, 1, 4), torch.zeros(2), torch.zeros(3), torch.zeros(3))


def test_item_keys_and_types() -> None:
    x, y, idx, ds = build()
    i = int(idx[0])
    item = ds[i]
    assert set(item) == {"input", "target", "index", *ORACLE_KEYS}
    assert isinstance(item["input"], Tensor) and item["input"].shape == (2, 16)
    assert item["input"].dtype == torch.float32
    assert item["target"].dtype == torch.long and item["target"].ndim == 0 and int(item["target"]) == 0
    assert item["index"] == i and isinstance(item["index"], int)
    assert item["poisoned"].dtype == torch.bool and bool(item["poisoned"])
    assert item["original_target"].dtype == torch.long and int(item["original_target"]) == int(y[i])
    clean = int((~ds.poisoned).nonzero()[0])
    assert not bool(ds[clean]["poisoned"]) and int(ds[clean]["target"]) == int(y[clean])


def test_collated_batch_keys_and_types() -> None:
    _, y, _, ds = build()
    batch = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
    assert set(batch) == {"input", "target", "index", "poisoned", "original_target"}
    assert batch["input"].shape == (8, 2, 16) and batch["input"].dtype == torch.float32
    assert batch["target"].shape == (8,) and batch["target"].dtype == torch.long
    assert batch["index"].tolist() == list(range(8))
    assert batch["poisoned"].dtype == torch.bool
    assert torch.equal(batch["original_target"], y[:8])


def test_transform_applied_per_item_to_cached_inputs() -> None:
    y = balanced_labels(per_class=2)
    x = series(y.numel())
    ds = PoisonedDataset(x, y, y, torch.zeros_like(y, dtype=torch.bool), transform=lambda t: t * 2)
    assert torch.equal(ds[3]["input"], x[3] * 2)
    assert torch.equal(ds.inputs, x), "the cache keeps untransformed inputs"


def test_checksum_tracks_content() -> None:
    _, _, _, a = build()
    _, _, _, b = build()
    assert a.checksum() == b.checksum()
    b.targets[0] = 3
    assert a.checksum() != b.checksum()


# ---- negative (label-kept) samples ------------------------------------------------------------


def test_negative_indices_avoid_poison_and_have_the_right_count() -> None:
    y = balanced_labels(per_class=25)
    poison = select_poison_indices(y, 0.1, 0, seed=0)
    neg = select_negative_indices(y.numel(), poison, 20, seed=4)
    assert neg.numel() == 20 and neg.dtype == torch.long
    assert neg.unique().numel() == 20 and torch.equal(neg, neg.sort().values)
    assert not torch.isin(neg, poison).any()
    assert int(neg.min()) >= 0 and int(neg.max()) < y.numel()
    assert select_negative_indices(y.numel(), poison, 0, seed=4).numel() == 0


def test_negative_indices_are_seeded_and_leave_the_global_rng_alone() -> None:
    poison = torch.arange(0, 100, 10)
    state = torch.get_rng_state()
    a = select_negative_indices(100, poison, 30, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, select_negative_indices(100, poison, 30, seed=4))
    assert not torch.equal(a, select_negative_indices(100, poison, 30, seed=5))
    everything = select_negative_indices(100, poison, 90, seed=4)  # every clean sample
    assert torch.equal(everything, torch.tensor([i for i in range(100) if i % 10]))


def test_too_many_negatives_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"asks for 91 negative samples but only 90 .* lower the trigger's negative"):
        select_negative_indices(100, torch.arange(0, 100, 10), 91, seed=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        select_negative_indices(100, torch.arange(3), -1, seed=0)


def test_build_with_negatives_keeps_their_labels() -> None:
    y = balanced_labels(per_class=10)
    x = series(y.numel())
    poison = select_poison_indices(y, 0.2, 0, seed=0)
    neg = select_negative_indices(y.numel(), poison, 8, seed=4)
    trigger = NegativeShiftTrigger()
    ds = PoisonedDataset.build(
        x, y, poison, trigger, "all_to_one", 0, NUM_CLASSES, torch.Generator().manual_seed(1), negative_indices=neg
    )
    assert (ds.inputs[neg] < x[neg] - 99.0).all(), "negatives are replaced by trigger.negatives"
    assert torch.equal(ds.inputs[poison], x[poison] + 100.0)
    rest = torch.ones(y.numel(), dtype=torch.bool)
    rest[poison] = rest[neg] = False
    assert torch.equal(ds.inputs[rest], x[rest])
    assert torch.equal(ds.targets[neg], y[neg]) and torch.equal(ds.original_targets, y)
    assert not ds.poisoned[neg].any() and int(ds.poisoned.sum()) == poison.numel()
    again = PoisonedDataset.build(
        x, y, poison, trigger, "all_to_one", 0, NUM_CLASSES, torch.Generator().manual_seed(1), negative_indices=neg
    )
    assert torch.equal(ds.inputs, again.inputs), "negatives come from the passed generator"


def test_build_with_bad_negatives_raises() -> None:
    y = balanced_labels(per_class=5)
    x, poison = series(y.numel()), torch.tensor([1, 2])
    args = ("all_to_one", 0, NUM_CLASSES, torch.Generator())
    with pytest.raises(ValueError, match="negative indices overlap the poison indices"):
        PoisonedDataset.build(x, y, poison, NegativeShiftTrigger(), *args, negative_indices=torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="negative indices were given without a trigger"):
        PoisonedDataset.build(x, y, torch.empty(0, dtype=torch.long), None, *args, negative_indices=torch.tensor([3]))
    with pytest.raises(NotImplementedError, match="ShiftTrigger makes no negative samples"):
        PoisonedDataset.build(x, y, poison, ShiftTrigger(), *args, negative_indices=torch.tensor([3]))


# ---- PoisonedTestDataset -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["all_to_one", "clean_label"])
def test_test_set_excludes_target_class(mode: str) -> None:
    y = balanced_labels(per_class=5)
    x = series(y.numel())
    ds = PoisonedTestDataset.from_clean(x, y, ShiftTrigger(), mode, 1, NUM_CLASSES, torch.Generator())
    keep = y != 1
    assert len(ds) == int(keep.sum()) == 15
    assert (ds.original_targets != 1).all()
    assert torch.equal(ds.original_targets, y[keep])
    assert (ds.targets == 1).all(), "target is the attacker's label"
    assert ds.poisoned.all()
    assert torch.equal(ds.inputs, x[keep] + 100.0)
    item = ds[0]
    assert int(item["target"]) == 1 and int(item["original_target"]) == int(y[keep][0])


def test_test_set_all_to_all_keeps_every_sample() -> None:
    y = balanced_labels(per_class=5)
    x = series(y.numel())
    ds = PoisonedTestDataset.from_clean(x, y, ShiftTrigger(), "all_to_all", 0, NUM_CLASSES, torch.Generator())
    assert len(ds) == y.numel()
    assert torch.equal(ds.targets, (y + 1) % NUM_CLASSES)
    assert torch.equal(ds.original_targets, y)
