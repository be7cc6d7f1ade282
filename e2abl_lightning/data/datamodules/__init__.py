"""Datamodules following the batch contract."""

from e2abl_lightning.data.datamodules.base import BackdoorDataModule, RawData
from e2abl_lightning.data.datamodules.timeseries import UCRDataModule

__all__ = ["BackdoorDataModule", "RawData", "UCRDataModule"]
