"""The E2ABL LightningModule: oracle-blind training, real isolation, argument checks."""

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from e2abl_lightning.data.datamodules import UCRDataModule
from e2abl_lightning.data.poison import ORACLE_KEYS
from e2abl_lightning.data.triggers import StaticPattern
from e2abl_lightning.models.backbones import FCN
from e2abl_lightning.models.e2abl import E2ABL

SMALL_FCN = partial(FCN, layers=(16, 32, 16))


class _Blind(Dataset):
    """The same samples with the oracle keys removed."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = dict(self.dataset[i])
        for key in ORACLE_KEYS:
            item.pop(key)
        return item


class BlindUCR(UCRDataModule):
    def train_dataloader(self):
        loader = super().train_dataloader()
        return DataLoader(
            _Blind(loader.dataset), batch_size=loader.batch_size, shuffle=True, drop_last=loader.drop_last
        )


def _fit(datamodule_cls, epochs=4, **kwargs):
    L.seed_everything(0, verbose=False)
    dm = datamodule_cls("GunPoint", StaticPattern(), poison_rate=0.2, batch_size=8, val_fraction=0.1)
    model = E2ABL(SMALL_FCN, dm.num_classes, dm.input_shape, warmup_epochs=2, target_patience=1, **kwargs)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )
    trainer.fit(model, dm)
    return model, trainer, dm


def test_oracle_keys_do_not_change_training():
    with_oracle, trainer, _ = _fit(UCRDataModule)
    blind, _, _ = _fit(BlindUCR)
    assert int(with_oracle.state.epochs_decided) > 0
    assert "isolation/precision" in trainer.callback_metrics
    sd_a, sd_b = with_oracle.state_dict(), blind.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]), key


@pytest.mark.slow
def test_short_training_isolates_mostly_poisoned_samples():
    model, trainer, dm = _fit(UCRDataModule, epochs=8, isolation_ratio=0.2)
    poisoned = dm.train_set.poisoned
    flagged = model.state.flagged
    precision = float((flagged & poisoned).sum() / flagged.sum())
    assert flagged.sum() > 0
    assert precision >= 0.6, precision  # poison rate is 0.2: chance precision would be ~0.2
    assert int(model.state.suspected_target) == 0


def test_inference_uses_main_head_only():
    model = E2ABL(SMALL_FCN, 2, (1, 64))
    x = torch.randn(3, 1, 64)
    model.eval()
    assert torch.equal(model(x), model.net.backbone(x))
    out = model.net(x)
    assert out.main.shape == (3, 2) and out.shallow.shape == (2, 3, 2)


def test_user_module_with_named_shallow_layer():
    def factory(input_shape, num_classes):
        return torch.nn.Sequential(
            torch.nn.Conv1d(input_shape[0], 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool1d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, num_classes),
        )

    model = E2ABL(factory, 3, (2, 32), shallow_layer="1")
    assert model.net(torch.randn(4, 2, 32)).shallow.shape == (2, 4, 3)
    with pytest.raises(ValueError, match="shallow_layer='nope'"):
        E2ABL(factory, 3, (2, 32), shallow_layer="nope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"isolation_ratio": 0.0}, "isolation_ratio"),
        ({"isolation_ratio": 1.5}, "isolation_ratio"),
        ({"warmup_epochs": 0}, "warmup_epochs"),
        ({"cleanse": "erase"}, "cleanse"),
        ({"shallow_poolings": ("median",)}, "shallow_poolings"),
        ({"ascent_ceiling": -1.0}, "ascent_ceiling"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E2ABL(SMALL_FCN, 2, (1, 64), **kwargs)


class _Shifted(_Blind):
    """Indices that are not dense 0..N-1."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["index"] = item["index"] + len(self.dataset)
        return item


class ShiftedUCR(UCRDataModule):
    def train_dataloader(self):
        loader = super().train_dataloader()
        return DataLoader(_Shifted(loader.dataset), batch_size=loader.batch_size)


def test_non_dense_training_indices_are_refused():
    with pytest.raises(ValueError, match="dense indices 0..N-1"):
        _fit(ShiftedUCR, epochs=1)
