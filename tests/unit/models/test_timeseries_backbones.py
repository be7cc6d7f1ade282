"""Time-series backbones (tsai) with a named shallow layer, and the undefended baseline."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from e2abl_lightning.models.backbones import FCN, TST, InceptionTime, ResNet1d
from e2abl_lightning.models.baselines import NoDefense
from e2abl_lightning.models.e2abl import E2ABL
from e2abl_lightning.models.e2abl.torch_model import TwoHeadNet

BACKBONES = [FCN, ResNet1d, InceptionTime, TST]


def small(cls: type, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fast instance (InceptionTime, FCN and TST are shrunk; ResNet is cheap enough)."""
    if cls is TST:
        return cls(input_shape, num_classes, d_model=16, n_layers=2, n_heads=4, d_ff=32)
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


# ---- TST: a sequence-first transformer tapped channel-first ------------------------------------


def small_tst(input_shape: tuple[int, ...], num_classes: int, **kwargs) -> TST:
    return TST(input_shape, num_classes, d_model=16, n_layers=2, n_heads=4, d_ff=32, **kwargs)


def capture(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    modules, out = dict(model.named_modules()), {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return out


@pytest.mark.parametrize(
    ("length", "max_seq_len", "tokens"), [(48, 128, 48), (427, 128, 128), (427, 64, 64), (40, None, 40)]
)
def test_tst_shallow_features_are_the_first_layer_channel_first(length: int, max_seq_len, tokens: int) -> None:
    """The hooked BatchNorm gives the first encoder layer's output [B, L', D] as [B, D, L']."""
    model = small_tst((2, length), 3, max_seq_len=max_seq_len).eval()
    out = capture(model, [model.shallow_layer, "net.encoder.layers.0"], torch.randn(3, 2, length))
    shallow, layer0 = out[model.shallow_layer], out["net.encoder.layers.0"]
    assert layer0.shape == (3, tokens, 16)  # tsai's layout: sequence-first
    assert shallow.shape == (3, 16, tokens)  # what the shallow head reads: channel-first
    assert torch.equal(shallow, layer0.transpose(1, 2))


def test_tst_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        TST((1, 32), 3, d_model=20, n_heads=8)
    with pytest.raises(ValueError, match="n_layers"):
        TST((1, 32), 3, n_layers=0)


def test_tst_two_head_net_and_stop_gradient() -> None:
    """Both heads run on a TST, and a stop-gradient at the hook cuts the main loss off the stem."""
    torch.manual_seed(0)
    net = TwoHeadNet(small_tst((1, 427), 4), 4, (1, 427), hidden=8)
    x = torch.randn(5, 1, 427)
    out = net(x)
    assert out.main.shape == (5, 4) and out.shallow.shape == (2, 5, 4)
    stem = [
        net.backbone.net.W_pos,
        *net.backbone.net.W_P.parameters(),
        *net.backbone.net.encoder.layers[0].parameters(),
    ]
    deep = list(net.backbone.net.encoder.layers[1].parameters())

    net.zero_grad()
    net(x, stop_grad_mask=torch.ones(5, dtype=torch.bool)).main.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in stem)
    assert any(p.grad is not None and p.grad.any() for p in deep)

    net.zero_grad()
    net(x, stop_grad_mask=torch.zeros(5, dtype=torch.bool)).main.sum().backward()
    assert all(p.grad is not None for p in stem) and any(p.grad.any() for p in stem)


def test_tst_e2abl_training_step() -> None:
    torch.manual_seed(0)
    model = E2ABL(small_tst, 3, (1, 32))
    model.state.resize(6, 3, len(model.net.heads) + 1)  # what on_train_start does: 6 samples, 3 classes, heads + main
    assert model.net.shallow_layer == TST.shallow_layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer warns
        loss = model.training_step(make_batch(), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.net.heads.parameters())


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
