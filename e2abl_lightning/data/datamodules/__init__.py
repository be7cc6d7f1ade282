"""Datamodules following the batch contract."""

from e2abl_lightning.data.datamodules.base import BackdoorDataModule, RawData
from e2abl_lightning.data.datamodules.images import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    GTSRBDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    MNISTSubsetDataModule,
)
from e2abl_lightning.data.datamodules.timeseries import UCRDataModule

__all__ = [
    "BackdoorDataModule",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "GTSRBDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "MNISTSubsetDataModule",
    "RawData",
    "UCRDataModule",
]
