"""Generated stand-ins for torchvision image sets that are not on disk (CIFAR-10, GTSRB offline).

The image datamodules read their data through ``load_torchvision`` as imported into
``e2abl_lightning.data.datamodules.images``; replacing it there gives every image config's code path
(triggers, poisoning, augmentation, the model) tensors of the real dataset's shape and class count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from e2abl_lightning.data.datamodules import images as image_datamodules
from e2abl_lightning.data.datasets.images import ImageSplits

#: channels, side (GTSRB: the size ``load_torchvision`` resizes to) and classes of each torchvision set.
TORCHVISION_SHAPES = {
    "CIFAR10": (3, 32, 10),
    "CIFAR100": (3, 32, 100),
    "GTSRB": (3, 32, 43),
    "MNIST": (1, 28, 10),
    "FashionMNIST": (1, 28, 10),
}
#: classes given 10% of the samples each on top of their even share: the targets of the shipped
#: clean-label configs (0 for CIFAR-10, 2 for GTSRB), which poison up to 5% of the training split.
RICH_CLASSES = (0, 1, 2)


def _labels(n: int, num_classes: int) -> torch.Tensor:
    """``[n]`` labels: every class present, each of :data:`RICH_CLASSES` holding at least 10%."""
    i = torch.arange(n)
    rich = n * len(RICH_CLASSES) // 10
    return torch.where(i < rich, i % len(RICH_CLASSES), i % num_classes)


def generated_splits(name: str, size: int = 32, n_train: int = 400, n_test: int = 160, seed: int = 0) -> ImageSplits:
    """Seeded uniform images ``[N, C, H, W]`` in [0, 1] with the real shape and class count of ``name``."""
    channels, side, num_classes = TORCHVISION_SHAPES[name]
    side = size if name == "GTSRB" else side
    generator = torch.Generator().manual_seed(seed)
    x_train = torch.rand(n_train, channels, side, side, generator=generator)
    x_test = torch.rand(n_test, channels, side, side, generator=generator)
    classes = [f"class{k}" for k in range(num_classes)]
    source = f"generated stand-in for {name} ({n_train}/{n_test} images)"
    return ImageSplits(x_train, _labels(n_train, num_classes), x_test, _labels(n_test, num_classes), classes, source)


@pytest.fixture
def generated_torchvision(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], list[str]]:
    """``patch(fallback)``: image datamodules get :func:`generated_splits`, always or (``fallback=True``)
    only for a dataset whose files are missing; returns the list of dataset names that were generated."""

    def patch(fallback: bool) -> list[str]:
        real = image_datamodules.load_torchvision
        generated: list[str] = []

        def load(name: str, root: str | Path, download: bool = False, size: int = 32) -> ImageSplits:
            if fallback:
                try:
                    return real(name, root, download, size)
                except FileNotFoundError:
                    pass
            generated.append(name)
            return generated_splits(name, size)

        monkeypatch.setattr(image_datamodules, "load_torchvision", load)
        return generated

    return patch
