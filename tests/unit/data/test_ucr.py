"""UCR/UEA loading (bundled and local files) and the UCR datamodule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.datamodules.base import stratified_split
from e2abl_lightning.data.datasets import load_ucr
from e2abl_lightning.data.triggers import TSBA, PowerlineNoise, StaticPattern


def assert_znormalised(x: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
    """Every series and channel of ``x`` ([N, C, L]) has mean 0 and std 1 over its real length."""
    for i in range(x.shape[0]):
        values = x[i] if lengths is None else x[i, :, : int(lengths[i])]  # [C, L_i]
        assert torch.allclose(values.mean(-1), torch.zeros(values.shape[0]), atol=1e-4)
        assert torch.allclose(values.std(-1, unbiased=False), torch.ones(values.shape[0]), atol=1e-3)


def assert_labels(splits, num_classes: int) -> None:
    assert len(splits.classes) == num_classes
    assert splits.y_train.dtype == torch.long and splits.y_test.dtype == torch.long
    assert torch.equal(splits.y_train.unique(), torch.arange(num_classes))
    assert int(splits.y_test.min()) >= 0 and int(splits.y_test.max()) < num_classes


# ---- load_ucr: bundled sets --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape_train", "num_test", "num_classes"),
    [
        ("GunPoint", (50, 1, 150), 150, 2),
        ("OSULeaf", (200, 1, 427), 242, 6),
        ("BasicMotions", (40, 6, 100), 40, 4),
    ],
)
def test_bundled_sets(tmp_path: Path, name: str, shape_train: tuple, num_test: int, num_classes: int) -> None:
    s = load_ucr(name, cache_dir=tmp_path / "cache", download=False)
    assert s.source.startswith("bundled:")
    assert tuple(s.x_train.shape) == shape_train
    assert tuple(s.x_test.shape) == (num_test, *shape_train[1:])
    assert s.x_train.dtype == torch.float32
    assert torch.isfinite(s.x_train).all() and torch.isfinite(s.x_test).all()
    assert_labels(s, num_classes)
    assert_znormalised(s.x_train)
    assert_znormalised(s.x_test)


def test_multivariate_string_labels(tmp_path: Path) -> None:
    s = load_ucr("BasicMotions", cache_dir=tmp_path, download=False)
    assert s.classes == ["Badminton", "Running", "Standing", "Walking"]


def test_variable_length_is_zero_padded(tmp_path: Path) -> None:
    s = load_ucr("JapaneseVowels", cache_dir=tmp_path, download=False)
    assert tuple(s.x_train.shape[1:]) == (12, 29)
    assert s.x_test.shape[1:] == s.x_train.shape[1:]
    assert_labels(s, 9)
    x = torch.cat([s.x_train, s.x_test])  # padded to the longest series of either split
    nonzero = (x != 0).any(dim=1)  # [N, L]: steps where some channel is non-zero
    lengths = torch.tensor([int(row.nonzero().max()) + 1 for row in nonzero])
    assert int(lengths.max()) == 29
    assert int(lengths.min()) < 29, "JapaneseVowels has shorter series: they must be padded"
    for i in torch.nonzero(lengths < 29).flatten()[:20]:
        assert (x[i, :, int(lengths[i]) :] == 0).all()
    assert_znormalised(x, lengths)


# ---- load_ucr: local data_dir ------------------------------------------------------------------

TS_HEADER = """# a tiny test set
@problemName Tiny
@timeStamps false
@univariate false
@classLabel true run walk
@data
"""


def write_ts(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train = ["1,2,3,4,5:5,4,3,2,2:walk", "0,1,0,1,0:1,1,2,2,3:run", "2,4,6,8,9:0,0,1,0,0:walk"]
    test = ["1,3,2,4,3:2,2,1,1,0:run"]
    (folder / f"{name}_TRAIN.ts").write_text(TS_HEADER + "\n".join(train) + "\n")
    (folder / f"{name}_TEST.ts").write_text(TS_HEADER + "\n".join(test) + "\n")


def test_local_ts_file(tmp_path: Path) -> None:
    write_ts(tmp_path / "Tiny", "Tiny")
    s = load_ucr("Tiny", data_dir=tmp_path, cache_dir=tmp_path / "cache", download=False)
    assert s.source.startswith("local:")
    assert tuple(s.x_train.shape) == (3, 2, 5) and tuple(s.x_test.shape) == (1, 2, 5)
    assert s.classes == ["run", "walk"]
    assert s.y_train.tolist() == [1, 0, 1] and s.y_test.tolist() == [0]
    raw = np.array([1, 2, 3, 4, 5], dtype=np.float32)
    assert np.allclose(s.x_train[0, 0].numpy(), (raw - raw.mean()) / raw.std(), atol=1e-5)
    assert_znormalised(s.x_train)


def test_local_files_directly_in_data_dir(tmp_path: Path) -> None:
    write_ts(tmp_path, "Flat")
    s = load_ucr("Flat", data_dir=str(tmp_path), download=False)
    assert tuple(s.x_train.shape) == (3, 2, 5)


def test_local_tsv_file(tmp_path: Path) -> None:
    folder = tmp_path / "TinyTsv"
    folder.mkdir()
    train = "2\t1.0\t2.0\t4.0\t3.0\n1\t0.0\t-1.0\t0.5\t2.0\n2\t3.0\t3.5\t1.0\t0.0\n1\t1.0\t1.0\t2.0\t5.0\n"
    (folder / "TinyTsv_TRAIN.tsv").write_text(train)
    (folder / "TinyTsv_TEST.tsv").write_text("1\t1.0\t0.0\t1.0\t0.0\n2\t4.0\t2.0\t1.0\t3.0\n")
    s = load_ucr("TinyTsv", data_dir=tmp_path, download=False)
    assert tuple(s.x_train.shape) == (4, 1, 4) and tuple(s.x_test.shape) == (2, 1, 4)
    assert s.classes == ["1", "2"]
    assert s.y_train.tolist() == [1, 0, 1, 0] and s.y_test.tolist() == [0, 1]
    raw = np.array([0.0, -1.0, 0.5, 2.0])
    assert np.allclose(s.x_train[1, 0].numpy(), (raw - raw.mean()) / raw.std(), atol=1e-5)
    assert_znormalised(s.x_test)


def test_data_dir_without_the_dataset_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Missing"):
        load_ucr("Missing", data_dir=tmp_path, download=False)


def test_test_label_unseen_in_train_raises(tmp_path: Path) -> None:
    folder = tmp_path / "Odd"
    folder.mkdir()
    (folder / "Odd_TRAIN.tsv").write_text("1\t1.0\t2.0\t3.0\n2\t3.0\t1.0\t2.0\n")
    (folder / "Odd_TEST.tsv").write_text("3\t1.0\t2.0\t0.0\n")
    with pytest.raises(ValueError, match="never appear"):
        load_ucr("Odd", data_dir=tmp_path, download=False)


def test_unknown_name_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NotADataset") as info:
        load_ucr("NotADataset", cache_dir=tmp_path, download=False)
    assert "GunPoint" in str(info.value), "the message lists the bundled sets"


def test_missing_offline_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_ucr("ECG5000", cache_dir=tmp_path / "cache", download=False)
    message = str(info.value)
    assert "ECG5000" in message
    assert "data_dir" in message
    assert str(tmp_path / "cache") in message


def test_tsai_cache_is_used(tmp_path: Path) -> None:
    folder = tmp_path / "Cached"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x_tr, x_te = rng.normal(size=(6, 1, 12)), rng.normal(size=(4, 1, 12))
    x_tr[0, 0, -3:] = np.nan  # tsai pads unequal lengths with NaN
    np.save(folder / "X_train.npy", x_tr)
    np.save(folder / "y_train.npy", np.array(["a", "b"] * 3))
    np.save(folder / "X_valid.npy", x_te)
    np.save(folder / "y_valid.npy", np.array(["b", "a"] * 2))
    s = load_ucr("Cached", cache_dir=tmp_path, download=False)
    assert s.source.startswith("cache:")
    assert tuple(s.x_train.shape) == (6, 1, 12)
    assert torch.isfinite(s.x_train).all()
    assert (s.x_train[0, 0, -3:] == 0).all()
    assert s.y_train.tolist() == [0, 1] * 3


# ---- UCRDataModule ------------------------------------------------------------------------------


def make_dm(tmp_path: Path, dataset: str = "GunPoint", **kwargs) -> UCRDataModule:
    kwargs.setdefault("trigger", StaticPattern())
    return UCRDataModule(dataset=dataset, cache_dir=str(tmp_path / "cache"), download=False, **kwargs)


def test_datamodule_loaders_and_batches(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, "BasicMotions", batch_size=8, eval_batch_size=16)
    assert dm.num_classes == 4
    assert dm.input_shape == (6, 100)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input", "target", "index", "poisoned", "original_target"}
    assert tuple(batch["input"].shape) == (8, 6, 100) and batch["input"].dtype == torch.float32
    assert batch["target"].dtype == torch.long and batch["poisoned"].dtype == torch.bool
    for loaders in (dm.val_dataloader(), dm.test_dataloader()):
        assert isinstance(loaders, list) and len(loaders) == 2
        clean, poisoned = (next(iter(loader)) for loader in loaders)
        assert clean["input"].shape[1:] == (6, 100) and poisoned["input"].shape[1:] == (6, 100)
        assert not clean["poisoned"].any() and torch.equal(clean["target"], clean["original_target"])
        assert poisoned["poisoned"].all()
        assert (poisoned["target"] == 0).all() and (poisoned["original_target"] != 0).all()
    test_clean, test_poisoned = dm.test_sets
    assert len(test_clean) == 40
    assert len(test_poisoned) == int((dm.raw.y_test != 0).sum())
    assert len(next(iter(dm.predict_dataloader()))["input"]) == 16


def test_datamodule_train_poisoning(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, poison_rate=0.2, target_label=1)
    dm.setup("fit")
    train = dm.train_set
    n = len(train)
    assert n == dm.num_train
    assert dm.poison_indices.numel() == round(0.2 * n)
    assert torch.equal(train.poisoned.nonzero().flatten(), dm.poison_indices)
    assert (train.targets[train.poisoned] == 1).all()
    assert (train.original_targets[train.poisoned] != 1).all()
    assert torch.equal(train.targets[~train.poisoned], train.original_targets[~train.poisoned])
    train_idx, _ = stratified_split(dm.raw.y_train, dm.val_fraction, dm.split_seed)
    x_clean = dm.raw.x_train[train_idx]  # [N, C, L]: z-normalised series before the trigger
    expected = StaticPattern().apply(x_clean[train.poisoned], torch.Generator())
    assert torch.equal(train.inputs[train.poisoned], expected), "the trigger is applied to the raw series"
    assert torch.equal(train.inputs[~train.poisoned], x_clean[~train.poisoned])


def test_datamodule_setup_is_idempotent_and_deterministic(tmp_path: Path) -> None:
    a, b = make_dm(tmp_path, poison_seed=4), make_dm(tmp_path, poison_seed=4)
    a.setup("fit")
    first = a.train_set
    a.setup("test")
    assert a.train_set is first
    b.setup("fit")
    assert a.train_set.checksum() == b.train_set.checksum()
    c = make_dm(tmp_path, poison_seed=5)
    c.setup("fit")
    assert not torch.equal(c.poison_indices, a.poison_indices)


def test_stratified_val_split(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, "OSULeaf", val_fraction=0.1, split_seed=3)
    dm.setup("fit")
    y = dm.raw.y_train
    train_idx, val_idx = stratified_split(y, 0.1, 3)
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(y.numel()))
    for c in range(dm.num_classes):
        assert int((y[val_idx] == c).sum()) == round(0.1 * int((y == c).sum()))
    val_clean = dm.val_sets[0]
    assert len(val_clean) == val_idx.numel() and len(dm.train_set) == train_idx.numel()
    assert torch.equal(val_clean.inputs, dm.raw.x_train[val_idx])
    assert torch.equal(val_clean.targets.bincount(minlength=6), y[val_idx].bincount(minlength=6))
    same = stratified_split(y, 0.1, 3)
    other = stratified_split(y, 0.1, 4)
    assert torch.equal(same[1], val_idx)
    assert not torch.equal(other[1], val_idx)


def test_no_val_split_uses_test_for_monitoring(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.train_set) == 50
    assert torch.equal(dm.val_sets[0].inputs, dm.raw.x_test)


def test_manifest(tmp_path: Path) -> None:
    trigger = PowerlineNoise(period=12, amplitude=0.2)
    dm = make_dm(tmp_path, "OSULeaf", trigger=trigger, poison_rate=0.15, target_label=2, poison_seed=11, split_seed=1)
    manifest = json.loads(json.dumps(dm.manifest()))  # JSON-serialisable
    dm.setup("fit")
    assert manifest["dataset"] == "OSULeaf"
    assert manifest["poison_indices"] == dm.poison_indices.tolist()
    assert manifest["num_poisoned"] == len(manifest["poison_indices"]) == round(0.15 * len(dm.train_set))
    assert manifest["poison_seed"] == 11 and manifest["split_seed"] == 1
    assert manifest["poison_rate"] == 0.15 and manifest["target_label"] == 2
    assert manifest["attack_mode"] == "all_to_one" and manifest["exclude_target"] is True
    assert manifest["trigger"] == {"name": "PowerlineNoise", "period": 12, "amplitude": 0.2, "harmonic": 0.3}
    assert manifest["num_classes"] == 6 and manifest["input_shape"] == [1, 427]
    assert manifest["num_train"] == len(dm.train_set) and manifest["num_test"] == 242
    assert manifest["train_checksum"] == dm.train_set.checksum()
    assert manifest["clean_oracle"] is False


def test_clean_oracle_drops_poisoned_samples(tmp_path: Path) -> None:
    poisoned_dm = make_dm(tmp_path, poison_rate=0.2)
    oracle_dm = make_dm(tmp_path, poison_rate=0.2, clean_oracle=True)
    poisoned_dm.setup("fit")
    oracle_dm.setup("fit")
    full, oracle = poisoned_dm.train_set, oracle_dm.train_set
    keep = ~full.poisoned
    assert len(oracle) == len(full) - int(full.poisoned.sum())
    assert not oracle.poisoned.any()
    assert torch.equal(oracle.inputs, full.inputs[keep])
    assert torch.equal(oracle.targets, oracle.original_targets)
    assert torch.equal(oracle.targets, full.original_targets[keep])
    assert oracle_dm.manifest()["clean_oracle"] is True
    # the evaluation sets are unchanged: the oracle is still scored on triggered test samples
    assert len(oracle_dm.test_sets[1]) == len(poisoned_dm.test_sets[1])


def test_train_size_takes_a_stratified_subset_before_poisoning(tmp_path: Path) -> None:
    full, small = make_dm(tmp_path, "OSULeaf"), make_dm(tmp_path, "OSULeaf", train_size=90, poison_rate=0.2)
    full.setup("fit")
    small.setup("fit")
    n_full, train = len(full.train_set), small.train_set
    assert abs(len(train) - 90) <= small.num_classes  # per-class rounding
    assert small.poison_indices.numel() == round(0.2 * len(train))
    share_full = full.train_set.original_targets.bincount(minlength=6) / n_full
    share_small = train.original_targets.bincount(minlength=6) / len(train)
    assert (share_full - share_small).abs().max() < 0.05  # class balance kept
    train_idx, _ = stratified_split(full.raw.y_train, full.val_fraction, full.split_seed)
    rows = {tuple(r.tolist()) for r in full.raw.x_train[train_idx, 0, :5]}  # [N, 5]: row keys
    clean = train.inputs[~train.poisoned][:, 0, :5]
    assert all(tuple(r.tolist()) in rows for r in clean), "the subset is drawn from the training split"
    assert torch.equal(small.val_sets[0].inputs, full.val_sets[0].inputs), "validation split unchanged"
    assert small.manifest()["train_size"] == 90
    again = make_dm(tmp_path, "OSULeaf", train_size=90, poison_rate=0.2)
    again.setup("fit")
    assert again.train_set.checksum() == train.checksum()


@pytest.mark.parametrize("size", [1, 10_000])
def test_bad_train_size(tmp_path: Path, size: int) -> None:
    with pytest.raises(ValueError, match=f"train_size={size}"):
        make_dm(tmp_path, "OSULeaf", train_size=size).setup("fit")


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5])
def test_bad_poison_rate(tmp_path: Path, rate: float) -> None:
    with pytest.raises(ValueError, match=f"poison_rate={rate}"):
        make_dm(tmp_path, poison_rate=rate)


@pytest.mark.parametrize("target", [2, 7, -1])
def test_target_label_outside_classes(tmp_path: Path, target: int) -> None:
    dm = make_dm(tmp_path, target_label=target)  # GunPoint has 2 classes
    with pytest.raises(ValueError, match=f"target_label={target}"):
        dm.setup("fit")


def test_missing_dataset_offline_in_datamodule(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, "ECG5000")
    with pytest.raises(FileNotFoundError, match="ECG5000"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"val_fraction": 0.5}, "val_fraction"), ({"batch_size": 0}, "batch_size")]
)
def test_bad_datamodule_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make_dm(tmp_path, **kwargs)


def test_trained_trigger_is_cached_under_the_datamodule_cache(tmp_path: Path) -> None:
    """TSBA's generator is trained by the first run and loaded by the next one (same data, same seed)."""

    def build() -> UCRDataModule:
        trigger = TSBA(epochs=1, surrogate_epochs=1, batch_size=8, width=4, kernel_size=3)
        dm = UCRDataModule("GunPoint", trigger, cache_dir=str(tmp_path), download=False)
        dm.setup("fit")
        return dm

    first = build()
    cached = sorted((tmp_path / "triggers").glob("tsba_*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = build()
    assert cached[0].stat().st_mtime_ns == stamp, "the second run reuses the cached generator"
    assert torch.equal(first.train_set.inputs, second.train_set.inputs)
