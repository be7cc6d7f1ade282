"""Image backbones, each with a named shallow layer for the second head (no Lightning).

Every backbone takes ``(input_shape, num_classes, ...)`` first, ``input_shape = (C, H, W)``, so a
config can give it as a callable and the datamodule fills both in. ``shallow_layer`` names the
submodule whose output a forward hook hands to the shallow head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


def _check_image_shape(input_shape: tuple[int, ...], min_size: int, name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(int(s) for s in input_shape) < 1:
        raise ValueError(f"{name} expects input_shape (C, H, W), got {tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    if h < min_size or w < min_size:
        raise ValueError(f"{name} needs images of at least {min_size}x{min_size} pixels, got input_shape {(c, h, w)}")
    return c, h, w


def _check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be at least 2")


# ---------------------------------------------------------------------------------------------------
# CIFAR ResNet-18 (He et al., "Deep residual learning for image recognition", CVPR 2016)
# ---------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, plus a (projected) shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, H, W] -> [B, C_out, H/s, W/s]
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al., "Identity mappings in deep residual networks", 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, H, W] -> [B, C_out, H/s, W/s]
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


def _stage(block: type[nn.Module], c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [block(c_in, c_out, stride)] + [block(c_out, c_out, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem without max-pooling, four stages of two basic blocks.

    Shallow split: ``layer1`` (the first stage, full resolution, 64 channels).

    Args:
        input_shape: ``(C, H, W)``, H and W at least 8.
        num_classes: number of classes.
        width: channels of the first stage (64 in the standard network).
    """

    shallow_layer = "layer1"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> None:
        super().__init__()
        c, _, _ = _check_image_shape(input_shape, 8, "ResNet18")
        _check_classes(num_classes)
        if width < 1:
            raise ValueError(f"width={width} must be at least 1")
        self.conv1 = nn.Conv2d(c, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = _stage(BasicBlock, width, width, 2, 1)
        self.layer2 = _stage(BasicBlock, width, 2 * width, 2, 2)
        self.layer3 = _stage(BasicBlock, 2 * width, 4 * width, 2, 2)
        self.layer4 = _stage(BasicBlock, 4 * width, 8 * width, 2, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, K]
        out = torch.relu(self.bn1(self.conv1(x)))  # [B, w, H, W]
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # [B, 8w, H/8, W/8]
        return self.fc(self.pool(out).flatten(1))


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for CIFAR-sized images (the anchors' BackdoorBench victim).

    Shallow split: ``layer1``.

    Args:
        input_shape: ``(C, H, W)``, H and W at least 8.
        num_classes: number of classes.
        width: channels of the first stage (64).
    """

    shallow_layer = "layer1"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> None:
        super().__init__()
        c, _, _ = _check_image_shape(input_shape, 8, "PreActResNet18")
        _check_classes(num_classes)
        if width < 1:
            raise ValueError(f"width={width} must be at least 1")
        self.conv1 = nn.Conv2d(c, width, 3, 1, 1, bias=False)
        self.layer1 = _stage(PreActBlock, width, width, 2, 1)
        self.layer2 = _stage(PreActBlock, width, 2 * width, 2, 2)
        self.layer3 = _stage(PreActBlock, 2 * width, 4 * width, 2, 2)
        self.layer4 = _stage(PreActBlock, 4 * width, 8 * width, 2, 2)
        self.bn = nn.BatchNorm2d(8 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, K]
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))  # [B, 8w, H/8, W/8]
        out = torch.relu(self.bn(out))
        return self.fc(self.pool(out).flatten(1))


# ---------------------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis, "Wide residual networks", BMVC 2016); WRN-16-1 is ABL's victim.
# ---------------------------------------------------------------------------------------------------


class WideBlock(nn.Module):
    """WRN basic block: BN-ReLU-conv-BN-ReLU-(dropout)-conv, with a projected shortcut if needed."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, H, W] -> [B, C_out, H/s, W/s]
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """Wide ResNet ``WRN-depth-widen`` (default WRN-16-1), three groups ``block1..block3``.

    Shallow split: ``block1`` (the first group, full resolution).

    Args:
        input_shape: ``(C, H, W)``, H and W at least 8.
        num_classes: number of classes.
        depth: total depth, ``6n + 4`` (16 gives two blocks per group).
        widen_factor: channel multiplier (1).
        dropout: dropout inside blocks (0).
    """

    shallow_layer = "block1"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        depth: int = 16,
        widen_factor: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, _, _ = _check_image_shape(input_shape, 8, "WideResNet")
        _check_classes(num_classes)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth={depth} must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
        if widen_factor < 1:
            raise ValueError(f"widen_factor={widen_factor} must be at least 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(c, widths[0], 3, 1, 1, bias=False)
        self.block1 = nn.Sequential(
            *[WideBlock(widths[0] if i == 0 else widths[1], widths[1], 1, dropout) for i in range(n)]
        )
        self.block2 = nn.Sequential(
            *[WideBlock(widths[1] if i == 0 else widths[2], widths[2], 2 if i == 0 else 1, dropout) for i in range(n)]
        )
        self.block3 = nn.Sequential(
            *[WideBlock(widths[2] if i == 0 else widths[3], widths[3], 2 if i == 0 else 1, dropout) for i in range(n)]
        )
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, K]
        out = self.block3(self.block2(self.block1(self.conv1(x))))  # [B, 64k, H/4, W/4]
        out = torch.relu(self.bn(out))
        return self.fc(self.pool(out).flatten(1))


class WRN16_1(WideResNet):
    """WRN-16-1, ABL's victim network (a :class:`WideResNet` with depth 16, widen factor 1)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(input_shape, num_classes, depth=16, widen_factor=1, dropout=dropout)


# ---------------------------------------------------------------------------------------------------
# Small CNN for 28x28 digits / Fashion-MNIST
# ---------------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Two conv blocks (conv-BN-ReLU-maxpool) and a two-layer classifier, fast on a CPU.

    Shallow split: ``block1`` (first conv block, half resolution).

    Args:
        input_shape: ``(C, H, W)``, H and W at least 4 (built for 28x28).
        num_classes: number of classes.
        channels: output channels of the two conv blocks.
        hidden: width of the hidden fully connected layer.
    """

    shallow_layer = "block1"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        c, h, w = _check_image_shape(input_shape, 4, "SmallCNN")
        _check_classes(num_classes)
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise ValueError(f"channels={channels} must be two positive ints and hidden={hidden} positive")
        c1, c2 = (int(v) for v in channels)
        self.block1 = nn.Sequential(nn.Conv2d(c, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2))
        flat = c2 * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, K]
        return self.classifier(self.block2(self.block1(x)))  # block outputs [B, c1, H/2, W/2], [B, c2, H/4, W/4]


# ---------------------------------------------------------------------------------------------------
# torchvision ResNets for larger inputs
# ---------------------------------------------------------------------------------------------------


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet (ImageNet layout: 7x7 stride-2 stem and max-pooling), randomly initialised.

    Shallow split: ``net.layer1``. No pretrained weights are downloaded.

    Args:
        input_shape: ``(C, H, W)``, H and W at least 32; the stem is rebuilt when C is not 3.
        num_classes: number of classes.
        name: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
    """

    shallow_layer = "net.layer1"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        name: Literal["resnet18", "resnet34", "resnet50"] = "resnet18",
    ) -> None:
        super().__init__()
        from torchvision import models

        c, _, _ = _check_image_shape(input_shape, 32, "TorchvisionResNet")
        _check_classes(num_classes)
        if name not in ("resnet18", "resnet34", "resnet50"):
            raise ValueError(f"name={name!r} is unknown; choose 'resnet18', 'resnet34' or 'resnet50'")
        self.name = name
        self.net = getattr(models, name)(weights=None, num_classes=num_classes)
        if c != 3:
            self.net.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, K]
        return self.net(x)
