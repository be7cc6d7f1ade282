"""Image backbones: output shape, the named shallow layer, clear errors on a wrong input shape."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from e2abl_lightning.models.backbones import (
    WRN16_1,
    PreActResNet18,
    ResNet18,
    SmallCNN,
    TorchvisionResNet,
    WideResNet,
)

pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [
    (ResNet18, (3, 32, 32), "layer1"),
    (PreActResNet18, (3, 32, 32), "layer1"),
    (WRN16_1, (3, 32, 32), "block1"),
    (SmallCNN, (1, 28, 28), "block1"),
    (TorchvisionResNet, (3, 64, 64), "net.layer1"),
    (TorchvisionResNet, (1, 32, 32), "net.layer1"),
]


@pytest.mark.parametrize(("cls", "shape", "shallow"), CASES)
def test_forward_and_shallow_layer(cls: type[nn.Module], shape: tuple[int, int, int], shallow: str) -> None:
    torch.manual_seed(0)
    model = cls(shape, 7).eval()
    seen: list[torch.Tensor] = []
    layer = dict(model.named_modules())[model.shallow_layer]
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    handle.remove()
    assert model.shallow_layer == shallow
    assert out.shape == (2, 7)
    assert len(seen) == 1 and seen[0].shape[0] == 2 and seen[0].ndim == 4


@pytest.mark.parametrize("name", ["resnet34", "resnet50"])
def test_torchvision_resnet_names(name: str) -> None:
    model = TorchvisionResNet((3, 32, 32), 5, name=name)  # type: ignore[arg-type]
    assert model.net.fc.out_features == 5
    assert "net.layer1" in dict(model.named_modules())


def test_wide_resnet_depth() -> None:
    model = WideResNet((3, 32, 32), 10, depth=22, widen_factor=2)
    assert len(model.block1) == 3


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ResNet18((3, 32), 10), r"input_shape \(C, H, W\)"),
        (lambda: PreActResNet18((3, 4, 4), 10), "at least 8x8"),
        (lambda: WRN16_1((32, 32), 10), r"input_shape \(C, H, W\)"),
        (lambda: SmallCNN((1, 28), 10), r"input_shape \(C, H, W\)"),
        (lambda: TorchvisionResNet((3, 16, 16), 10), "at least 32x32"),
        (lambda: TorchvisionResNet((3, 32, 32), 10, name="vgg"), "name='vgg'"),
        (lambda: WideResNet((3, 32, 32), 10, depth=15), "depth=15"),
        (lambda: SmallCNN((1, 28, 28), 1), "num_classes=1"),
    ],
)
def test_wrong_arguments_are_clear_errors(factory: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_small_cnn_trains_a_step() -> None:
    model = SmallCNN((1, 28, 28), 10)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
