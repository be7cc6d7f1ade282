"""Time-series backbones from tsai, each with a named shallow layer for the second head.

Every backbone takes ``(input_shape, num_classes)`` first, so a config can give it as a callable and
the datamodule fills both in. ``shallow_layer`` names the submodule whose output feeds the shallow
head (a forward hook: the tsai network runs unchanged).
"""

from __future__ import annotations

from torch import Tensor, nn


def _check_series_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(input_shape) != 2:
        raise ValueError(f"time-series backbones expect input_shape (C, L), got {tuple(input_shape)}")
    return int(input_shape[0]), int(input_shape[1])


class FCN(nn.Module):
    """Fully convolutional network (Wang et al., 2017) from ``tsai.models.FCN``.

    Shallow split: ``net.convblock1`` (the first conv block); deep trunk: blocks 2-3, GAP, linear.
    """

    shallow_layer = "net.convblock1"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        layers: tuple[int, int, int] = (128, 256, 128),
        kernel_sizes: tuple[int, int, int] = (7, 5, 3),
    ) -> None:
        super().__init__()
        from tsai.models.FCN import FCN as TsaiFCN

        c_in, _ = _check_series_shape(input_shape)
        self.net = TsaiFCN(c_in, num_classes, layers=list(layers), kss=list(kernel_sizes))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, K]
        return self.net(x)


class ResNet1d(nn.Module):
    """Residual network for series (Wang et al., 2017) from ``tsai.models.ResNet``.

    Shallow split: ``net.resblock1``; deep trunk: residual blocks 2-3, GAP, linear.
    """

    shallow_layer = "net.resblock1"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        from tsai.models.ResNet import ResNet as TsaiResNet

        c_in, _ = _check_series_shape(input_shape)
        self.net = TsaiResNet(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, K]
        return self.net(x)


class InceptionTime(nn.Module):
    """InceptionTime (Fawaz et al., 2020) from ``tsai.models.InceptionTime``.

    Shallow split: ``net.inceptionblock.inception.0`` (the first inception module; tsai's residual
    block cannot be cut in two, which the hook does not need).
    """

    shallow_layer = "net.inceptionblock.inception.0"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, nf: int = 32, depth: int = 6) -> None:
        super().__init__()
        from tsai.models.InceptionTime import InceptionTime as TsaiInceptionTime

        c_in, seq_len = _check_series_shape(input_shape)
        self.net = TsaiInceptionTime(c_in, num_classes, seq_len=seq_len, nf=nf, depth=depth)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, K]
        return self.net(x)
