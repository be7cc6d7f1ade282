"""Backbones with a named shallow layer. Each takes ``(input_shape, num_classes, ...)``."""

from collections.abc import Callable

from torch import nn

from e2abl_lightning.models.backbones.image import (
    WRN16_1,
    PreActResNet18,
    ResNet18,
    SmallCNN,
    TorchvisionResNet,
    WideResNet,
)
from e2abl_lightning.models.backbones.timeseries import FCN, TST, InceptionTime, ResNet1d

#: What a model receives for ``backbone``: called with ``(input_shape, num_classes)``.
BackboneFactory = Callable[[tuple[int, ...], int], nn.Module]

__all__ = [
    "FCN",
    "WRN16_1",
    "BackboneFactory",
    "InceptionTime",
    "PreActResNet18",
    "ResNet18",
    "ResNet1d",
    "SmallCNN",
    "TST",
    "TorchvisionResNet",
    "WideResNet",
]
