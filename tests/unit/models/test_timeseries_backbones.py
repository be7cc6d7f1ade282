"""Time-series backbones (tsai) with a named shallow layer, and the undefended baseline."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from e2abl_lightning.models.backbones import FCN, InceptionTime, ResNet1d
from e2abl_lightning.models.baselines import NoDefense

BACKBONES = [FCN, ResNet1d, InceptionTime]


def small(cls: type, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fast instance (InceptionTime is shrunk; FCN and ResNet are cheap enough)."""
    if cls is InceptionTime:
        return cls(input_shape, num_classes, nf=8, depth=3)
    if cls is FCN:
        return cls(input_shape, num_classes, layers=(16, 32, 16))
    return cls(input_shape, num_classes)


@pytest.mark.parametrize("cls", BACKBONES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("channels", "length"), [(1, 64), (3, 40)])
def test_forward_shape(cls: type, channels: int, length: int) -> None:
    model = small(cls, (channels, length), 5).eval()
    with torch.no_grad():
        out = model(torch.randn(4, channels, length))
    assert out.shape == (4, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", BACKBONES, ids=lambda c: c.__name__)
def test_default_constructor_forward(cls: type) -> None:
    model = cls((2, 32), 3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, 32)).shape == (2, 3)


@pytest.mark.parametrize("cls", BACKBONES, ids=lambda c: c.__name__)
def test_shallow_layer_exists_and_is_hookable(cls: type) -> None:
    model = small(cls, (2, 48), 3).eval()
    modules = dict(model.named_modules())
    assert model.shallow_layer in modules
    layer = modules[model.shallow_layer]
    assert layer is not model and sum(p.numel() for p in layer.parameters()) > 0
    captured = []
    handle = layer.register_forward_hook(lambda mod, inp, out: captured.append(out))
    with torch.no_grad():
        model(torch.randn(3, 2, 48))
    handle.remove()
    assert len(captured) == 1
    assert captured[0].ndim == 3 and captured[0].shape[0] == 3 and captured[0].shape[-1] == 48  # [B, F, L]


@pytest.mark.parametrize("cls", BACKBONES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("shape", [(64,), (1, 28, 28), ()])
def test_wrong_input_shape_raises(cls: type, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        cls(shape, 3)


# ---- NoDefense -------------------------------------------------------------------------------


class RecordingBatch(dict):
    """A batch that remembers which keys were read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def fcn_factory(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return FCN(input_shape, num_classes, layers=(8, 16, 8))


def make_batch(b: int = 6, c: int = 1, length: int = 32, k: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, k, (b,), generator=g)
    return {
        "input": torch.randn(b, c, length, generator=g),
        "target": target,
        "index": torch.arange(b),
        "poisoned": torch.tensor([True, False] * (b // 2)),
        "original_target": (target + 1) % k,
    }


def test_no_defense_training_step_reads_only_input_and_target() -> None:
    torch.manual_seed(0)
    model = NoDefense(backbone=fcn_factory, num_classes=3, input_shape=(1, 32))
    full = RecordingBatch(make_batch())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer warns
        loss = model.training_step(full, 0)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    assert full.read <= {"input", "target", "index"}
    assert {"input", "target"} <= full.read


def test_no_defense_trains_identically_without_oracle_keys() -> None:
    torch.manual_seed(0)
    model_a = NoDefense(backbone=fcn_factory, num_classes=3, input_shape=(1, 32))
    model_b = copy.deepcopy(model_a)
    full = make_batch()
    stripped = {k: full[k] for k in ("input", "target", "index")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss_a = model_a.training_step(full, 0)
        loss_b = model_b.training_step(stripped, 0)
    assert torch.equal(loss_a, loss_b)
    loss_a.backward()
    loss_b.backward()
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        assert pa.grad is not None, name
        assert torch.equal(pa.grad, pb.grad), name


def test_no_defense_eval_steps_and_optimizer() -> None:
    model = NoDefense(
        backbone=fcn_factory,
        num_classes=3,
        input_shape=(1, 32),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )
    batch = make_batch()
    out = model.validation_step(batch, 0, dataloader_idx=1)
    assert set(out) == {"preds"} and out["preds"].shape == (6,) and out["preds"].dtype == torch.long
    assert model.test_step(batch, 0)["preds"].shape == (6,)
    probs = model.predict_step(batch, 0)
    assert probs.shape == (6, 3) and torch.allclose(probs.sum(1), torch.ones(6))
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)
    assert model.hparams["num_classes"] == 3 and tuple(model.hparams["input_shape"]) == (1, 32)


def test_no_defense_rejects_one_class() -> None:
    with pytest.raises(ValueError, match="num_classes=1"):
        NoDefense(backbone=fcn_factory, num_classes=1, input_shape=(1, 32))
