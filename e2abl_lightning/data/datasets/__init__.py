"""Dataset adapters returning raw tensors."""

from e2abl_lightning.data.datasets.images import (
    ImageSplits,
    install_debian_fashion_mnist,
    load_image_folder,
    load_mnist_subset,
    load_torchvision,
)
from e2abl_lightning.data.datasets.ucr import SeriesSplits, bundled_names, load_ucr

__all__ = [
    "ImageSplits",
    "SeriesSplits",
    "bundled_names",
    "install_debian_fashion_mnist",
    "load_image_folder",
    "load_mnist_subset",
    "load_torchvision",
    "load_ucr",
]
